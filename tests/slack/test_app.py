"""The bot end to end in one process: signed requests in, a fake Web API out."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Bot
from slack_sdk.models.views import View
from slack_support import (
    SECRET,
    FakeSlack,
    big_probe,
    block_action,
    command_body,
    event_body,
    filled,
    post,
    sign,
    submission,
    submit,
    trigger_of,
)

from opsbot.core import events
from opsbot.core import services as services_mod
from opsbot.core.admission import CheckedSpec, check_spec
from opsbot.core.app import Core
from opsbot.core.deadlines import EXTEND_HOURS
from opsbot.core.events import Kind, Level
from opsbot.core.notify import Dispatcher
from opsbot.core.spec import DeploySpec
from opsbot.core.status import Status
from opsbot.slack import views
from opsbot.slack.app import build_app, make_client, start_slack

FORM = "application/x-www-form-urlencoded"


def modal_for(bot: Bot) -> dict[str, Any]:
    return bot.bot.modal(bot.core.slack_user("U1"), views.FormState())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def move(core: Core, name: str, owner: str, to: Status, actor: str = "controller") -> None:
    """Move a service as the controller would: Running starts its auto stop countdown."""
    service = core.service(core.user(owner), name)
    now = time.time()
    due = {}
    if to == Status.RUNNING and service.spec.auto_stop.enabled:
        due = {"due_time": now + service.spec.auto_stop.seconds}
    with core.store.write() as db:
        assert services_mod.transition(
            db, now, service, to, actor=actor, message=f"now {to.value}", **due
        )


def test_deploy_command_acks_and_opens_a_valid_modal(bot: Bot) -> None:
    body = command_body("/deploy", "", bot.fake.response_url)
    reply = post(bot.url, body, FORM)
    assert reply.status == 200 and reply.seconds < 3
    opened = bot.fake.wait_for("views.open")
    assert opened["trigger_id"] == trigger_of(body)
    View(**opened["view"]).validate_json()
    model = next(b for b in opened["view"]["blocks"] if b["block_id"].startswith("m0.model."))
    offered = [(o["text"]["text"], o["value"]) for o in model["element"]["options"]]
    assert offered == [(m, views.option_key(m)) for m in ("flowers", "iris", "iris-onnx")]


def test_deploy_shortcut_creates_the_service_and_dms(bot: Bot, me: str) -> None:
    reply = post(bot.url, command_body("/deploy", "quick iris 2.0.0", bot.fake.response_url), FORM)
    assert reply.status == 200
    assert "Deploying quick" in reply.body
    dm = bot.fake.wait_for("chat.postMessage", lambda a: a["channel"] == "U1")
    assert "Deploying quick" in dm["text"]
    service = bot.core.service(bot.core.user(me), "quick")
    assert service.status == Status.DEPLOYING and service.spec.models[0].version == "2.0.0"
    assert bot.changes


def test_deploy_shortcut_checks_before_it_answers(bot: Bot, me: str) -> None:
    reply = post(bot.url, command_body("/deploy", "quick iris 9.9.9", bot.fake.response_url), FORM)
    # The ack itself is the refusal (a command's ack is seen by the user alone): no
    # "Deploying" first, no service, nothing posted afterwards.
    assert reply.status == 200 and "9.9.9" in reply.body and "Deploying" not in reply.body
    assert bot.core.services(bot.core.user(me)) == []
    bot.bot.notifier.drain()
    assert bot.fake.of("response") == [] and bot.fake.of("chat.postMessage") == []
    reply = post(bot.url, command_body("/deploy", "too few", bot.fake.response_url), FORM)
    assert "/deploy NAME MODEL VERSION" in reply.body


def test_valid_submission_deploys_then_dm_turns_running(bot: Bot, me: str) -> None:
    view = filled(
        modal_for(bot),
        {"name": "from-modal", "m0.model": "iris", "m0.version": "1.0.0", "m0.env": "A=1"},
    )
    reply = submit(bot.url, view)
    assert reply.status == 200 and reply.body == ""
    service = bot.core.service(bot.core.user(me), "from-modal")
    assert service.spec.models[0].env == {"A": "1"}
    dm = bot.fake.wait_for("chat.postMessage", lambda a: a["channel"] == "U1")
    assert "Deploying from-modal" in dm["text"]
    move(bot.core, "from-modal", me, Status.RUNNING)
    bot.dispatcher.dispatch()
    update = bot.fake.wait_for("chat.update")
    assert update["channel"] == "DU1"
    text = json.dumps(update["blocks"])
    assert f"http://gw.example:8080/v1/infers/{service.uid}" in text
    # The key itself is in the curl example (it was kept in memory), not a placeholder.
    assert "X-Auth-Token: $KEY" not in text and "shown only here" in text
    bot.bot.notifier.drain()
    assert bot.core.store.db.execute("SELECT COUNT(*) FROM slack_messages").fetchone()[0] == 0


@pytest.mark.parametrize(
    ("changes", "block"),
    [
        ({"name": "9bad"}, "name"),
        ({"m0.traffic_ratio": "60", "m1.traffic_ratio": "30"}, "m0.traffic_ratio"),
        ({"m1.version": "9.9.9"}, "m1.version."),
        ({"m0.env": "no equals sign"}, "m0.env"),
    ],
)
def test_invalid_submission_answers_errors_under_inputs(
    bot: Bot, me: str, changes: dict[str, str], block: str
) -> None:
    state = views.FormState()
    views.add_group(state)
    modal = bot.bot.modal(bot.core.slack_user("U1"), state)
    values = {
        "name": "gated",
        "m0.model": "iris",
        "m0.version": "1.0.0",
        "m0.traffic_ratio": "70",
        "m1.model": "iris",
        "m1.version": "2.0.0",
        "m1.traffic_ratio": "30",
        **changes,
    }
    reply = submit(bot.url, filled(modal, values))
    assert reply.status == 200
    answer = reply.json()
    assert answer["response_action"] == "errors"
    errors = answer["errors"]
    assert any(b == block or b.startswith(block) for b in errors), errors
    input_ids = {b["block_id"] for b in modal["blocks"] if b["type"] == "input"}
    assert set(errors) <= input_ids
    assert bot.core.services(bot.core.user(me)) == []


def test_gated_submission_deploys_two_versions(bot: Bot, me: str) -> None:
    state = views.FormState()
    views.add_group(state)
    modal = bot.bot.modal(bot.core.slack_user("U1"), state)
    values = {
        "name": "gated",
        "m0.model": "iris",
        "m0.version": "1.0.0",
        "m0.traffic_ratio": "70",
        "m1.model": "iris",
        "m1.version": "2.0.0",
        "m1.traffic_ratio": "30",
    }
    assert submit(bot.url, filled(modal, values)).body == ""
    spec = bot.core.service(bot.core.user(me), "gated").spec
    assert [(m.version, m.traffic_ratio) for m in spec.models] == [("1.0.0", 70), ("2.0.0", 30)]


def test_quota_and_duplicate_names_come_back_on_the_name(bot: Bot) -> None:
    values = {"name": "twice", "m0.model": "iris", "m0.version": "1.0.0"}
    assert submit(bot.url, filled(modal_for(bot), values)).body == ""
    again = submit(bot.url, filled(modal_for(bot), values)).json()
    assert "already have a service named twice" in again["errors"]["name"]


def test_choosing_a_source_updates_the_modal(bot: Bot) -> None:
    modal = modal_for(bot)
    view = {**filled(modal, {}), "id": "V9", "hash": "h9"}
    action = {
        "action_id": views.A_SOURCE,
        "block_id": "m0.source",
        "type": "static_select",
        "selected_option": {"value": "subscribed"},
    }
    reply = post(bot.url, block_action(action, view=view), FORM)
    assert reply.status == 200
    update = bot.fake.wait_for("views.update")
    assert update["view_id"] == "V9" and update["hash"] == "h9"
    ids = [b.get("block_id") for b in update["view"]["blocks"]]
    assert "m0.model.1" in ids and "m0.model.0" not in ids
    View(**update["view"]).validate_json()


def test_a_new_model_resets_its_version_though_slack_sends_the_choice_in_the_view(
    bot: Bot,
) -> None:
    """Slack's block_actions payload carries the select's new value in view.state as well;
    the choice is the action's to apply (the version starts over, a fresh block), not a value
    merged before it."""
    modal = modal_for(bot)
    first = {**filled(modal, {"m0.model": "iris", "m0.version": "2.0.0"}), "id": "V9"}
    model_block = next(b for b in modal["blocks"] if b["block_id"].startswith("m0.model."))
    action = {
        "action_id": views.A_MODEL,
        "block_id": model_block["block_id"],
        "type": "static_select",
        "selected_option": {"value": views.option_key("iris")},
    }
    post(bot.url, block_action(action, view=first), FORM)
    update = bot.fake.wait_for("views.update")["view"]
    version = next(b for b in update["blocks"] if b["block_id"].startswith("m0.version."))
    assert version["block_id"] != "m0.version.0"  # a fresh block: Slack forgets the old pick
    assert [o["value"] for o in version["element"]["options"]] == ["1.0.0", "2.0.0"]
    assert "initial_option" not in version["element"]


def test_add_version_button_adds_a_group(bot: Bot) -> None:
    view = filled(modal_for(bot), {})
    action = {"action_id": views.A_ADD, "block_id": "add_version", "value": "add"}
    post(bot.url, block_action(action, view=view), FORM)
    update = bot.fake.wait_for("views.update")
    heads = [b for b in update["view"]["blocks"] if b.get("block_id", "").endswith(".head")]
    assert len(heads) == 2


def test_services_lists_and_buttons_act(bot: Bot, me: str) -> None:
    values = {"name": "listed", "m0.model": "iris", "m0.version": "1.0.0"}
    submit(bot.url, filled(modal_for(bot), values))
    post(bot.url, command_body("/services", "", bot.fake.response_url), FORM)
    listed = bot.fake.wait_for("response")
    assert "listed" in listed["text"] and listed["response_type"] == "ephemeral"
    stop = next(
        e
        for b in listed["blocks"]
        if b["type"] == "actions"
        for e in b["elements"]
        if e["action_id"] == views.A_STOP
    )
    assert "confirm" in stop
    action = {"action_id": views.A_STOP, "block_id": "x", "value": stop["value"]}
    # Someone else may not stop it: an ephemeral refusal, nothing changes.
    post(bot.url, block_action(action, user="U2", response_url=bot.fake.response_url), FORM)
    refusal = bot.fake.wait_for("response", lambda a: "Not allowed" in a.get("text", ""))
    assert refusal["replace_original"] is False
    assert bot.core.service(bot.core.user(me), "listed").status == Status.DEPLOYING
    post(bot.url, block_action(action, response_url=bot.fake.response_url), FORM)
    bot.fake.wait_for("response", lambda a: a.get("replace_original") is True)
    assert bot.core.service(bot.core.user(me), "listed").status == Status.STOPPING
    said = bot.fake.wait_for("response", lambda a: a.get("text") == "Stopping listed.")
    assert said["response_type"] == "ephemeral"  # the button says what it did


def test_app_home_shows_quota(bot: Bot) -> None:
    values = {"name": "home-one", "m0.model": "iris", "m0.version": "1.0.0"}
    submit(bot.url, filled(modal_for(bot), values))
    body = event_body({"type": "app_home_opened", "user": "U1", "tab": "home", "channel": "D1"})
    reply = post(bot.url, body, "application/json")
    assert reply.status == 200
    published = bot.fake.wait_for("views.publish")
    assert published["user_id"] == "U1"
    View(**published["view"]).validate_json()
    assert "1/20" in json.dumps(published["view"])


def test_bad_signature_and_stale_timestamp_are_refused(bot: Bot) -> None:
    body = command_body("/deploy", "", bot.fake.response_url)
    forged = sign(body, secret="not-the-secret")
    assert post(bot.url, body, FORM, headers=forged).status == 401
    stale = sign(body, timestamp=int(time.time()) - 6 * 60)
    assert post(bot.url, body, FORM, headers=stale).status == 401
    assert bot.fake.of("views.open") == []


def test_stop_alerts_the_channel_and_dms_the_owner(bot: Bot, me: str) -> None:
    post(bot.url, command_body("/deploy", "alerted iris 1.0.0", bot.fake.response_url), FORM)
    bot.fake.wait_for("chat.postMessage", lambda a: a["channel"] == "U1")
    bot.dispatcher.dispatch()
    bot.core.stop_service(bot.core.user(me), "alerted")
    move(bot.core, "alerted", me, Status.STOPPED)
    bot.dispatcher.dispatch()
    alert = bot.fake.wait_for("chat.postMessage", lambda a: a["channel"] == "C_ALERTS")
    assert "alerted" in alert["text"] and f"stopped by {me}" in alert["text"]
    dm = bot.fake.wait_for(
        "chat.postMessage", lambda a: a["channel"] == "U1" and "stopped" in a["text"]
    )
    assert dm["blocks"]


def test_an_auto_stop_the_runtime_refused_alerts_with_its_reason(bot: Bot, me: str) -> None:
    post(bot.url, command_body("/deploy", "stuck iris 1.0.0", bot.fake.response_url), FORM)
    bot.fake.wait_for("chat.postMessage", lambda a: a["channel"] == "U1")
    service = bot.core.service(bot.core.user(me), "stuck")
    with bot.core.store.write() as db:
        events.record(
            db,
            time=time.time(),
            kind=Kind.AUTO_STOP_FAILED,
            actor="controller",
            service_id=service.id,
            service=service.name,
            owner=me,
            level=Level.ABNORMAL,
            message="auto stop could not stop the instances: engine unreachable",
        )
    bot.dispatcher.dispatch()
    alert = bot.fake.wait_for("chat.postMessage", lambda a: a["channel"] == "C_ALERTS")
    assert "stuck" in alert["text"] and "did not auto stop" in alert["text"]
    assert "engine unreachable" in alert["text"]
    bot.fake.wait_for("chat.postMessage", lambda a: a["channel"] == "U1" and "engine" in a["text"])


@pytest.mark.parametrize(("action_id", "hours"), [(views.A_EXTEND_1, 1), (views.A_EXTEND_4, 4)])
def test_reminder_dm_extends(bot: Bot, me: str, action_id: str, hours: int) -> None:
    post(bot.url, command_body("/deploy", "reminded iris 1.0.0", bot.fake.response_url), FORM)
    bot.fake.wait_for("chat.postMessage", lambda a: a["channel"] == "U1")
    move(bot.core, "reminded", me, Status.RUNNING)
    service = bot.core.service(bot.core.user(me), "reminded")
    with bot.core.store.write() as db:
        events.record(
            db,
            time=time.time(),
            kind=Kind.REMINDER,
            actor="auto-stop",
            service_id=service.id,
            service=service.name,
            owner=me,
            message="stops in 10 min",
        )
    bot.dispatcher.dispatch()
    dm = bot.fake.wait_for("chat.postMessage", lambda a: "Extend" in json.dumps(a["blocks"]))
    buttons = next(b for b in dm["blocks"] if b["type"] == "actions")["elements"]
    assert [e["text"]["text"] for e in buttons] == ["Extend 1 h", "Extend 4 h"]
    button = next(e for e in buttons if e["action_id"] == action_id)
    action = {"action_id": action_id, "block_id": "x", "value": button["value"]}
    before = bot.core.service(bot.core.user(me), "reminded").due_time
    assert before is not None
    post(bot.url, block_action(action, response_url=bot.fake.response_url), FORM)
    done = bot.fake.wait_for("response", lambda a: "Extended" in a.get("text", ""))
    # The hours are added to the time left, and the answer says both.
    assert f"left; +{hours}h 00m: stops in" in done["text"] and done["replace_original"] is True
    due = bot.core.service(bot.core.user(me), "reminded").due_time
    assert due == pytest.approx(before + hours * 3600)


def test_rate_limited_calls_are_retried(bot: Bot) -> None:
    bot.fake.rate_limit_next.add("chat.postMessage")
    post(bot.url, command_body("/deploy", "limited iris 1.0.0", bot.fake.response_url), FORM)
    bot.fake.wait_for("chat.postMessage", lambda a: a["channel"] == "U1")
    assert bot.fake.of("chat.postMessage#429")


def test_start_slack_needs_env(core: Core, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SLACK_BOT_TOKEN", "SLACK_APP_TOKEN", "SLACK_SIGNING_SECRET"):
        monkeypatch.delenv(name, raising=False)
    assert (
        start_slack(core, on_change=lambda: None, gateway_url="", dispatcher=Dispatcher(core.store))
        is None
    )


def test_start_slack_http_mode(
    core: Core, fake: FakeSlack, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    monkeypatch.delenv("SLACK_APP_TOKEN", raising=False)
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-test")
    monkeypatch.setenv("SLACK_SIGNING_SECRET", SECRET)
    monkeypatch.setenv("OPSBOT_SLACK_PORT", str(port))
    monkeypatch.setenv("OPSBOT_SLACK_API_URL", fake.url)
    dispatcher = Dispatcher(core.store)
    stop = start_slack(core, on_change=lambda: None, gateway_url="", dispatcher=dispatcher)
    assert stop is not None
    try:
        url = f"http://127.0.0.1:{port}/slack/events"
        reply = post(url, command_body("/services", "", fake.response_url), FORM)
        assert reply.status == 200
        fake.wait_for("response")
        assert len(dispatcher.notifiers) == 1
    finally:
        stop()
    assert dispatcher.notifiers == []


# -- deploy DMs survive a restart ----------------------------------------------------------------


def deploy_from_modal(bot: Bot, name: str) -> tuple[str, str]:
    """Deploy through the modal; the (channel, ts) Slack gave the "Deploying ..." DM."""
    values = {"name": name, "m0.model": "iris", "m0.version": "1.0.0"}
    assert submit(bot.url, filled(modal_for(bot), values)).body == ""
    bot.fake.wait_for("chat.postMessage", lambda a: f"Deploying {name}" in a["text"])
    posted = next(
        c.reply
        for c in bot.fake.calls
        if c.method == "chat.postMessage" and f"Deploying {name}" in c.args["text"]
    )
    assert posted["channel"] == "DU1"
    return str(posted["channel"]), str(posted["ts"])


def restarted(examples_home: Path, fake: FakeSlack) -> tuple[Core, Any]:
    """A new core and bot on the same home, as after a daemon restart."""
    core = Core(examples_home, probe=big_probe())
    _, bot = build_app(
        core,
        client=make_client("xoxb-test", fake.url),
        signing_secret=SECRET,
        on_change=lambda: None,
        gateway_url="http://gw.example:8080",
    )
    return core, bot


def test_deploy_dm_is_updated_in_place_after_a_restart(
    bot: Bot, examples_home: Path, me: str
) -> None:
    channel, ts = deploy_from_modal(bot, "survivor")
    # The daemon goes away before the deploy ends; nothing it kept in memory is left.
    bot.dispatcher.unsubscribe(bot.bot.notifier)
    bot.bot.notifier.close()
    core, again = restarted(examples_home, bot.fake)
    try:
        dispatcher = Dispatcher(core.store, [again.notifier])
        move(core, "survivor", me, Status.RUNNING)
        dispatcher.dispatch()
        update = bot.fake.wait_for("chat.update")
        assert (update["channel"], update["ts"]) == (channel, ts)
        assert "survivor is Running" in update["text"]
        text = json.dumps(update["blocks"])
        # The key was never written down in clear: the DM says how to get a new one.
        assert "X-Auth-Token: $KEY" in text and "opsbot key rotate survivor" in text
        again.notifier.drain()
        assert core.store.db.execute("SELECT COUNT(*) FROM slack_messages").fetchone()[0] == 0
        assert len(bot.fake.of("chat.update")) == 1
    finally:
        again.notifier.close()
        core.store.close()


def test_deploy_that_failed_while_down_is_reported_at_start(
    bot: Bot, fake: FakeSlack, examples_home: Path, me: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    channel, ts = deploy_from_modal(bot, "crashed")
    bot.dispatcher.unsubscribe(bot.bot.notifier)
    bot.bot.notifier.close()
    with bot.core.store.write() as db:
        service = bot.core.service(bot.core.user(me), "crashed")
        assert services_mod.transition(
            db, time.time(), service, Status.FAILED, actor="controller",
            message="failed", reason="model did not load",
        )  # fmt: skip
    core = Core(examples_home, probe=big_probe())
    dispatcher = Dispatcher(core.store)  # starts after the Failed event: it is not replayed
    monkeypatch.delenv("SLACK_APP_TOKEN", raising=False)
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-test")
    monkeypatch.setenv("SLACK_SIGNING_SECRET", SECRET)
    monkeypatch.setenv("OPSBOT_SLACK_PORT", str(free_port()))
    monkeypatch.setenv("OPSBOT_SLACK_API_URL", fake.url)
    stop = start_slack(core, on_change=lambda: None, gateway_url="", dispatcher=dispatcher)
    assert stop is not None
    try:
        update = fake.wait_for("chat.update")
        assert (update["channel"], update["ts"]) == (channel, ts)
        assert "model did not load" in update["text"]
    finally:
        stop()
        core.store.close()


def test_deploy_dm_of_a_service_deleted_while_deploying(bot: Bot, me: str) -> None:
    channel, ts = deploy_from_modal(bot, "gone")
    bot.dispatcher.dispatch()
    bot.core.delete_service(bot.core.user(me), "gone")
    bot.dispatcher.dispatch()
    update = bot.fake.wait_for("chat.update")
    assert (update["channel"], update["ts"]) == (channel, ts)
    assert update["text"].startswith("gone is Deleting")
    bot.bot.notifier.drain()
    count = "SELECT COUNT(*) FROM slack_messages"
    assert bot.core.store.db.execute(count).fetchone()[0] == 0
    # A row left for a service that goes away goes with it.
    deploy_from_modal(bot, "dropped")
    # The bot records the DM once Slack's answer to it is back, just after the fake saw it.
    deadline = time.monotonic() + 10
    while bot.core.store.db.execute(count).fetchone()[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert bot.core.store.db.execute(count).fetchone()[0] == 1
    service = bot.core.service(bot.core.user(me), "dropped")
    with bot.core.store.write() as db:
        db.execute("DELETE FROM services WHERE id = ?", (service.id,))
    assert bot.core.store.db.execute(count).fetchone()[0] == 0


# -- Extend: a choice of hours from /services and App Home, and the reminder's buttons -------------


def extend_menu(blocks: list[dict[str, Any]]) -> dict[str, Any]:
    return next(
        e
        for b in blocks
        if b["type"] == "actions"
        for e in b["elements"]
        if e["action_id"] == views.A_EXTEND
    )


def running_service(bot: Bot, me: str, name: str) -> None:
    post(bot.url, command_body("/deploy", f"{name} iris 1.0.0", bot.fake.response_url), FORM)
    bot.fake.wait_for("chat.postMessage", lambda a: f"Deploying {name}" in a["text"])
    move(bot.core, name, me, Status.RUNNING)


@pytest.mark.parametrize("hours", [2, 6])
def test_services_extend_menu_extends_by_the_chosen_hours(bot: Bot, me: str, hours: int) -> None:
    running_service(bot, me, "longer")
    before = bot.core.service(bot.core.user(me), "longer").due_time
    assert before is not None
    post(bot.url, command_body("/services", "", bot.fake.response_url), FORM)
    listed = bot.fake.wait_for("response")
    menu = extend_menu(listed["blocks"])
    texts = [o["text"]["text"] for o in menu["options"]]
    assert [t.partition(":")[0] for t in texts] == [f"Extend {h} h" for h in EXTEND_HOURS]
    assert all(": stops in " in t for t in texts)  # the new deadline, before choosing
    option = next(o for o in menu["options"] if o["text"]["text"].startswith(f"Extend {hours} h:"))
    action = {
        "action_id": views.A_EXTEND,
        "block_id": "x",
        "type": "static_select",
        "selected_option": option,
    }
    # Someone else may not extend it.
    post(bot.url, block_action(action, user="U2", response_url=bot.fake.response_url), FORM)
    bot.fake.wait_for("response", lambda a: "Not allowed" in a.get("text", ""))
    assert bot.core.service(bot.core.user(me), "longer").due_time == before
    post(bot.url, block_action(action, response_url=bot.fake.response_url), FORM)
    refreshed = bot.fake.wait_for("response", lambda a: a.get("replace_original") is True)
    due = bot.core.service(bot.core.user(me), "longer").due_time
    assert due == pytest.approx(before + hours * 3600)
    assert f"stops in {hours} h 59 min" in json.dumps(refreshed["blocks"])
    # Beside the refreshed list, a line says what the button did.
    said = bot.fake.wait_for("response", lambda a: "Extended longer" in a.get("text", ""))
    assert said["response_type"] == "ephemeral"


def test_forged_extend_hours_are_refused_by_the_core(bot: Bot, me: str) -> None:
    running_service(bot, me, "forged")
    before = bot.core.service(bot.core.user(me), "forged").due_time
    value = json.dumps({"o": me, "n": "forged", "a": 0, "h": 30})
    action = {
        "action_id": views.A_EXTEND,
        "block_id": "x",
        "type": "static_select",
        "selected_option": {"value": value, "text": {"type": "plain_text", "text": "30"}},
    }
    post(bot.url, block_action(action, response_url=bot.fake.response_url), FORM)
    said = bot.fake.wait_for("response", lambda a: "hours" in a.get("text", ""))
    assert "1 to 24" in said["text"] and said["replace_original"] is False
    assert bot.core.service(bot.core.user(me), "forged").due_time == before


def test_home_extend_menu_republishes_home_and_dms(bot: Bot, me: str) -> None:
    running_service(bot, me, "homely")
    before = bot.core.service(bot.core.user(me), "homely").due_time
    assert before is not None
    bot.bot.publish_home(make_client("xoxb-test", bot.fake.url), "U1")
    home = bot.fake.wait_for("views.publish")["view"]
    option = extend_menu(home["blocks"])["options"][1]  # 2 h
    action = {
        "action_id": views.A_EXTEND,
        "block_id": "x",
        "type": "static_select",
        "selected_option": option,
    }
    post(bot.url, block_action(action, view={"id": "VH", "type": "home"}), FORM)
    done = bot.fake.wait_for("chat.postMessage", lambda a: "Extended homely" in a["text"])
    assert "+2h 00m: stops in" in done["text"]
    assert len(bot.fake.of("views.publish")) == 2
    due = bot.core.service(bot.core.user(me), "homely").due_time
    assert due == pytest.approx(before + 2 * 3600)


# -- secret warnings shown in the modal before the deploy -----------------------------------------


def test_secret_warnings_are_shown_in_the_modal_before_deploying(bot: Bot, me: str) -> None:
    values = {"name": "secretive", "m0.model": "iris", "m0.version": "1.0.0"}
    first = filled(modal_for(bot), {**values, "m0.env": "API_TOKEN=abc\nLEVEL=info"})
    answer = submit(bot.url, first).json()
    assert answer["response_action"] == "update"
    shown = answer["view"]
    View(**shown).validate_json()
    notice = shown["blocks"][0]
    assert notice["block_id"] == "warnings"
    assert "API_TOKEN looks like a secret" in notice["text"]["text"]
    assert "LEVEL looks like" not in notice["text"]["text"]
    assert "API_TOKEN=****" in notice["text"]["text"]  # the summary, its secret masked
    assert shown["submit"]["text"] == "Deploy anyway"
    # Nothing deployed yet, and the typed values are still in the form.
    assert bot.core.services(bot.core.user(me)) == []
    name = next(b for b in shown["blocks"] if b.get("block_id") == "name")
    assert name["element"]["initial_value"] == "secretive"
    # A different secret is a new warning: asked again.
    changed = filled(shown, {**values, "m0.env": "DB_PASSWORD=x"})
    again = submit(bot.url, changed).json()
    assert again["response_action"] == "update"
    assert "DB_PASSWORD looks like a secret" in again["view"]["blocks"][0]["text"]["text"]
    # The same warnings confirmed with "Deploy anyway": deployed, the DM repeats them.
    confirmed = filled(again["view"], {**values, "m0.env": "DB_PASSWORD=x"})
    assert submit(bot.url, confirmed).body == ""
    service = bot.core.service(bot.core.user(me), "secretive")
    assert service.spec.models[0].env == {"DB_PASSWORD": "x"}
    dm = bot.fake.wait_for("chat.postMessage", lambda a: "Deploying secretive" in a["text"])
    assert "DB_PASSWORD looks like a secret" in json.dumps(dm["blocks"])


def test_a_deploy_shows_the_entered_information_to_confirm_first(bot: Bot, me: str) -> None:
    values = {"name": "plain", "m0.model": "iris", "m0.version": "1.0.0", "m0.env": "LEVEL=info"}
    first = post(bot.url, submission(filled(modal_for(bot), values)), FORM).json()
    assert first["response_action"] == "update"
    shown = first["view"]
    View(**shown).validate_json()
    notice = shown["blocks"][0]["text"]["text"]
    for line in ("Name: plain", "Auto Stop: 1 hour later", "Model: iris 1.0.0"):
        assert line in notice
    assert shown["submit"]["text"] == "Confirm: deploy"
    assert bot.core.services(bot.core.user(me)) == []  # nothing deployed before confirming
    assert submit(bot.url, filled(modal_for(bot), values)).body == ""
    assert bot.core.service(bot.core.user(me), "plain").status == Status.DEPLOYING


def test_a_deploy_from_slack_checks_the_form_once(
    bot: Bot, me: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    checks: list[str] = []

    def counted(spec: DeploySpec, *rest: Any) -> CheckedSpec:
        checks.append(spec.name)
        return check_spec(spec, *rest)

    monkeypatch.setattr("opsbot.core.admission.check_spec", counted)
    values = {"name": "once", "m0.model": "iris", "m0.version": "1.0.0"}
    view = filled(modal_for(bot), values)
    first = post(bot.url, submission(view), FORM).json()  # the summary to confirm: one check
    assert first["response_action"] == "update" and checks == ["once"]
    confirmed = {**view, "private_metadata": first["view"]["private_metadata"]}
    assert post(bot.url, submission(confirmed), FORM).body == ""  # confirmed: one check more
    assert checks == ["once", "once"]
    assert bot.core.service(bot.core.user(me), "once").status == Status.DEPLOYING
    reply = post(bot.url, command_body("/deploy", "quick iris 2.0.0", bot.fake.response_url), FORM)
    assert "Deploying quick" in reply.body and checks == ["once", "once", "quick"]


# -- App Home --------------------------------------------------------------------------------------


def test_home_deploy_button_opens_the_deploy_modal(bot: Bot) -> None:
    action = {"action_id": views.A_HOME_DEPLOY, "block_id": "x", "value": "deploy"}
    body = block_action(action, view={"id": "VH", "type": "home"})
    reply = post(bot.url, body, FORM)
    assert reply.status == 200 and reply.seconds < 3
    opened = bot.fake.wait_for("views.open")
    assert opened["trigger_id"] == trigger_of(body)
    assert opened["view"]["callback_id"] == views.DEPLOY_CALLBACK
    View(**opened["view"]).validate_json()


def test_home_counts_every_service_against_the_quota(bot: Bot, me: str) -> None:
    running_service(bot, me, "one")
    running_service(bot, me, "two")
    bot.core.stop_service(bot.core.user(me), "two")  # stopped services still count
    body = event_body({"type": "app_home_opened", "user": "U1", "tab": "home", "channel": "D1"})
    post(bot.url, body, "application/json")
    home = bot.fake.wait_for("views.publish")["view"]
    View(**home).validate_json()
    assert "*Quota:* 2/20 services" in json.dumps(home)
    deploy = home["blocks"][1]["accessory"]
    assert deploy["action_id"] == views.A_HOME_DEPLOY


def test_the_bot_builds_while_slack_is_out_of_reach(examples_home: Path) -> None:
    """Nothing listens on the Web API's port: building the app (as the daemon does at start)
    must not call Slack, so an outage cannot keep the daemon from starting."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/api/"
    core = Core(examples_home, probe=big_probe())
    app, bot = build_app(
        core,
        client=make_client("xoxb-test", closed),
        signing_secret=SECRET,
        on_change=lambda: None,
        gateway_url="http://gw.example:8080",
    )
    assert app.client.base_url == closed
    bot.notifier.close()
