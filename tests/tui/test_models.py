"""The Models screen: create from a path (errors beside their fields), publish, subscribe."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Input, Label, Static, TabbedContent
from tui_live import LiveApi, settle, until

from opsbot.tui.app import OpsbotApp
from opsbot.tui.models import CreateModelModal, ModelsScreen, SubscribeModal


@pytest.fixture
async def pilot(api: LiveApi) -> AsyncIterator[Pilot[None]]:
    app = OpsbotApp(api.client, stats=None, now=api.clock.now, live=False)
    async with app.run_test(size=(120, 40)) as p:
        await until(p, "whoami", lambda: bool(p.app.user))
        await p.press("m")
        assert isinstance(p.app.screen, ModelsScreen)
        await until(p, "my models", lambda: len(rows(p, "mine-table")) == 4)
        yield p


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


def model_names(api: LiveApi, me: str) -> list[tuple[str, str]]:
    return [(m.name, m.version) for _, m in api.core.models(api.user(me), "mine")]


async def test_create_from_a_path_after_errors_beside_fields(
    pilot: Pilot[None],
    api: LiveApi,
    me: str,
    tmp_path: Path,
    example_dirs: dict[tuple[str, str], Path],
) -> None:
    before = model_names(api, me)
    await pilot.press("c")
    await pilot.pause()
    assert isinstance(pilot.app.screen, CreateModelModal)

    await submit(pilot)  # nothing filled in: said beside each required field, nothing sent
    assert [error(pilot, f) for f in ("name", "version", "path")] == ["✗ required"] * 3

    files = example_dirs[("iris", "1.0.0")]
    await fill(pilot, name="iris", version="1.0.0", path=str(files))
    await submit(pilot)  # the registry says the version exists: beside the version
    await until(pilot, "the registry's answer", lambda: "exists" in error(pilot, "version"))
    assert error(pilot, "name") == ""

    await fill(pilot, name="roses", version="1.0.0", path=str(tmp_path / "missing"))
    await submit(pilot)
    await until(pilot, "the registry's answer", lambda: "not a directory" in error(pilot, "path"))
    assert isinstance(pilot.app.screen, CreateModelModal)
    assert model_names(api, me) == before

    await fill(pilot, path=str(files), description="iris again")
    await submit(pilot)
    await until(pilot, "the check", lambda: isinstance(pilot.app.screen, ModelsScreen), 60)
    (made,) = [m for _, m in api.core.models(api.user(me), "mine") if m.name == "roses"]
    assert (made.format, made.description) == ("sklearn", "iris again")
    assert ["roses", "1.0.0", "Normal", "sklearn", me, "no", ""] in rows(pilot, "mine-table")


async def test_a_model_that_fails_its_check_is_listed_with_the_reason(
    pilot: Pilot[None], me: str, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"  # not tmp_path itself: the home lies there
    broken.mkdir()
    (broken / "model.joblib").write_text("not a pickle")
    await pilot.press("c")
    await pilot.pause()
    await fill(pilot, name="bad", version="1", path=str(broken))
    await submit(pilot)
    await until(pilot, "the check", lambda: isinstance(pilot.app.screen, ModelsScreen), 60)
    await until(pilot, "the row", lambda: any(r[0] == "bad" for r in rows(pilot, "mine-table")))
    failed = [r for r in rows(pilot, "mine-table") if r[0] == "bad"]
    assert failed == [["bad", "1", "Failed", "sklearn", me, "no", failed[0][6]]]
    assert failed[0][6]  # the registry's reason


async def test_escape_cancels_create_without_a_call(
    pilot: Pilot[None], api: LiveApi, me: str
) -> None:
    before = model_names(api, me)
    await pilot.press("c")
    await pilot.pause()
    await pilot.press("escape")
    await pilot.pause()
    assert isinstance(pilot.app.screen, ModelsScreen)
    assert model_names(api, me) == before


def public(api: LiveApi, me: str, name: str) -> set[bool]:
    return {m.public for _, m in api.core.models(api.user(me), "mine") if m.name == name}


async def test_publish_and_make_private_again(pilot: Pilot[None], api: LiveApi, me: str) -> None:
    table = models_screen(pilot).query_one("#mine-table", DataTable)
    table.focus()
    first = rows(pilot, "mine-table")[0]
    was = public(api, me, first[0])
    assert len(was) == 1
    await pilot.press("u")
    want = "no" if was == {True} else "yes"
    await until(
        pilot,
        "the change",
        lambda: {r[5] for r in rows(pilot, "mine-table") if r[0] == first[0]} == {want},
    )
    assert public(api, me, first[0]) == {not next(iter(was))}
    assert rows(pilot, "mine-table")[table.cursor_row][0] == first[0]  # cursor kept

    await pilot.press("u")
    back = "yes" if want == "no" else "no"
    await until(
        pilot,
        "the change back",
        lambda: {r[5] for r in rows(pilot, "mine-table") if r[0] == first[0]} == {back},
    )
    assert public(api, me, first[0]) == was


async def test_publish_is_refused_on_subscriptions(
    pilot: Pilot[None], api: LiveApi, me: str
) -> None:
    before = {m.name: m.public for _, m in api.core.models(api.user(me), "mine")}
    models_screen(pilot).query_one("#model-tabs", TabbedContent).active = "subscribed"
    await pilot.pause()
    await pilot.press("u")
    await settle(pilot)
    assert {m.name: m.public for _, m in api.core.models(api.user(me), "mine")} == before


async def test_subscribe_with_errors_then_success(
    pilot: Pilot[None], api: LiveApi, me: str, example_dirs: dict[tuple[str, str], Path]
) -> None:
    # carol, a Slack-only user, published tulips (its check passed: Normal).
    api.core.registry.create("carol", "tulips", "0.1", example_dirs[("iris", "1.0.0")], "sklearn")
    api.version_status("tulips", "0.1", "normal")
    api.core.publish_model(api.user("carol"), "tulips", True)
    assert rows(pilot, "subscribed-table") == []
    await pilot.press("s")
    await pilot.pause()
    assert isinstance(pilot.app.screen, SubscribeModal)

    await fill(pilot, model="tulips")
    await submit(pilot)
    assert "name it OWNER/NAME" in error(pilot, "model")

    await fill(pilot, model="carol/roses")
    await submit(pilot)
    # The registry's refusal names the field: it shows beside the model input.
    await until(pilot, "the refusal", lambda: "no model carol/roses" in error(pilot, "model"))
    assert isinstance(pilot.app.screen, SubscribeModal)

    await fill(pilot, model="carol/tulips")
    await submit(pilot)
    await until(pilot, "the subscription", lambda: isinstance(pilot.app.screen, ModelsScreen))
    assert models_screen(pilot).query_one("#model-tabs", TabbedContent).active == "subscribed"
    await until(pilot, "the row", lambda: len(rows(pilot, "subscribed-table")) == 1)
    assert rows(pilot, "subscribed-table") == [
        ["tulips", "0.1", "Normal", "sklearn", "carol", "yes", ""]
    ]
    assert [m.name for _, m in api.core.models(api.user(me), "subscribed")] == ["tulips"]
    assert str(models_screen(pilot).query_one("#status-line", Static).content).startswith("c ")
