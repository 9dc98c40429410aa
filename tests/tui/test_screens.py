"""Details and Models screens, the keys that open them, and screenshots at a fixed size."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Button, DataTable, Log, Static, TabbedContent, TextArea
from tui_live import LiveApi, drawn, screen_text, settle, stats_document, until

from opsbot.tui.app import OpsbotApp
from opsbot.tui.deploy import DeployScreen
from opsbot.tui.details import DetailsScreen
from opsbot.tui.models import ModelsScreen
from opsbot.tui.table import ServicesTable

#: Set OPSBOT_TUI_SCREENSHOTS=DIR to write the SVGs (docs/ holds the committed ones).
SHOTS = os.environ.get("OPSBOT_TUI_SCREENSHOTS")


def make_app(api: LiveApi) -> OpsbotApp:
    # live=False: no timers and no stream, so the screen does not change under the camera.
    return OpsbotApp(api.client, now=api.clock.now, live=False)


@pytest.fixture
def served(api: LiveApi, me: str) -> LiveApi:
    """alpha Running (with calls and log lines), a gated launch, one Stopped, one Deploying."""
    alpha = api.running(me, "alpha")
    api.log(me, "alpha", "listening on 127.0.0.1:40001", "ready")
    api.running(me, "canary", models=gated())
    api.stopped(me, "nightly", auto_stop="off")
    api.deploying(me, "rollout")
    api.daemon.gateway_document = stats_document(alpha, calls=1234, failures=3)
    return api


def gated() -> list[dict[str, Any]]:
    return [
        {"model": "iris", "version": v, "traffic_ratio": r, "instances": 2}
        for v, r in (("1.0.0", 90), ("2.0.0", 10))
    ]


async def loaded(pilot: Pilot[None], me: str) -> None:
    """The table holds every service and alpha's calls, and the footer is drawn."""
    table = pilot.app.screen.query_one(ServicesTable)
    await until(pilot, "the table", lambda: len(table.cells) == 4)
    await until(pilot, "the calls", lambda: table.cells[f"{me}/alpha"]["calls"] == "1234")
    table.move_cursor(row=table.get_row_index(f"{me}/alpha"))
    await drawn(pilot, "Quit")


@pytest.fixture
async def pilot(served: LiveApi, me: str) -> AsyncIterator[Pilot[None]]:
    async with make_app(served).run_test(size=(120, 40)) as p:
        await loaded(p, me)
        yield p


async def open_details(pilot: Pilot[None], key: str = "enter") -> DetailsScreen:
    await pilot.press(key)
    await settle(pilot)
    screen = pilot.app.screen
    assert isinstance(screen, DetailsScreen)
    return screen


async def test_enter_opens_details_with_every_tab(
    pilot: Pilot[None], served: LiveApi, me: str
) -> None:
    screen = await open_details(pilot)
    overview = screen.query_one("#overview-text", Static)
    await until(pilot, "the overview", lambda: "iris 1.0.0" in str(overview.content))
    assert "alpha" in str(overview.content)
    instances = screen.query_one("#instances-table", DataTable)
    await until(pilot, "the instance", lambda: instances.row_count == 1)
    (handle,) = served.handles(me, "alpha")
    port = served.daemon.runtime.instances[handle].port
    assert instances.get_row_at(0)[3:5] == [socket.gethostname(), f"127.0.0.1:{port}"]
    events = screen.query_one("#events-table", DataTable)
    await until(pilot, "the events", lambda: events.row_count >= 2)  # created, running
    log = screen.query_one("#log", Log)
    await until(pilot, "the log", lambda: "ready" in "\n".join(log.lines))
    monitoring = screen.query_one("#monitoring-text", Static)
    await until(pilot, "the numbers", lambda: "calls 1234" in str(monitoring.content))
    assert "▁" in str(monitoring.content)
    usage = str(screen.query_one("#usage-text", Static).content)
    uid = served.service(me, "alpha").uid
    assert "curl -X POST" in usage and f"/v1/infers/{uid}" in usage
    await pilot.press("escape")
    await settle(pilot)
    assert pilot.app.screen.query_one(ServicesTable)


async def test_l_opens_logs_and_p_opens_predict(
    pilot: Pilot[None], served: LiveApi, me: str
) -> None:
    screen = await open_details(pilot, "l")
    assert screen.query_one(TabbedContent).active == "logs"
    await pilot.press("escape")
    screen = await open_details(pilot, "p")
    assert screen.query_one(TabbedContent).active == "predict"
    screen.query_one("#send", Button).press()
    shown = screen.query_one("#predict-result", Static)
    await until(pilot, "the answer", lambda: "predictions" in str(shown.content))
    result = str(shown.content)
    assert result.startswith("HTTP 200  version 1.0.0") and " ms" in result
    # Through the daemon's route to the gateway, the body as typed.
    uid = served.service(me, "alpha").uid
    assert served.predictions[uid] == [b'{"instances": [[5.1, 3.5, 1.4, 0.2]]}']
    screen.query_one("#predict-input", TextArea).text = "{not json"
    screen.query_one("#send", Button).press()
    await settle(pilot)
    assert "not JSON" in str(screen.query_one("#predict-result", Static).content)


async def test_rotate_key_asks_then_shows_key_once(
    pilot: Pilot[None], served: LiveApi, me: str
) -> None:
    screen = await open_details(pilot)
    keys = "SELECT key_hash FROM api_keys JOIN services s ON s.id = service_id WHERE s.name = ?"
    before = served.core.store.db.execute(keys, ("alpha",)).fetchall()
    screen.rotate_key()
    await pilot.pause()
    await pilot.press("y")
    usage = screen.query_one("#usage-text", Static)
    await until(pilot, "the new key", lambda: "ob_" in str(usage.content))
    after = served.core.store.db.execute(keys, ("alpha",)).fetchall()
    assert after != before


async def test_m_opens_models(pilot: Pilot[None]) -> None:
    await pilot.press("m")
    await settle(pilot)
    screen = pilot.app.screen
    assert isinstance(screen, ModelsScreen)
    mine = screen.query_one("#mine-table", DataTable)
    await until(pilot, "my models", lambda: mine.row_count == 4)  # iris x2, iris-onnx, flowers
    assert screen.query_one("#subscribed-table", DataTable).row_count == 0
    await pilot.press("escape")


async def test_command_palette_opens(pilot: Pilot[None]) -> None:
    await pilot.press("ctrl+p")
    await pilot.pause()
    assert pilot.app.screen.__class__.__name__ == "CommandPalette"
    await pilot.press("escape")


async def shot(pilot: Pilot[None], name: str, *texts: str) -> str:
    """Once the screen shows every one of ``texts``: its screenshot (written to SHOTS when
    set), as text."""
    await drawn(pilot, *texts)
    svg = pilot.app.export_screenshot(title=f"opsbot tui: {name}")
    if SHOTS:
        Path(SHOTS, f"tui-{name}.svg").write_text(svg)
    return screen_text(svg)


async def test_snapshot_services(pilot: Pilot[None]) -> None:
    svg = await shot(pilot, "services", "alpha", "canary", "Running", "1234", "1h 00m", "Deploy")
    assert re.search(r"Deploying \d+%", svg)
    assert "iris 1.0.0 90%/2.0.0 10%" in svg


async def test_snapshot_deploy(pilot: Pilot[None]) -> None:
    await pilot.press("d")
    await settle(pilot)
    assert isinstance(pilot.app.screen, DeployScreen)
    await shot(
        pilot, "deploy", "Basic information", "Name", "Auto Stop", "1 hour later", "Model Source"
    )


async def test_snapshot_details(pilot: Pilot[None]) -> None:
    await open_details(pilot)
    await shot(pilot, "details", "Overview", "Instances", "Monitoring", "Predict", "Usage", "alpha")


async def test_snapshot_models(pilot: Pilot[None]) -> None:
    await pilot.press("m")
    mine = pilot.app.screen.query_one("#mine-table", DataTable)
    await until(pilot, "my models", lambda: mine.row_count == 4)
    texts = ("My Models", "My Subscriptions", "iris-onnx", "Normal", "Create", "Subscribe")
    await shot(pilot, "models", *texts)


@pytest.mark.parametrize("size", [(100, 30), (200, 50)])
async def test_nothing_cut_off_at_ssh_sizes(
    served: LiveApi, me: str, size: tuple[int, int]
) -> None:
    async with make_app(served).run_test(size=size) as pilot:
        await loaded(pilot, me)
        await drawn(pilot, "canary", "Auto stop", "Quit")
        await pilot.press("d")
        await settle(pilot)
        await drawn(pilot, "Basic information")
