"""The dashboard as a daily driver: keys that cannot hurt, an honest connection state, navigation
people know (j/k, g/G, `:`, sorting both ways), copying, details that tell the truth, 80x24, and
messages in the user's words. Pilot against the daemon's control API."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from textual.command import CommandPalette
from textual.pilot import Pilot
from textual.widgets import DataTable, Footer, Input, Label, Log, Select, Static
from tui_live import (
    LiveApi,
    configure,
    live_api,
    screen_text,
    settle,
    stats_document,
    until,
)

from opsbot.tui.app import OpsbotApp
from opsbot.tui.connection import ConnectionBanner
from opsbot.tui.deploy import DeployScreen
from opsbot.tui.details import DetailsScreen
from opsbot.tui.modals import ConfirmModal
from opsbot.tui.services import ServicesScreen
from opsbot.tui.table import ServicesTable


def make_app(api: LiveApi) -> OpsbotApp:
    return OpsbotApp(api.client, now=api.clock.now, live=True)


def table(pilot: Pilot[None]) -> ServicesTable:
    screen = next(s for s in pilot.app.screen_stack if isinstance(s, ServicesScreen))
    return screen.query_one(ServicesTable)


def notes(pilot: Pilot[None]) -> list[str]:
    return [f"{n.title}: {n.message}" for n in pilot.app._notifications]


def state(api: LiveApi, me: str) -> list[tuple[str, str, int]]:
    """Every service's name, status and number of keys: what a stray key would change."""
    return [
        (
            s.name,
            s.status.value,
            len(
                api.core.store.db.execute(
                    "SELECT id FROM api_keys WHERE service_id = ?", (s.id,)
                ).fetchall()
            ),
        )
        for s in api.core.services(api.user(me))
    ]


@pytest.fixture
def served(api: LiveApi, me: str) -> LiveApi:
    """alpha Running (7 calls), beta Stopped, gamma Deploying."""
    alpha = api.running(me, "alpha", rules=[RULE])
    api.log(me, "alpha", "listening", "ready")
    api.stopped(me, "beta")
    api.deploying(me, "gamma")
    api.daemon.gateway_document = stats_document(alpha, calls=7, failures=2)
    return api


RULE = {"header": "X-Group", "equals": "beta", "version": "1.0.0"}


@pytest.fixture
async def pilot(served: LiveApi, me: str) -> AsyncIterator[Pilot[None]]:
    async with make_app(served).run_test(size=(120, 35)) as p:
        await until(p, "the table", lambda: len(table(p).cells) == 3, timeout=10)
        await until(p, "the calls", lambda: table(p).cells[f"{me}/alpha"]["calls"] == "7", 10)
        table(p).move_cursor(row=table(p).get_row_index(f"{me}/alpha"))
        await p.pause()
        yield p


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
    await until(pilot, "the app to exit", lambda: not pilot.app.is_running, timeout=5)


async def test_letters_typed_into_the_filter_are_not_keys(
    pilot: Pilot[None], served: LiveApi, me: str
) -> None:
    before = state(served, me)
    await pilot.press("slash")
    await pilot.press("s", "l", "a", "s", "h", "x", "d", "q")
    await settle(pilot)
    screen = pilot.app.screen
    assert isinstance(screen, ServicesScreen)
    assert screen.query_one("#filter", Input).value == "slashxdq"
    assert not isinstance(pilot.app.screen, ConfirmModal)
    assert state(served, me) == before


async def test_rotating_the_key_asks_first(pilot: Pilot[None], served: LiveApi, me: str) -> None:
    keys = "SELECT key_hash FROM api_keys"
    before = served.core.store.db.execute(keys).fetchall()
    await pilot.press("enter")
    await settle(pilot)
    await pilot.press("R")
    await settle(pilot)
    assert isinstance(pilot.app.screen, ConfirmModal)
    await pilot.press("n")
    await settle(pilot)
    assert served.core.store.db.execute(keys).fetchall() == before


# -- 2. the connection state is always true --------------------------------------------------


async def test_banner_within_2_s_of_the_daemon_going_away_and_fresh_state_on_return(
    pilot: Pilot[None], served: LiveApi, me: str
) -> None:
    screen = pilot.app.screen
    banner = screen.query_one(ConnectionBanner)
    assert not banner.display
    served.go_away()
    took = await until(pilot, "the banner", lambda: banner.display, timeout=2)
    assert took < 2
    assert "Daemon not running" in str(banner.content)
    assert table(pilot).has_class("-stale")
    # Keys that need the daemon are off: nothing is asked.
    await pilot.press("s")
    await settle(pilot)
    assert isinstance(pilot.app.screen, ServicesScreen)
    assert served.service(me, "alpha").status.value == "running"
    # The daemon returns, with a change made meanwhile: the dashboard shows it.
    served.core.start_service(served.user(me), "beta")
    served.settle()
    served.serve()
    await until(pilot, "the banner to go", lambda: not banner.display, timeout=5)
    await until(
        pilot,
        "a fresh state",
        lambda: table(pilot).cells[f"{me}/beta"]["status"] == "Running",
        timeout=5,
    )
    assert not table(pilot).has_class("-stale")


async def test_countdowns_stop_while_the_daemon_is_away(
    pilot: Pilot[None], served: LiveApi, me: str
) -> None:
    assert table(pilot).cells[f"{me}/alpha"]["auto_stop"] == "1h 00m"
    served.go_away()
    banner = pilot.app.screen.query_one(ConnectionBanner)
    await until(pilot, "the banner", lambda: banner.display, timeout=2)
    served.clock.advance(600)
    screen = pilot.app.screen
    assert isinstance(screen, ServicesScreen)
    screen._tick()
    assert table(pilot).cells[f"{me}/alpha"]["auto_stop"] == "1h 00m"


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
    await until(pilot, "the file", lambda: bool(list(tmp_path.glob("*.svg"))), timeout=3)
    saved = list(tmp_path.glob("*.svg"))
    assert len(saved) == 1 and "alpha" in saved[0].read_text()
    assert any(n.startswith("Screenshot saved") for n in notes(pilot))


async def test_sort_by_real_value_both_ways_with_a_header_marker(api: LiveApi, me: str) -> None:
    api.running(me, "long", auto_stop="2h")
    api.running(me, "short", auto_stop="1h")
    api.running(me, "off", auto_stop="off")
    api.clock.advance(120)  # 1h 58m and 58m 00s left: alphabetical order is the wrong one
    async with make_app(api).run_test(size=(120, 35)) as pilot:
        t = table(pilot)
        await until(pilot, "the table", lambda: len(t.cells) == 3, timeout=10)
        assert t.cells[f"{me}/long"]["auto_stop"] == "1h 58m"
        assert t.cells[f"{me}/short"]["auto_stop"] == "58m"
        t.sort_by("auto_stop")
        await settle(pilot)

        def order() -> list[str]:
            return [str(r.key.value) for r in t.ordered_rows]

        assert order() == [f"{me}/short", f"{me}/long", f"{me}/off"]
        assert str(t.columns[next(k for k in t.columns if k.value == "auto_stop")].label) == (
            "Auto stop ▲"
        )
        await pilot.click(ServicesTable, offset=(2, 0))  # a header click: the Name column
        t.sort_by("auto_stop")
        t.sort_by("auto_stop")  # again: the other way round
        await settle(pilot)
        assert order() == [f"{me}/off", f"{me}/long", f"{me}/short"]
        assert t.sort_reverse
        screen = pilot.app.screen
        assert isinstance(screen, ServicesScreen)
        screen._describe()
        line = str(screen.query_one("#status-line", Static).content)
        assert "sorted by Auto stop, descending" in line and "auto_stop" not in line


async def test_calls_sort_as_numbers(pilot: Pilot[None], me: str) -> None:
    t = table(pilot)
    t.sort_by("calls", reverse=True)
    await settle(pilot)
    assert str(t.ordered_rows[0].key.value) == f"{me}/alpha"  # 7 calls, the others none


# -- 4. copying ------------------------------------------------------------------------------


async def test_c_copies_the_url_and_K_the_new_key(
    pilot: Pilot[None], served: LiveApi, me: str
) -> None:
    await pilot.press("c")
    uid = served.service(me, "alpha").uid
    assert pilot.app.clipboard == f"{served.daemon.gateway_url}/v1/infers/{uid}"
    await pilot.press("enter")
    await settle(pilot)
    await pilot.press("K")
    assert any("no new key" in n or "there is no" in n for n in notes(pilot))
    await pilot.press("R", "y")
    details = pilot.app.screen
    assert isinstance(details, DetailsScreen)
    await until(pilot, "the new key", lambda: bool(details.api_key), timeout=5)
    await pilot.press("K")
    assert pilot.app.clipboard == details.api_key


# -- 5. details that tell the truth ---------------------------------------------------------


async def test_details_name_versions_show_rules_time_left_and_the_zone(
    pilot: Pilot[None], served: LiveApi
) -> None:
    await pilot.press("enter")
    details = pilot.app.screen
    assert isinstance(details, DetailsScreen)
    overview = details.query_one("#overview-text", Static)
    await until(pilot, "the overview", lambda: "X-Group" in str(overview.content), timeout=5)
    text = str(overview.content)
    assert "1. X-Group equals 'beta' → iris 1.0.0" in text
    assert "stops in 1h 00m, at" in text
    zone = time.strftime("%Z", time.localtime(served.clock.now()))
    assert zone and zone in text
    instances = details.query_one("#instances-table", DataTable)
    await until(pilot, "the instances", lambda: instances.row_count > 0, timeout=5)
    rows = [instances.get_row_at(i) for i in range(instances.row_count)]
    assert all(r[0] == "iris 1.0.0" for r in rows)
    # The address as the daemon words it (host:port here; unix:PATH for a process instance).
    assert all(re.fullmatch(r"127\.0\.0\.1:\d+", r[4]) for r in rows), rows


async def test_the_logs_tab_follows_new_lines(pilot: Pilot[None], served: LiveApi, me: str) -> None:
    await pilot.press("l")
    await settle(pilot)
    log = pilot.app.screen.query_one(Log)
    await until(pilot, "the first lines", lambda: log.line_count == 2, timeout=3)
    served.log(me, "alpha", "POST /predict 200")
    await until(
        pilot,
        "the new line",
        lambda: log.lines[-1:] == ["[0/0] POST /predict 200"],
        timeout=3,
    )
    assert log.line_count == 3  # appended, not the whole tail again


# -- 6. the table's own truths ---------------------------------------------------------------


async def test_auto_stop_while_deploying_says_when_it_will_count(
    pilot: Pilot[None], me: str
) -> None:
    assert table(pilot).cells[f"{me}/gamma"]["auto_stop"] == "1h once up"


async def test_empty_first_screen_says_how_to_deploy_and_the_quota_shows(
    api: LiveApi, me: str
) -> None:
    async with make_app(api).run_test(size=(120, 35)) as pilot:
        screen = pilot.app.screen
        await until(
            pilot, "the quota", lambda: "0 of 20 services held" in (screen.sub_title or ""), 5
        )
        empty = screen.query_one("#empty", Static)
        assert empty.display and "Press d to deploy" in str(empty.content)
        api.deploy(me, "first")
        await until(
            pilot, "the count", lambda: "1 of 20 services held" in (screen.sub_title or ""), 3
        )
        assert not empty.display


async def test_the_tick_touches_only_the_rows_on_screen(examples_home: Path, me: str) -> None:
    configure(examples_home, "quota = 300\n")
    with live_api(examples_home) as api:
        for i in range(300):
            api.deploy(me, f"s{i:03d}", auto_stop=f"{1 + i % 24}h")
        api.settle()
        async with make_app(api).run_test(size=(120, 35)) as pilot:
            t = table(pilot)
            await until(pilot, "the table", lambda: len(t.cells) == 300, timeout=20)
            visible = set(t.visible_keys())
            assert 0 < len(visible) < 40
            before = {k: dict(c) for k, c in t.cells.items()}
            api.clock.advance(120)
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


# -- 7. 80x24 --------------------------------------------------------------------------------


async def test_at_80x24_the_footer_keeps_help_and_quit_and_versions_stay(
    served: LiveApi,
) -> None:
    async with make_app(served).run_test(size=(80, 24)) as pilot:
        await until(pilot, "the table", lambda: len(table(pilot).cells) == 3, timeout=10)
        t = table(pilot)
        assert "versions" in t.shown and "status" in t.shown and "auto_stop" in t.shown
        assert "owner" not in t.shown
        footer = pilot.app.screen.query_one(Footer)

        def keys() -> list[str]:
            return [str(k.description) for k in footer.query("FooterKey").results()]

        # the footer composes its keys once the screen's bindings are known, a moment later
        await until(pilot, "the footer's keys", lambda: bool(keys()), timeout=5)
        assert keys()[:2] == ["Help", "Quit"]
        # On the screen itself, once drawn: the footer's last line keeps both.
        await until(
            pilot,
            "the footer drawn",
            lambda: "Help" in screen_text(pilot.app.export_screenshot()).splitlines()[-1],
            timeout=5,
        )
        assert "Quit" in screen_text(pilot.app.export_screenshot()).splitlines()[-1]
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


async def test_errors_sit_under_their_fields_at_full_width(served: LiveApi) -> None:
    async with make_app(served).run_test(size=(80, 24)) as pilot:
        await until(pilot, "whoami", lambda: bool(pilot.app.user), timeout=10)
        await pilot.press("d")
        await settle(pilot)
        deploy = pilot.app.screen
        assert isinstance(deploy, DeployScreen)
        await pilot.press("ctrl+s")
        await settle(pilot)
        label = deploy.query_one("#err-name", Label)
        await until(pilot, "the name's error", lambda: label.display, timeout=3)
        await pilot.pause()
        name = deploy.query_one("#name", Input)
        assert label.region.y > name.region.y  # under the field
        assert label.region.width > 60  # the form's width, not a strip
        message = str(label.content)
        assert "should have" not in message and "String" not in message
        select = deploy.groups[0].query_one("#model", Select)
        assert select is not None
