"""The dashboard as a daily driver: keys that cannot hurt, an honest connection state, navigation
people know (j/k, g/G, `:`, sorting both ways), copying, details that tell the truth, 80x24, and
messages in the user's words. Pilot against the in-memory client."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from textual.command import CommandPalette
from textual.pilot import Pilot
from textual.widgets import Footer, Input, Label, Log, Select, Static
from tui_fake import GATEWAY, NOW, FakeClient, service, stats_document

from opsbot.tui.app import OpsbotApp
from opsbot.tui.connection import ConnectionBanner
from opsbot.tui.deploy import DeployScreen
from opsbot.tui.details import DetailsScreen
from opsbot.tui.modals import ConfirmModal
from opsbot.tui.services import ServicesScreen
from opsbot.tui.table import ServicesTable


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def make_app(client: FakeClient, clock: Callable[[], float] = lambda: NOW) -> OpsbotApp:
    def stats(url: str) -> dict[str, Any]:
        return stats_document("uid-alice-alpha", calls=7, failures=2)

    return OpsbotApp(client, stats=stats, now=clock, live=True)


async def settle(pilot: Pilot[None]) -> None:
    for _ in range(3):
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()


async def until(pilot: Pilot[None], what: str, ok: Callable[[], bool], within: float) -> float:
    """Wait until ``ok()``; fail after ``within`` seconds. Returns the seconds it took."""
    start = time.monotonic()
    while not ok():
        if time.monotonic() - start > within:
            raise AssertionError(f"waited {within:g} s for {what}")
        await pilot.pause(0.02)
    return time.monotonic() - start


def table(pilot: Pilot[None]) -> ServicesTable:
    screen = next(s for s in pilot.app.screen_stack if isinstance(s, ServicesScreen))
    return screen.query_one(ServicesTable)


def notes(pilot: Pilot[None]) -> list[str]:
    return [f"{n.title}: {n.message}" for n in pilot.app._notifications]


@pytest.fixture
def client() -> FakeClient:
    fake = FakeClient()
    fake.add(service("alpha"))
    fake.add(service("beta", status="stopped"))
    fake.add(service("gamma", status="deploying", remaining_s=None, due_time=None))
    return fake


@pytest.fixture
async def pilot(client: FakeClient) -> AsyncIterator[Pilot[None]]:
    async with make_app(client).run_test(size=(120, 35)) as p:
        await settle(p)
        yield p
    client.close()


# -- 1. keys that cannot hurt ------------------------------------------------------------------


async def test_q_in_the_deploy_form_goes_back_not_out(pilot: Pilot[None]) -> None:
    await pilot.press("d")
    await settle(pilot)
    deploy = pilot.app.screen
    assert isinstance(deploy, DeployScreen)
    deploy.query_one("#add-version").focus()  # focus outside any text field
    await pilot.press("q")
    await settle(pilot)
    assert isinstance(pilot.app.screen, ServicesScreen)
    assert pilot.app.is_running


async def test_leaving_a_filled_form_asks_first(pilot: Pilot[None]) -> None:
    await pilot.press("d")
    await settle(pilot)
    deploy = pilot.app.screen
    assert isinstance(deploy, DeployScreen)
    await pilot.press("m", "y", "s", "v", "c")  # typed into the focused Name field
    assert deploy.query_one("#name", Input).value == "mysvc"
    await pilot.press("escape")
    await settle(pilot)
    assert isinstance(pilot.app.screen, ConfirmModal)
    await pilot.press("n")
    await settle(pilot)
    assert pilot.app.screen is deploy and deploy.query_one("#name", Input).value == "mysvc"
    deploy.query_one("#add-version").focus()
    await pilot.press("q")
    await settle(pilot)
    assert isinstance(pilot.app.screen, ConfirmModal)
    await pilot.press("y")
    await settle(pilot)
    assert isinstance(pilot.app.screen, ServicesScreen)


async def test_an_untouched_form_leaves_without_asking(pilot: Pilot[None]) -> None:
    await pilot.press("d")
    await settle(pilot)  # the daemon's lists fill the selects: not the user's input
    await pilot.press("escape")
    await settle(pilot)
    assert isinstance(pilot.app.screen, ServicesScreen)


async def test_q_on_details_goes_back_and_quits_only_from_the_top(pilot: Pilot[None]) -> None:
    await pilot.press("enter")
    await settle(pilot)
    assert isinstance(pilot.app.screen, DetailsScreen)
    await pilot.press("q")
    await settle(pilot)
    assert isinstance(pilot.app.screen, ServicesScreen)
    assert pilot.app.is_running
    await pilot.press("q")
    await until(pilot, "the app to exit", lambda: not pilot.app.is_running, within=5)


async def test_letters_typed_into_the_filter_are_not_keys(
    pilot: Pilot[None], client: FakeClient
) -> None:
    await pilot.press("slash")
    await pilot.press("s", "l", "a", "s", "h", "x", "d", "q")
    await settle(pilot)
    screen = pilot.app.screen
    assert isinstance(screen, ServicesScreen)
    assert screen.query_one("#filter", Input).value == "slashxdq"
    assert not any(c[0] in ("POST", "DELETE") for c in client.calls)


async def test_rotating_the_key_asks_first(pilot: Pilot[None], client: FakeClient) -> None:
    await pilot.press("enter")
    await settle(pilot)
    await pilot.press("R")
    await settle(pilot)
    assert isinstance(pilot.app.screen, ConfirmModal)
    assert not any(c[1].endswith("/key") for c in client.calls)
    await pilot.press("n")


# -- 2. the connection state is always true --------------------------------------------------


async def test_banner_within_2_s_of_the_daemon_going_away_and_fresh_state_on_return(
    pilot: Pilot[None], client: FakeClient
) -> None:
    screen = pilot.app.screen
    banner = screen.query_one(ConnectionBanner)
    assert not banner.display
    client.go_away()
    took = await until(pilot, "the banner", lambda: banner.display, within=2)
    assert took < 2
    assert "Daemon not running" in str(banner.content)
    assert table(pilot).has_class("-stale")
    # Keys that need the daemon are off: nothing is asked, nothing sent.
    before = len(client.calls)
    await pilot.press("s")
    await settle(pilot)
    assert isinstance(pilot.app.screen, ServicesScreen)
    assert len(client.calls) == before
    # The daemon returns, with a change made meanwhile: the dashboard shows it.
    client.services_by_key[("alice", "beta")]["status"] = "running"
    client.come_back()
    await until(pilot, "the banner to go", lambda: not banner.display, within=5)
    await until(
        pilot,
        "a fresh state",
        lambda: table(pilot).cells["alice/beta"]["status"] == "Running",
        within=5,
    )
    assert not table(pilot).has_class("-stale")


async def test_countdowns_stop_while_the_daemon_is_away(client: FakeClient) -> None:
    clock = Clock()
    async with make_app(client, clock).run_test(size=(120, 35)) as pilot:
        await settle(pilot)
        cells = table(pilot).cells["alice/alpha"]
        assert cells["auto_stop"] == "1h 00m"
        client.go_away()
        banner = pilot.app.screen.query_one(ConnectionBanner)
        await until(pilot, "the banner", lambda: banner.display, within=2)
        clock.now += 600
        screen = pilot.app.screen
        assert isinstance(screen, ServicesScreen)
        screen._tick()
        assert table(pilot).cells["alice/alpha"]["auto_stop"] == "1h 00m"
    client.close()


# -- 3. navigation ---------------------------------------------------------------------------


async def test_j_k_g_G_move_the_cursor(pilot: Pilot[None]) -> None:
    t = table(pilot)
    t.move_cursor(row=0)
    await pilot.press("j")
    assert t.cursor_row == 1
    await pilot.press("k")
    assert t.cursor_row == 0
    await pilot.press("G")
    assert t.cursor_row == t.row_count - 1
    await pilot.press("g")
    assert t.cursor_row == 0


async def test_colon_opens_the_palette_and_it_lists_every_action(pilot: Pilot[None]) -> None:
    app = pilot.app
    titles = {c.title for c in app.get_system_commands(app.screen)}
    for wanted in ("Details", "Stop", "Delete", "Logs", "Models", "Copy the URL", "Screenshot"):
        assert wanted in titles, wanted
    await pilot.press("colon")
    await settle(pilot)
    assert isinstance(app.screen, CommandPalette)


async def test_the_palettes_screenshot_lands_in_the_working_directory(
    pilot: Pilot[None], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    app = pilot.app
    shot = next(c for c in app.get_system_commands(app.screen) if c.title == "Screenshot")
    shot.callback()
    await settle(pilot)
    saved = list(tmp_path.glob("*.svg"))
    assert len(saved) == 1 and "alpha" in saved[0].read_text()
    assert any(n.startswith("Screenshot saved") for n in notes(pilot))


async def test_sort_by_real_value_both_ways_with_a_header_marker() -> None:
    client = FakeClient()
    client.add(service("long", remaining_s=6480.0))  # 1h 48m
    client.add(service("short", remaining_s=3480.0))  # 58m 00s
    client.add(service("off", auto_stop="off", remaining_s=None))
    async with make_app(client).run_test(size=(120, 35)) as pilot:
        await settle(pilot)
        t = table(pilot)
        t.sort_by("auto_stop")
        await settle(pilot)

        def order() -> list[str]:
            return [str(r.key.value) for r in t.ordered_rows]

        assert order() == ["alice/short", "alice/long", "alice/off"]
        assert str(t.columns[next(k for k in t.columns if k.value == "auto_stop")].label) == (
            "Auto stop ▲"
        )
        await pilot.click(ServicesTable, offset=(2, 0))  # a header click: the Name column
        t.sort_by("auto_stop")
        t.sort_by("auto_stop")  # again: the other way round
        await settle(pilot)
        assert order() == ["alice/off", "alice/long", "alice/short"]
        assert t.sort_reverse
        screen = pilot.app.screen
        assert isinstance(screen, ServicesScreen)
        screen._describe()
        line = str(screen.query_one("#status-line", Static).content)
        assert "sorted by Auto stop, descending" in line and "auto_stop" not in line
    client.close()


async def test_calls_sort_as_numbers(client: FakeClient) -> None:
    async with make_app(client).run_test(size=(120, 35)) as pilot:
        await settle(pilot)
        t = table(pilot)
        t.sort_by("calls", reverse=True)
        await settle(pilot)
        assert str(t.ordered_rows[0].key.value) == "alice/alpha"  # 7 calls, the others none
    client.close()


# -- 4. copying ------------------------------------------------------------------------------


async def test_c_copies_the_url_and_K_the_new_key(pilot: Pilot[None], client: FakeClient) -> None:
    t = table(pilot)
    t.move_cursor(row=t.get_row_index("alice/alpha"))
    await pilot.press("c")
    assert pilot.app.clipboard == f"{GATEWAY}/v1/infers/uid-alice-alpha"
    await pilot.press("enter")
    await settle(pilot)
    await pilot.press("K")
    assert any("no new key" in n or "there is no" in n for n in notes(pilot))
    await pilot.press("R", "y")
    await settle(pilot)
    details = pilot.app.screen
    assert isinstance(details, DetailsScreen) and details.api_key
    await pilot.press("K")
    assert pilot.app.clipboard == details.api_key


# -- 5. details that tell the truth ---------------------------------------------------------


async def test_details_name_versions_show_rules_time_left_and_the_zone(
    client: FakeClient,
) -> None:
    client.services_by_key[("alice", "alpha")]["rules"] = [
        {"header": "X-Group", "equals": "beta", "version": "1.0.0"}
    ]
    clock = Clock()
    async with make_app(client, clock).run_test(size=(120, 35)) as pilot:
        await settle(pilot)
        t = table(pilot)
        t.move_cursor(row=t.get_row_index("alice/alpha"))
        await pilot.press("enter")
        await settle(pilot)
        details = pilot.app.screen
        assert isinstance(details, DetailsScreen)
        text = str(details.query_one("#overview-text", Static).content)
        assert "1. X-Group equals 'beta' → iris 1.0.0" in text
        assert "stops in 1h 00m, at" in text
        zone = time.strftime("%Z", time.localtime(NOW))
        assert zone and zone in text
        instances = details.query_one("#instances-table")
        rows = [instances.get_row_at(i) for i in range(instances.row_count)]  # type: ignore[attr-defined]
        assert rows and all(r[0] == "iris 1.0.0" for r in rows)
    client.close()


async def test_the_logs_tab_follows_new_lines(pilot: Pilot[None], client: FakeClient) -> None:
    t = table(pilot)
    t.move_cursor(row=t.get_row_index("alice/alpha"))
    await pilot.press("l")
    await settle(pilot)
    log = pilot.app.screen.query_one(Log)
    await until(pilot, "the first lines", lambda: log.line_count == 2, within=3)
    client.logs = [*client.logs, "instance 0: POST /predict 200"]
    await until(
        pilot,
        "the new line",
        lambda: log.lines[-1:] == ["instance 0: POST /predict 200"],
        within=3,
    )
    assert log.line_count == 3  # appended, not the whole tail again


# -- 6. the table's own truths ---------------------------------------------------------------


async def test_auto_stop_while_deploying_says_when_it_will_count(pilot: Pilot[None]) -> None:
    assert table(pilot).cells["alice/gamma"]["auto_stop"] == "1h once up"


async def test_empty_first_screen_says_how_to_deploy_and_the_quota_shows() -> None:
    client = FakeClient()
    async with make_app(client).run_test(size=(120, 35)) as pilot:
        await settle(pilot)
        screen = pilot.app.screen
        empty = screen.query_one("#empty", Static)
        assert empty.display and "Press d to deploy" in str(empty.content)
        assert "0 of 20 services held" in screen.sub_title
        client.emit(client.add(service("first")), "created")
        await until(pilot, "the count", lambda: "1 of 20 services held" in screen.sub_title, 3)
        assert not empty.display
    client.close()


async def test_the_tick_touches_only_the_rows_on_screen() -> None:
    client = FakeClient()
    clock = Clock()
    for i in range(300):
        client.add(service(f"s{i:03d}", remaining_s=3600.0 + i))
    async with make_app(client, clock).run_test(size=(120, 35)) as pilot:
        await settle(pilot)
        t = table(pilot)
        visible = set(t.visible_keys())
        assert 0 < len(visible) < 40
        before = {k: dict(c) for k, c in t.cells.items()}
        clock.now += 120
        screen = pilot.app.screen
        assert isinstance(screen, ServicesScreen)
        screen._tick()
        changed = {k for k, c in t.cells.items() if c["auto_stop"] != before[k]["auto_stop"]}
        assert changed == visible
        # Rows scrolled into view get their countdown then.
        t.move_cursor(row=t.row_count - 1)
        await settle(pilot)
        last = str(t.ordered_rows[-1].key.value)
        assert t.cells[last]["auto_stop"] != before[last]["auto_stop"]
    client.close()


# -- 7. 80x24 --------------------------------------------------------------------------------


async def test_at_80x24_the_footer_keeps_help_and_quit_and_versions_stay(
    client: FakeClient,
) -> None:
    async with make_app(client).run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        t = table(pilot)
        assert "versions" in t.shown and "status" in t.shown and "auto_stop" in t.shown
        assert "owner" not in t.shown
        footer = pilot.app.screen.query_one(Footer)
        shown = [str(k.description) for k in footer.query("FooterKey").results()]
        assert shown[:2] == ["Help", "Quit"]
        text = pilot.app.export_screenshot()
        assert "Help" in text and "Quit" in text
        # Every other screen: ? and q (back) first too.
        for key in ("enter", "m"):
            await pilot.press(key)
            await settle(pilot)
            footer = pilot.app.screen.query_one(Footer)
            shown = [str(k.description) for k in footer.query("FooterKey").results()]
            assert shown[:2] == ["Help", "Back"], (key, shown)
            await pilot.press("q")
            await settle(pilot)
            assert isinstance(pilot.app.screen, ServicesScreen)
    client.close()


async def test_errors_sit_under_their_fields_at_full_width(client: FakeClient) -> None:
    async with make_app(client).run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("d")
        await settle(pilot)
        deploy = pilot.app.screen
        assert isinstance(deploy, DeployScreen)
        await pilot.press("ctrl+s")
        await settle(pilot)
        label = deploy.query_one("#err-name", Label)
        await until(pilot, "the name's error", lambda: label.display, within=3)
        await pilot.pause()
        name = deploy.query_one("#name", Input)
        assert label.region.y > name.region.y  # under the field
        assert label.region.width > 60  # the form's width, not a strip
        message = str(label.content)
        assert "should have" not in message and "String" not in message
        select = deploy.groups[0].query_one("#model", Select)
        assert select is not None
    client.close()
