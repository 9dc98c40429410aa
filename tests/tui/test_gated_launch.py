"""Gated launch in the dashboard: modify a running service through the Deploy form, routing
rules, history and rollback, per-version numbers. Driven through Pilot against the daemon's
control API, which plans and applies every modification (masked values mean keep)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from textual.command import CommandInput, CommandList, CommandPalette
from textual.pilot import Pilot
from textual.widgets import Button, DataTable, Input, Label, Select, Static, TabbedContent
from tui_live import LiveApi, settle, stats_document, until

from opsbot.core.services import Service
from opsbot.tui.app import OpsbotApp
from opsbot.tui.deploy import ModifyScreen
from opsbot.tui.details import DetailsScreen
from opsbot.tui.form_widgets import RuleRow
from opsbot.tui.modals import ConfirmModal
from opsbot.tui.services import ServicesScreen
from opsbot.tui.table import ServicesTable

SECRET = "sk_live_9fQ2xLr7TzKp4VbN"


def gated(ratios: tuple[int, int] = (90, 10)) -> list[dict[str, Any]]:
    return [
        {"model": "iris", "version": v, "traffic_ratio": r, "instances": 2}
        for v, r in zip(("1.0.0", "2.0.0"), ratios, strict=True)
    ]


@pytest.fixture
def served(api: LiveApi, me: str) -> LiveApi:
    """alpha and a gated launch (canary) Running, rollout Deploying, vault with a secret."""
    api.running(me, "alpha")
    api.running(me, "canary", models=gated())
    env = {"API_KEY": SECRET, "MODE": "fast"}
    api.running(me, "vault", models=[{"model": "iris", "version": "1.0.0", "env": env}])
    api.deploying(me, "rollout")
    return api


@pytest.fixture
async def pilot(served: LiveApi) -> AsyncIterator[Pilot[None]]:
    app = OpsbotApp(served.client, stats=None, now=served.clock.now, live=False)
    async with app.run_test(size=(120, 50)) as p:
        await until(p, "the table", lambda: len(p.app.screen.query_one(ServicesTable).cells) == 4)
        yield p


def notes(pilot: Pilot[None]) -> list[str]:
    return [n.message for n in pilot.app._notifications]


async def select(pilot: Pilot[None], key: str) -> None:
    table = pilot.app.screen.query_one(ServicesTable)
    table.move_cursor(row=table.get_row_index(key))
    await pilot.pause()


async def open_modify(pilot: Pilot[None], key: str) -> ModifyScreen:
    await select(pilot, key)
    await pilot.press("u")
    await until(pilot, "the Modify form", lambda: isinstance(pilot.app.screen, ModifyScreen))
    screen = pilot.app.screen
    assert isinstance(screen, ModifyScreen), notes(pilot)
    await until(pilot, "the prefilled versions", lambda: all(g.ref for g in screen.groups))
    await settle(pilot)
    return screen


def snapshots(api: LiveApi, me: str, name: str) -> int:
    return len(api.core.history(api.user(me), name))


def label(root: Any, selector: str) -> str:
    return str(root.query_one(selector, Label).content)


async def submit(pilot: Pilot[None], confirm: bool = True) -> None:
    """ctrl+s, then yes to the daemon's plan when it asks."""
    await pilot.press("ctrl+s")
    await settle(pilot)
    if confirm and isinstance(pilot.app.screen, ConfirmModal):
        await pilot.press("y")
        await settle(pilot)


def ratios(service: Service) -> list[int]:
    return [m.traffic_ratio for m in service.spec.models]


async def test_modify_a_gated_launch_prefilled_and_ratio_changed(
    pilot: Pilot[None], served: LiveApi, me: str
) -> None:
    s = await open_modify(pilot, f"{me}/canary")
    assert s.sub_title == f"Modify {me}/canary"
    name = s.query_one("#name", Input)
    assert name.value == "canary" and name.disabled
    pool = s.query_one("#pool", Select)
    assert pool.value == "public" and pool.disabled
    assert s.query_one("#traffic-limit", Input).value == "100"
    assert s.query_one("#auto-stop", Select).value == "1h"
    assert str(s.query_one("#submit", Button).label) == "Apply changes"
    groups = s.groups
    assert [(g.ref, g.query_one("#ratio", Input).value) for g in groups] == [
        (("iris", "1.0.0"), "90"),
        (("iris", "2.0.0"), "10"),
    ]
    assert [g.query_one("#instances", Input).value for g in groups] == ["2", "2"]
    assert [g.query_one("#flavor", Select).value for g in groups] == ["cpu.2u8g", "cpu.2u8g"]
    assert "ratios sum to 100%" in str(s.query_one("#ratios", Static).content)

    groups[0].query_one("#ratio", Input).value = "50"
    groups[1].query_one("#ratio", Input).value = "50"
    await submit(pilot, confirm=False)
    # The daemon's plan, before anything is applied: what changes, and that nothing restarts.
    confirm = pilot.app.screen
    assert isinstance(confirm, ConfirmModal)
    assert ratios(served.service(me, "canary")) == [90, 10]
    assert "iris 1.0.0 traffic_ratio: 90 -> 50" in confirm.question
    assert "no instance restarts" in confirm.question
    await pilot.press("y")
    await until(pilot, "the update's answer", lambda: s.created is not None)
    assert ratios(served.service(me, "canary")) == [50, 50]
    progress = str(s.query_one("#progress-text", Static).content)
    assert "config snapshot #2" in progress
    assert "iris 1.0.0 traffic_ratio: 90 -> 50" in progress
    assert "iris 2.0.0 traffic_ratio: 10 -> 50" in progress

    await pilot.press("escape")
    await settle(pilot)
    assert isinstance(pilot.app.screen, ServicesScreen)
    row = pilot.app.screen.query_one(ServicesTable).cells[f"{me}/canary"]
    assert row["versions"] == "iris 1.0.0 50%/2.0.0 50%"


async def test_nothing_changed_sends_no_snapshot(
    pilot: Pilot[None], served: LiveApi, me: str
) -> None:
    s = await open_modify(pilot, f"{me}/alpha")
    await submit(pilot)
    await until(pilot, "the answer", lambda: any("nothing changed" in n for n in notes(pilot)))
    assert s.created is None and not s.query_one("#submit", Button).disabled
    assert snapshots(served, me, "alpha") == 1


async def test_validation_error_beside_its_field_and_nothing_sent(
    pilot: Pilot[None], served: LiveApi, me: str
) -> None:
    s = await open_modify(pilot, f"{me}/canary")
    s.groups[1].query_one("#ratio", Input).value = "60"
    await submit(pilot)
    await until(pilot, "the error", lambda: "sum to 150%" in label(s, "#err-models"))
    s.groups[1].query_one("#ratio", Input).value = "10"
    s.groups[0].query_one("#instances", Input).value = "lots"
    await submit(pilot)
    await until(pilot, "the error", lambda: label(s, "#err-models") == "")
    assert "must be a whole number (got" in label(s.groups[0], "#err-instances")
    assert ratios(served.service(me, "canary")) == [90, 10]
    assert snapshots(served, me, "canary") == 1


async def test_update_route_errors_land_beside_the_group_they_name(
    pilot: Pilot[None], served: LiveApi, me: str
) -> None:
    """The daemon names versions by their place in the spec the form sent: the form's own
    groups, whatever order they are in."""
    s = await open_modify(pilot, f"{me}/canary")
    s.groups[0].query_one("#version", Select).value = "2.0.0"
    s.groups[1].query_one("#version", Select).value = "1.0.0"
    await settle(pilot)
    s.groups[1].query_one("#instances", Input).value = "500"
    await settle(pilot)
    await submit(pilot)
    await until(pilot, "the error", lambda: "128" in label(s.groups[1], "#err-instances"))
    assert label(s.groups[0], "#err-instances") == ""
    assert [m.version for m in served.service(me, "canary").spec.models] == ["1.0.0", "2.0.0"]


async def test_refused_for_deploying(pilot: Pilot[None], me: str) -> None:
    await select(pilot, f"{me}/rollout")
    await pilot.press("u")
    await settle(pilot)
    assert isinstance(pilot.app.screen, ServicesScreen)
    assert any("rollout is Deploying; wait until it is Running" in n for n in notes(pilot))


async def test_a_service_turning_deploying_meanwhile_is_refused_by_the_daemon(
    pilot: Pilot[None], served: LiveApi, me: str
) -> None:
    s = await open_modify(pilot, f"{me}/alpha")
    served.redeploying(me, "alpha")
    s.groups[0].query_one("#instances", Input).value = "2"
    await submit(pilot)
    general = s.query_one("#general-error", Static)
    await until(pilot, "the refusal", lambda: "alpha is Deploying" in str(general.content))
    assert not s.query_one("#submit", Button).disabled and s.created is None
    assert snapshots(served, me, "alpha") == 1


async def test_masked_secrets_are_never_sent_back(
    pilot: Pilot[None], served: LiveApi, me: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[Any] = []
    request = served.client.request

    def recording(method: str, path: str, body: Any = None, **kw: Any) -> Any:
        sent.append(body)
        return request(method, path, body, **kw)

    monkeypatch.setattr(served.client, "request", recording)
    s = await open_modify(pilot, f"{me}/vault")
    group = s.groups[0]
    env = group.env
    assert env["MODE"] == "fast" and "****" in env["API_KEY"] and SECRET not in env["API_KEY"]
    group.query_one("#instances", Input).value = "2"
    s.query_one("#add-version", Button).press()
    await settle(pilot)
    added = s.groups[1]
    assert added.env == env  # a new version starts with the first one's variables
    assert added.ref == ("iris", "2.0.0")
    group.query_one("#ratio", Input).value = "70"
    added.query_one("#ratio", Input).value = "30"
    await settle(pilot)
    await submit(pilot)
    await until(pilot, "the update", lambda: s.created is not None)
    # Only the masks travel; the daemon keeps (and copies to the new version) the secret.
    assert SECRET not in repr(sent)
    stored = served.service(me, "vault").spec.models
    assert [m.env["API_KEY"] for m in stored] == [SECRET, SECRET]
    assert [(m.traffic_ratio, m.instances) for m in stored] == [(70, 2), (30, 1)]


async def test_env_change_in_one_version_only_restarts_that_version(
    pilot: Pilot[None], served: LiveApi, me: str
) -> None:
    s = await open_modify(pilot, f"{me}/canary")
    row = s.groups[1].add_env("DEBUG", "1")
    await settle(pilot)
    assert row.pair == ("DEBUG", "1")
    await submit(pilot, confirm=False)
    await until(pilot, "the plan", lambda: isinstance(pilot.app.screen, ConfirmModal))
    confirm = pilot.app.screen
    assert isinstance(confirm, ConfirmModal)
    assert "iris 2.0.0: 2 instance(s) replaced" in confirm.question
    assert "iris 1.0.0" not in confirm.question.split("Instances:")[1]
    await pilot.press("y")
    await until(pilot, "the update", lambda: s.created is not None)
    stored = served.service(me, "canary").spec.models
    assert [m.env.get("DEBUG") for m in stored] == [None, "1"]


async def test_routing_rules_added_removed_and_checked(
    pilot: Pilot[None], served: LiveApi, me: str
) -> None:
    s = await open_modify(pilot, f"{me}/canary")
    for _ in range(3):
        s.query_one("#add-rule", Button).press()
        await settle(pilot)
    rows = s.query(RuleRow).results(RuleRow)
    first, second, third = list(rows)
    assert [str(v) for _, v in second.version_select._options if isinstance(v, str)] == [
        "iris\t1.0.0",
        "iris\t2.0.0",
    ]
    first.header_input.value = "X-Drop"
    first.value_input.value = "me"
    first.version_select.value = "iris\t1.0.0"
    second.header_input.value = "X-User-Group"
    second.value_input.value = "beta"
    second.version_select.value = "iris\t2.0.0"
    third.header_input.value = "X-Canary"
    third.test_select.value = "matches"
    third.value_input.value = "(yes|1)"
    third.version_select.value = "iris\t2.0.0"
    await settle(pilot)
    first.query_one(".remove-rule", Button).press()
    await settle(pilot)
    assert [str(r.query_one(".rule-number", Label).content) for r in s.query(RuleRow)] == [
        "1.",
        "2.",
    ]
    await submit(pilot)
    await until(pilot, "the update", lambda: s.created is not None)
    rules = served.service(me, "canary").spec.rules
    assert [(r.header, r.equals, r.matches, r.version) for r in rules] == [
        ("X-User-Group", "beta", None, "2.0.0"),
        ("X-Canary", None, "(yes|1)", "2.0.0"),
    ]
    assert "rules: 0 -> 2" in str(s.query_one("#progress-text", Static).content)

    # Opened again, the rules come back in order; one removed, one broken.
    await pilot.press("escape")
    await settle(pilot)
    s = await open_modify(pilot, f"{me}/canary")
    rows = list(s.query(RuleRow).results(RuleRow))
    assert [(r.header_input.value, r.version_select.value) for r in rows] == [
        ("X-User-Group", "iris\t2.0.0"),
        ("X-Canary", "iris\t2.0.0"),
    ]
    assert rows[1].test_select.value == "matches"
    rows[0].header_input.value = "bad header"
    rows[1].query_one(".remove-rule", Button).press()
    await settle(pilot)
    await submit(pilot)
    await until(pilot, "the error", lambda: "not an HTTP header name" in str(rows[0].error.content))
    assert len(served.service(me, "canary").spec.rules) == 2
    assert snapshots(served, me, "canary") == 2


async def test_at_most_ten_rules(pilot: Pilot[None], me: str) -> None:
    s = await open_modify(pilot, f"{me}/alpha")
    for _ in range(10):
        assert await s.add_rule() is not None
    await settle(pilot)
    assert s.query_one("#add-rule", Button).disabled
    assert await s.add_rule() is None
    assert len(s.rule_rows) == 10


async def open_details(pilot: Pilot[None], key: str) -> DetailsScreen:
    await select(pilot, key)
    await pilot.press("enter")
    await settle(pilot)
    screen = pilot.app.screen
    assert isinstance(screen, DetailsScreen)
    return screen


def modify(api: LiveApi, me: str, name: str, **changes: Any) -> None:
    """A modification made elsewhere (the CLI, Slack): the core's own call."""
    spec = api.service(me, name).spec.model_dump(mode="json") | changes
    api.core.update_service(api.user(me), name, spec)
    api.daemon.changed()


async def test_history_and_rollback_with_confirmation(
    pilot: Pilot[None], served: LiveApi, me: str
) -> None:
    modify(served, me, "canary", models=gated((50, 50)))
    details = await open_details(pilot, f"{me}/canary")
    details.query_one(TabbedContent).active = "history"
    table = details.query_one("#history-table", DataTable)
    await until(pilot, "two snapshots", lambda: table.row_count == 2)
    assert table.get_row_at(0)[0] == "#2"
    assert "iris 1.0.0 traffic_ratio: 90 -> 50" in table.get_row_at(0)[3]
    assert table.get_row_at(1)[3] == "deployed"
    table.move_cursor(row=1)
    await pilot.pause()
    assert "roll back to this snapshot" in str(details.query_one("#history-diff", Static).content)

    await pilot.press("b")
    await until(pilot, "the question", lambda: isinstance(pilot.app.screen, ConfirmModal))
    modal = pilot.app.screen
    assert isinstance(modal, ConfirmModal)
    assert "snapshot #1" in modal.question
    assert "iris 1.0.0 traffic_ratio: 50 -> 90" in modal.question
    assert ratios(served.service(me, "canary")) == [50, 50]
    await pilot.press("y")
    await until(pilot, "the third snapshot", lambda: table.row_count == 3)
    assert ratios(served.service(me, "canary")) == [90, 10]
    assert table.get_row_at(0)[0] == "#3"
    assert any("Rolled back to #1" in (n.title or "") for n in pilot.app._notifications)


async def test_rollback_answered_no_changes_nothing(
    pilot: Pilot[None], served: LiveApi, me: str
) -> None:
    modify(served, me, "alpha", traffic_limit=7)
    details = await open_details(pilot, f"{me}/alpha")
    await pilot.press("b")  # not on the History tab yet: it is shown first
    await settle(pilot)
    assert details.query_one(TabbedContent).active == "history"
    table = details.query_one("#history-table", DataTable)
    await until(pilot, "two snapshots", lambda: table.row_count == 2)
    table.move_cursor(row=1)
    await pilot.press("b")
    await until(pilot, "the question", lambda: isinstance(pilot.app.screen, ConfirmModal))
    await pilot.press("n")
    await settle(pilot)
    assert served.service(me, "alpha").spec.traffic_limit == 7
    assert snapshots(served, me, "alpha") == 2


async def test_u_on_details_opens_modify_and_refreshes_history(
    pilot: Pilot[None], served: LiveApi, me: str
) -> None:
    details = await open_details(pilot, f"{me}/alpha")
    await pilot.press("u")
    await until(pilot, "the Modify form", lambda: isinstance(pilot.app.screen, ModifyScreen))
    s = pilot.app.screen
    assert isinstance(s, ModifyScreen)
    await until(pilot, "the prefilled version", lambda: s.groups[0].ref is not None)
    s.query_one("#description", Input).value = "smaller"
    await submit(pilot)
    await until(pilot, "the update", lambda: s.created is not None)
    assert served.service(me, "alpha").spec.description == "smaller"
    await pilot.press("escape")
    await settle(pilot)
    assert pilot.app.screen is details
    table = details.query_one("#history-table", DataTable)
    await until(pilot, "two snapshots", lambda: table.row_count == 2)
    assert "description" in table.get_row_at(0)[3]


async def test_per_version_numbers_on_the_monitoring_tab(
    pilot: Pilot[None], served: LiveApi, me: str
) -> None:
    canary = served.service(me, "canary")
    document = stats_document(canary, calls=1200, failures=3)
    first, fresh = document["services"][0]["versions"]
    first["latency_ms"] = {"p50": 2.25, "p99": 11.0, "mean": 3.0}
    fresh |= {"calls": None, "failures": None, "latency_ms": {}}
    served.daemon.gateway_document = document
    # What the engine measures of each instance of version 1; version 2 lost one instance.
    for handle in served.handles(me, "canary")[:2]:
        served.daemon.runtime.measured[handle] = {
            "cpu_percent": 6.25,
            "memory_bytes": 32 * 1024 * 1024,
        }
    served.daemon.runtime.kill(served.handles(me, "canary")[3])
    served.settle()
    details = await open_details(pilot, f"{me}/canary")
    table = details.query_one("#versions-table", DataTable)
    assert table.row_count == 0  # fetched only while the tab is shown (~1 s a call)
    details.query_one(TabbedContent).active = "monitoring"
    await until(pilot, "the numbers", lambda: table.row_count == 2)
    assert table.get_row_at(0) == [
        "iris 1.0.0",
        "90%",
        "2/2",
        "1200",
        "3",
        "2.2",
        "11.0",
        "12.5",
        "64.0 MiB",
    ]
    assert table.get_row_at(1)[:5] == ["iris 2.0.0", "10%", "1/2", "-", "-"]


async def test_modify_is_in_the_command_palette(pilot: Pilot[None], me: str) -> None:
    await select(pilot, f"{me}/alpha")
    await pilot.press("ctrl+p")
    await pilot.pause()
    for key in "Modify":
        await pilot.press(key)

    def offered() -> bool:
        # the palette lists what matches "Modify" (in batches, after a short wait), first on top
        palette = pilot.app.screen
        if not isinstance(palette, CommandPalette):
            return False
        hits = palette.query_one(CommandList)
        if hits.highlighted is None or palette.query_one(CommandInput).value != "Modify":
            return False
        return "Modify" in str(hits.get_option_at_index(hits.highlighted).prompt)

    await until(pilot, "the palette to offer Modify", offered)
    await pilot.press("enter")
    await until(pilot, "the Modify form", lambda: isinstance(pilot.app.screen, ModifyScreen))


async def test_the_services_own_version_stays_offered(
    pilot: Pilot[None], served: LiveApi, me: str
) -> None:
    """A version no longer listed as Normal (or a list that does not hold it, as an admin's
    does not hold another user's models) must not be swapped for another one silently."""
    served.version_status("iris", "1.0.0", "failed")
    s = await open_modify(pilot, f"{me}/alpha")
    assert s.groups[0].ref == ("iris", "1.0.0")
    s.query_one("#traffic-limit", Input).value = "50"
    await submit(pilot, confirm=False)
    # The form sent keeps the version it runs; the daemon answers about that version.
    version = s.groups[0].query_one("#err-version", Label)
    await until(pilot, "the daemon's answer", lambda: bool(str(version.content)))
    assert [(m["model"], m["version"]) for m in s.spec_body()["models"]] == [("iris", "1.0.0")]
    # The core refuses a version that is no longer Normal, beside that version's field.
    assert "iris 1.0.0 is Failed" in str(version.content)
