"""The Deploy screen: a full deploy, each kind of validation error beside its field, versions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Button, Input, Label, Select, Static
from tui_fake import NOW, FakeClient, screen_text, service

from opsbot.core import form
from opsbot.tui.app import OpsbotApp
from opsbot.tui.deploy import DeployScreen, ModelGroup
from opsbot.tui.modals import ConfirmModal
from opsbot.tui.services import ServicesScreen
from opsbot.tui.table import ServicesTable


async def settle(pilot: Pilot[None], rounds: int = 3) -> None:
    for _ in range(rounds):
        await pilot.app.workers.wait_for_complete()
        await pilot.pause(0.05)


@pytest.fixture
def client() -> FakeClient:
    fake = FakeClient()
    fake.add(service("alpha"))
    return fake


@pytest.fixture
async def pilot(client: FakeClient) -> AsyncIterator[Pilot[None]]:
    app = OpsbotApp(client, stats=None, now=lambda: NOW, live=False)
    async with app.run_test(size=(120, 40)) as p:
        await settle(p)
        await p.press("d")
        await settle(p)
        assert isinstance(p.app.screen, DeployScreen)
        yield p
    client.close()


def screen(pilot: Pilot[None]) -> DeployScreen:
    s = pilot.app.screen
    assert isinstance(s, DeployScreen)
    return s


def error_text(pilot: Pilot[None], selector: str, group: int | None = None) -> str:
    root: Any = screen(pilot) if group is None else screen(pilot).groups[group]
    return str(root.query_one(selector, Label).content)


async def type_into(pilot: Pilot[None], widget: Input, text: str) -> None:
    widget.value = text
    await pilot.pause()


async def submit(pilot: Pilot[None]) -> None:
    """Press Deploy; confirm the summary of the entered information when it is shown."""
    screen(pilot).query_one("#submit", Button).press()
    await settle(pilot)
    if isinstance(pilot.app.screen, ConfirmModal):
        await pilot.press("y")
        await settle(pilot)


async def validated(pilot: Pilot[None]) -> None:
    await pilot.pause(0.4)
    await settle(pilot)


async def test_form_holds_the_reference_fields_in_order(pilot: Pilot[None]) -> None:
    s = screen(pilot)
    sections = [str(w.content) for w in s.query(".section").results(Static)]
    assert sections == [
        "Basic information",
        "Resource pool and model configuration",
        "Traffic limit",
    ]
    group = s.groups[0]
    # Only Normal versions of my models are offered; iris 3.0.0 is Building.
    assert group.query_one("#model", Select).value == "digits"
    group.query_one("#model", Select).value = "iris"
    await settle(pilot)
    versions = group.query_one("#version", Select)
    assert [v for _, v in versions._options if isinstance(v, str)] == ["1.0.0", "2.0.0"]
    assert group.query_one("#flavor", Select).value == "cpu.2u8g"
    group.query_one("#source", Select).value = "subscribed"
    await settle(pilot)
    assert group.query_one("#model", Select).value == "bob/shared"


async def test_full_deploy_until_running(pilot: Pilot[None], client: FakeClient) -> None:
    s = screen(pilot)
    await type_into(pilot, s.query_one("#name", Input), "fresh")
    s.query_one("#auto-stop", Select).value = "4h"
    await type_into(pilot, s.query_one("#description", Input), "a test service")
    group = s.groups[0]
    group.query_one("#model", Select).value = "iris"
    await settle(pilot)
    group.query_one("#version", Select).value = "1.0.0"
    await type_into(pilot, group.query_one("#instances", Input), "2")
    await type_into(pilot, s.query_one("#traffic-limit", Input), "50")
    s.query_one("#submit", Button).press()
    await settle(pilot)
    # The entered information, to confirm before anything is deployed.
    summary = pilot.app.screen
    assert isinstance(summary, ConfirmModal)
    assert not any(p == "/v1/services" and m == "POST" for m, p, _ in client.calls)
    for line in (
        "Name: fresh",
        "Auto Stop: 4 hours later",
        "Compute Nodes: 2",
        "Traffic Limit: 50",
    ):
        assert line in summary.question
    await pilot.press("y")
    await settle(pilot)
    body = next(b for m, p, b in client.calls if m == "POST" and p == "/v1/services")
    assert body == {
        "name": "fresh",
        "auto_stop": "4h",
        "description": "a test service",
        "resource_pool": "public",
        "traffic_limit": 50,
        "models": [
            {
                "source": "mine",
                "model": "iris",
                "version": "1.0.0",
                "traffic_ratio": 100,
                "flavor": "cpu.2u8g",
                "instances": 2,
                "env": {},
            }
        ],
    }
    progress = str(s.query_one("#progress-text", Static).content)
    assert "Deploying" in progress and "ok_test_key_123" in progress
    client.services_by_key[("alice", "fresh")]["status"] = "running"
    await pilot.pause(0.6)
    await settle(pilot)
    progress = str(s.query_one("#progress-text", Static).content)
    assert "Running" in progress and "/v1/infers/uid-alice-fresh" in progress
    assert "ok_test_key_123" in progress
    await pilot.press("escape")
    await settle(pilot)
    assert isinstance(pilot.app.screen, ServicesScreen)
    table = pilot.app.screen.query_one(ServicesTable)
    assert table.cells["alice/fresh"]["status"] == "Running"


async def test_each_kind_of_error_beside_its_field(pilot: Pilot[None], client: FakeClient) -> None:
    s = screen(pilot)
    await type_into(pilot, s.query_one("#name", Input), "9bad name")
    s.query_one("#auto-stop", Select).value = "custom"
    await pilot.pause()
    assert s.query_one("#custom-hours", Input).display
    await type_into(pilot, s.query_one("#custom-hours", Input), "30")
    await type_into(pilot, s.query_one("#description", Input), "no <tags>")
    group = s.groups[0]
    group.query_one("#model", Select).value = "iris"
    await settle(pilot)
    await type_into(pilot, group.query_one("#instances", Input), "500")
    await type_into(pilot, group.query_one("#ratio", Input), "90")
    await type_into(pilot, s.query_one("#traffic-limit", Input), "0")
    await validated(pilot)
    assert "not a valid name" in error_text(pilot, "#err-name")
    assert "24 hours" in error_text(pilot, "#err-auto_stop")
    assert "not allowed" in error_text(pilot, "#err-description")
    assert "128" in error_text(pilot, "#err-instances", group=0)
    assert error_text(pilot, "#err-traffic_limit")
    # A Building version (not offered, but a stale choice) and an unavailable flavor: the
    # registry's and the pool's errors also land beside their fields.
    await type_into(pilot, s.query_one("#name", Input), "good")
    s.query_one("#auto-stop", Select).value = "2h"
    await type_into(pilot, s.query_one("#description", Input), "")
    await type_into(pilot, group.query_one("#instances", Input), "1")
    await type_into(pilot, s.query_one("#traffic-limit", Input), "10")
    await validated(pilot)
    # Rules across fields run once every field is valid on its own.
    assert "sum to 90%" in error_text(pilot, "#err-traffic_ratio", group=0)
    await type_into(pilot, group.query_one("#ratio", Input), "100")
    group.query_one("#flavor", Select).value = "gpu.t4"
    await validated(pilot)
    assert "no node has an NVIDIA T4" in error_text(pilot, "#err-flavor", group=0)
    assert error_text(pilot, "#err-name") == ""
    # Submitting shows every error, even on fields never touched.
    client.models[1]["status"] = "building"  # iris 2.0.0 is chosen by default
    group.query_one("#flavor", Select).value = "cpu.2u8g"
    group.query_one("#version", Select).value = "2.0.0"
    await submit(pilot)
    assert "only Normal versions" in error_text(pilot, "#err-version", group=0)


async def test_duplicate_name_from_the_daemon_shows_beside_name(
    pilot: Pilot[None], client: FakeClient
) -> None:
    s = screen(pilot)
    await type_into(pilot, s.query_one("#name", Input), "alpha")
    await submit(pilot)
    assert "already have a service named alpha" in error_text(pilot, "#err-name")


async def test_env_rows_and_secret_warning(pilot: Pilot[None], client: FakeClient) -> None:
    s = screen(pilot)
    await type_into(pilot, s.query_one("#name", Input), "envy")
    group = s.groups[0]
    screen(pilot).groups[0].query_one(".add-env", Button).press()
    await settle(pilot)
    row = group.query(".env-row").first()
    await type_into(pilot, row.query_one(".env-name", Input), "API_TOKEN")
    await type_into(pilot, row.query_one(".env-value", Input), "hunter2")
    await validated(pilot)
    assert "API_TOKEN looks like a secret" in str(s.query_one("#warnings", Static).content)
    screen(pilot).groups[0].query_one(".add-env", Button).press()
    await settle(pilot)
    second = list(group.query(".env-row"))[1]
    await type_into(pilot, second.query_one(".env-name", Input), "1BAD")
    await type_into(pilot, second.query_one(".env-value", Input), "x")
    await validated(pilot)
    assert "not a valid variable name" in error_text(pilot, "#err-env", group=0)
    screen(pilot).query(".remove-env").first(Button).press()  # the first row
    await validated(pilot)
    assert s.groups[0].entry()["env"] == {"1BAD": "x"}


async def test_add_and_remove_versions(pilot: Pilot[None], client: FakeClient) -> None:
    s = screen(pilot)
    await type_into(pilot, s.query_one("#name", Input), "canary")
    s.groups[0].query_one("#model", Select).value = "iris"
    await settle(pilot)
    s.groups[0].query_one("#version", Select).value = "1.0.0"
    screen(pilot).query_one("#add-version", Button).press()
    await settle(pilot)
    assert len(s.groups) == 2
    assert "ratios sum to 100%" in str(s.query_one("#ratios", Static).content)
    second = s.groups[1]
    second.query_one("#model", Select).value = "iris"
    await settle(pilot)
    second.query_one("#version", Select).value = "2.0.0"
    await type_into(pilot, s.groups[0].query_one("#ratio", Input), "80")
    assert "ratios sum to 80%" in str(s.query_one("#ratios", Static).content)
    await validated(pilot)
    assert "sum to 80%" in error_text(pilot, "#err-models")
    await type_into(pilot, second.query_one("#ratio", Input), "20")
    assert "ratios sum to 100%" in str(s.query_one("#ratios", Static).content)
    await validated(pilot)
    assert error_text(pilot, "#err-models") == ""
    screen(pilot).query_one("#add-version", Button).press()
    await settle(pilot)
    assert len(s.groups) == 3
    third = s.groups[2]
    assert isinstance(third, ModelGroup)
    third.query_one(".remove-group", Button).press()
    await settle(pilot)
    assert len(s.groups) == 2
    await submit(pilot)
    body = next(b for m, p, b in client.calls if m == "POST" and p == "/v1/services")
    assert [(e["version"], e["traffic_ratio"]) for e in body["models"]] == [
        ("1.0.0", 80),
        ("2.0.0", 20),
    ]


async def test_cancel_returns_to_services(pilot: Pilot[None]) -> None:
    await pilot.press("escape")
    await settle(pilot)
    assert isinstance(pilot.app.screen, ServicesScreen)


async def test_removing_a_middle_version_renumbers_and_resums(pilot: Pilot[None]) -> None:
    s = screen(pilot)
    await pilot.press("ctrl+n")  # the key does what the "Add model version" button does
    await settle(pilot)
    s.query_one("#add-version", Button).press()
    await settle(pilot)
    assert len(s.groups) == 3
    for group, ratio in zip(s.groups, ("70", "20", "10"), strict=True):
        await type_into(pilot, group.query_one("#ratio", Input), ratio)
    ratios = s.query_one("#ratios", Static)
    assert str(ratios.content) == "ratios sum to 100%"
    assert [str(g.query_one(".group-title", Static).content) for g in s.groups] == [
        "#1",
        "#2",
        "#3",
    ]
    middle = s.groups[1]
    middle.query_one(".remove-group", Button).press()
    await settle(pilot)
    assert len(s.groups) == 2
    assert middle not in s.groups
    assert [g.query_one("#ratio", Input).value for g in s.groups] == ["70", "10"]
    assert [str(g.query_one(".group-title", Static).content) for g in s.groups] == ["#1", "#2"]
    assert str(ratios.content) == "ratios sum to 80%"
    s.groups[1].query_one(".remove-group", Button).press()
    await settle(pilot)
    assert len(s.groups) == 1
    assert str(ratios.content) == "ratios sum to 70%"
    # One version left: it cannot be removed, so its button is hidden.
    assert s.groups[0].query_one(".remove-group", Button).display is False


async def test_resource_pool_is_a_select_of_usable_pools(
    pilot: Pilot[None], client: FakeClient
) -> None:
    s = screen(pilot)
    pool = s.query_one("#pool", Select)
    offered = [v for _, v in pool._options if isinstance(v, str)]
    assert offered == ["public", "team-a"]  # team-b is listed by the daemon but not usable
    assert pool.value == "public"
    labels = [str(label) for label, v in pool._options if v == "team-a"]
    assert labels == ["team-a (dedicated) · 16 vCPUs, 64.0 GiB, 2 nvidia free"]
    shown = screen_text(pilot.app.export_screenshot())
    assert "public · 8 vCPUs, 48.0 GiB free" in shown  # the chosen pool's label, not its id
    asked = len([c for c in client.calls if c[1] == "/v1/flavors"])
    pool.value = "team-a"
    await settle(pilot)
    assert len([c for c in client.calls if c[1] == "/v1/flavors"]) == asked + 1
    assert s.spec_body()["resource_pool"] == "team-a"


async def test_the_form_renders_the_core_definition(pilot: Pilot[None]) -> None:
    """Fields, labels, auto stop choices and flavor choices are the core form's, not a copy."""
    s = screen(pilot)
    shown = [str(label.content) for label in s.query(".label").results(Label)]
    core = [f.label for f in form.FIELDS if f.section != "rule"]
    assert [label for label in shown if label in core] == core
    auto = s.query_one("#auto-stop", Select)
    assert [(str(p), v) for p, v in auto._options if isinstance(v, str)] == [
        (label, value) for value, label in form.AUTO_STOP_CHOICES
    ]
    group = s.groups[0]
    client_flavors = [dict(f) for f in screen(pilot).flavors]
    expected = form.flavor_choices(client_flavors, "custom")
    select = group.query_one("#flavor", Select)
    assert [v for _, v in select._options if isinstance(v, str)] == [c.value for c in expected]
    assert [c.value for c in group.flavor_choices if not c.available] == ["exeml.cpu", "gpu.t4"]
    # An unavailable flavor the user picks is refused with its reason; the default comes back.
    select.focus()
    select.value = "gpu.t4"
    await settle(pilot)
    assert select.value == "cpu.2u8g"


async def test_an_added_version_is_the_next_unused_and_remove_is_out_of_reach(
    pilot: Pilot[None],
) -> None:
    s = screen(pilot)
    remove = s.groups[0].query_one(".remove-group", Button)
    assert remove.disabled and not remove.display  # Tab cannot reach a hidden button
    s.groups[0].query_one("#model", Select).value = "iris"
    await settle(pilot)
    s.groups[0].query_one("#version", Select).value = "1.0.0"
    await settle(pilot)
    s.query_one("#add-version", Button).press()
    await settle(pilot)
    # iris 1.0.0 is taken: the next Normal version of My Models, never a copy of version 1.
    assert s.groups[1].ref == ("iris", "2.0.0")
    assert not s.groups[0].query_one(".remove-group", Button).disabled
