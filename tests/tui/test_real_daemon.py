"""The dashboard against a real daemon: deploy an example model through the Deploy screen, watch
it reach Running in the table from the event stream, open its details, predict, modify it and
see the snapshot in its history, stop it.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# clone_home through test_daemon: in a whole run, "conftest" may name another directory's.
from e2e.test_daemon import Daemon, clone_home, start_daemon, stop_everything
from textual.pilot import Pilot
from textual.widgets import DataTable, Input, Select, Static, TabbedContent
from tui_live import until as until_within

from opsbot.client import ControlClient, wire
from opsbot.tui.app import OpsbotApp
from opsbot.tui.connection import ConnectionBanner
from opsbot.tui.deploy import DeployScreen, ModifyScreen
from opsbot.tui.details import DetailsScreen
from opsbot.tui.modals import ConfirmModal
from opsbot.tui.services import ServicesScreen
from opsbot.tui.table import ServicesTable

pytestmark = pytest.mark.slow


@pytest.fixture
def daemon(template: Path, tmp_path: Path) -> Iterator[Daemon]:
    home = clone_home(template, tmp_path / "home")
    d = start_daemon(home)
    yield d
    stop_everything(home, d.proc)


async def until(pilot: Pilot[None], what: str, ok: Callable[[], bool], timeout: float = 60) -> None:
    """A real daemon answers slower than the fakes: a minute by default."""
    await until_within(pilot, what, ok, timeout, poll=0.1)


def table_of(app: OpsbotApp) -> ServicesTable:
    screen = next(s for s in app.screen_stack if isinstance(s, ServicesScreen))
    return screen.query_one(ServicesTable)


async def test_deploy_watch_predict_and_stop(daemon: Daemon, me: str) -> None:
    app = OpsbotApp(ControlClient.for_home(daemon.home, timeout=30))
    key = f"{me}/tui-iris"
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, "whoami", lambda: app.user == me)
        await pilot.press("d")
        deploy = app.screen
        assert isinstance(deploy, DeployScreen)
        group = deploy.groups[0]
        await until(pilot, "the example models", lambda: bool(deploy.models and deploy.flavors))
        pool = deploy.query_one("#pool", Select)
        await until(pilot, "the pools", lambda: "free" in str(pool._options[0][0]))
        deploy.query_one("#name", Input).value = "tui-iris"
        group.query_one("#model", Select).value = "iris"
        await pilot.pause()
        group.query_one("#version", Select).value = "1.0.0"
        await pilot.pause()
        # The first flavor listed is ExeML's, which takes only ExeML models: iris gets the first
        # one that takes custom models.
        assert group.query_one("#flavor", Select).value == "cpu.2u8g"
        await pilot.press("ctrl+s")
        await until(pilot, "the summary", lambda: isinstance(app.screen, ConfirmModal))
        await pilot.press("y")
        await until(pilot, "the deploy's answer", lambda: deploy.created is not None)
        progress = str(deploy.query_one("#progress-text", Static).content)
        assert "API key (shown once" in progress and "ob_" in progress

        # Back to the table at once: the row turns Running there, from the event stream.
        await pilot.press("escape")
        assert isinstance(app.screen, ServicesScreen)
        table = table_of(app)
        await until(pilot, "the new row", lambda: key in table.cells)
        await until(pilot, "Running", lambda: table.cells[key]["status"] == "Running")
        assert table.cells[key]["instances"] == "1/1"  # the daemon's ready/desired count
        assert table.cells[key]["versions"] == "iris 1.0.0"
        assert table.selected_key == key

        await pilot.press("enter")
        details = app.screen
        assert isinstance(details, DetailsScreen)
        details.query_one(TabbedContent).active = "predict"
        await pilot.pause()
        await pilot.press("ctrl+r")
        result = details.query_one("#predict-result", Static)
        await until(pilot, "a prediction", lambda: "predictions" in str(result.content), 30)
        assert str(result.content).startswith("HTTP 200  version 1.0.0")

        # Modify from the details screen: the update route, a snapshot, the History tab.
        await pilot.press("u")
        await until(pilot, "the Modify form", lambda: isinstance(app.screen, ModifyScreen))
        modify = app.screen
        assert isinstance(modify, ModifyScreen)
        await until(pilot, "the prefilled version", lambda: modify.groups[0].ref is not None)
        assert modify.groups[0].ref == ("iris", "1.0.0")
        modify.query_one("#description", Input).value = "changed from the tui"
        await pilot.pause()
        await pilot.press("ctrl+s")
        await until(pilot, "the daemon's plan", lambda: isinstance(app.screen, ConfirmModal))
        await pilot.press("y")
        await until(pilot, "the update's answer", lambda: modify.created is not None)
        progress = str(modify.query_one("#progress-text", Static).content)
        assert "config snapshot #2" in progress and "description" in progress
        await pilot.press("escape")
        assert app.screen is details
        details.query_one(TabbedContent).active = "history"
        history = details.query_one("#history-table", DataTable)
        await until(pilot, "two snapshots", lambda: history.row_count == 2)
        assert "description" in str(history.get_row_at(0)[3])
        assert daemon.client.service("tui-iris").description == "changed from the tui"

        await pilot.press("escape")
        assert isinstance(app.screen, ServicesScreen)
        await pilot.press("s", "y")  # stop asks first
        await until(pilot, "Stopped", lambda: table.cells[key]["status"] == "Stopped", 30)
        assert table.cells[key]["instances"] == "0/1"
        stored = daemon.client.service("tui-iris")
        assert stored.status == "stopped" and stored.instances == []
        await pilot.press("q")


class CountingClient(ControlClient):
    """The real client, counting the events its stream delivered."""

    streamed = 0

    def follow_events(self, **query: Any) -> Iterator[wire.EventInfo]:
        for event in super().follow_events(**query):
            self.streamed += 1
            yield event


async def test_an_open_dashboard_neither_holds_the_daemon_nor_hides_its_absence(
    daemon: Daemon, me: str
) -> None:
    client = CountingClient.for_home(daemon.home, timeout=30)
    app = OpsbotApp(client)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, "whoami", lambda: app.user == me)
        # A deploy the pool cannot hold is refused with an event: once the dashboard has
        # seen one, its event stream is open on the daemon.
        refused = daemon.cli(
            "deploy",
            "--name",
            "huge",
            "--model",
            "iris",
            "--version",
            "1.0.0",
            "--instances",
            "128",
            check=False,
        )
        assert refused.returncode != 0
        await until(pilot, "the refusal's event", lambda: client.streamed > 0, 10)
        banner = app.screen.query_one(ConnectionBanner)
        assert not banner.display
        started = time.monotonic()
        daemon.proc.send_signal(signal.SIGTERM)  # what `opsbot down` sends
        await until(pilot, "the banner", lambda: banner.display, 2)
        assert "Daemon not running" in str(banner.content)
        while daemon.proc.poll() is None:
            assert time.monotonic() - started < 10, "the open dashboard holds the daemon"
            await pilot.pause(0.1)
        # Back up: the dashboard reconnects by itself.
        daemon.proc = start_daemon(daemon.home).proc
        await until(pilot, "reconnection", lambda: not banner.display, 30)
        await pilot.press("q")
