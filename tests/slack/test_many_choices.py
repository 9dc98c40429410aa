"""Selects of more than 100 choices (Block Kit's static_select holds 100): external_selects
whose options the bot serves from the form's own choices as the user types. Signed requests
go to the bot (block_suggestion at the Options Load URL, the same /slack/events); the Web API
is the local fake."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from budget import check, check_options
from conftest import Bot
from slack_support import block_action, command_body, filled, post, submit, suggestion_body

from opsbot.core.app import Core
from opsbot.core.registry import NORMAL
from opsbot.slack import views

FORM = "application/x-www-form-urlencoded"
MANY = [f"model-{i:03d}" for i in range(150)]
WIDE = [f"1.0.{i}" for i in range(150)]


def normal(core: Core) -> None:
    """Every version registered Normal: the registry's check is its own tests' concern."""
    with core.store.write() as db:
        db.execute("UPDATE model_versions SET status = ? WHERE status != ?", (NORMAL, NORMAL))


@pytest.fixture
def many(bot: Bot, me: str, example_dirs: dict[tuple[str, str], Path]) -> Bot:
    """``me`` (Slack U1) owns 150 models more than the examples, one version each."""
    for name in MANY:
        bot.core.registry.create(me, name, "1.0.0", example_dirs[("iris", "1.0.0")], "sklearn")
    normal(bot.core)
    return bot


@pytest.fixture
def wide(bot: Bot, me: str, example_dirs: dict[tuple[str, str], Path]) -> Bot:
    """``me`` owns the model ``wide`` in 150 versions."""
    for version in WIDE:
        bot.core.registry.create(me, "wide", version, example_dirs[("iris", "1.0.0")], "sklearn")
    normal(bot.core)
    return bot


def block(view: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The block whose id is ``prefix`` or starts with ``prefix.`` (the generation left out)."""
    return next(
        b for b in view["blocks"] if b.get("block_id", "").split(".")[:2] == prefix.split(".")
    )


def ask(bot: Bot, view: dict[str, Any], prefix: str, typed: str, user: str = "U1") -> list[Any]:
    """The options the bot answers while ``typed`` is in the select of block ``prefix``."""
    reply = post(bot.url, suggestion_body(view, block(view, prefix)["block_id"], typed, user), FORM)
    assert reply.status == 200, reply.body
    return check_options(reply.json())


def texts(options: list[dict[str, Any]]) -> list[str]:
    return [o["text"]["text"] for o in options]


def opened_form(bot: Bot) -> dict[str, Any]:
    post(bot.url, command_body("/deploy", "", bot.fake.response_url), FORM)
    view: dict[str, Any] = bot.fake.wait_for("views.open")["view"]
    check(view)
    return view


def test_a_catalog_of_150_models_opens_an_external_select(many: Bot) -> None:
    view = opened_form(many)
    model = block(view, "m0.model")["element"]
    assert model["type"] == "external_select" and "options" not in model
    assert model["min_query_length"] == views.MIN_QUERY_LENGTH
    assert model["action_id"] == views.A_MODEL
    assert "153" in model["placeholder"]["text"]  # 150 and the three examples
    # Selects of 100 choices or fewer stay static, as before.
    assert block(view, "m0.source")["element"]["type"] == "static_select"
    assert block(view, "auto_stop")["element"]["type"] == "static_select"


def test_a_block_suggestion_answers_the_matches_best_first(many: Bot) -> None:
    view = opened_form(many)
    catalog = list(many.bot.catalog(many.core.slack_user("U1"))["mine"])
    # Nothing typed yet (the menu just opened): the first 100, in the form's order.
    first = ask(many, view, "m0.model", "")
    assert texts(first) == catalog[:100]
    assert [o["value"] for o in first] == [views.option_key(m) for m in catalog[:100]]
    # A word that starts with what is typed ranks before a match inside a word.
    assert texts(ask(many, view, "m0.model", "14")) == [
        *(f"model-{i}" for i in range(140, 150)),
        "model-014",
        "model-114",
    ]
    # Case does not matter; the name itself comes before names that start with it.
    assert texts(ask(many, view, "m0.model", "MODEL-01")) == [f"model-01{i}" for i in range(10)]
    assert texts(ask(many, view, "m0.model", " Iris")) == ["iris", "iris-onnx"]
    assert ask(many, view, "m0.model", "no-such-model") == []


def test_a_suggested_model_is_chosen_then_deployed(many: Bot, me: str) -> None:
    view = opened_form(many)
    picked = ask(many, view, "m0.model", "model-142")[0]
    assert picked["text"]["text"] == "model-142"
    # Picking it sends block_actions (the input dispatches), as for a static select.
    model_bid = block(view, "m0.model")["block_id"]
    action = {
        "action_id": views.A_MODEL,
        "block_id": model_bid,
        "type": "external_select",
        "selected_option": picked,
    }
    sent = {**filled(view, {"m0.model": picked}), "id": "V9", "hash": "h9"}
    post(many.url, block_action(action, view=sent), FORM)
    update = many.fake.wait_for("views.update")
    assert update["view_id"] == "V9" and update["hash"] == "h9"
    drawn = update["view"]
    check(drawn)
    model = block(drawn, "m0.model")["element"]
    assert model["type"] == "external_select"
    assert model["initial_option"] == picked  # the current value, shown
    version = block(drawn, "m0.version")["element"]
    assert version["initial_option"]["value"] == "1.0.0"  # its only version, preselected
    # The submitted view carries the external select's selected_option; it deploys.
    assert submit(many.url, filled(drawn, {"name": "picked", "m0.model": picked})).body == ""
    service = many.core.service(many.core.user(me), "picked")
    assert [(m.model, m.version) for m in service.spec.models] == [("model-142", "1.0.0")]


def test_a_model_added_after_the_form_opened_can_be_picked(
    many: Bot, me: str, example_dirs: dict[tuple[str, str], Path]
) -> None:
    view = opened_form(many)
    many.core.registry.create(me, "zz-late", "1.0.0", example_dirs[("iris", "1.0.0")], "sklearn")
    normal(many.core)
    picked = ask(many, view, "m0.model", "late")
    assert texts(picked) == ["zz-late"]
    values = {"name": "late", "m0.model": picked[0], "m0.version": "1.0.0"}
    assert submit(many.url, filled(view, values)).body == ""
    service = many.core.service(many.core.user(me), "late")
    assert service.spec.models[0].model == "zz-late"


def test_suggestions_offer_only_what_the_user_may_see(
    many: Bot, me: str, example_dirs: dict[tuple[str, str], Path]
) -> None:
    core = many.core
    stranger = core.slack_user("U2")  # not linked: a user of its own, not an admin
    core.registry.create(
        stranger.name, "theirs", "1.0.0", example_dirs[("iris", "1.0.0")], "sklearn"
    )
    normal(core)
    form = opened_form(many)
    assert len(ask(many, form, "m0.model", "")) == 100  # U1's own
    # Another user with the same form's key gets nothing: the form is U1's alone ...
    assert ask(many, form, "m0.model", "", user="U2") == []
    # ... and in a form of their own, their own catalog, never U1's.
    theirs = many.bot.modal(stranger, views.FormState())
    assert texts(ask(many, theirs, "m0.model", "", user="U2")) == ["theirs"]
    assert ask(many, form, "m0.model", "model", user="U3") == []  # unknown: owns nothing
    # The Modify form of U1's service offers U1's models to U1 (the current one shown) ...
    core.create_service(
        core.user(me), {"name": "svc", "models": [{"model": "model-142", "version": "1.0.0"}]}
    )
    spec = core.service(core.user(me), "svc").spec
    modify = many.bot.modal(core.slack_user("U1"), views.form_from_spec(spec, me))
    check(modify)
    element = block(modify, "m0.model")["element"]
    assert element["type"] == "external_select"
    assert element["initial_option"]["text"]["text"] == "model-142"
    assert texts(ask(many, modify, "m0.model", "model-142")) == ["model-142"]
    # ... and nothing to a user who may not see the service.
    assert ask(many, modify, "m0.model", "model-142", user="U2") == []
    assert ask(many, modify, "m0.version", "", user="U2") == []
    assert many.fake.of("chat.postMessage") == []  # a refusal is no failure to report


def test_a_model_of_150_versions_offers_each_version_and_rule_target(wide: Bot, me: str) -> None:
    actor = wide.core.slack_user("U1")
    state = views.FormState()
    views.choose_model(state, 0, "wide", wide.bot.catalog(actor))
    views.add_rule(state)
    view = wide.bot.modal(actor, state)
    check(view)
    version = block(view, "m0.version")["element"]
    target = block(view, "r0.version")["element"]
    assert version["type"] == target["type"] == "external_select"
    assert target["action_id"] == views.A_VALUE  # an input no listener acts on, until submit
    assert texts(ask(wide, view, "m0.version", "1.0.14")) == [
        "1.0.14",
        *(f"1.0.{i}" for i in range(140, 150)),
    ]
    rule_target = ask(wide, view, "r0.version", "1.0.149")
    assert texts(rule_target) == ["wide 1.0.149"]
    chosen = ask(wide, view, "m0.version", "1.0.149")[0]
    values = {
        "name": "wide-svc",
        "m0.version": chosen,
        "r0.header": "X-Beta",
        "r0.value": "yes",
        "r0.version": rule_target[0],
    }
    assert submit(wide.url, filled(view, values)).body == ""
    spec = wide.core.service(wide.core.user(me), "wide-svc").spec
    assert [(m.model, m.version) for m in spec.models] == [("wide", "1.0.149")]
    assert [(r.header, r.equals, r.version) for r in spec.rules] == [("X-Beta", "yes", "1.0.149")]


def test_a_form_gone_or_a_stale_block_offers_nothing(many: Bot, me: str) -> None:
    view = opened_form(many)
    assert ask(many, view, "m0.model", "model-1")  # the form held: options
    gone = {**view, "private_metadata": '{"d":"no-such-draft"}'}
    assert ask(many, gone, "m0.model", "model-1") == []
    # A block the form no longer shows (the source changed since: a new model block).
    state = views.state_from_view(view, many.bot.drafts, me)
    views.choose_source(state, 0, "subscribed")
    many.bot.drafts.save(state, me)
    assert ask(many, view, "m0.model", "model-1") == []


def test_a_failing_suggestion_answers_no_options_and_tells_the_user(
    many: Bot, monkeypatch: pytest.MonkeyPatch
) -> None:
    view = opened_form(many)

    def broken(*_: Any) -> list[tuple[str, str]]:
        raise RuntimeError("catalog unreadable")

    monkeypatch.setattr(views, "select_options", broken)
    assert ask(many, view, "m0.model", "model") == []
    told = many.fake.wait_for("chat.postMessage")
    assert told["channel"] == "U1" and "catalog unreadable" in told["text"]
