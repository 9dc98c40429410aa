"""Gated launch in the dashboard: modify a running service through the Deploy form, routing
rules, history and rollback, per-version numbers. Driven through Pilot against the fake client,
whose update routes plan and apply with the core's own functions (masked values mean keep)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Button, DataTable, Input, Label, Select, Static, TabbedContent
from tui_fake import NOW, FakeClient, sample_client, service

from opsbot.core.errors import FieldError, SpecInvalid
from opsbot.tui.app import OpsbotApp
from opsbot.tui.deploy import ModifyScreen
from opsbot.tui.details import DetailsScreen
from opsbot.tui.form_widgets import RuleRow
from opsbot.tui.modals import ConfirmModal
from opsbot.tui.services import ServicesScreen
from opsbot.tui.table import ServicesTable

SECRET = "sk_live_9fQ2xLr7TzKp4VbN"


@pytest.fixture
def client() -> FakeClient:
    fake = sample_client()
    entry = {
        "source": "mine",
        "model": "iris",
        "version": "1.0.0",
        "traffic_ratio": 100,
        "flavor": "cpu.2u8g",
        "instances": 1,
        "env": {"API_KEY": SECRET, "MODE": "fast"},
    }
    fake.add(service("vault", models=[entry]))
    fake.add(service("theirs", owner="bob"))
    return fake


async def settle(pilot: Pilot[None], rounds: int = 3) -> None:
    for _ in range(rounds):
        await pilot.app.workers.wait_for_complete()
        await pilot.pause(0.05)


@pytest.fixture
async def pilot(client: FakeClient) -> AsyncIterator[Pilot[None]]:
    app = OpsbotApp(client, stats=None, now=lambda: NOW, live=False)
    async with app.run_test(size=(120, 50)) as p:
        await settle(p)
        yield p
    client.close()


def notes(pilot: Pilot[None]) -> list[str]:
    return [n.message for n in pilot.app._notifications]


async def select(pilot: Pilot[None], key: str) -> None:
    table = pilot.app.screen.query_one(ServicesTable)
    table.move_cursor(row=table.get_row_index(key))
    await pilot.pause()


async def open_modify(pilot: Pilot[None], key: str) -> ModifyScreen:
    await select(pilot, key)
    await pilot.press("u")
    await settle(pilot)
    screen = pilot.app.screen
    assert isinstance(screen, ModifyScreen), notes(pilot)
    return screen


def update_bodies(client: FakeClient, name: str) -> list[Any]:
    """The specs applied (each confirmed after the daemon's plan)."""
    return [b["spec"] for m, p, b in client.calls if p == f"/v1/services/{name}/update"]


def plan_bodies(client: FakeClient, name: str) -> list[Any]:
    return [b["spec"] for m, p, b in client.calls if p == f"/v1/services/{name}/update/plan"]


def label(root: Any, selector: str) -> str:
    return str(root.query_one(selector, Label).content)


async def submit(pilot: Pilot[None], confirm: bool = True) -> None:
    """ctrl+s, then yes to the daemon's plan when it asks."""
    await pilot.press("ctrl+s")
    await settle(pilot)
    if confirm and isinstance(pilot.app.screen, ConfirmModal):
        await pilot.press("y")
        await settle(pilot)


async def test_modify_a_gated_launch_prefilled_and_ratio_changed(
    pilot: Pilot[None], client: FakeClient
) -> None:
    s = await open_modify(pilot, "alice/canary")
    assert s.sub_title == "Modify alice/canary"
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
    assert isinstance(confirm, ConfirmModal) and update_bodies(client, "canary") == []
    assert "iris 1.0.0 traffic_ratio: 90 -> 50" in confirm.question
    assert "no instance restarts" in confirm.question
    await pilot.press("y")
    await settle(pilot)
    (body,) = update_bodies(client, "canary")
    assert [(m["version"], m["traffic_ratio"]) for m in body["models"]] == [
        ("1.0.0", 50),
        ("2.0.0", 50),
    ]
    progress = str(s.query_one("#progress-text", Static).content)
    assert "config snapshot #2" in progress
    assert "iris 1.0.0 traffic_ratio: 90 -> 50" in progress
    assert "iris 2.0.0 traffic_ratio: 10 -> 50" in progress
    stored = client.services_by_key[("alice", "canary")]["models"]
    assert [m["traffic_ratio"] for m in stored] == [50, 50]

    await pilot.press("escape")
    await settle(pilot)
    assert isinstance(pilot.app.screen, ServicesScreen)
    row = pilot.app.screen.query_one(ServicesTable).cells["alice/canary"]
    assert row["versions"] == "iris 1.0.0 50%/2.0.0 50%"


async def test_nothing_changed_sends_no_snapshot(pilot: Pilot[None], client: FakeClient) -> None:
    s = await open_modify(pilot, "alice/alpha")
    await submit(pilot)
    assert len(plan_bodies(client, "alpha")) == 1 and update_bodies(client, "alpha") == []
    assert any("nothing changed" in n for n in notes(pilot))
    assert s.created is None and not s.query_one("#submit", Button).disabled
    assert len(client.snapshots[("alice", "alpha")]) == 1


async def test_validation_error_beside_its_field_and_nothing_sent(
    pilot: Pilot[None], client: FakeClient
) -> None:
    s = await open_modify(pilot, "alice/canary")
    s.groups[1].query_one("#ratio", Input).value = "60"
    await submit(pilot)
    assert "sum to 150%" in label(s, "#err-models")
    s.groups[1].query_one("#ratio", Input).value = "10"
    s.groups[0].query_one("#instances", Input).value = "lots"
    await submit(pilot)
    assert label(s, "#err-models") == ""
    assert "must be a whole number (got" in label(s.groups[0], "#err-instances")
    assert update_bodies(client, "canary") == []
    assert [m["traffic_ratio"] for m in client.services_by_key[("alice", "canary")]["models"]] == [
        90,
        10,
    ]


async def test_update_route_errors_land_beside_the_group_they_name(
    pilot: Pilot[None], client: FakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon names versions by their place in the spec the form sent: the form's own
    groups, whatever order they are in."""
    seen: list[list[str]] = []

    def refuse(svc: dict[str, Any], wanted: dict[str, Any]) -> dict[str, Any]:
        seen.append([m["version"] for m in wanted["models"]])
        raise SpecInvalid([FieldError("models[1].instances", "the pool has room for 1 more")])

    monkeypatch.setattr(client, "_apply", refuse)
    s = await open_modify(pilot, "alice/canary")
    s.groups[0].query_one("#version", Select).value = "2.0.0"
    s.groups[1].query_one("#version", Select).value = "1.0.0"
    await settle(pilot)
    await submit(pilot)
    (body,) = update_bodies(client, "canary")
    assert [m["version"] for m in body["models"]] == ["2.0.0", "1.0.0"]
    assert seen == [["2.0.0", "1.0.0"]]
    assert "room for 1 more" in label(s.groups[1], "#err-instances")
    assert label(s.groups[0], "#err-instances") == ""


async def test_refused_for_deploying_and_for_other_users(pilot: Pilot[None]) -> None:
    await select(pilot, "alice/rollout")
    await pilot.press("u")
    await settle(pilot)
    assert isinstance(pilot.app.screen, ServicesScreen)
    assert any("rollout is Deploying; wait until it is Running" in n for n in notes(pilot))
    await pilot.press("a")
    await settle(pilot)
    await select(pilot, "bob/theirs")
    await pilot.press("u")
    await settle(pilot)
    assert isinstance(pilot.app.screen, ServicesScreen)
    assert any("theirs belongs to bob" in n for n in notes(pilot))


async def test_a_service_turning_deploying_meanwhile_is_refused_by_the_daemon(
    pilot: Pilot[None], client: FakeClient
) -> None:
    s = await open_modify(pilot, "alice/alpha")
    client.services_by_key[("alice", "alpha")]["status"] = "deploying"
    s.groups[0].query_one("#instances", Input).value = "2"
    await submit(pilot)
    general = str(s.query_one("#general-error", Static).content)
    assert "alpha is Deploying" in general
    assert not s.query_one("#submit", Button).disabled and s.created is None


async def test_masked_secrets_are_never_sent_back(pilot: Pilot[None], client: FakeClient) -> None:
    s = await open_modify(pilot, "alice/vault")
    group = s.groups[0]
    env = group.env
    assert env["MODE"] == "fast" and "****" in env["API_KEY"] and SECRET not in env["API_KEY"]
    group.query_one("#instances", Input).value = "2"
    s.query_one("#add-version", Button).press()
    await settle(pilot)
    added = s.groups[1]
    assert added.env == env  # a new version starts with the first one's variables
    added.query_one("#model", Select).value = "iris"
    await settle(pilot)
    added.query_one("#version", Select).value = "2.0.0"
    group.query_one("#ratio", Input).value = "70"
    added.query_one("#ratio", Input).value = "30"
    await settle(pilot)
    await submit(pilot)
    (body,) = update_bodies(client, "vault")
    # Only the masks travel; the daemon keeps (and copies to the new version) the secret.
    assert SECRET not in repr(body) and SECRET not in repr(plan_bodies(client, "vault"))
    assert [m["env"]["API_KEY"] for m in body["models"]] == [env["API_KEY"], env["API_KEY"]]
    stored = client.services_by_key[("alice", "vault")]["models"]
    assert [m["env"]["API_KEY"] for m in stored] == [SECRET, SECRET]
    assert [(m["traffic_ratio"], m["instances"]) for m in stored] == [(70, 2), (30, 1)]


async def test_env_change_in_one_version_only_restarts_that_version(
    pilot: Pilot[None], client: FakeClient
) -> None:
    s = await open_modify(pilot, "alice/canary")
    row = s.groups[1].add_env("DEBUG", "1")
    await settle(pilot)
    assert row.pair == ("DEBUG", "1")
    await submit(pilot, confirm=False)
    confirm = pilot.app.screen
    assert isinstance(confirm, ConfirmModal)
    assert "iris 2.0.0: 2 instance(s) replaced" in confirm.question
    assert "iris 1.0.0" not in confirm.question.split("Instances:")[1]
    await pilot.press("y")
    await settle(pilot)
    stored = client.services_by_key[("alice", "canary")]["models"]
    assert [m["env"].get("DEBUG") for m in stored] == [None, "1"]


async def test_routing_rules_added_removed_and_checked(
    pilot: Pilot[None], client: FakeClient
) -> None:
    s = await open_modify(pilot, "alice/canary")
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
    (body,) = update_bodies(client, "canary")
    assert body["rules"] == [
        {"header": "X-User-Group", "equals": "beta", "version": "2.0.0"},
        {"header": "X-Canary", "matches": "(yes|1)", "version": "2.0.0"},
    ]
    assert "rules: 0 -> 2" in str(s.query_one("#progress-text", Static).content)
    assert len(client.services_by_key[("alice", "canary")]["rules"]) == 2

    # Opened again, the rules come back in order; one removed, one broken.
    await pilot.press("escape")
    await settle(pilot)
    s = await open_modify(pilot, "alice/canary")
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
    assert "not an HTTP header name" in str(rows[0].error.content)
    assert len(update_bodies(client, "canary")) == 1


async def test_at_most_ten_rules(pilot: Pilot[None]) -> None:
    s = await open_modify(pilot, "alice/alpha")
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


async def test_history_and_rollback_with_confirmation(
    pilot: Pilot[None], client: FakeClient
) -> None:
    client.request(
        "POST",
        "/v1/services/canary/update",
        {"changes": {"traffic": {"1.0.0": 50, "2.0.0": 50}}},
    )
    details = await open_details(pilot, "alice/canary")
    details.query_one(TabbedContent).active = "history"
    await settle(pilot)
    table = details.query_one("#history-table", DataTable)
    assert table.row_count == 2
    assert table.get_row_at(0)[0] == "#2"
    assert "iris 1.0.0 traffic_ratio: 90 -> 50" in table.get_row_at(0)[3]
    assert table.get_row_at(1)[3] == "deployed"
    table.move_cursor(row=1)
    await pilot.pause()
    assert "roll back to this snapshot" in str(details.query_one("#history-diff", Static).content)

    await pilot.press("b")
    await settle(pilot)
    modal = pilot.app.screen
    assert isinstance(modal, ConfirmModal)
    assert "snapshot #1" in modal.question
    assert "iris 1.0.0 traffic_ratio: 50 -> 90" in modal.question
    assert [m["traffic_ratio"] for m in client.services_by_key[("alice", "canary")]["models"]] == [
        50,
        50,
    ]
    await pilot.press("y")
    await settle(pilot)
    rollbacks = [b for m, p, b in client.calls if p == "/v1/services/canary/rollback"]
    assert rollbacks == [{"to": 1, "dry_run": True}, {"to": 1}]
    assert [m["traffic_ratio"] for m in client.services_by_key[("alice", "canary")]["models"]] == [
        90,
        10,
    ]
    assert table.row_count == 3 and table.get_row_at(0)[0] == "#3"
    assert any("Rolled back to #1" in (n.title or "") for n in pilot.app._notifications)


async def test_rollback_answered_no_changes_nothing(pilot: Pilot[None], client: FakeClient) -> None:
    client.request("POST", "/v1/services/alpha/update", {"changes": {"traffic_limit": 7}})
    details = await open_details(pilot, "alice/alpha")
    await pilot.press("b")  # not on the History tab yet: it is shown first
    await settle(pilot)
    assert details.query_one(TabbedContent).active == "history"
    details.query_one("#history-table", DataTable).move_cursor(row=1)
    await pilot.press("b")
    await settle(pilot)
    assert isinstance(pilot.app.screen, ConfirmModal)
    await pilot.press("n")
    await settle(pilot)
    assert [b for m, p, b in client.calls if p == "/v1/services/alpha/rollback"] == [
        {"to": 1, "dry_run": True}
    ]
    assert client.services_by_key[("alice", "alpha")]["traffic_limit"] == 7


async def test_u_on_details_opens_modify_and_refreshes_history(
    pilot: Pilot[None], client: FakeClient
) -> None:
    details = await open_details(pilot, "alice/alpha")
    await pilot.press("u")
    await settle(pilot)
    s = pilot.app.screen
    assert isinstance(s, ModifyScreen)
    s.query_one("#description", Input).value = "smaller"
    await submit(pilot)
    assert [b["description"] for b in update_bodies(client, "alpha")] == ["smaller"]
    await pilot.press("escape")
    await settle(pilot)
    assert pilot.app.screen is details
    table = details.query_one("#history-table", DataTable)
    assert table.row_count == 2 and "description" in table.get_row_at(0)[3]


async def test_per_version_numbers_on_the_monitoring_tab(
    pilot: Pilot[None], client: FakeClient
) -> None:
    row = {
        "idx": 0,
        "model": "iris",
        "version": "1.0.0",
        "traffic_ratio": 90,
        "desired": 2,
        "ready": 2,
        "calls": 1200,
        "failures": 3,
        "p50_ms": 2.25,
        "p99_ms": 11.0,
        "cpu_percent": 12.5,
        "memory_bytes": 64 * 1024 * 1024,
    }
    fresh = {**row, "idx": 1, "version": "2.0.0", "traffic_ratio": 10, "ready": 1}
    fresh |= {"calls": None, "failures": None, "p50_ms": None, "p99_ms": None}
    client.version_numbers[("alice", "canary")] = [row, fresh]
    details = await open_details(pilot, "alice/canary")
    table = details.query_one("#versions-table", DataTable)
    assert table.row_count == 0  # fetched only while the tab is shown (~1 s a call)
    details.query_one(TabbedContent).active = "monitoring"
    await settle(pilot)
    assert table.row_count == 2
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


async def test_modify_is_in_the_command_palette(pilot: Pilot[None]) -> None:
    await select(pilot, "alice/alpha")
    await pilot.press("ctrl+p")
    await pilot.pause()
    for key in "Modify":
        await pilot.press(key)
    await pilot.pause(0.3)
    await pilot.press("enter")
    await settle(pilot)
    assert isinstance(pilot.app.screen, ModifyScreen)


async def test_the_services_own_version_stays_offered(
    pilot: Pilot[None], client: FakeClient
) -> None:
    """A version no longer listed as Normal (or a list that does not hold it, as an admin's
    does not hold another user's models) must not be swapped for another one silently."""
    client.models = [m for m in client.models if m["version"] != "1.0.0"]
    s = await open_modify(pilot, "alice/alpha")
    assert s.groups[0].ref == ("iris", "1.0.0")
    s.query_one("#traffic-limit", Input).value = "50"
    await submit(pilot)
    (body,) = plan_bodies(client, "alpha")  # the form sent keeps the version it runs
    assert body["traffic_limit"] == 50 and body["models"][0]["version"] == "1.0.0"
