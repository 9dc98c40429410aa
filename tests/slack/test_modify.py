"""Modify, routing rules, history and rollback, and per-version numbers from Slack (issue 8).

Signed requests go to the bot; the Web API is the local fake. Views Slack sends back carry every
input's current value, initial values included (``as_sent``), as Slack does.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from conftest import Bot
from slack_sdk.models.views import View
from slack_support import block_action, command_body, filled, post, submission, submit

from opsbot.core import services as services_mod
from opsbot.core.app import Core
from opsbot.core.services import Service
from opsbot.core.status import Status
from opsbot.slack import views
from opsbot.slack.app import make_client

FORM = "application/x-www-form-urlencoded"


def valid_view(view: dict[str, Any]) -> None:
    View(**view).validate_json()
    assert len(view["blocks"]) <= views.MAX_BLOCKS
    assert len(view["title"]["text"]) <= 24


def move(core: Core, name: str, owner: str, to: Status) -> None:
    service = core.service(core.user(owner), name)
    with core.store.write() as db:
        assert services_mod.transition(
            db, time.time(), service, to, actor="controller", message=f"now {to.value}"
        )


def deploy_gated(bot: Bot, me: str, name: str = "gated", running: bool = True) -> None:
    """iris 1.0.0 (70%, env A=1) and iris 2.0.0 (30%), deployed through the modal."""
    state = views.FormState()
    views.add_group(state)
    modal = bot.bot.modal(bot.core.slack_user("U1"), state)
    values = {
        "name": name,
        "m0.model": "iris",
        "m0.version": "1.0.0",
        "m0.traffic_ratio": "70",
        "m0.env": "A=1",
        "m1.model": "iris",
        "m1.version": "2.0.0",
        "m1.traffic_ratio": "30",
    }
    assert submit(bot.url, filled(modal, values)).body == ""
    if running:
        move(bot.core, name, me, Status.RUNNING)


def initial(element: Mapping[str, Any]) -> str | None:
    if "initial_option" in element:
        return str(element["initial_option"]["value"])
    value = element.get("initial_value")
    return None if value is None else str(value)


def as_sent(view: Mapping[str, Any], changes: Mapping[str, str] = {}) -> dict[str, Any]:
    """The view as Slack sends it back: every input's initial value, with ``changes`` typed
    over them (keys: block ids or their prefixes without the generation, as in ``filled``)."""
    values: dict[str, str] = {}
    for block in view["blocks"]:
        if block["type"] == "input":
            value = initial(block["element"])
            if value is not None:
                values[block["block_id"]] = value
    for key, value in changes.items():
        bid = next(
            (
                b["block_id"]
                for b in view["blocks"]
                if b["type"] == "input"
                and (b["block_id"] == key or b["block_id"].startswith(key + "."))
            ),
            None,
        )
        assert bid is not None, f"no input {key} in the view"
        values[bid] = value
    return filled(view, values)


def block(view: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    return next(
        b
        for b in view["blocks"]
        if b.get("block_id") == prefix or str(b.get("block_id", "")).startswith(prefix + ".")
    )


def wait_count(bot: Bot, method: str, count: int) -> list[dict[str, Any]]:
    """The calls to ``method`` once there are at least ``count`` of them (up to 5 s)."""
    deadline = time.time() + 5
    while len(bot.fake.of(method)) < count and time.time() < deadline:
        time.sleep(0.02)
    calls = bot.fake.of(method)
    assert len(calls) >= count, f"{len(calls)} {method} calls, expected {count}"
    return calls


def listed_button(bot: Bot, action_id: str) -> dict[str, Any]:
    """The button ``action_id`` of the first service in a fresh /services answer."""
    before = len(bot.fake.of("response"))
    post(bot.url, command_body("/services", "", bot.fake.response_url), FORM)
    listed = wait_count(bot, "response", before + 1)[before]
    return next(
        e
        for b in listed["blocks"]
        if b["type"] == "actions"
        for e in b["elements"]
        if e["action_id"] == action_id
    )


def press(bot: Bot, button: Mapping[str, Any], user: str = "U1", **kw: Any) -> None:
    action = {"action_id": button["action_id"], "block_id": "x", "value": button["value"]}
    reply = post(bot.url, block_action(action, user=user, **kw), FORM)
    assert reply.status == 200 and reply.seconds < 3


def open_modify(bot: Bot) -> dict[str, Any]:
    press(bot, listed_button(bot, views.A_MODIFY), response_url=bot.fake.response_url)
    view = bot.fake.wait_for("views.open")["view"]
    valid_view(view)
    return view


def snapshots(bot: Bot, me: str, name: str = "gated") -> list[int]:
    return [s.n for s in bot.core.history(bot.core.user(me), name)]


# -- Modify -----------------------------------------------------------------------------------


def test_modify_opens_the_form_prefilled_with_name_and_pool_fixed(bot: Bot, me: str) -> None:
    deploy_gated(bot, me)
    view = open_modify(bot)
    assert view["callback_id"] == views.MODIFY_CALLBACK
    assert view["title"]["text"] == "Modify service" and view["submit"]["text"] == "Apply"
    ids = [b.get("block_id") for b in view["blocks"]]
    assert "name" not in ids and "resource_pool" not in ids
    assert "*Name:* gated" in json.dumps(view["blocks"][0]) and "public" in json.dumps(
        view["blocks"][0]
    )
    prefilled = {
        prefix: initial(block(view, prefix)["element"])
        for prefix in (
            "auto_stop",
            "traffic_limit",
            "m0.model",
            "m0.version",
            "m0.traffic_ratio",
            "m0.env",
            "m0.instances",
            "m1.version",
            "m1.traffic_ratio",
        )
    }
    assert prefilled == {
        "auto_stop": "1h",
        "traffic_limit": "100",
        "m0.model": views.option_key("iris"),  # a short key the bot resolves
        "m0.version": "1.0.0",
        "m0.traffic_ratio": "70",
        "m0.env": "A=1",
        "m0.instances": "1",
        "m1.version": "2.0.0",
        "m1.traffic_ratio": "30",
    }
    flavor = block(view, "m0.flavor")["element"]["initial_option"]["value"]
    assert flavor == bot.core.service(bot.core.user(me), "gated").spec.models[0].flavor


def test_bad_ratio_sum_comes_back_under_the_ratio_and_changes_nothing(bot: Bot, me: str) -> None:
    deploy_gated(bot, me)
    view = open_modify(bot)
    sent = as_sent(view, {"m0.traffic_ratio": "60", "m1.traffic_ratio": "30"})
    answer = submit(bot.url, sent).json()
    assert answer["response_action"] == "errors"
    assert list(answer["errors"]) == ["m0.traffic_ratio"]
    assert "sum to 90%" in answer["errors"]["m0.traffic_ratio"]
    spec = bot.core.service(bot.core.user(me), "gated").spec
    assert [m.traffic_ratio for m in spec.models] == [70, 30]
    assert snapshots(bot, me) == [1]


def test_good_submission_changes_the_spec_and_adds_a_snapshot(bot: Bot, me: str) -> None:
    deploy_gated(bot, me)
    view = open_modify(bot)
    sent = as_sent(
        view,
        {"m0.traffic_ratio": "50", "m1.traffic_ratio": "50", "m1.instances": "2",
         "description": "canary half way"},
    )  # fmt: skip
    reply = submit(bot.url, sent)
    assert reply.status == 200 and reply.body == "" and reply.seconds < 3
    service = bot.core.service(bot.core.user(me), "gated")
    assert [(m.traffic_ratio, m.instances) for m in service.spec.models] == [(50, 1), (50, 2)]
    assert service.spec.description == "canary half way"
    assert service.spec.models[0].env == {"A": "1"}  # untouched fields stay as they were
    assert snapshots(bot, me) == [1, 2]
    dm = bot.fake.wait_for("chat.postMessage", lambda a: "Modified gated" in a["text"])
    assert dm["channel"] == "U1" and "snapshot #2" in dm["text"]
    assert "iris 1.0.0 traffic_ratio: 70 -> 50" in dm["text"]
    # The /services message the modal came from is refreshed in place.
    bot.fake.wait_for("response", lambda a: a.get("replace_original") is True)
    assert bot.changes


def test_unchanged_form_says_nothing_changed(bot: Bot, me: str) -> None:
    deploy_gated(bot, me)
    view = open_modify(bot)
    assert submit(bot.url, as_sent(view)).body == ""
    dm = bot.fake.wait_for("chat.postMessage", lambda a: "Nothing changed" in a["text"])
    assert "gated" in dm["text"]
    assert snapshots(bot, me) == [1]


def test_modify_is_refused_while_deploying_and_for_others(bot: Bot, me: str) -> None:
    deploy_gated(bot, me, running=False)
    with_button = json.dumps(
        views.services_message(
            [bot.core.service(bot.core.user(me), "gated").as_dict()], time.time()
        )[1]
    )
    assert views.A_MODIFY not in with_button  # not offered while Deploying
    # An older message's button pressed anyway: the core's reason, no modal.
    value = views.action_value({"owner": me, "name": "gated"})
    press(bot, {"action_id": views.A_MODIFY, "value": value}, response_url=bot.fake.response_url)
    said = bot.fake.wait_for("response", lambda a: "Deploying" in a.get("text", ""))
    assert said["response_type"] == "ephemeral" and "wait until it is Running" in said["text"]
    move(bot.core, "gated", me, Status.RUNNING)
    press(
        bot,
        {"action_id": views.A_MODIFY, "value": value},
        user="U2",
        response_url=bot.fake.response_url,
    )
    bot.fake.wait_for("response", lambda a: "Not allowed" in a.get("text", ""))
    assert bot.fake.of("views.open") == []
    # A forged submission by someone else of U1's form is refused: the form is U1's ...
    state = views.form_from_spec(bot.core.service(bot.core.user(me), "gated").spec, me)
    modal = bot.bot.modal(bot.core.slack_user("U1"), state)
    sent = as_sent(modal, {"m0.traffic_ratio": "50", "m1.traffic_ratio": "50"})
    answer = submit(bot.url, sent, user="U2").json()
    assert "opened by another Slack user" in str(answer["view"]["blocks"])
    # ... and of a form of their own naming U1's service, by the core as well.
    state.key = ""
    bot.bot.drafts.save(state, bot.core.slack_user("U2").name)
    forged = {**sent, "private_metadata": json.dumps({"d": state.key})}
    answer = submit(bot.url, forged, user="U2").json()
    assert "only its owner or an admin" in answer["errors"]["auto_stop"]
    assert snapshots(bot, me) == [1]


def test_add_version_in_modify_and_submit_a_third_version(bot: Bot, me: str) -> None:
    deploy_gated(bot, me)
    view = open_modify(bot)
    add = {"action_id": views.A_ADD, "block_id": "add_version", "value": "add"}
    post(bot.url, block_action(add, view=as_sent(view)), FORM)
    updated = wait_count(bot, "views.update", 1)[0]["view"]
    valid_view(updated)
    assert updated["callback_id"] == views.MODIFY_CALLBACK
    # Values typed so far are kept; the new group starts at the next version the form does not
    # list (iris 1.0.0 and 2.0.0 are taken), never a duplicate of the first.
    assert initial(block(updated, "m0.traffic_ratio")["element"]) == "70"
    assert initial(block(updated, "m2.model")["element"]) == views.option_key("flowers")
    assert initial(block(updated, "m2.version")["element"]) is not None
    pick = {
        "action_id": views.A_MODEL,
        "block_id": block(updated, "m2.model")["block_id"],
        "type": "static_select",
        "selected_option": {"value": views.option_key("iris-onnx")},
    }
    # Slack sends the new choice in the view's state too.
    post(bot.url, block_action(pick, view=as_sent(updated, {"m2.model": "iris-onnx"})), FORM)
    picked = wait_count(bot, "views.update", 2)[1]["view"]
    valid_view(picked)
    assert initial(block(picked, "m2.version")["element"]) == "1.0.0"  # its only version
    ratios = {"m0.traffic_ratio": "80", "m1.traffic_ratio": "10", "m2.traffic_ratio": "10"}
    wrong = as_sent(picked, {**ratios, "m2.flavor": "exeml.cpu"})
    answer = submit(bot.url, wrong).json()
    assert list(answer["errors"]) == [block(picked, "m2.flavor")["block_id"]]
    sent = as_sent(picked, {**ratios, "m2.flavor": "cpu.2u8g"})
    assert submit(bot.url, sent).body == ""
    spec = bot.core.service(bot.core.user(me), "gated").spec
    assert [(m.model, m.version, m.traffic_ratio) for m in spec.models] == [
        ("iris", "1.0.0", 80),
        ("iris", "2.0.0", 10),
        ("iris-onnx", "1.0.0", 10),
    ]


# -- routing rules ------------------------------------------------------------------------------


def add_rule(bot: Bot, view: Mapping[str, Any]) -> dict[str, Any]:
    before = len(bot.fake.of("views.update"))
    action = {"action_id": views.A_ADD_RULE, "block_id": "rules", "value": "add"}
    post(bot.url, block_action(action, view=as_sent(view)), FORM)
    updated = wait_count(bot, "views.update", before + 1)[before]["view"]
    valid_view(updated)
    return updated


def test_rules_added_in_the_modal_land_in_the_spec(bot: Bot, me: str) -> None:
    deploy_gated(bot, me)
    view = add_rule(bot, add_rule(bot, open_modify(bot)))
    heads = [b for b in view["blocks"] if str(b.get("block_id", "")).endswith(".head")]
    assert [h["text"]["text"] for h in heads if h["block_id"].startswith("r")] == [
        "*Rule 1*",
        "*Rule 2*",
    ]
    targets = block(view, "r0.version")["element"]["options"]
    # Option values name the group holding the model, not the model (its name may pass 150).
    assert [o["value"] for o in targets] == ["0:1.0.0", "0:2.0.0"]
    assert [o["text"]["text"] for o in targets] == ["iris 1.0.0", "iris 2.0.0"]
    sent = as_sent(
        view,
        {
            "r0.header": "X-User-Group",
            "r0.value": "beta",
            "r0.version": "0:2.0.0",
            "r1.header": "X-Canary",
            "r1.test": "matches",
            "r1.value": "yes|true",
            "r1.version": "0:1.0.0",
        },
    )
    assert submit(bot.url, sent).body == ""
    rules = bot.core.service(bot.core.user(me), "gated").spec.rules
    assert [(r.header, r.equals, r.matches, r.version, r.model) for r in rules] == [
        ("X-User-Group", "beta", None, "2.0.0", None),
        ("X-Canary", None, "yes|true", "1.0.0", None),
    ]
    # The modal opened again shows the rules; removing one and applying drops it.
    bot.fake.calls.clear()
    again = open_modify(bot)
    assert initial(block(again, "r1.value")["element"]) == "yes|true"
    assert initial(block(again, "r1.test")["element"]) == "matches"
    remove = {"action_id": views.A_REMOVE_RULE, "block_id": "r0.head", "value": "0"}
    post(bot.url, block_action(remove, view=as_sent(again)), FORM)
    fewer = bot.fake.wait_for("views.update")["view"]
    assert not any(b.get("block_id") == "r0.header" for b in fewer["blocks"])
    assert submit(bot.url, as_sent(fewer)).body == ""
    rules = bot.core.service(bot.core.user(me), "gated").spec.rules
    assert [r.header for r in rules] == ["X-Canary"]


def test_rule_errors_come_back_under_the_rule_inputs(bot: Bot, me: str) -> None:
    deploy_gated(bot, me)
    view = add_rule(bot, open_modify(bot))
    bad_header = as_sent(
        view, {"r0.header": "bad header", "r0.value": "x", "r0.version": "0:2.0.0"}
    )
    answer = submit(bot.url, bad_header).json()
    assert (
        list(answer["errors"]) == ["r0.header"] and "header name" in answer["errors"]["r0.header"]
    )
    # A version the service does not run (a forged option).
    elsewhere = as_sent(view, {"r0.header": "X-G", "r0.value": "x", "r0.version": "0:9.9.9"})
    answer = submit(bot.url, elsewhere).json()
    assert list(answer["errors"]) == ["r0.version"]
    assert "not one version of this service" in answer["errors"]["r0.version"]
    bad_regex = as_sent(
        view,
        {"r0.header": "X-G", "r0.test": "matches", "r0.value": "(", "r0.version": "0:1.0.0"},
    )
    answer = submit(bot.url, bad_regex).json()
    assert list(answer["errors"]) == ["r0.value"]
    assert bot.core.service(bot.core.user(me), "gated").spec.rules == []


def test_deploy_modal_takes_rules_too(bot: Bot, me: str) -> None:
    modal = bot.bot.modal(bot.core.slack_user("U1"), views.FormState())
    picked = as_sent(modal, {"name": "ruled", "m0.model": "iris", "m0.version": "1.0.0"})
    action = {"action_id": views.A_ADD_RULE, "block_id": "rules", "value": "add"}
    post(bot.url, block_action(action, view=picked), FORM)
    view = bot.fake.wait_for("views.update")["view"]
    valid_view(view)
    assert view["callback_id"] == views.DEPLOY_CALLBACK
    sent = as_sent(view, {"r0.header": "X-Beta", "r0.value": "1", "r0.version": "0:1.0.0"})
    assert submit(bot.url, sent).body == ""
    rules = bot.core.service(bot.core.user(me), "ruled").spec.rules
    assert [(r.header, r.equals, r.version) for r in rules] == [("X-Beta", "1", "1.0.0")]


# -- history and rollback -----------------------------------------------------------------------


def test_history_lists_snapshots_and_rollback_applies_after_confirm(bot: Bot, me: str) -> None:
    deploy_gated(bot, me)
    bot.core.update_service(
        bot.core.user(me),
        "gated",
        {**bot.core.service(bot.core.user(me), "gated").spec.model_dump(mode="json"),
         "traffic_limit": 50},
    )  # fmt: skip
    press(bot, listed_button(bot, views.A_HISTORY), response_url=bot.fake.response_url)
    view = bot.fake.wait_for("views.open")["view"]
    valid_view(view)
    text = json.dumps(view["blocks"])
    assert "*#2*" in text and "*#1*" in text and f"by {me}" in text
    assert "traffic_limit: 100 -> 50" in text  # what #2 changed
    buttons = [b["accessory"] for b in view["blocks"] if "accessory" in b]
    assert [b["text"]["text"] for b in buttons] == ["Roll back to #1"]  # #2 is current
    confirm = buttons[0]["confirm"]
    assert "traffic_limit: 50 -> 100" in confirm["text"]["text"]  # the rollback preview
    assert confirm["confirm"]["text"] == "Roll back"
    # Someone else may look but not roll back.
    history = {**view, "id": "VH1", "hash": "h"}
    action = {"action_id": views.A_ROLLBACK, "block_id": "x", "value": buttons[0]["value"]}
    post(bot.url, block_action(action, user="U2", view=history), FORM)
    bot.fake.wait_for(
        "chat.postMessage", lambda a: a["channel"] == "U2" and "Not allowed" in a["text"]
    )
    assert snapshots(bot, me) == [1, 2]
    post(bot.url, block_action(action, view=history), FORM)
    dm = bot.fake.wait_for("chat.postMessage", lambda a: "Rolled gated back to #1" in a["text"])
    assert "snapshot #3" in dm["text"]
    assert bot.core.service(bot.core.user(me), "gated").spec.traffic_limit == 100
    assert snapshots(bot, me) == [1, 2, 3]
    refreshed = bot.fake.wait_for("views.update")
    assert refreshed["view_id"] == "VH1"
    valid_view(refreshed["view"])
    assert "*#3*" in json.dumps(refreshed["view"]["blocks"])


def test_rollback_to_a_missing_snapshot_is_refused(bot: Bot, me: str) -> None:
    deploy_gated(bot, me)
    value = views.rollback_value(me, "gated", 9)
    action = {"action_id": views.A_ROLLBACK, "block_id": "x", "value": value}
    post(bot.url, block_action(action, response_url=bot.fake.response_url), FORM)
    said = bot.fake.wait_for("response", lambda a: "#9" in a.get("text", ""))
    assert "choose 1 to 1" in said["text"]
    assert snapshots(bot, me) == [1]


# -- per-version numbers ------------------------------------------------------------------------


def test_details_show_the_numbers_per_version(bot: Bot, me: str) -> None:
    deploy_gated(bot, me)
    asked: list[str] = []

    def numbers(service: Service) -> list[dict[str, Any]]:
        asked.append(service.name)
        return [
            {"idx": 0, "model": "iris", "version": "1.0.0", "traffic_ratio": 70, "desired": 1,
             "ready": 1, "calls": 1234, "failures": 2, "p50_ms": 3.5, "p99_ms": 41.0,
             "cpu_percent": 12.5, "memory_bytes": 256 * 1024 * 1024},
            {"idx": 1, "model": "iris", "version": "2.0.0", "traffic_ratio": 30, "desired": 1,
             "ready": 0, "calls": None, "failures": None, "p50_ms": None, "p99_ms": None,
             "cpu_percent": None, "memory_bytes": None},
        ]  # fmt: skip

    bot.bot.numbers = numbers
    press(bot, listed_button(bot, views.A_DETAILS), response_url=bot.fake.response_url)
    loading = bot.fake.wait_for("views.open")["view"]
    valid_view(loading)
    shown = bot.fake.wait_for("views.update")
    assert shown["view_id"] == "V1"
    valid_view(shown["view"])
    assert asked == ["gated"]
    sections = [b for b in shown["view"]["blocks"] if b.get("fields")]
    first = [f["text"] for f in sections[0]["fields"]]
    assert sections[0]["text"]["text"] == "*iris 1.0.0*"
    assert first == [
        "*Ratio*\n70%",
        "*Ready / desired*\n1 / 1",
        "*Calls*\n1234",
        "*Failures*\n2",
        "*p50 / p99*\n3.5 / 41.0 ms",
        "*CPU / memory*\n12.5% / 256 MiB",
    ]
    second = [f["text"] for f in sections[1]["fields"]]
    assert "*Calls*\n–" in second and "*Ready / desired*\n0 / 1" in second


def test_details_without_numbers_show_the_spec(bot: Bot, me: str) -> None:
    deploy_gated(bot, me)
    press(bot, listed_button(bot, views.A_DETAILS), response_url=bot.fake.response_url)
    shown = bot.fake.wait_for("views.update")["view"]
    valid_view(shown)
    text = json.dumps(shown["blocks"])
    assert "*Ratio*\\n30%" in text and "Live numbers come from the opsbot daemon" in text


def test_app_home_offers_modify(bot: Bot, me: str) -> None:
    deploy_gated(bot, me)
    bot.bot.publish_home(make_client("xoxb-test", bot.fake.url), "U1")
    home = bot.fake.wait_for("views.publish")["view"]
    View(**home).validate_json()
    modify = next(
        e
        for b in home["blocks"]
        if b["type"] == "actions"
        for e in b["elements"]
        if e["action_id"] == views.A_MODIFY
    )
    press(bot, modify, view={"id": "VH", "type": "home"})
    view = bot.fake.wait_for("views.open")["view"]
    sent = as_sent(view, {"traffic_limit": "300"})
    assert submit(bot.url, sent).body == ""
    assert bot.core.service(bot.core.user(me), "gated").spec.traffic_limit == 300
    # Opened from App Home: the home is published again with the change.
    View(**wait_count(bot, "views.publish", 2)[1]["view"]).validate_json()
    dm = bot.fake.wait_for("chat.postMessage", lambda a: "Modified gated" in a["text"])
    assert "traffic_limit: 100 -> 300" in dm["text"]


def test_the_daemons_plan_is_shown_to_confirm_before_applying(bot: Bot, me: str) -> None:
    deploy_gated(bot, me)
    view = open_modify(bot)
    sent = as_sent(view, {"m1.instances": "2"})
    first = post(bot.url, submission(sent), FORM).json()
    assert first["response_action"] == "update"
    shown = first["view"]
    valid_view(shown)
    plan = shown["blocks"][0]["text"]["text"]
    assert "iris 2.0.0 instances: 1 -> 2" in plan and "iris 2.0.0: 1 instance(s) start" in plan
    assert shown["submit"]["text"] == "Confirm: apply"
    assert snapshots(bot, me) == [1]  # nothing applied before confirming
    confirmed = {**sent, "private_metadata": shown["private_metadata"]}
    assert post(bot.url, submission(confirmed), FORM).body == ""
    assert snapshots(bot, me) == [1, 2]
