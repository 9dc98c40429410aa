"""The Services screen and its keys, driven through Pilot against an in-memory client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Button, Input
from tui_fake import NOW, FakeClient, service, stats_document

from opsbot.core.deadlines import EXTEND_HOURS
from opsbot.tui.app import OpsbotApp
from opsbot.tui.modals import ConfirmModal, ExtendModal, HelpModal
from opsbot.tui.services import ServicesScreen
from opsbot.tui.table import ServicesTable

SIZE = (120, 40)


def make_app(client: FakeClient, live: bool = True) -> OpsbotApp:
    def stats(url: str) -> dict[str, Any]:
        return stats_document("uid-alice-alpha", calls=7, failures=2)

    return OpsbotApp(client, stats=stats, now=lambda: NOW, live=live)


@pytest.fixture
def client() -> FakeClient:
    fake = FakeClient()
    fake.add(service("alpha"))
    fake.add(service("beta", status="stopped"))
    fake.add(service("gamma", status="deploying"))
    fake.add(service("theirs", owner="bob"))
    return fake


async def settle(pilot: Pilot[None]) -> None:
    """Let workers finish and their results reach the screen."""
    for _ in range(3):
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()


def table(pilot: Pilot[None]) -> ServicesTable:
    return pilot.app.screen.query_one(ServicesTable)


def notes(pilot: Pilot[None]) -> list[str]:
    return [n.message for n in pilot.app._notifications]


@pytest.fixture
async def pilot(client: FakeClient) -> AsyncIterator[Pilot[None]]:
    app = make_app(client)
    async with app.run_test(size=SIZE) as p:
        await settle(p)
        yield p
    client.close()


async def select(pilot: Pilot[None], key: str) -> None:
    t = table(pilot)
    t.move_cursor(row=t.get_row_index(key))
    await pilot.pause()


async def test_table_shows_my_services_with_stats(pilot: Pilot[None]) -> None:
    t = table(pilot)
    assert set(t.cells) == {"alice/alpha", "alice/beta", "alice/gamma"}
    alpha = t.cells["alice/alpha"]
    assert alpha["status"] == "Running"
    assert alpha["calls"] == "7" and alpha["failed"] == "2"
    assert alpha["instances"] == "1/1"
    assert alpha["auto_stop"] == "1h 00m"
    assert t.cells["alice/gamma"]["status"] == "Deploying 40%"
    assert t.cells["alice/beta"]["auto_stop"] == "-"


async def test_live_event_updates_row_and_keeps_cursor(
    pilot: Pilot[None], client: FakeClient
) -> None:
    await select(pilot, "alice/beta")
    gamma = client.services_by_key[("alice", "gamma")]
    gamma["status"] = "running"
    client.emit(gamma, "running")
    for _ in range(40):
        await settle(pilot)
        if table(pilot).cells["alice/gamma"]["status"] == "Running":
            break
    assert table(pilot).cells["alice/gamma"]["status"] == "Running"
    assert table(pilot).selected_key == "alice/beta"
    new = client.add(service("delta"))
    client.emit(new, "created")
    for _ in range(40):
        await settle(pilot)
        if "alice/delta" in table(pilot).cells:
            break
    assert "alice/delta" in table(pilot).cells
    assert table(pilot).selected_key == "alice/beta"
    client.emit(new, "deleted")
    for _ in range(40):
        await settle(pilot)
        if "alice/delta" not in table(pilot).cells:
            break
    assert "alice/delta" not in table(pilot).cells


async def test_stop_asks_first_then_start(pilot: Pilot[None], client: FakeClient) -> None:
    await select(pilot, "alice/alpha")
    await pilot.press("s")
    await settle(pilot)
    assert isinstance(pilot.app.screen, ConfirmModal)
    assert not any(c[1].endswith("/stop") for c in client.calls)
    await pilot.press("n")
    await settle(pilot)
    assert not any(c[1].endswith("/stop") for c in client.calls)
    await pilot.press("s", "y")
    await settle(pilot)
    assert ("POST", "/v1/services/alpha/stop", None) in client.calls
    assert table(pilot).cells["alice/alpha"]["status"] == "Stopped"
    await pilot.press("r")
    await settle(pilot)
    assert ("POST", "/v1/services/alpha/start", None) in client.calls
    assert table(pilot).cells["alice/alpha"]["status"].startswith("Deploying")


async def test_start_on_running_is_refused_with_reason(
    pilot: Pilot[None], client: FakeClient
) -> None:
    await select(pilot, "alice/alpha")
    await pilot.press("r")
    await settle(pilot)
    assert not any(c[1].endswith("/start") for c in client.calls)
    assert any("start applies to Stopped or Failed" in n for n in notes(pilot))


async def test_stop_on_stopped_is_refused(pilot: Pilot[None], client: FakeClient) -> None:
    await select(pilot, "alice/beta")
    await pilot.press("s")
    await settle(pilot)
    assert not any(c[1].endswith("/stop") for c in client.calls)
    assert any("nothing to stop" in n for n in notes(pilot))


async def test_delete_asks_first(pilot: Pilot[None], client: FakeClient) -> None:
    await select(pilot, "alice/beta")
    await pilot.press("x")
    await pilot.pause()
    assert isinstance(pilot.app.screen, ConfirmModal)
    await pilot.press("n")
    await settle(pilot)
    assert not any(c[0] == "DELETE" for c in client.calls)
    await pilot.press("x")
    await pilot.pause()
    await pilot.press("y")
    await settle(pilot)
    assert ("DELETE", "/v1/services/beta", None) in client.calls
    assert table(pilot).cells["alice/beta"]["status"] == "Deleting"


async def test_extend_shows_error_until_endpoint_exists(
    pilot: Pilot[None], client: FakeClient
) -> None:
    await select(pilot, "alice/alpha")
    await pilot.press("e")
    await pilot.pause()
    modal = pilot.app.screen
    assert isinstance(modal, ExtendModal)
    # The time left and what each choice makes of it (the hours add to the 1 h left).
    assert "1h 00m left" in modal.question()
    labels = [str(b.label) for b in modal.query(Button) if (b.id or "").startswith("extend-")]
    assert labels == [f"Extend {h} h: stops in {h + 1}h 00m" for h in EXTEND_HOURS]
    await pilot.press("1")
    await settle(pilot)
    assert ("POST", "/v1/services/alpha/extend", {"hours": 1}) in client.calls
    assert any("404" in n for n in notes(pilot))
    client.has_extend = True
    await pilot.press("e")
    await pilot.pause()
    await pilot.click("#autostop-off")
    await settle(pilot)
    assert ("POST", "/v1/services/alpha/autostop", {"auto_stop": "off"}) in client.calls
    assert table(pilot).cells["alice/alpha"]["auto_stop"] == "off"


async def test_keys_refused_on_another_users_service(client: FakeClient) -> None:
    app = make_app(client)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("a")
        await settle(pilot)
        assert "bob/theirs" in table(pilot).cells
        await select(pilot, "bob/theirs")
        for key in ("s", "x", "e", "p"):
            await pilot.press(key)
            await settle(pilot)
        assert isinstance(pilot.app.screen, ServicesScreen)
        assert sum("belongs to bob" in n for n in notes(pilot)) == 4
        assert not any(c[0] in ("POST", "DELETE") for c in client.calls)
    client.close()


async def test_admin_may_change_anyones_service() -> None:
    client = FakeClient(user="root", admin=True)
    client.add(service("theirs", owner="bob"))
    app = make_app(client)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert "bob/theirs" in table(pilot).cells
        await select(pilot, "bob/theirs")
        await pilot.press("s", "y")
        await settle(pilot)
        assert client.services_by_key[("bob", "theirs")]["status"] == "stopped"
    client.close()


async def test_filter_and_toggle_all(pilot: Pilot[None]) -> None:
    await pilot.press("slash")
    await pilot.press(*"gam")
    await settle(pilot)
    assert set(table(pilot).cells) == {"alice/gamma"}
    await pilot.press("enter")
    await pilot.press("escape")
    await settle(pilot)
    assert len(table(pilot).cells) == 3
    assert pilot.app.screen.query_one("#filter", Input).display is False
    await pilot.press("a")
    await settle(pilot)
    assert "bob/theirs" in table(pilot).cells
    await pilot.press("a")
    await settle(pilot)
    assert "bob/theirs" not in table(pilot).cells


async def test_sort_keeps_cursor(pilot: Pilot[None]) -> None:
    await select(pilot, "alice/gamma")
    t = table(pilot)
    await pilot.press("o", "o", "o")  # name, owner, status
    await settle(pilot)
    assert t.sort_column == "status"
    order = [str(r.key.value) for r in t.ordered_rows]
    assert order == ["alice/gamma", "alice/alpha", "alice/beta"]
    assert t.selected_key == "alice/gamma"


async def test_help_and_quit(pilot: Pilot[None]) -> None:
    await pilot.press("question_mark")
    await pilot.pause()
    assert isinstance(pilot.app.screen, HelpModal)
    await pilot.press("escape")
    await pilot.pause()
    assert isinstance(pilot.app.screen, ServicesScreen)
    await pilot.press("q")
    await pilot.pause()
    assert pilot.app.return_code == 0 or not pilot.app.is_running


KeyCheck = Callable[[Pilot[None]], Any]


async def test_extend_on_a_service_without_auto_stop_offers_to_turn_it_on(
    pilot: Pilot[None], client: FakeClient
) -> None:
    client.has_extend = True
    await select(pilot, "alice/alpha")
    await pilot.press("e")
    await pilot.pause()
    await pilot.click("#autostop-off")
    await settle(pilot)
    await pilot.press("e")
    await pilot.pause()
    modal = pilot.app.screen
    assert isinstance(modal, ExtendModal)
    assert "auto stop off" in modal.question()
    ids = [b.id for b in modal.query(Button)]
    assert not any((i or "").startswith("extend-") for i in ids) and "autostop-on" in ids
