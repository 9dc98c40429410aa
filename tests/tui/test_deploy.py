"""The Deploy screen: a full deploy, each kind of validation error beside its field, versions."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Button, Input, Label, Select, Static
from tui_live import LiveApi, configure, drawn, live_api, settle, until

from opsbot.core import form
from opsbot.core.spec import parse_spec
from opsbot.core.status import Status
from opsbot.tui.app import OpsbotApp
from opsbot.tui.deploy import DeployScreen
from opsbot.tui.form_widgets import ModelGroup
from opsbot.tui.modals import ConfirmModal
from opsbot.tui.services import ServicesScreen
from opsbot.tui.table import ServicesTable

#: The home's pools: team-a dedicated to the test's user, team-b to someone else.
POOLS = """
[[pools]]
name = "team-a"
nodes = ["pooled"]
cpus = 16
memory_gib = 64
members = ["{me}"]

[[pools]]
name = "team-b"
nodes = ["pooled"]
cpus = 1
memory_gib = 4
members = ["carol"]
"""


@pytest.fixture
def served(examples_home: Path, me: str) -> Iterator[LiveApi]:
    configure(examples_home, POOLS.format(me=me))
    with live_api(examples_home) as api:
        api.running(me, "alpha")
        yield api


@pytest.fixture
async def pilot(served: LiveApi) -> AsyncIterator[Pilot[None]]:
    app = OpsbotApp(served.client, stats=None, now=served.clock.now, live=False)
    async with app.run_test(size=(120, 40)) as p:
        await until(p, "whoami", lambda: bool(p.app.user))
        await p.press("d")
        s = p.app.screen
        assert isinstance(s, DeployScreen)
        await until(p, "the models and flavors", lambda: bool(s.models and s.flavors))
        await settle(p)
        yield p


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
    """Wait until the form shows the daemon's check of its last change."""
    await pilot.pause()  # the change's own messages first: they start a new check
    deploy = screen(pilot)
    await until(pilot, "the form's check of its last change", lambda: deploy.checked)
    await settle(pilot)


async def test_form_holds_the_reference_fields_in_order(
    pilot: Pilot[None], served: LiveApi
) -> None:
    s = screen(pilot)
    sections = [str(w.content) for w in s.query(".section").results(Static)]
    assert sections == [
        "Basic information",
        "Resource pool and model configuration",
        "Traffic limit",
    ]
    group = s.groups[0]
    models = group.query_one("#model", Select)
    assert [v for _, v in models._options if isinstance(v, str)] == ["flowers", "iris", "iris-onnx"]
    # Only Normal versions are offered: iris 2.0.0 is Building now.
    served.version_status("iris", "2.0.0", "building")
    s.load_choices()
    await settle(pilot)
    models.value = "iris"
    await settle(pilot)
    versions = group.query_one("#version", Select)
    assert [v for _, v in versions._options if isinstance(v, str)] == ["1.0.0"]
    assert group.query_one("#flavor", Select).value == "cpu.2u8g"
    # Nothing subscribed yet: My Subscriptions offers no model.
    group.query_one("#source", Select).value = "subscribed"
    await settle(pilot)
    assert [v for _, v in models._options if isinstance(v, str)] == []


async def test_full_deploy_until_running(pilot: Pilot[None], served: LiveApi, me: str) -> None:
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
    # The entered information, to confirm before anything is deployed (core/form.py's
    # summary, line for line).
    await until(pilot, "the summary", lambda: isinstance(pilot.app.screen, ConfirmModal))
    summary = pilot.app.screen
    assert isinstance(summary, ConfirmModal)
    expected = form.deploy_summary(parse_spec(s.spec_body()))
    assert summary.question.splitlines()[1:] == [f"{k}: {v}" for k, v in expected]
    for line in (
        "Name: fresh",
        "Auto Stop: 4 hours later",
        "Compute Nodes: 2",
        "Traffic Limit: 50 calls per second",
    ):
        assert line in summary.question
    assert [x.name for x in served.core.services(served.user(me))] == ["alpha"]
    await pilot.press("y")
    await until(pilot, "the deploy's answer", lambda: s.created is not None)
    stored = served.service(me, "fresh")
    assert stored.status == Status.DEPLOYING
    spec = stored.spec
    assert (str(spec.auto_stop), spec.description, spec.resource_pool, spec.traffic_limit) == (
        "4h",
        "a test service",
        "public",
        50,
    )
    (entry,) = stored.spec.models
    assert (entry.model, entry.version, entry.flavor, entry.instances) == (
        "iris",
        "1.0.0",
        "cpu.2u8g",
        2,
    )
    progress = s.query_one("#progress-text", Static)
    assert "Deploying" in str(progress.content)
    key = s.api_key
    assert key in str(progress.content)
    served.settle()  # the controller's pass: the instances answer, the service is Running
    await until(pilot, "Running", lambda: "fresh: Running" in str(progress.content), 5)
    shown = str(progress.content)
    assert f"/v1/infers/{stored.uid}" in shown and key in shown
    await pilot.press("escape")
    await settle(pilot)
    assert isinstance(pilot.app.screen, ServicesScreen)
    table = pilot.app.screen.query_one(ServicesTable)
    assert table.cells[f"{me}/fresh"]["status"] == "Running"


async def test_each_kind_of_error_beside_its_field(
    pilot: Pilot[None], served: LiveApi, me: str
) -> None:
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
    await type_into(pilot, s.query_one("#name", Input), "good")
    s.query_one("#auto-stop", Select).value = "2h"
    await type_into(pilot, s.query_one("#description", Input), "")
    await type_into(pilot, group.query_one("#instances", Input), "1")
    await type_into(pilot, s.query_one("#traffic-limit", Input), "10")
    await validated(pilot)
    # Rules across fields run once every field is valid on its own.
    assert "sum to 90%" in error_text(pilot, "#err-traffic_ratio", group=0)
    await type_into(pilot, group.query_one("#ratio", Input), "100")
    await validated(pilot)
    assert error_text(pilot, "#err-name") == ""
    # A version that turned Building after it was offered: submitting shows the registry's
    # error beside Version, even on a field never touched.
    group.query_one("#version", Select).value = "2.0.0"
    served.version_status("iris", "2.0.0", "building")
    await submit(pilot)
    assert "Normal" in error_text(pilot, "#err-version", group=0)
    assert [x.name for x in served.core.services(served.user(me))] == ["alpha"]


async def test_duplicate_name_from_the_daemon_shows_beside_name(pilot: Pilot[None]) -> None:
    s = screen(pilot)
    await type_into(pilot, s.query_one("#name", Input), "alpha")
    s.query_one("#submit", Button).press()
    await settle(pilot)
    if isinstance(pilot.app.screen, ConfirmModal):
        await pilot.press("y")
    await until(pilot, "the error", lambda: "alpha" in error_text(pilot, "#err-name"))
    assert "already" in error_text(pilot, "#err-name")


async def test_env_rows_and_secret_warning(pilot: Pilot[None]) -> None:
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


async def test_add_and_remove_versions(pilot: Pilot[None], served: LiveApi, me: str) -> None:
    s = screen(pilot)
    await type_into(pilot, s.query_one("#name", Input), "canary")
    s.groups[0].query_one("#model", Select).value = "iris"
    await settle(pilot)
    s.groups[0].query_one("#version", Select).value = "1.0.0"
    await settle(pilot)
    screen(pilot).query_one("#add-version", Button).press()
    await settle(pilot)
    assert len(s.groups) == 2
    assert "ratios sum to 100%" in str(s.query_one("#ratios", Static).content)
    second = s.groups[1]
    assert second.ref == ("iris", "2.0.0")  # the next unused version
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
    # iris has no version left: the next of the other models, in the daemon's order.
    assert third.ref == ("flowers", "1.0.0")
    third.query_one(".remove-group", Button).press()
    await settle(pilot)
    assert len(s.groups) == 2
    await submit(pilot)
    await until(pilot, "the deploy", lambda: s.created is not None)
    stored = served.service(me, "canary")
    assert [(m.version, m.traffic_ratio) for m in stored.spec.models] == [
        ("1.0.0", 80),
        ("2.0.0", 20),
    ]


async def test_a_late_change_from_a_version_being_removed_is_ignored(pilot: Pilot[None]) -> None:
    s = screen(pilot)
    screen(pilot).query_one("#add-version", Button).press()
    await settle(pilot)
    second = s.groups[1]
    flavor = second.query_one("#flavor", Select)
    # Its removal has begun when a change its own filling posted arrives (seen in a parallel
    # run: the form looked the group up among the versions left and crashed).
    second.removing = True
    flavor.post_message(Select.Changed(flavor, flavor.value))
    await settle(pilot)
    assert len(s.groups) == 1 and s.query_one("#submit", Button).disabled is False


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
    pilot: Pilot[None], served: LiveApi
) -> None:
    s = screen(pilot)
    pool = s.query_one("#pool", Select)
    await until(pilot, "the pools", lambda: "free" in str(pool._options[0][0]))
    offered = [v for _, v in pool._options if isinstance(v, str)]
    assert offered == ["public", "team-a"]  # team-b is listed by the daemon but not usable
    assert pool.value == "public"
    labels = [str(label) for label, v in pool._options if v == "team-a"]
    assert labels == ["team-a (dedicated) · 16 vCPUs, 64.0 GiB free"]
    public = next(str(label) for label, v in pool._options if v == "public")
    await drawn(pilot, public)  # the chosen pool's label, not its id
    pool.value = "team-a"
    await settle(pilot)
    assert s.spec_body()["resource_pool"] == "team-a"


async def test_the_form_renders_the_core_definition(pilot: Pilot[None], served: LiveApi) -> None:
    """Fields, labels, auto stop choices and flavor choices are the core form's, not a copy."""
    s = screen(pilot)
    shown = [str(label.content) for label in s.query(".label").results(Label)]
    core = [f.label for f in form.FIELDS if f.section != "rule"]
    assert [label for label in shown if label in core] == core
    auto = s.query_one("#auto-stop", Select)
    assert [(str(p), v) for p, v in auto._options if isinstance(v, str)] == [
        (label, value) for value, label in form.AUTO_STOP_CHOICES
    ]
    sources = s.groups[0].query_one("#source", Select)
    assert [(str(p), v) for p, v in sources._options if isinstance(v, str)] == [
        (label, value) for value, label in form.SOURCES
    ]
    assert str(s.query_one("#add-version", Button).label) == form.ADD_VERSION_LABEL
    assert s.query_one("#custom-hours", Input).placeholder == form.CUSTOM_HOURS_LABEL
    # Each field's help is the core's, on its label.
    helps = {str(lb.content): lb.tooltip for lb in s.query(".label").results(Label) if lb.tooltip}
    rows = [f for f in form.FIELDS if f.section != "rule" and f.key != "env"]
    assert helps == {f.label: f.help for f in rows}
    rule = await s.add_rule()
    assert rule is not None
    assert [(str(p), v) for p, v in rule.test_select._options if isinstance(v, str)] == [
        (label, value) for value, label in form.RULE_TESTS
    ]
    group = s.groups[0]
    group.query_one("#model", Select).value = "iris"
    await settle(pilot)
    flavors = served.client.request("GET", "/v1/flavors", query={"pool": "public"})
    expected = form.flavor_choices(flavors, "custom")
    select = group.query_one("#flavor", Select)
    assert [v for _, v in select._options if isinstance(v, str)] == [c.value for c in expected]
    assert group.flavor_choices == expected


async def test_unavailable_and_exeml_flavors_are_shown_with_the_reason_and_not_chosen(
    pilot: Pilot[None],
) -> None:
    s = screen(pilot)
    group = s.groups[0]
    group.query_one("#model", Select).value = "iris"
    await settle(pilot)
    select = group.query_one("#flavor", Select)
    refused = {c.value: c.reason for c in group.flavor_choices if not c.available}
    # A custom model: the ExeML specifications take only ExeML models; no node has a GPU.
    assert "takes only ExeML models" in refused["exeml.cpu"]
    assert refused["gpu.t4"]
    labels = {v: str(label) for label, v in select._options if isinstance(v, str)}
    assert f"unavailable: {refused['gpu.t4']}" in labels["gpu.t4"]
    assert "takes only ExeML" in labels["exeml.cpu"]
    # Picked anyway, each is refused with its reason and the default comes back.
    for flavor in ("gpu.t4", "exeml.cpu"):
        select.focus()
        select.value = flavor
        await settle(pilot)
        assert select.value == "cpu.2u8g"
        assert any(refused[flavor] in n.message for n in pilot.app._notifications)
    # The ExeML model gets the ExeML specification, and the custom ones are refused for it.
    group.query_one("#model", Select).value = "flowers"
    await settle(pilot)
    assert select.value == "exeml.cpu"
    assert "cpu.2u8g" in {c.value for c in group.flavor_choices if not c.available}


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
    # Tab's order (the screen's focus chain) never holds a Remove version button while there
    # is one version: Enter cannot remove version 1.
    chain = s.focus_chain
    assert s.query_one("#name", Input) in chain and s.groups[0].query_one("#ratio") in chain
    assert not [w for w in chain if w.has_class("remove-group")]
    s.query_one("#add-version", Button).press()
    await settle(pilot)
    # iris 1.0.0 is taken: the next Normal version of My Models, never a copy of version 1.
    assert s.groups[1].ref == ("iris", "2.0.0")
    # Two versions: each can be removed now, and Tab reaches each button.
    assert all(g.query_one(".remove-group", Button).display for g in s.groups)
    assert len([w for w in s.focus_chain if w.has_class("remove-group")]) == 2
