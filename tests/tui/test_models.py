"""The Models screen: create from a path (errors beside their fields), publish, subscribe."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Input, Label, Static, TabbedContent
from tui_fake import NOW, FakeClient, sample_client

from opsbot.tui.app import OpsbotApp
from opsbot.tui.models import CreateModelModal, ModelsScreen, SubscribeModal


async def settle(pilot: Pilot[None], rounds: int = 3) -> None:
    for _ in range(rounds):
        await pilot.app.workers.wait_for_complete()
        await pilot.pause(0.05)


@pytest.fixture
def client() -> FakeClient:
    return sample_client()


@pytest.fixture
async def pilot(client: FakeClient) -> AsyncIterator[Pilot[None]]:
    app = OpsbotApp(client, stats=None, now=lambda: NOW, live=False)
    async with app.run_test(size=(120, 40)) as p:
        await settle(p)
        await p.press("m")
        await settle(p)
        assert isinstance(p.app.screen, ModelsScreen)
        yield p
    client.close()


def models_screen(pilot: Pilot[None]) -> ModelsScreen:
    for screen in pilot.app.screen_stack:
        if isinstance(screen, ModelsScreen):
            return screen
    raise AssertionError("no Models screen")


def rows(pilot: Pilot[None], table: str) -> list[list[str]]:
    t = models_screen(pilot).query_one(f"#{table}", DataTable)
    return [[str(c) for c in t.get_row_at(i)] for i in range(t.row_count)]


def error(pilot: Pilot[None], field: str) -> str:
    return str(pilot.app.screen.query_one(f"#err-{field}", Label).content)


async def fill(pilot: Pilot[None], **values: str) -> None:
    for ident, value in values.items():
        pilot.app.screen.query_one(f"#{ident}", Input).value = value
    await pilot.pause()


async def submit(pilot: Pilot[None]) -> None:
    await pilot.click("#ok")
    await settle(pilot)


async def test_create_from_a_path_after_errors_beside_fields(
    pilot: Pilot[None], client: FakeClient, tmp_path: Path
) -> None:
    await pilot.press("c")
    await pilot.pause()
    assert isinstance(pilot.app.screen, CreateModelModal)

    await submit(pilot)  # nothing filled in: said beside each required field, nothing sent
    assert [error(pilot, f) for f in ("name", "version", "path")] == ["✗ required"] * 3
    assert not [c for c in client.calls if c[:2] == ("POST", "/v1/models")]

    await fill(pilot, name="iris", version="1.0.0", path=str(tmp_path))
    await submit(pilot)  # the registry says the version exists: beside the version
    assert "1.0.0 exists" in error(pilot, "version")
    assert error(pilot, "name") == ""

    await fill(pilot, name="flowers", version="1.0.0", path=str(tmp_path / "missing"))
    await submit(pilot)
    assert "is not a directory" in error(pilot, "path")
    assert isinstance(pilot.app.screen, CreateModelModal)

    await fill(pilot, path=str(tmp_path), description="iris again")
    await submit(pilot)
    assert isinstance(pilot.app.screen, ModelsScreen)
    sent = [c for c in client.calls if c[:2] == ("POST", "/v1/models")][-1][2]
    assert sent["name"] == "flowers" and sent["path"] == str(tmp_path)
    assert sent["format"] == "sklearn" and sent["description"] == "iris again"
    assert ["flowers", "1.0.0", "Normal", "sklearn", "alice", "no", ""] in rows(pilot, "mine-table")


async def test_a_model_that_fails_its_check_is_listed_with_the_reason(
    pilot: Pilot[None], tmp_path: Path
) -> None:
    (tmp_path / "broken").write_text("")
    await pilot.press("c")
    await pilot.pause()
    await fill(pilot, name="bad", version="1", path=str(tmp_path))
    await submit(pilot)
    assert isinstance(pilot.app.screen, ModelsScreen)
    failed = [r for r in rows(pilot, "mine-table") if r[0] == "bad"]
    assert failed == [["bad", "1", "Failed", "sklearn", "alice", "no", failed[0][6]]]
    assert "could not load" in failed[0][6]


async def test_escape_cancels_create_without_a_call(pilot: Pilot[None], client: FakeClient) -> None:
    await pilot.press("c")
    await pilot.pause()
    await pilot.press("escape")
    await pilot.pause()
    assert isinstance(pilot.app.screen, ModelsScreen)
    assert not [c for c in client.calls if c[:2] == ("POST", "/v1/models")]


async def test_publish_and_make_private_again(pilot: Pilot[None], client: FakeClient) -> None:
    table = models_screen(pilot).query_one("#mine-table", DataTable)
    table.focus()
    first = rows(pilot, "mine-table")[0]
    await pilot.press("u")
    await settle(pilot)
    assert ("POST", f"/v1/models/{first[0]}/publish", {"public": True}) in client.calls
    published = [r for r in rows(pilot, "mine-table") if r[0] == first[0]]
    assert {r[5] for r in published} == {"yes"}
    assert rows(pilot, "mine-table")[table.cursor_row][0] == first[0]  # cursor kept

    await pilot.press("u")
    await settle(pilot)
    assert ("POST", f"/v1/models/{first[0]}/publish", {"public": False}) in client.calls
    assert {r[5] for r in rows(pilot, "mine-table") if r[0] == first[0]} == {"no"}


async def test_publish_is_refused_on_subscriptions(pilot: Pilot[None], client: FakeClient) -> None:
    models_screen(pilot).query_one("#model-tabs", TabbedContent).active = "subscribed"
    await pilot.pause()
    await pilot.press("u")
    await settle(pilot)
    assert not [c for c in client.calls if c[1].endswith("/publish")]


async def test_subscribe_with_errors_then_success(pilot: Pilot[None], client: FakeClient) -> None:
    assert len(rows(pilot, "subscribed-table")) == 1
    await pilot.press("s")
    await pilot.pause()
    assert isinstance(pilot.app.screen, SubscribeModal)

    await fill(pilot, model="tulips")
    await submit(pilot)
    assert "name it OWNER/NAME" in error(pilot, "model")

    await fill(pilot, model="carol/roses")
    await submit(pilot)
    assert "not published" in error(pilot, "model")
    assert isinstance(pilot.app.screen, SubscribeModal)

    await fill(pilot, model="carol/tulips")
    await submit(pilot)
    assert isinstance(pilot.app.screen, ModelsScreen)
    assert ("POST", "/v1/models/carol/tulips/subscribe", None) in client.calls
    assert models_screen(pilot).query_one("#model-tabs", TabbedContent).active == "subscribed"
    assert ["tulips", "0.1", "Normal", "sklearn", "carol", "yes", ""] in rows(
        pilot, "subscribed-table"
    )
    assert str(models_screen(pilot).query_one("#status-line", Static).content).startswith("c ")
