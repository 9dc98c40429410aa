"""Details and Models screens, the keys that open them, and screenshots at a fixed size."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Button, DataTable, Log, Static, TabbedContent, TextArea
from tui_fake import NOW, FakeClient, sample_client, screen_text, stats_document

from opsbot.tui.app import OpsbotApp
from opsbot.tui.deploy import DeployScreen
from opsbot.tui.details import DetailsScreen
from opsbot.tui.models import ModelsScreen
from opsbot.tui.table import ServicesTable

#: Set OPSBOT_TUI_SCREENSHOTS=DIR to write the SVGs (docs/ holds the committed ones).
SHOTS = os.environ.get("OPSBOT_TUI_SCREENSHOTS")


def make_app(client: FakeClient) -> OpsbotApp:
    def stats(url: str) -> dict[str, Any]:
        return stats_document("uid-alice-alpha", calls=1234, failures=3)

    # live=False: no timers and no stream, so the screen does not change under the camera.
    return OpsbotApp(client, stats=stats, now=lambda: NOW, live=False)


@pytest.fixture
def client() -> FakeClient:
    return sample_client()


async def settle(pilot: Pilot[None]) -> None:
    for _ in range(3):
        await pilot.app.workers.wait_for_complete()
        await pilot.pause(0.05)


@pytest.fixture
async def pilot(client: FakeClient) -> AsyncIterator[Pilot[None]]:
    async with make_app(client).run_test(size=(120, 40)) as p:
        await settle(p)
        yield p
    client.close()


async def open_details(pilot: Pilot[None], key: str = "enter") -> DetailsScreen:
    await pilot.press(key)
    await settle(pilot)
    screen = pilot.app.screen
    assert isinstance(screen, DetailsScreen)
    return screen


async def test_enter_opens_details_with_every_tab(pilot: Pilot[None]) -> None:
    screen = await open_details(pilot)
    overview = str(screen.query_one("#overview-text", Static).content)
    assert "alpha" in overview and "iris 1.0.0" in overview
    instances = screen.query_one("#instances-table", DataTable)
    assert instances.row_count == 1
    assert instances.get_row_at(0)[3:5] == ["gpu-box", "127.0.0.1:40001"]  # where it runs
    assert screen.query_one("#events-table", DataTable).row_count == 1
    assert "instance 0: ready" in "\n".join(screen.query_one("#log", Log).lines)
    monitoring = str(screen.query_one("#monitoring-text", Static).content)
    assert "calls 1234" in monitoring and "▁" in monitoring
    usage = str(screen.query_one("#usage-text", Static).content)
    assert "curl -X POST" in usage and "/v1/infers/uid-alice-alpha" in usage
    await pilot.press("escape")
    await settle(pilot)
    assert pilot.app.screen.query_one(ServicesTable)


async def test_l_opens_logs_and_p_opens_predict(pilot: Pilot[None], client: FakeClient) -> None:
    screen = await open_details(pilot, "l")
    assert screen.query_one(TabbedContent).active == "logs"
    await pilot.press("escape")
    screen = await open_details(pilot, "p")
    assert screen.query_one(TabbedContent).active == "predict"
    screen.query_one("#send", Button).press()
    await settle(pilot)
    result = str(screen.query_one("#predict-result", Static).content)
    assert "HTTP 200" in result and "3.2 ms" in result and "predictions" in result
    assert ("POST", "/v1/services/alpha/predict", b'{"instances": [[5.1, 3.5, 1.4, 0.2]]}') in (
        client.calls
    )
    screen.query_one("#predict-input", TextArea).text = "{not json"
    screen.query_one("#send", Button).press()
    await settle(pilot)
    assert "not JSON" in str(screen.query_one("#predict-result", Static).content)


async def test_rotate_key_asks_then_shows_key_once(pilot: Pilot[None], client: FakeClient) -> None:
    screen = await open_details(pilot)
    screen.rotate_key()
    await pilot.pause()
    await pilot.press("y")
    await settle(pilot)
    assert ("POST", "/v1/services/alpha/key", None) in client.calls
    assert "ok_rotated_key_456" in str(screen.query_one("#usage-text", Static).content)


async def test_m_opens_models(pilot: Pilot[None]) -> None:
    await pilot.press("m")
    await settle(pilot)
    screen = pilot.app.screen
    assert isinstance(screen, ModelsScreen)
    assert screen.query_one("#mine-table", DataTable).row_count == 4
    assert screen.query_one("#subscribed-table", DataTable).row_count == 1
    await pilot.press("escape")


async def test_command_palette_opens(pilot: Pilot[None]) -> None:
    await pilot.press("ctrl+p")
    await pilot.pause()
    assert pilot.app.screen.__class__.__name__ == "CommandPalette"
    await pilot.press("escape")


def save(app: OpsbotApp, name: str) -> str:
    svg = app.export_screenshot(title=f"opsbot tui: {name}")
    if SHOTS:
        Path(SHOTS, f"tui-{name}.svg").write_text(svg)
    return svg


def text_of(svg: str) -> str:
    """The visible text of an exported screenshot, line by line."""
    return screen_text(svg)


async def test_snapshot_services(pilot: Pilot[None]) -> None:
    svg = text_of(save(pilot.app, "services"))  # type: ignore[arg-type]
    for text in ("alpha", "canary", "Running", "Deploying 40%", "1234", "1h 00m", "Deploy"):
        assert text in svg, text
    assert "iris 1.0.0 90%/2.0.0 10%" in svg


async def test_snapshot_deploy(pilot: Pilot[None]) -> None:
    await pilot.press("d")
    await settle(pilot)
    screen = pilot.app.screen
    assert isinstance(screen, DeployScreen)
    svg = text_of(save(pilot.app, "deploy"))  # type: ignore[arg-type]
    for text in ("Basic information", "Name", "Auto Stop", "1 hour later", "Model Source"):
        assert text in svg, text


async def test_snapshot_details(pilot: Pilot[None]) -> None:
    await open_details(pilot)
    svg = text_of(save(pilot.app, "details"))  # type: ignore[arg-type]
    for text in ("Overview", "Instances", "Monitoring", "Predict", "Usage", "alpha"):
        assert text in svg, text


async def test_snapshot_models(pilot: Pilot[None]) -> None:
    await pilot.press("m")
    await settle(pilot)
    svg = text_of(save(pilot.app, "models"))  # type: ignore[arg-type]
    for text in ("My Models", "My Subscriptions", "digits", "Building", "Create", "Subscribe"):
        assert text in svg, text


@pytest.mark.parametrize("size", [(100, 30), (200, 50)])
async def test_nothing_cut_off_at_ssh_sizes(client: FakeClient, size: tuple[int, int]) -> None:
    async with make_app(client).run_test(size=size) as pilot:
        await settle(pilot)
        svg = text_of(pilot.app.export_screenshot())
        assert "canary" in svg and "Auto stop" in svg and "Quit" in svg
        await pilot.press("d")
        await settle(pilot)
        svg = text_of(pilot.app.export_screenshot())
        assert "Basic information" in svg
    client.close()
