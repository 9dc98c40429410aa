"""The Services screen and its keys, driven through Pilot against the daemon's control API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import Button, Input
from tui_live import LiveApi, live_api, set_admins, settle, stats_document, until

from opsbot.core.deadlines import EXTEND_HOURS
from opsbot.core.status import Status
from opsbot.tui.app import OpsbotApp
from opsbot.tui.modals import ConfirmModal, ExtendModal, HelpModal
from opsbot.tui.services import ServicesScreen
from opsbot.tui.table import ServicesTable
from opsbot.tui.view import local_time

SIZE = (120, 40)


def make_app(api: LiveApi) -> OpsbotApp:
    return OpsbotApp(api.client, now=api.clock.now)


@pytest.fixture
def served(api: LiveApi, me: str) -> LiveApi:
    """alpha Running (with calls), beta Stopped, gamma Deploying, and bob's theirs Running."""
    alpha = api.running(me, "alpha")
    api.stopped(me, "beta")
    api.theirs("bob", "theirs", me)
    api.deploying(me, "gamma")
    api.daemon.gateway_document = stats_document(alpha, calls=7, failures=2)
    return api


def table(pilot: Pilot[None]) -> ServicesTable:
    return pilot.app.screen.query_one(ServicesTable)


def notes(pilot: Pilot[None]) -> list[str]:
    return [n.message for n in pilot.app._notifications]


@pytest.fixture
async def pilot(served: LiveApi, me: str) -> AsyncIterator[Pilot[None]]:
    app = make_app(served)
    async with app.run_test(size=SIZE) as p:
        await until(p, "the table", lambda: len(table(p).cells) == 3)
        await until(p, "the calls", lambda: table(p).cells[f"{me}/alpha"]["calls"] == "7")
        yield p


async def select(pilot: Pilot[None], key: str) -> None:
    t = table(pilot)
    t.move_cursor(row=t.get_row_index(key))
    await pilot.pause()


async def test_table_shows_my_services_with_stats(pilot: Pilot[None], me: str) -> None:
    t = table(pilot)
    assert set(t.cells) == {f"{me}/alpha", f"{me}/beta", f"{me}/gamma"}
    alpha = t.cells[f"{me}/alpha"]
    assert alpha["status"] == "Running"
    assert alpha["calls"] == "7" and alpha["failed"] == "2"
    assert alpha["instances"] == "1/1"
    assert alpha["auto_stop"] == "1h 00m"
    assert t.cells[f"{me}/gamma"]["status"].startswith("Deploying")
    assert t.cells[f"{me}/gamma"]["instances"] == "0/1"
    assert t.cells[f"{me}/beta"]["auto_stop"] == "-"


async def test_live_event_updates_row_and_keeps_cursor(
    pilot: Pilot[None], served: LiveApi, me: str
) -> None:
    await select(pilot, f"{me}/beta")
    served.healthy(me, "gamma")  # the controller's pass: gamma turns Running
    cells = table(pilot).cells
    await until(pilot, "gamma Running", lambda: cells[f"{me}/gamma"]["status"] == "Running")
    assert table(pilot).selected_key == f"{me}/beta"
    served.deploy(me, "delta")
    await until(pilot, "the new row", lambda: f"{me}/delta" in table(pilot).cells)
    assert table(pilot).selected_key == f"{me}/beta"
    served.core.delete_service(served.user(me), "delta")
    served.settle()
    await until(pilot, "the row gone", lambda: f"{me}/delta" not in table(pilot).cells)
    assert table(pilot).selected_key == f"{me}/beta"


async def test_stop_asks_first_then_start(pilot: Pilot[None], served: LiveApi, me: str) -> None:
    await select(pilot, f"{me}/alpha")
    await pilot.press("s")
    await settle(pilot)
    assert isinstance(pilot.app.screen, ConfirmModal)
    await pilot.press("n")
    await settle(pilot)
    assert served.service(me, "alpha").status == Status.RUNNING
    await pilot.press("s", "y")
    await until(pilot, "the stop", lambda: served.service(me, "alpha").status == Status.STOPPING)
    served.settle()
    cells = table(pilot).cells
    await until(pilot, "Stopped", lambda: cells[f"{me}/alpha"]["status"] == "Stopped")
    await pilot.press("r")
    await until(pilot, "the start", lambda: served.service(me, "alpha").status == Status.DEPLOYING)
    await until(pilot, "Deploying", lambda: cells[f"{me}/alpha"]["status"].startswith("Deploying"))


async def test_start_on_running_is_refused_with_reason(
    pilot: Pilot[None], served: LiveApi, me: str
) -> None:
    await select(pilot, f"{me}/alpha")
    await pilot.press("r")
    await settle(pilot)
    assert any("start applies to Stopped or Failed" in n for n in notes(pilot))
    assert served.service(me, "alpha").status == Status.RUNNING


async def test_stop_on_stopped_is_refused(pilot: Pilot[None], served: LiveApi, me: str) -> None:
    await select(pilot, f"{me}/beta")
    await pilot.press("s")
    await settle(pilot)
    assert not isinstance(pilot.app.screen, ConfirmModal)
    assert any("nothing to stop" in n for n in notes(pilot))
    assert served.service(me, "beta").status == Status.STOPPED


async def test_delete_asks_first(pilot: Pilot[None], served: LiveApi, me: str) -> None:
    await select(pilot, f"{me}/beta")
    await pilot.press("x")
    await pilot.pause()
    assert isinstance(pilot.app.screen, ConfirmModal)
    await pilot.press("n")
    await settle(pilot)
    assert served.service(me, "beta").status == Status.STOPPED
    await pilot.press("x")
    await pilot.pause()
    await pilot.press("y")
    cells = table(pilot).cells
    await until(pilot, "Deleting", lambda: cells[f"{me}/beta"]["status"] == "Deleting")
    assert served.service(me, "beta").status == Status.DELETING


async def test_extend_shows_the_time_left_and_each_new_deadline(
    pilot: Pilot[None], served: LiveApi, me: str
) -> None:
    await select(pilot, f"{me}/alpha")
    await pilot.press("e")
    await pilot.pause()
    modal = pilot.app.screen
    assert isinstance(modal, ExtendModal)
    # The time left and what each choice makes of it (the hours add to the 1 h left), with the
    # deadline as the clock on the wall reads it, before anything is applied.
    now = served.clock.now()
    assert f"1h 00m left (stops at {local_time(now + 3600)})" in modal.question()
    labels = [str(b.label) for b in modal.query(Button) if (b.id or "").startswith("extend-")]
    assert labels == [
        f"Extend {h} h: stops in {h + 1}h 00m (at {local_time(now + (h + 1) * 3600)})"
        for h in EXTEND_HOURS
    ]
    due = served.service(me, "alpha").due_time
    assert due is not None
    await pilot.press("1")
    cells = table(pilot).cells
    await until(pilot, "2 h left", lambda: cells[f"{me}/alpha"]["auto_stop"] == "2h 00m")
    assert served.service(me, "alpha").due_time == due + 3600


async def test_extend_on_a_service_without_auto_stop_offers_to_turn_it_on(
    pilot: Pilot[None], served: LiveApi, me: str
) -> None:
    await select(pilot, f"{me}/alpha")
    await pilot.press("e")
    await pilot.pause()
    await pilot.click("#autostop-off")
    cells = table(pilot).cells
    await until(pilot, "auto stop off", lambda: cells[f"{me}/alpha"]["auto_stop"] == "off")
    assert served.service(me, "alpha").due_time is None
    await pilot.press("e")
    await pilot.pause()
    modal = pilot.app.screen
    assert isinstance(modal, ExtendModal)
    assert "auto stop off" in modal.question()
    ids = [b.id for b in modal.query(Button)]
    assert not any((i or "").startswith("extend-") for i in ids) and "autostop-on" in ids
    await pilot.click("#autostop-on")
    await until(pilot, "auto stop on", lambda: cells[f"{me}/alpha"]["auto_stop"] != "off")
    assert served.service(me, "alpha").due_time is not None


async def test_keys_refused_on_another_users_service(served: LiveApi, me: str) -> None:
    app = make_app(served)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, "my services", lambda: len(table(pilot).cells) == 3)
        await pilot.press("a")
        # Not an admin: the daemon refuses everyone's list, and says so.
        await until(pilot, "the refusal", lambda: any("only an admin" in n for n in notes(pilot)))
        assert "bob/theirs" not in table(pilot).cells
    assert served.service("bob", "theirs").status == Status.RUNNING


async def test_admin_may_change_anyones_service(examples_home: Path, me: str) -> None:
    set_admins(examples_home, me)
    with live_api(examples_home) as api:
        api.theirs("bob", "theirs", me)
        app = make_app(api)
        async with app.run_test(size=SIZE) as pilot:
            # An admin's table starts with everyone's services.
            await until(pilot, "bob's row", lambda: "bob/theirs" in table(pilot).cells)
            await select(pilot, "bob/theirs")
            await pilot.press("s", "y")
            await until(
                pilot, "the stop", lambda: api.service("bob", "theirs").status == Status.STOPPING
            )


async def test_filter_and_toggle_all(pilot: Pilot[None], me: str) -> None:
    await pilot.press("slash")
    await pilot.press(*"gam")
    await settle(pilot)
    assert set(table(pilot).cells) == {f"{me}/gamma"}
    await pilot.press("enter")
    await pilot.press("escape")
    await settle(pilot)
    assert len(table(pilot).cells) == 3
    assert pilot.app.screen.query_one("#filter", Input).display is False


async def test_sort_keeps_cursor(pilot: Pilot[None], me: str) -> None:
    await select(pilot, f"{me}/gamma")
    t = table(pilot)
    await pilot.press("o", "o", "o")  # name, owner, status
    await settle(pilot)
    assert t.sort_column == "status"
    order = [str(r.key.value) for r in t.ordered_rows]
    assert order == [f"{me}/gamma", f"{me}/alpha", f"{me}/beta"]
    assert t.selected_key == f"{me}/gamma"


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
