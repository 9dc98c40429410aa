"""The Block Kit builders: valid for slack_sdk, within Slack's limits, errors under inputs."""

from __future__ import annotations

from typing import Any

import pytest
from slack_sdk.models.blocks import Block
from slack_sdk.models.views import View

from opsbot.core.errors import FieldError
from opsbot.core.flavors import FlavorStatus, load_flavors
from opsbot.slack import views

CATALOG = {"mine": {"iris": ["1.0.0", "2.0.0"], "solo": ["1.0.0"]}, "subscribed": {}}


def flavors() -> list[FlavorStatus]:
    return [
        FlavorStatus(f, f.accelerator is None, "" if f.accelerator is None else "no GPU here")
        for f in load_flavors()
    ]


def valid_view(view: dict[str, Any]) -> None:
    View(**view).validate_json()
    assert len(view["blocks"]) <= views.MAX_BLOCKS
    if view["type"] == "modal":
        assert len(view["title"]["text"]) <= 24


def valid_blocks(blocks: list[dict[str, Any]]) -> None:
    assert len(blocks) <= views.MAX_MESSAGE_BLOCKS
    for block in Block.parse_all(blocks):
        block.validate_json()


def test_modal_fields_follow_the_reference_order() -> None:
    view = views.deploy_modal(views.FormState(), CATALOG, ["public"], flavors())
    valid_view(view)
    labels = [b["label"]["text"] for b in view["blocks"] if b["type"] == "input"]
    assert labels == [
        "Name",
        "Auto stop",
        "Description",
        "Resource pool",
        "Model source",
        "Model",
        "Version",
        "Traffic ratio (%)",
        "Specifications",
        "Compute nodes (instances)",
        "Environment variables",
        "Traffic limit (requests per second)",
    ]
    flavor_block = next(b for b in view["blocks"] if b["block_id"].startswith("m0.flavor."))
    texts = [o["text"]["text"] for o in flavor_block["element"]["options"]]
    assert any("(unavailable)" in t for t in texts)
    notes = next(b for b in view["blocks"] if b["block_id"] == "m0.flavor_notes")
    assert "no GPU here" in notes["elements"][0]["text"]


def test_custom_auto_stop_shows_hours() -> None:
    state = views.FormState(auto_stop="custom")
    view = views.deploy_modal(state, CATALOG, ["public"], flavors())
    valid_view(view)
    assert any(b.get("block_id") == "auto_stop_hours" for b in view["blocks"])


def test_most_groups_stay_within_block_kit_limits() -> None:
    state = views.FormState(auto_stop="custom")
    for _ in range(20):
        views.add_group(state)
    assert len(state.groups) == views.MAX_GROUPS
    view = views.deploy_modal(state, CATALOG, ["public", "gpu"], flavors())
    valid_view(view)
    assert not any(b.get("block_id") == "add_version" for b in view["blocks"])


def test_dependent_selects_renew_block_ids_and_drop_stale_values() -> None:
    state = views.FormState()
    views.choose_model(state, 0, "iris", CATALOG)
    state.groups[0].version = "2.0.0"
    before = views.deploy_modal(state, CATALOG, ["public"], flavors())
    views.choose_source(state, 0, "subscribed")
    after = views.deploy_modal(state, CATALOG, ["public"], flavors())
    ids_before = {b.get("block_id") for b in before["blocks"]}
    ids_after = {b.get("block_id") for b in after["blocks"]}
    assert "m0.model.0" in ids_before and "m0.model.1" in ids_after
    assert "m0.version.1" in ids_before and "m0.version.1" not in ids_after
    # Slack sends back a value typed in the stale block: it is ignored.
    sent = {
        "private_metadata": after["private_metadata"],
        "state": {
            "values": {
                "m0.version.1": {
                    "v": {"type": "static_select", "selected_option": {"value": "2.0.0"}}
                }
            }
        },
    }
    read = views.state_from_view(sent)
    assert read.groups[0].source == "subscribed"
    assert read.groups[0].version is None


def test_single_version_model_is_preselected_and_hides_add() -> None:
    state = views.FormState()
    views.choose_model(state, 0, "solo", CATALOG)
    assert state.groups[0].version == "1.0.0"
    view = views.deploy_modal(state, CATALOG, ["public"], flavors())
    assert not any(b.get("block_id") == "add_version" for b in view["blocks"])


def test_pool_change_renews_flavor_blocks() -> None:
    state = views.FormState()
    state.groups[0].flavor = "cpu.2u8g"
    views.choose_pool(state, "gpu")
    assert state.groups[0].flavor is None
    view = views.deploy_modal(state, CATALOG, ["public", "gpu"], flavors())
    assert any(b.get("block_id") == "m0.flavor.1" for b in view["blocks"])


def test_remove_group_keeps_the_others_blocks() -> None:
    state = views.FormState()
    views.add_group(state)
    views.add_group(state)
    views.remove_group(state, 1)
    assert [g.uid for g in state.groups] == [0, 2]
    view = views.deploy_modal(state, CATALOG, ["public"], flavors())
    valid_view(view)
    assert any(b.get("block_id") == "m2.instances" for b in view["blocks"])


def test_errors_map_to_block_ids() -> None:
    state = views.FormState(auto_stop="custom")
    views.add_group(state)
    views.add_group(state)
    views.remove_group(state, 1)  # groups are uids 0 and 2: index 1 is uid 2
    state.groups[1].version_gen = 3
    errors = [
        FieldError("name", "bad name"),
        FieldError("auto_stop", "bad stop"),
        FieldError("models[1].version", "not Normal"),
        FieldError("models[1].flavor", "no such flavor"),
        FieldError("models[0].env.TOKEN", "bad env"),
        FieldError("models", "sum to 100"),
        FieldError("models[0].traffic_ratio", "set it"),
        FieldError("traffic_limit", "too big"),
        FieldError("spec", "odd"),
    ]
    mapped = views.error_block_ids(state, errors)
    assert mapped == {
        "name": "bad name odd",
        "auto_stop_hours": "bad stop",
        "m2.version.3": "not Normal",
        "m2.flavor.0": "no such flavor",
        "m0.env": "bad env",
        "m0.traffic_ratio": "sum to 100 set it",
        "traffic_limit": "too big",
    }
    view = views.deploy_modal(state, CATALOG, ["public"], flavors())
    inputs = {b["block_id"] for b in view["blocks"] if b["type"] == "input"}
    assert set(mapped) <= inputs


def test_spec_data_reads_the_form() -> None:
    state = views.FormState(name=" svc ", auto_stop="custom", custom_hours="3", traffic_limit="50")
    g = state.groups[0]
    g.model, g.version, g.instances, g.flavor = "iris", "1.0.0", "2", "cpu.2u8g"
    g.env = "A=1\n\nB = two\nbroken line"
    data, problems = views.spec_data(state)
    assert data["name"] == "svc" and data["auto_stop"] == "3h" and data["traffic_limit"] == 50
    assert data["models"] == [
        {
            "source": "mine",
            "model": "iris",
            "version": "1.0.0",
            "instances": 2,
            "flavor": "cpu.2u8g",
            "env": {"A": "1", "B": "two"},
        }
    ]
    assert [p.field for p in problems] == ["models[0].env"]


SVC = {
    "name": "svc",
    "owner": "alice",
    "status": "running",
    "progress": 100,
    "reason": "",
    "url": "http://gw/v1/infers/abc",
    "auto_stop": "1h",
    "due_time": 1000.0 + 3900,
    "models": [{"model": "iris", "version": "1.0.0", "traffic_ratio": 100}],
}


def test_service_messages_and_home_are_valid() -> None:
    text, blocks = views.services_message([SVC] * 30, 1000.0)
    assert text and "svc" in text
    valid_blocks(blocks)
    assert "stops in 1 h 05 min" in blocks[1]["text"]["text"]
    actions = blocks[2]["elements"]
    assert [a["text"]["text"] for a in actions] == ["Stop", "Start", "Extend 1 h", "Delete"]
    assert "confirm" in actions[3]
    home = views.home_view([SVC] * 40, 3, 20, 1000.0)
    valid_view(home)
    assert "3/20" in home["blocks"][1]["text"]["text"]
    valid_view(views.home_view([], 0, 20, 0))


@pytest.mark.parametrize(
    "built",
    [
        views.deploying_message("svc", [FieldError("models[0].env.TOKEN", "looks secret")]),
        views.running_message(SVC, "key-123"),
        views.failed_message({**SVC, "status": "failed", "reason": "health check timed out"}),
        views.alert_message("svc", "alice", "stopped", "auto stop", "<@U1>"),
        views.reminder_message("svc", "alice", "stops in 10 min"),
    ],
)
def test_dm_and_alert_messages_have_fallback_text(
    built: tuple[str, list[dict[str, Any]]],
) -> None:
    text, blocks = built
    assert text.strip()
    valid_blocks(blocks)
