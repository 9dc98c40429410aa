"""A service too large for one modal, modified from Slack a version at a time (issue 16):
signed requests to the bot, the Web API faked. Modify lists the versions; Edit pushes version
10's own modal; Done keeps it in the form; Apply goes through the daemon's plan and applies."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from conftest import Bot
from slack_support import block_action, post, submission
from test_modify import FORM, as_sent, block, initial, listed_button, move, press, wait_count

from opsbot.core.app import Core
from opsbot.core.status import Status
from opsbot.slack import views
from opsbot.slack.drafts import Drafts

VERSIONS = ["1.0.0", "2.0.0", *(f"3.{i}" for i in range(8))]


def large_service(core: Core, me: str, example_dirs: dict[tuple[str, str], Path]) -> None:
    """iris in ten versions (10% each; a secret on the last), three rules, Running."""
    for v in VERSIONS[2:]:
        core.registry.create(me, "iris", v, example_dirs[("iris", "1.0.0")], "sklearn")
    with core.store.write() as db:  # the registry's check is its own tests' concern
        db.execute("UPDATE model_versions SET status = 'normal' WHERE status != 'normal'")
    models: list[dict[str, Any]] = [
        {"model": "iris", "version": v, "traffic_ratio": 10, "env": {"N": str(i)}}
        for i, v in enumerate(VERSIONS)
    ]
    models[-1]["env"] = {"N": "9", "API_TOKEN": "tok-0123456789abcdef"}
    rules = [
        {"header": "X-Group", "equals": "beta", "version": "2.0.0"},
        {"header": "X-Canary", "matches": "yes|true", "version": "3.7"},
        {"header": "X-Old", "equals": "1", "version": "1.0.0"},
    ]
    core.create_service(core.user(me), {"name": "big", "models": models, "rules": rules})
    move(core, "big", me, Status.RUNNING)


def test_version_ten_of_a_large_service_is_edited_in_its_own_modal(
    bot: Bot, me: str, example_dirs: dict[tuple[str, str], Path]
) -> None:
    large_service(bot.core, me, example_dirs)
    before = bot.core.service(bot.core.user(me), "big").spec
    press(bot, listed_button(bot, views.A_MODIFY), response_url=bot.fake.response_url)
    form_view = bot.fake.wait_for("views.open")["view"]
    # Ten versions and three rules pass one modal's 100 blocks: versions are rows, rules stay.
    assert not any(str(b.get("block_id")).endswith(".traffic_ratio") for b in form_view["blocks"])
    assert initial(block(form_view, "r2.header")["element"]) == "X-Old"
    edit = next(
        e
        for b in form_view["blocks"]
        if b.get("block_id") == "m9.edit"
        for e in b["elements"]
        if e["action_id"] == views.A_EDIT
    )
    typed = as_sent(form_view, {"description": "ten versions"})  # kept while version 10 opens
    post(bot.url, block_action({**edit, "block_id": "m9.edit"}, view=typed), FORM)
    pushed = bot.fake.wait_for("views.push")["view"]
    assert pushed["callback_id"] == views.VERSION_CALLBACK
    assert pushed["title"]["text"] == "Version 10 of 10"
    assert initial(block(pushed, "m9.version")["element"]) == "3.7"
    assert "API_TOKEN=to****ef" in str(initial(block(pushed, "m9.env")["element"]))
    # A bad value is told under its input in the version's modal; nothing changes.
    bad = post(bot.url, submission(as_sent(pushed, {"m9.instances": "0"})), FORM).json()
    assert bad["response_action"] == "errors" and list(bad["errors"]) == ["m9.instances"]
    env = "N=9\nAPI_TOKEN=to****ef\nB=2"  # the masked secret means keep
    done = post(bot.url, submission(as_sent(pushed, {"m9.instances": "3", "m9.env": env})), FORM)
    assert done.status == 200 and done.body == ""  # closes: the form is under it
    redrawn = wait_count(bot, "views.update", 1)[0]
    assert redrawn["view_id"] == form_view.get("id", "V1")
    row = block(redrawn["view"], "m9.row")["text"]["text"]
    assert "Compute Nodes 3" in row and "Environment Variable: 3" in row
    assert bot.core.service(bot.core.user(me), "big").spec == before  # nothing applied yet
    # Apply: the daemon's plan (and the secret's warning) shown to confirm, then applied.
    sent = as_sent(redrawn["view"], {"description": "ten versions"})
    plan = post(bot.url, submission(sent), FORM).json()
    assert plan["response_action"] == "update"
    shown = plan["view"]["blocks"][0]["text"]["text"]
    assert "iris 3.7 instances: 1 -> 3" in shown and "iris 3.7 env: B changed" in shown
    assert bot.core.service(bot.core.user(me), "big").spec == before
    assert post(bot.url, submission(sent), FORM).body == ""
    after = bot.core.service(bot.core.user(me), "big").spec
    assert after.models[9].instances == 3
    assert after.models[9].env == {"N": "9", "API_TOKEN": "tok-0123456789abcdef", "B": "2"}
    assert after.description == "ten versions"
    # Nothing else changed: every other version, the rules, the rest of the form.
    expected = before.model_dump()
    expected["description"] = "ten versions"
    expected["models"][9]["instances"] = 3
    expected["models"][9]["env"]["B"] = "2"
    assert after.model_dump() == expected
    dm = bot.fake.wait_for("chat.postMessage", lambda a: "Modified big" in a["text"])
    assert "instances: 1 -> 3" in dm["text"]


def test_a_form_whose_draft_is_gone_says_to_open_it_again(bot: Bot) -> None:
    """A form left open over a day is no longer held: the modal says so instead of acting on
    a form it cannot read."""
    modal = bot.bot.modal(bot.core.slack_user("U1"), views.FormState())
    later = time.time() + bot.bot.drafts.ttl + 1
    bot.bot.drafts = Drafts(bot.core.store, clock=lambda: later)  # a day later
    add = {"action_id": views.A_ADD, "block_id": "add_version", "value": "add"}
    post(bot.url, block_action(add, view=as_sent(modal, {"name": "late"})), FORM)
    gone = bot.fake.wait_for("views.update")["view"]
    assert gone["callback_id"] == "expired" and "open it again" in str(gone["blocks"])
    answer = post(bot.url, submission(as_sent(modal, {"name": "late"})), FORM).json()
    assert answer["response_action"] == "update"
    assert "open it again" in str(answer["view"]["blocks"])
    assert bot.core.services(bot.core.slack_user("U1")) == []


def test_rows_remove_and_add_versions_of_a_large_service(
    bot: Bot, me: str, example_dirs: dict[tuple[str, str], Path]
) -> None:
    large_service(bot.core, me, example_dirs)
    press(bot, listed_button(bot, views.A_MODIFY), response_url=bot.fake.response_url)
    form_view = bot.fake.wait_for("views.open")["view"]
    remove = next(
        e for e in block(form_view, "m4.edit")["elements"] if e["action_id"] == views.A_REMOVE
    )
    assert "Remove version 5?" in remove["confirm"]["title"]["text"]
    post(bot.url, block_action({**remove, "block_id": "m4.edit"}, view=as_sent(form_view)), FORM)
    fewer = wait_count(bot, "views.update", 1)[0]["view"]
    rows = [b["block_id"] for b in fewer["blocks"] if str(b.get("block_id")).endswith(".row")]
    assert rows == [f"m{i}.row" for i in range(10) if i != 4]
    add = {"action_id": views.A_ADD, "block_id": "add_version", "value": "add"}
    post(bot.url, block_action(add, view=as_sent(fewer)), FORM)
    more = wait_count(bot, "views.update", 2)[1]["view"]
    # The new version is the one the form no longer lists (3.2), never a duplicate.
    assert "iris 3.2" in block(more, "m10.row")["text"]["text"]
