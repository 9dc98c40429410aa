"""The Block Kit builders: valid for slack_sdk, within Slack's limits, errors under inputs."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from slack_sdk.models.blocks import Block, Option
from slack_sdk.models.views import View

from opsbot.core import form
from opsbot.core.deadlines import EXTEND_HOURS
from opsbot.core.errors import FieldError
from opsbot.core.flavors import FlavorStatus, load_flavors
from opsbot.core.spec import MAX_RULES, MAX_VERSIONS
from opsbot.slack import views
from opsbot.slack.drafts import Drafts

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
    # The core form's fields, in its order and with its labels (the reference page's).
    assert labels == [f.label for f in form.FIELDS if f.section != "rule"]
    flavor_block = next(b for b in view["blocks"] if b["block_id"].startswith("m0.flavor."))
    offered = [o["value"] for o in flavor_block["element"]["options"]]
    # Unavailable flavors are shown with their reason, but cannot be chosen.
    choices = form.flavor_choices([s.as_dict() for s in flavors()], "custom")
    assert offered == [c.value for c in choices if c.available]
    assert any(not c.available for c in choices)
    notes = next(b for b in view["blocks"] if b["block_id"] == "m0.flavor_notes")
    assert "no GPU here" in notes["elements"][0]["text"]
    assert "takes only ExeML models" in notes["elements"][0]["text"]
    # The choices are the core form's: auto stop, model source.
    auto = next(b for b in view["blocks"] if b["block_id"] == "auto_stop")["element"]
    assert [(o["value"], o["text"]["text"]) for o in auto["options"]] == list(
        form.AUTO_STOP_CHOICES
    )
    source = next(b for b in view["blocks"] if b["block_id"] == "m0.source")["element"]
    assert [(o["value"], o["text"]["text"]) for o in source["options"]] == list(form.SOURCES)


def test_custom_auto_stop_shows_hours() -> None:
    state = views.FormState(auto_stop="custom")
    view = views.deploy_modal(state, CATALOG, ["public"], flavors())
    valid_view(view)
    assert any(b.get("block_id") == "auto_stop_hours" for b in view["blocks"])


def test_most_groups_stay_within_block_kit_limits() -> None:
    state = views.FormState(auto_stop="custom")
    for _ in range(20):
        views.add_group(state)
    assert len(state.groups) == views.MAX_GROUPS == MAX_VERSIONS  # the core's limit
    view = views.deploy_modal(state, CATALOG, ["public", "gpu"], flavors())
    valid_view(view)
    assert not any(b.get("block_id") == "add_version" for b in view["blocks"])


def test_dependent_selects_renew_block_ids_and_drop_stale_values(drafts: Drafts) -> None:
    state = views.FormState()
    views.choose_model(state, 0, "iris", CATALOG)
    state.groups[0].version = "2.0.0"
    before = views.deploy_modal(state, CATALOG, ["public"], flavors())
    views.choose_source(state, 0, "subscribed")
    drafts.save(state, "alice")
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
    read = views.state_from_view(sent, drafts, "alice")
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
    assert [a["action_id"] for a in actions] == [
        views.A_STOP,
        views.A_START,
        views.A_EXTEND,
        views.A_MODIFY,
        views.A_DETAILS,
        views.A_HISTORY,
        views.A_DELETE,
    ]
    # Each option says when the service would stop: the hours add to the 1 h 05 min left.
    assert [o["text"]["text"] for o in actions[2]["options"]] == [
        "Extend 1 h: stops in 2h 05m",
        "Extend 2 h: stops in 3h 05m",
        "Extend 4 h: stops in 5h 05m",
        "Extend 6 h: stops in 7h 05m",
    ]
    assert "confirm" in actions[-1]
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


def test_extend_options_carry_the_target_and_hours() -> None:
    menu = views.extend_element(SVC, 1000.0, everyone=True)[0]
    targets = [views.action_target({"selected_option": o}) for o in menu["options"]]
    assert targets == [views.Target("alice", "svc", True, h) for h in EXTEND_HOURS]
    # A button (the reminder's) carries no hours: the action id says them.
    button = {"value": views.action_value(SVC)}
    assert views.action_target(button) == views.Target("alice", "svc", False, None)


def test_extend_falls_back_to_buttons_when_options_cannot_hold_the_target() -> None:
    long_owner = {**SVC, "owner": "o" * 130}
    elements = views.extend_element(long_owner, 1000.0)
    assert [e["action_id"] for e in elements] == [views.A_EXTEND_1, views.A_EXTEND_4]
    _, blocks = views.services_message([long_owner], 1000.0)
    valid_blocks(blocks)
    assert views.action_target(elements[1]).owner == "o" * 130


def test_warnings_show_above_the_form_and_are_marked(drafts: Drafts) -> None:
    state = views.FormState(name="svc")
    warned = [FieldError("models[0].env.API_TOKEN", "API_TOKEN looks like a secret")]
    state.warnings = [w.message for w in warned]
    state.warned = views.warning_mark(warned)
    drafts.save(state, "alice")
    view = views.deploy_modal(state, CATALOG, ["public"], flavors())
    valid_view(view)
    assert view["blocks"][0]["block_id"] == "warnings"
    assert "API_TOKEN looks like a secret" in view["blocks"][0]["text"]["text"]
    assert view["submit"]["text"] == "Deploy anyway"
    # The mark is kept with the form; the notice itself is shown once.
    read = views.state_from_view(view, drafts, "alice")
    assert read.warned == state.warned and read.warnings == []
    assert views.deploy_modal(read, CATALOG, ["public"], flavors())["submit"]["text"] == "Deploy"
    assert views.warning_mark([]) == ""
    other = [FieldError("models[0].env.DB_PASSWORD", "DB_PASSWORD looks like a secret")]
    assert views.warning_mark(other) != state.warned


def test_largest_form_with_warnings_stays_within_block_kit_limits() -> None:
    state = views.FormState(auto_stop="custom")
    for _ in range(20):
        views.add_group(state)
    state.warnings = [f"V{i} looks like a secret" for i in range(30)]
    view = views.deploy_modal(state, CATALOG, ["public", "gpu"], flavors())
    valid_view(view)
    assert len(view["blocks"]) <= views.MAX_BLOCKS
    assert views.inline(state)  # ten versions and the notice still fit: all inputs shown
    assert "V29 looks like a secret" in view["blocks"][0]["text"]["text"]  # none left out


def test_running_message_without_a_key_says_how_to_get_one() -> None:
    _, blocks = views.running_message(SVC, None)
    valid_blocks(blocks)
    shown = str(blocks)
    assert "X-Auth-Token: $KEY" in shown and "opsbot key rotate svc" in shown


# -- modify, rules, history, details (issue 8) ----------------------------------------------------


def test_a_form_past_one_modal_lists_its_versions_and_keeps_every_rule() -> None:
    state = views.FormState(auto_stop="custom", warnings=["w"])
    for _ in range(20):
        views.add_rule(state)
    assert len(state.rules) == MAX_RULES  # the spec's limit, whatever the versions
    assert views.inline(state)
    inline_ids = {
        b.get("block_id")
        for b in views.deploy_modal(state, CATALOG, ["public"], flavors())["blocks"]
    }
    assert "m0.traffic_ratio" in inline_ids  # small enough: the version's inputs are shown
    for _ in range(20):
        views.add_group(state)
    assert len(state.groups) == MAX_VERSIONS and not views.inline(state)
    view = views.deploy_modal(state, CATALOG, ["public"], flavors())
    valid_view(view)
    ids = [b.get("block_id") for b in view["blocks"]]
    # Every version is a row with Edit and Remove; every rule keeps its inputs.
    assert [i for i in ids if str(i).endswith(".row")] == [f"m{g.uid}.row" for g in state.groups]
    assert not any(str(i).endswith(".traffic_ratio") for i in ids)
    assert all(f"r{r.uid}.version" in ids for r in state.rules)
    buttons = [
        e["action_id"]
        for b in view["blocks"]
        if b.get("block_id") == f"m{state.groups[3].uid}.edit"
        for e in b["elements"]
    ]
    assert buttons == [views.A_EDIT, views.A_REMOVE]
    assert not views.can_add_group(state) and not views.can_add_rule(state)
    assert "add_version" not in ids
    rules = next(b for b in view["blocks"] if b.get("block_id") == "rules")
    assert "accessory" not in rules  # no "Add rule" either


def test_version_errors_go_under_the_name_when_versions_are_rows() -> None:
    state = views.FormState()
    for _ in range(10):
        views.add_group(state, CATALOG)
    views.add_rule(state)
    assert not views.inline(state)
    errors = [FieldError("models[4].instances", "use 1 to 128")]
    assert views.error_block_ids(state, errors) == {
        "name": "Version 5, compute nodes: use 1 to 128"
    }
    # In the version's own modal, its errors go under its inputs; the form's are left out.
    g = state.groups[4]
    errors += [FieldError("models", "ratios sum to 90%"), FieldError("name", "taken")]
    assert views.error_block_ids(state, errors, own_modal=g.uid) == {
        f"m{g.uid}.instances": "use 1 to 128"
    }


def test_form_from_spec_keeps_odd_auto_stops() -> None:
    from opsbot.core.spec import parse_spec

    base = {"name": "s", "models": [{"model": "iris", "version": "1.0.0"}]}
    three = views.form_from_spec(parse_spec({**base, "auto_stop": "3h"}), "alice")
    assert (three.auto_stop, three.custom_hours) == ("custom", "3")
    minutes = views.form_from_spec(parse_spec({**base, "auto_stop": "90m"}), "alice")
    view = views.deploy_modal(minutes, CATALOG, ["public"], flavors())
    valid_view(view)
    auto = next(b for b in view["blocks"] if b.get("block_id") == "auto_stop")
    assert auto["element"]["initial_option"]["value"] == "90m"
    data, problems = views.spec_data(minutes)
    assert problems == [] and data["auto_stop"] == "90m" and data["name"] == "s"
    assert data["rules"] == []


def test_rule_errors_map_to_the_rule_inputs() -> None:
    state = views.FormState()
    views.add_rule(state)
    views.add_rule(state)
    views.remove_rule(state, 0)
    errors = views.error_block_ids(
        state,
        [
            FieldError("rules[0].header", "bad header"),
            FieldError("rules[0].matches", "bad regex"),
            FieldError("rules[0]", "give exactly one"),
            FieldError("rules[0].version", "no such version"),
            FieldError("rules[4].version", "out of range"),
        ],
    )
    assert errors == {
        "r1.header": "bad header",
        "r1.value": "bad regex give exactly one",
        "r1.version": "no such version",
        "name": "Rule 5, version: out of range",
    }
    state.target = ("alice", "svc")
    assert views.error_block_ids(state, [FieldError("name", "keeps its name")]) == {
        "auto_stop": "Name: keeps its name"
    }


def test_rule_model_is_named_only_when_two_models_share_the_version() -> None:
    state = views.FormState()
    state.groups[0].model, state.groups[0].version = "iris", "1.0.0"
    views.add_group(state)
    state.groups[1].model, state.groups[1].version = "solo", "1.0.0"
    views.add_rule(state)
    views.add_rule(state)
    solo, iris = state.groups[1].uid, state.groups[0].uid
    state.rules[0] = views.RuleState(
        uid=0, header="X", value="a", version=views.rule_target_value(solo, "1.0.0")
    )
    state.rules[1] = views.RuleState(
        uid=1,
        header="Y",
        test="matches",
        value="b.*",
        version=views.rule_target_value(iris, "2.0.0"),
    )
    data, _ = views.spec_data(state)
    assert data["rules"] == [
        {"header": "X", "equals": "a", "version": "1.0.0", "model": "solo"},
        {"header": "Y", "matches": "b.*", "version": "2.0.0"},
    ]


def test_history_view_stays_within_limits() -> None:
    entries = [
        views.HistoryEntry(n, 1_700_000_000.0 + n, "alice", [f"traffic_limit: {n} -> {n + 1}"] * 20,
                           [f"line {i}" for i in range(30)] if n < 150 else [])
        for n in range(1, 151)
    ]  # fmt: skip
    view = views.history_view("alice", "svc", entries)
    valid_view(view)
    assert "*#150*" in view["blocks"][2]["text"]["text"]  # newest first
    assert "accessory" not in view["blocks"][2]  # the current one cannot be rolled back to
    button = view["blocks"][3]["accessory"]
    assert button["text"]["text"] == "Roll back to #149"
    assert len(button["confirm"]["text"]["text"]) <= 300
    assert "older not shown" in view["blocks"][-1]["elements"][0]["text"]


def test_details_view_is_valid() -> None:
    rule = {"header": "X-G", "equals": "b", "version": "1.0.0"}
    view = views.details_view({**SVC, "rules": [rule]}, 1000.0, None)
    valid_view(view)
    assert "X-G = b -> 1.0.0" in json.dumps(view["blocks"])


def test_rule_targets_fit_slacks_option_values_whatever_the_model_name() -> None:
    owner, name = "o" * 64, "m" * 64  # a subscribed model's longest name: 129 characters
    model = f"{owner}/{name}"
    catalog = {"mine": {}, "subscribed": {model: ["v" * 64, "1.0.0"]}}
    state = views.FormState()
    state.groups[0].source, state.groups[0].model = "subscribed", model
    state.groups[0].version = "v" * 64
    views.add_rule(state)
    view = views.deploy_modal(state, catalog, ["public"], flavors())
    valid_view(view)
    options = next(b for b in view["blocks"] if b["block_id"] == "r0.version")["element"]
    assert all(len(o["value"]) <= views.OPTION_VALUE_MAX for o in options["options"])
    # The value still names the version and, through its group, the model.
    state.rules[0] = views.RuleState(
        uid=0, header="X", value="a", version=options["options"][0]["value"]
    )
    data, _ = views.spec_data(state)
    assert data["rules"] == [{"header": "X", "equals": "a", "version": "v" * 64}]


def test_a_versions_own_modal_and_its_row_take_the_core_forms_labels(
    drafts: Drafts,
) -> None:
    state = views.FormState(name="svc")
    for _ in range(9):
        views.add_group(state, CATALOG)
    views.add_rule(state)
    drafts.save(state, "alice")
    form_view = views.deploy_modal(state, CATALOG, ["public"], flavors())
    valid_view(form_view)
    assert not views.inline(state)
    labels = [b["label"]["text"] for b in form_view["blocks"] if b["type"] == "input"]
    # The form keeps the core's fields outside the versions, in its order (a rule's test,
    # equals or matches, is one select before the value).
    top = [f.label for f in form.FIELDS if f.section in ("basic", "limit")]
    rule = [form.LABELS["header"], "Test", form.LABELS["equals"], form.LABELS["rule_version"]]
    assert labels == top + rule
    row = next(b for b in form_view["blocks"] if b.get("block_id") == "m1.row")["text"]["text"]
    assert row.startswith(f"*{form.LABELS['models']} 2*")
    for key in ("traffic_ratio", "flavor", "instances", "env"):
        assert form.LABELS[key] in row
    own = views.version_modal(state, 1, CATALOG, flavors(), parent="V1")
    valid_view(own)
    labels = [b["label"]["text"] for b in own["blocks"] if b["type"] == "input"]
    assert labels == [f.label for f in form.FIELDS if f.section == "version"]
    source = next(b for b in own["blocks"] if b["block_id"] == "m1.source")["element"]
    assert [(o["value"], o["text"]["text"]) for o in source["options"]] == list(form.SOURCES)
    flavor = next(b for b in own["blocks"] if b["block_id"].startswith("m1.flavor."))["element"]
    choices = form.flavor_choices([s.as_dict() for s in flavors()], "custom")
    assert [o["value"] for o in flavor["options"]] == [c.value for c in choices if c.available]


def test_variables_past_what_a_versions_modal_shows_are_refused_not_cut() -> None:
    state = views.FormState(name="svc")
    line = "V{}=" + "x" * (views.TEXT_INPUT_MAX - 10)  # one input each
    state.groups[0].env = "\n".join(line.format(i) for i in range(views.MAX_ENV_INPUTS))
    own = views.version_modal(state, 0, CATALOG, flavors(), parent="V1")
    valid_view(own)
    inputs = [b for b in own["blocks"] if b.get("block_id", "").startswith("m0.env")]
    assert len(inputs) == views.MAX_ENV_INPUTS  # all of them; no empty one past the limit
    assert views.spec_data(state)[1] == []
    state.groups[0].env += "\n" + line.format("X")
    problems = views.spec_data(state)[1]
    assert [p.field for p in problems] == ["models[0].env"]
    assert "opsbot update" in problems[0].message


def _select_blocks(view: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        b
        for b in view["blocks"]
        if b["type"] == "input" and b["element"]["type"] in ("static_select", "external_select")
    ]


@pytest.mark.parametrize("count", [100, 101])
def test_a_select_past_100_choices_is_external_and_keeps_the_current_one(count: int) -> None:
    names = [f"m{i:03d}" for i in range(count)]
    catalog = {"mine": {name: ["1.0.0"] for name in names}, "subscribed": {}}
    state = views.FormState()
    views.choose_model(state, 0, names[-1], catalog)  # the last: past a static select's 100
    view = views.deploy_modal(views.offer(state, catalog), catalog, ["public"], flavors())
    valid_view(view)
    element = next(b for b in view["blocks"] if b["block_id"].startswith("m0.model."))["element"]
    current = {"text": {"type": "plain_text", "text": names[-1], "emoji": True}}
    assert element["initial_option"] == {**current, "value": views.option_key(names[-1])}
    if count <= views.MAX_OPTIONS:  # as before: every option, in the select itself
        assert element["type"] == "static_select"
        assert [o["text"]["text"] for o in element["options"]] == names
    else:
        assert element["type"] == "external_select" and "options" not in element
        assert element["min_query_length"] == views.MIN_QUERY_LENGTH


def test_every_select_offers_what_its_block_answers_when_asked() -> None:
    """One source for a select's options, drawn (static) or asked for (external): the options
    of each select of a full form are what select_options answers for its block."""
    state = views.FormState(auto_stop="custom")
    views.choose_model(state, 0, "iris", CATALOG)
    views.add_group(state, CATALOG)
    views.add_rule(state)
    pools = ["public", "gpu"]
    view = views.deploy_modal(views.offer(state, CATALOG), CATALOG, pools, flavors())
    selects = _select_blocks(view)
    kinds = {re.sub(r"^[mr]\d+\.", "", b["block_id"]).split(".")[0] for b in selects}
    assert kinds == {"auto_stop", "resource_pool", "source", "model", "version", "flavor", "test"}
    assert {b["block_id"] for b in selects} >= {"r0.version", "m1.version.0"}
    for b in selects:
        drawn = [(o["value"], o["text"]["text"]) for o in b["element"]["options"]]
        asked = views.select_options(state, b["block_id"], CATALOG, pools, flavors())
        assert asked == drawn, b["block_id"]
    # A block the form no longer shows answers nothing.
    views.choose_source(state, 0, "subscribed")
    for gone in ("m0.model.0", "m0.version.1", "m9.model.0", "r7.version", "name", "x"):
        assert views.select_options(state, gone, CATALOG, pools, flavors()) == [], gone
    modify = views.FormState(target=("alice", "svc"))
    assert views.select_options(modify, "resource_pool", CATALOG, pools, flavors()) == []


def test_suggestions_are_the_core_forms_matches_at_most_100() -> None:
    options = [(f"v{i}", f"model-{i:03d}") for i in range(250)]
    first = views.suggestions(options, "")
    assert [o["value"] for o in first] == [f"v{i}" for i in range(100)]
    found = views.suggestions(options, "MODEL-2")
    assert [o["text"]["text"] for o in found] == [f"model-{i}" for i in range(200, 250)]
    assert views.suggestions(options, "model-0")[0]["text"]["text"] == "model-000"
    long = views.suggestions([("k", "x" * 200)], "x")
    assert len(long[0]["text"]["text"]) == views.OPTION_TEXT_MAX  # clipped as any option
    for option in Option.parse_all([*first, *found, *long]) or []:
        option.validate_json()
