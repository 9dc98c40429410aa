"""Every view the bot can send, for a service at the core's maxima, is valid for slack_sdk
and within Block Kit's budgets (issue 16, item 6): nothing cut, a large form edited a version
at a time, the form's state a draft the bot holds (private_metadata carries its key)."""

from __future__ import annotations

import json
import time
from typing import Any

import budget
import pytest

from opsbot.core import form
from opsbot.core.flavors import FlavorStatus, load_flavors
from opsbot.core.spec import (
    MAX_ENV,
    MAX_ENV_VALUE,
    MAX_RULE_VALUE,
    MAX_RULES,
    MAX_VERSIONS,
    DeploySpec,
    parse_spec,
)
from opsbot.core.update import keep_masked
from opsbot.slack import views
from opsbot.slack.drafts import Drafts

OWNER = "o" * 32
MODEL = "a" * 64 + "/" + "b" * 64  # the longest model name the core takes: 129
RESPONSE_URL = "https://hooks.slack.com/actions/T0123ABCD/1234567890123/" + "x" * 24


def version(i: int) -> str:
    return f"{i}." + "9" * 62  # 64 characters, the core's longest


def env(i: int) -> dict[str, str]:
    """The core's most variables, of every kind: secrets (masked when shown), values of the
    longest length (too long for one Slack input) and plain ones."""
    out: dict[str, str] = {}
    for k in range(MAX_ENV):
        name = f"V{i}_{k:03d}_" + "N" * 50
        if k % 10 == 0:
            out[name + "_TOKEN"] = f"s3cr3t-{k}-" + "Zq9" * 10
        elif k % 10 == 1:
            out[name] = ("word " * (MAX_ENV_VALUE // 5 + 1))[:MAX_ENV_VALUE].strip()
        elif k % 10 == 2:
            out[name] = "-----BEGIN CERT-----\nMIIB\n-----END CERT-----"  # several lines
        else:
            out[name] = f"value {k} " + "v" * 40
    return out


def biggest() -> DeploySpec:
    versions = [
        {
            "source": "subscribed",
            "model": MODEL,
            "version": version(i),
            "traffic_ratio": 10,
            "flavor": "cpu.2u8g",
            "instances": 128,
            "env": env(i),
        }
        for i in range(MAX_VERSIONS)
    ]
    rules = [
        {
            "header": "X-" + "H" * 62,
            **(
                {"equals": "e" * MAX_RULE_VALUE}
                if r % 2
                else {"matches": "[a-z]+" + "q" * (MAX_RULE_VALUE - 6)}
            ),
            "version": version(r),
        }
        for r in range(MAX_RULES)
    ]
    return parse_spec(
        {
            "name": "s" * 64,
            "auto_stop": "23h",
            "description": "d" * 100,
            "resource_pool": "p" * 64,
            "models": versions,
            "traffic_limit": 1_000_000,
            "rules": rules,
        }
    )


def flavors() -> list[FlavorStatus]:
    return [
        FlavorStatus(f, f.accelerator is None, "" if f.accelerator is None else "no GPU here")
        for f in load_flavors()
    ]


def catalog(spec: DeploySpec) -> dict[str, dict[str, list[str]]]:
    return {"mine": {}, "subscribed": {MODEL: [m.version for m in spec.models]}}


def svc(spec: DeploySpec, status: str = "running") -> dict[str, Any]:
    """The service as the core's Service.as_dict gives it to the views."""
    dumped = spec.model_dump(mode="json")
    return {
        "name": spec.name,
        "owner": OWNER,
        "status": status,
        "progress": 100,
        "reason": "r" * 2000,
        "url": "http://gw.example:8080/v1/infers/" + "u" * 36,
        "auto_stop": "23h",
        "due_time": time.time() + 3600,
        "models": dumped["models"],
        "rules": dumped["rules"],
    }


def modal_state(drafts: Drafts, deploy: bool = False) -> views.FormState:
    spec = biggest()
    state = views.form_from_spec(spec, OWNER, origin=RESPONSE_URL, everyone=True)
    if deploy:
        state.target = None
    drafts.save(state, OWNER)
    return state


def render(state: views.FormState) -> dict[str, Any]:
    spec = biggest()
    return views.deploy_modal(state, catalog(spec), ["public", "p" * 64], flavors(), {})


@pytest.mark.parametrize("deploy", [False, True], ids=["modify", "deploy"])
def test_the_largest_form_lists_versions_and_keeps_every_rule(deploy: bool, drafts: Drafts) -> None:
    state = modal_state(drafts, deploy)
    assert not views.inline(state)
    view = render(state)
    budget.check(view)
    rows = [b for b in view["blocks"] if str(b.get("block_id", "")).endswith(".row")]
    assert len(rows) == MAX_VERSIONS  # every version, none cut
    edits = [
        e["value"]
        for b in view["blocks"]
        if b["type"] == "actions"
        for e in b["elements"]
        if e["action_id"] == views.A_EDIT
    ]
    assert edits == [str(g.uid) for g in state.groups]
    for r in state.rules:  # every rule's inputs are in the form itself
        assert any(b.get("block_id") == f"r{r.uid}.value" for b in view["blocks"])
    assert not any(b.get("block_id") == "add_version" for b in view["blocks"])
    assert len(view["private_metadata"]) < 100


def test_option_values_are_short_keys_the_bot_resolves(drafts: Drafts) -> None:
    state = modal_state(drafts)
    spec = biggest()
    modal = views.version_modal(state, 0, catalog(spec), flavors(), {}, parent="V1")
    model = next(b for b in modal["blocks"] if b["block_id"].startswith("m0.model."))
    [option] = model["element"]["options"]
    assert option["text"]["text"] == MODEL[:74] + "…"  # shown clipped to Slack's 75
    assert len(option["value"]) == 16 and option["value"] == views.option_key(MODEL)
    views.offer(state, catalog(spec))
    assert views.chosen_model(state, option["value"]) == MODEL
    assert views.chosen_model(state, "k" + "0" * 15) is None  # never offered
    targets = next(b for b in render(state)["blocks"] if b.get("block_id") == "r0.version")
    assert max(len(o["value"]) for o in targets["element"]["options"]) <= 67


@pytest.mark.parametrize("deploy", [False, True], ids=["modify", "deploy"])
def test_the_largest_form_with_everything_to_confirm(deploy: bool, drafts: Drafts) -> None:
    state = modal_state(drafts, deploy)
    _, problems = views.spec_data(state)
    assert problems == []
    state.summary = [f"{k}: {v}" for k, v in form.deploy_summary(biggest())]
    state.warnings = [f"V{i} looks like a secret" for i in range(MAX_VERSIONS * 10)]
    view = render(state)
    budget.check(view)
    confirm = "\n".join(
        b["text"]["text"] for b in view["blocks"] if b.get("block_id", "").startswith("warnings")
    )
    assert all(line[:150] in confirm for line in state.summary[:60])
    assert "V99 looks like a secret" in confirm  # all of it, in sections of 3,000
    # A plan of more lines than any modal holds: its last section says how many more.
    state.summary = [f"models[{i}].env.X{i}: a -> b" for i in range(3000)]
    crowded = render(state)
    budget.check(crowded)
    last = [b for b in crowded["blocks"] if b.get("block_id", "").startswith("warnings")][-1]
    assert "more lines" in last["text"]["text"]


def test_each_version_of_the_largest_service_has_a_modal_within_budget(
    drafts: Drafts,
) -> None:
    state = modal_state(drafts)
    spec = biggest()
    for g in state.groups:
        view = views.version_modal(state, g.uid, catalog(spec), flavors(), {}, parent="V" * 11)
        budget.check(view)
        assert view["callback_id"] == views.VERSION_CALLBACK
        inputs = [b for b in view["blocks"] if b["type"] == "input"]
        env_inputs = [b for b in inputs if b["block_id"].startswith(f"m{g.uid}.env")]
        assert 1 < len(env_inputs) <= views.MAX_ENV_INPUTS
        kept = next(b for b in view["blocks"] if b.get("block_id") == f"m{g.uid}.kept_env")
        assert "opsbot update" in kept["elements"][0]["text"]
        # The variables shown, masked where secret, and those kept, are all of them.
        shown = "\n".join(e["element"].get("initial_value", "") for e in env_inputs)
        assert "_TOKEN=s3****" in shown
        names = {line.split("=", 1)[0] for line in shown.splitlines()} | set(g.kept_env)
        assert names == set(spec.models[g.uid].env)
        several = {k for k, v in spec.models[g.uid].env.items() if "\n" in v}
        assert several and several <= set(g.kept_env)  # a NAME=value line cannot hold them


def test_the_form_read_back_is_the_service_whatever_was_kept_aside(drafts: Drafts) -> None:
    """Nothing is cut: the largest form, read back from what Slack sends, is the same spec
    once the daemon resolves masked values (they mean keep)."""
    spec = biggest()
    state = views.form_from_spec(spec, OWNER)
    drafts.save(views.offer(state, catalog(spec)), OWNER)
    values: dict[str, dict[str, Any]] = {}
    for g in state.groups:  # every version's modal, sent back as it was shown
        modal = views.version_modal(state, g.uid, catalog(spec), flavors(), {}, parent="V1")
        for b in modal["blocks"]:
            if b["type"] == "input":
                element = b["element"]
                chosen = element.get("initial_option", {}).get("value")
                value = chosen or element.get("initial_value")
                kind = "static_select" if chosen else element["type"]
                slot: dict[str, Any] = {"type": kind}
                slot["selected_option" if chosen else "value"] = (
                    {"value": value} if chosen else value
                )
                values[b["block_id"]] = {"a": slot}
    read = views.state_from_view(
        {"private_metadata": json.dumps({"d": state.key}), "state": {"values": values}},
        drafts,
        OWNER,
    )
    data, problems = views.spec_data(read)
    assert problems == []
    assert parse_spec(keep_masked(spec, data)) == spec


def test_service_views_of_the_largest_service_stay_within_budget() -> None:
    spec = biggest()
    shown = svc(spec)
    now = time.time()
    _, listed = views.services_message([shown] * 30, now, everyone=True)
    budget.check(listed)
    budget.check(views.home_view([shown] * 30, 20, 20, now))
    budget.check(views.details_view(shown, now, None))
    entries = [
        views.HistoryEntry(
            n=n,
            created_at=now,
            actor=OWNER,
            changes=[f"models[{i}].env.X: a -> b" * 5 for i in range(300)],
            rollback=[f"change {i} " * 30 for i in range(300)],
        )
        for n in range(1, 200)
    ]
    budget.check(views.history_view(OWNER, spec.name, entries))
    for status in ("deploying", "running", "stopped"):
        _, blocks = views.services_message([svc(spec, status)], now)
        budget.check(blocks)


def test_messages_about_the_largest_service_stay_within_budget() -> None:
    spec = biggest()
    shown = svc(spec)
    changes = [f"{MODEL} {version(i)} env.X{i}: a -> b" for i in range(1000)]
    for _, blocks in (
        views.modified_message(spec.name, changes, 999),
        views.modified_message(spec.name, changes, 999, rolled_to=998),
        views.running_message(shown, "k" * 64),
        views.running_message(shown, None),
        views.failed_message(shown),
        views.alert_message(spec.name, OWNER, "auto_stop_failed", "w" * 3000),
        views.reminder_message(spec.name, OWNER, "stops in 10 min"),
        views.deploying_message(spec.name),
    ):
        budget.check(blocks)


def test_the_budget_helper_names_what_passes_a_budget() -> None:
    option = {"text": {"type": "plain_text", "text": "t" * 76}, "value": "v" * 151}
    view = {
        "type": "modal",
        "title": {"type": "plain_text", "text": "t" * 25},
        "private_metadata": "m" * 3001,
        "blocks": [
            {
                "type": "input",
                "block_id": "a",
                "label": {"type": "plain_text", "text": "l"},
                "element": {"type": "static_select", "action_id": "s", "options": [option]},
            },
            {
                "type": "input",
                "block_id": "a",
                "label": {"type": "plain_text", "text": "l"},
                "element": {
                    "type": "plain_text_input",
                    "action_id": "p",
                    "initial_value": "i" * 3001,
                },
            },
            *({"type": "divider"} for _ in range(99)),
        ],
    }
    found = " | ".join(budget.problems(view))
    for what in ("blocks: 101", "private_metadata: 3001", "title: 25", "option value: 151",
                 "option text: 76", "initial_value: 3001", "repeated block ids"):  # fmt: skip
        assert what in found
