"""Pure Block Kit builders: the /deploy modal, service lists, App Home, DMs and alerts.

Nothing here talks to Slack or to the core: builders take plain data and return dicts that
slack_sdk's models accept, so every view can be validated in tests without a network.

The modal keeps its structure (groups, their stable ids, the chosen pool) in
``private_metadata``; values typed by the user live in ``view.state.values``. Blocks that depend
on an earlier choice (model after source, version after model, flavor after pool) carry a
generation number in their block id, renewed when the choice changes, so Slack forgets a value
that no longer fits.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from opsbot.core.errors import FieldError
from opsbot.core.flavors import FlavorStatus
from opsbot.core.spec import DEFAULT_FLAVOR, MAX_RULES, MAX_VERSIONS, DeploySpec, masked_env
from opsbot.core.status import Status
from opsbot.core.update import UPDATABLE

Block = dict[str, Any]
View = dict[str, Any]

DEPLOY_CALLBACK = "deploy"
MODIFY_CALLBACK = "modify"
MODAL_TITLE = "Deploy real-time svc"  # Slack allows 24 characters
MODIFY_TITLE = "Modify service"
HISTORY_TITLE = "Service history"
DETAILS_TITLE = "Service details"
MAX_BLOCKS = 100
MAX_MESSAGE_BLOCKS = 50
OPTION_TEXT_MAX = 75

AUTO_STOP_CHOICES: tuple[tuple[str, str], ...] = (
    ("1h", "1 hour later"),
    ("2h", "2 hours later"),
    ("4h", "4 hours later"),
    ("6h", "6 hours later"),
    ("custom", "Custom (1-24 hours)"),
    ("off", "Off"),
)
SOURCES: tuple[tuple[str, str], ...] = (("mine", "My Models"), ("subscribed", "My Subscriptions"))

# Action ids the app listens to.
A_AUTO_STOP = "deploy_auto_stop"
A_POOL = "deploy_pool"
A_SOURCE = "deploy_source"
A_MODEL = "deploy_model"
A_VERSION = "deploy_version"
A_ADD = "deploy_add_version"
A_REMOVE = "deploy_remove_version"
A_ADD_RULE = "deploy_add_rule"
A_REMOVE_RULE = "deploy_remove_rule"
A_VALUE = "value"  # inputs that need no listener
A_STOP = "svc_stop"
A_START = "svc_start"
A_EXTEND = "svc_extend"
A_DELETE = "svc_delete"
A_HOME_DEPLOY = "home_deploy"
A_MODIFY = "svc_modify"
A_HISTORY = "svc_history"
A_DETAILS = "svc_details"
A_ROLLBACK = "svc_rollback"
A_EXTEND_1 = "remind_extend_1"
A_EXTEND_4 = "remind_extend_4"

#: The choices of the Extend menu in /services and App Home (the core checks the range).
EXTEND_HOURS: tuple[int, ...] = (1, 4, 8, 24)
#: Longest value Slack takes in a select option.
OPTION_VALUE_MAX = 150

#: Blocks every modal has besides the model groups and rules: name, auto stop (+ custom hours),
#: description, pool, add button, traffic limit, the rules heading, and the warnings shown
#: before confirmation.
_FIXED_BLOCKS = 9
#: Blocks of one model group: header, source, model, version, ratio, flavor, flavor notes,
#: instances, env.
_GROUP_BLOCKS = 9
#: Blocks of one routing rule: header with Remove, header name, test, value, version.
_RULE_BLOCKS = 5
MAX_GROUPS = min(MAX_VERSIONS, (MAX_BLOCKS - _FIXED_BLOCKS) // _GROUP_BLOCKS)
RULE_TESTS: tuple[tuple[str, str], ...] = (
    ("equals", "equals"),
    ("matches", "matches (regular expression)"),
)

#: Catalog of deployable models: source -> model (as the spec names it) -> Normal versions.
Catalog = Mapping[str, Mapping[str, Sequence[str]]]


# -- modal state -----------------------------------------------------------------------------


@dataclass
class GroupState:
    """One "model and configuration" group of the form."""

    uid: int
    source: str = "mine"
    model: str | None = None
    version: str | None = None
    model_gen: int = 0
    version_gen: int = 0
    traffic_ratio: str | None = None
    flavor: str | None = None
    instances: str | None = None
    env: str | None = None


@dataclass
class RuleState:
    """One routing rule row: header H equals (or matches) V -> version (``MODEL:VERSION``)."""

    uid: int
    header: str | None = None
    test: str = "equals"
    value: str | None = None
    version: str | None = None


@dataclass
class FormState:
    """Everything the deploy (or modify) modal shows, structure and values."""

    pool: str = "public"
    auto_stop: str = "1h"
    custom_hours: str | None = None
    name: str | None = None
    description: str | None = None
    traffic_limit: str | None = None
    flavor_gen: int = 0
    next_uid: int = 1
    groups: list[GroupState] = field(default_factory=lambda: [GroupState(uid=0)])
    #: Mark of the warnings the user has seen and chose to deploy anyway (see warning_mark).
    warned: str = ""
    #: Warnings to show above the form this time (not kept in the view).
    warnings: list[str] = field(default_factory=list)
    rules: list[RuleState] = field(default_factory=list)
    next_rule: int = 0
    #: Modify mode: the (owner, name) of the service modified; name and pool are fixed.
    target: tuple[str, str] | None = None
    #: Where the modify modal was opened from: a message's response URL (None: App Home).
    origin: str | None = None
    everyone: bool = False

    def group(self, uid: int) -> GroupState:
        for g in self.groups:
            if g.uid == uid:
                return g
        raise KeyError(uid)


def _bid(g: GroupState, what: str, flavor_gen: int = 0) -> str:
    if what == "model":
        return f"m{g.uid}.model.{g.model_gen}"
    if what == "version":
        return f"m{g.uid}.version.{g.version_gen}"
    if what == "flavor":
        return f"m{g.uid}.flavor.{flavor_gen}"
    return f"m{g.uid}.{what}"


def group_uid(block_id: str) -> int:
    """The group a block belongs to, from its id (``m3.model.1`` -> 3)."""
    match = re.match(r"^m(\d+)\.", block_id)
    if not match:
        raise ValueError(f"{block_id!r} is not a model group block")
    return int(match.group(1))


def _meta(state: FormState) -> str:
    return json.dumps(
        {
            "pool": state.pool,
            "auto": state.auto_stop,
            "fg": state.flavor_gen,
            "next": state.next_uid,
            "w": state.warned,
            "g": [
                [g.uid, g.source, g.model, g.version, g.model_gen, g.version_gen]
                for g in state.groups
            ],
            "r": [r.uid for r in state.rules],
            "nr": state.next_rule,
            "t": list(state.target) if state.target else None,
            "o": state.origin,
            "a": int(state.everyone),
        },
        separators=(",", ":"),
    )


def selected_value(value: Mapping[str, Any]) -> str | None:
    option = value.get("selected_option")
    if isinstance(option, Mapping):
        return str(option["value"])
    raw = value.get("value")
    return None if raw is None else str(raw)


def state_from_view(view: Mapping[str, Any]) -> FormState:
    """Read the modal back: structure from private_metadata, values from view.state."""
    meta = json.loads(view.get("private_metadata") or "{}")
    state = FormState(
        pool=meta.get("pool", "public"),
        auto_stop=meta.get("auto", "1h"),
        flavor_gen=meta.get("fg", 0),
        next_uid=meta.get("next", 1),
        warned=str(meta.get("w") or ""),
        groups=[
            GroupState(uid=u, source=s, model=m, version=v, model_gen=mg, version_gen=vg)
            for u, s, m, v, mg, vg in meta.get("g", [[0, "mine", None, None, 0, 0]])
        ],
        rules=[RuleState(uid=int(u)) for u in meta.get("r", [])],
        next_rule=int(meta.get("nr", 0)),
        target=(str(meta["t"][0]), str(meta["t"][1])) if meta.get("t") else None,
        origin=meta.get("o"),
        everyone=bool(meta.get("a")),
    )
    values: Mapping[str, Mapping[str, Any]] = (view.get("state") or {}).get("values") or {}
    by_group = {g.uid: g for g in state.groups}
    by_rule = {r.uid: r for r in state.rules}
    for block_id, actions in values.items():
        for value in actions.values():
            chosen = selected_value(value)
            rule_match = re.match(r"^r(\d+)\.(header|test|value|version)$", block_id)
            if rule_match:
                rule = by_rule.get(int(rule_match.group(1)))
                if rule is not None and (chosen is not None or rule_match.group(2) != "test"):
                    setattr(rule, rule_match.group(2), chosen)
                continue
            top = {
                "name": "name",
                "auto_stop": "auto_stop",
                "auto_stop_hours": "custom_hours",
                "description": "description",
                "resource_pool": "pool",
                "traffic_limit": "traffic_limit",
            }.get(block_id)
            if top is not None:
                if chosen is not None or top not in ("pool", "auto_stop"):
                    setattr(state, top, chosen)
                continue
            try:
                uid = group_uid(block_id)
            except ValueError:
                continue
            g = by_group.get(uid)
            if g is None:
                continue
            what = block_id.split(".")[1]
            if what == "flavor" and block_id != _bid(g, "flavor", state.flavor_gen):
                continue  # a stale flavor block: the pool changed since
            if what == "model" and block_id != _bid(g, "model"):
                continue
            if what == "version" and block_id != _bid(g, "version"):
                continue
            if what in ("source", "model", "version") and chosen is None:
                continue
            if what in (
                "source",
                "model",
                "version",
                "traffic_ratio",
                "flavor",
                "instances",
                "env",
            ):
                setattr(g, what, chosen)
    return state


# -- modal changes (pure) ----------------------------------------------------------------------


def choose_source(state: FormState, uid: int, source: str) -> FormState:
    """A new model source: the model and version of that group start over."""
    g = state.group(uid)
    if g.source != source:
        g.source, g.model, g.version = source, None, None
        g.model_gen += 1
        g.version_gen += 1
    return state


def choose_model(state: FormState, uid: int, model: str | None, catalog: Catalog) -> FormState:
    """A new model: its version starts over (preselected when it has only one)."""
    g = state.group(uid)
    if g.model != model:
        g.model, g.version = model, None
        g.version_gen += 1
        versions = list(catalog.get(g.source, {}).get(model or "", []))
        if len(versions) == 1:
            g.version = versions[0]
    return state


def choose_pool(state: FormState, pool: str) -> FormState:
    """A new pool changes which flavors can run: every flavor choice starts over."""
    if state.pool != pool:
        state.pool = pool
        state.flavor_gen += 1
        for g in state.groups:
            g.flavor = None
    return state


def _blocks_used(state: FormState) -> int:
    return _FIXED_BLOCKS + _GROUP_BLOCKS * len(state.groups) + _RULE_BLOCKS * len(state.rules)


def can_add_group(state: FormState) -> bool:
    return len(state.groups) < MAX_GROUPS and _blocks_used(state) + _GROUP_BLOCKS <= MAX_BLOCKS


def can_add_rule(state: FormState) -> bool:
    return len(state.rules) < MAX_RULES and _blocks_used(state) + _RULE_BLOCKS <= MAX_BLOCKS


def add_group(state: FormState) -> FormState:
    """Another model version for a gated launch, like the first group's model by default."""
    if not can_add_group(state):
        return state
    first = state.groups[0]
    state.groups.append(GroupState(uid=state.next_uid, source=first.source, model=first.model))
    state.next_uid += 1
    return state


def remove_group(state: FormState, uid: int) -> FormState:
    if len(state.groups) > 1:
        state.groups = [g for g in state.groups if g.uid != uid]
    return state


def add_rule(state: FormState) -> FormState:
    """Another routing rule row, last in order (while Block Kit has room for it)."""
    if can_add_rule(state):
        state.rules.append(RuleState(uid=state.next_rule))
        state.next_rule += 1
    return state


def remove_rule(state: FormState, uid: int) -> FormState:
    state.rules = [r for r in state.rules if r.uid != uid]
    return state


def form_from_spec(
    spec: DeploySpec, owner: str, *, origin: str | None = None, everyone: bool = False
) -> FormState:
    """The modify modal's state: the service's current spec, name and pool fixed."""
    auto = str(spec.auto_stop)
    custom: str | None = None
    if auto not in {value for value, _ in AUTO_STOP_CHOICES} and auto.endswith("h"):
        auto, custom = "custom", auto.removesuffix("h")
    groups = [
        GroupState(
            uid=i,
            source=m.source,
            model=m.model,
            version=m.version,
            traffic_ratio=None if m.traffic_ratio is None else str(m.traffic_ratio),
            flavor=m.flavor,
            instances=str(m.instances),
            env="\n".join(f"{k}={v}" for k, v in m.env.items()) or None,
        )
        for i, m in enumerate(spec.models)
    ]
    rules = []
    for i, r in enumerate(spec.rules):
        target = r.target(spec.models)
        model = spec.models[target].model if target is not None else r.model or ""
        rules.append(
            RuleState(
                uid=i,
                header=r.header,
                test="equals" if r.equals is not None else "matches",
                value=r.equals if r.equals is not None else r.matches,
                version=f"{model}:{r.version}",
            )
        )
    return FormState(
        pool=spec.resource_pool,
        auto_stop=auto,
        custom_hours=custom,
        name=spec.name,
        description=spec.description or None,
        traffic_limit=str(spec.traffic_limit),
        next_uid=len(groups),
        groups=groups,
        rules=rules,
        next_rule=len(rules),
        target=(owner, spec.name),
        origin=origin,
        everyone=everyone,
    )


# -- building the modal ------------------------------------------------------------------------


def _text(text: str, *, emoji: bool = True) -> dict[str, Any]:
    return {"type": "plain_text", "text": text, "emoji": emoji}


def _md(text: str) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": text}


def _clip(text: str, limit: int = OPTION_TEXT_MAX) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _option(value: str, text: str) -> dict[str, Any]:
    return {"text": _text(_clip(text)), "value": value}


def _input(
    block_id: str,
    label: str,
    element: dict[str, Any],
    *,
    optional: bool = False,
    hint: str | None = None,
    dispatch: bool = False,
) -> Block:
    block: Block = {
        "type": "input",
        "block_id": block_id,
        "label": _text(label),
        "element": element,
        "optional": optional,
    }
    if hint:
        block["hint"] = _text(hint)
    if dispatch:
        block["dispatch_action"] = True
    return block


def _select(
    action_id: str,
    placeholder: str,
    options: Sequence[tuple[str, str]],
    selected: str | None,
) -> dict[str, Any]:
    opts = [_option(v, t) for v, t in options[:100]]
    element: dict[str, Any] = {
        "type": "static_select",
        "action_id": action_id,
        "placeholder": _text(placeholder),
        "options": opts
        or [_option("-", "nothing to choose yet")],  # Slack needs at least one option
    }
    for o in opts:
        if o["value"] == selected:
            element["initial_option"] = o
    return element


def _number(
    action_id: str, initial: str | None, minimum: int, maximum: int, placeholder: str
) -> dict[str, Any]:
    element: dict[str, Any] = {
        "type": "number_input",
        "action_id": action_id,
        "is_decimal_allowed": False,
        "min_value": str(minimum),
        "max_value": str(maximum),
        "placeholder": _text(placeholder),
    }
    if initial not in (None, ""):
        element["initial_value"] = initial
    return element


def _plain(
    action_id: str,
    initial: str | None,
    *,
    multiline: bool = False,
    max_length: int | None = None,
    placeholder: str | None = None,
) -> dict[str, Any]:
    element: dict[str, Any] = {"type": "plain_text_input", "action_id": action_id}
    if multiline:
        element["multiline"] = True
    if max_length:
        element["max_length"] = max_length
    if placeholder:
        element["placeholder"] = _text(placeholder)
    if initial:
        element["initial_value"] = initial
    return element


def flavor_label(status: FlavorStatus) -> str:
    name = status.flavor.name
    return name if status.available else f"{name} (unavailable)"


def _group_blocks(
    state: FormState,
    g: GroupState,
    index: int,
    catalog: Catalog,
    flavors: Sequence[FlavorStatus],
) -> list[Block]:
    models = catalog.get(g.source, {})
    versions = list(models.get(g.model or "", []))
    header: Block = {
        "type": "section",
        "block_id": _bid(g, "head"),
        "text": _md(f"*Model and configuration {index + 1}*"),
    }
    if len(state.groups) > 1:
        header["accessory"] = {
            "type": "button",
            "action_id": A_REMOVE,
            "text": _text("Remove"),
            "value": str(g.uid),
        }
    unavailable = [s for s in flavors if not s.available]
    notes = (
        "; ".join(f"{s.flavor.name}: {s.reason}" for s in unavailable)
        if unavailable
        else "every flavor can run in this pool"
    )
    # The spec's default flavor where it can run (exeml.* flavors, listed first, take only
    # ExeML models), else the first that can.
    usable = [s.flavor.id for s in flavors if s.available]
    default_flavor = g.flavor or (DEFAULT_FLAVOR if DEFAULT_FLAVOR in usable else None)
    default_flavor = default_flavor or next(iter(usable), None)
    return [
        header,
        _input(
            _bid(g, "source"),
            "Model source",
            _select(A_SOURCE, "My Models or My Subscriptions", SOURCES, g.source),
            dispatch=True,
        ),
        _input(
            _bid(g, "model"),
            "Model",
            _select(A_MODEL, "Choose a model", [(m, m) for m in models], g.model),
            dispatch=True,
            hint=None if models else "No model in the Normal state here: create or subscribe.",
        ),
        _input(
            _bid(g, "version"),
            "Version",
            _select(A_VERSION, "Choose a version", [(v, v) for v in versions], g.version),
            hint=None if g.model else "Choose a model first.",
        ),
        _input(
            _bid(g, "traffic_ratio"),
            "Traffic ratio (%)",
            _number(
                A_VALUE,
                g.traffic_ratio or ("100" if len(state.groups) == 1 else None),
                0,
                100,
                "100",
            ),
            optional=len(state.groups) == 1,
            hint="The ratios of all versions sum to 100.",
        ),
        _input(
            _bid(g, "flavor", state.flavor_gen),
            "Specifications",
            _select(
                A_VALUE,
                "Choose a flavor",
                [(s.flavor.id, flavor_label(s)) for s in flavors],
                default_flavor,
            ),
        ),
        {
            "type": "context",
            "block_id": _bid(g, "flavor_notes"),
            "elements": [_md(_clip(f"Unavailable flavors: {notes}", 2000))],
        },
        _input(
            _bid(g, "instances"),
            "Compute nodes (instances)",
            _number(A_VALUE, g.instances or "1", 1, 128, "1"),
        ),
        _input(
            _bid(g, "env"),
            "Environment variables",
            _plain(
                A_VALUE,
                g.env,
                multiline=True,
                max_length=3000,
                placeholder="NAME=value, one per line",
            ),
            optional=True,
            hint="Do not enter secrets such as passwords: values are visible to the instances.",
        ),
    ]


def rule_targets(state: FormState, catalog: Catalog) -> list[tuple[str, str]]:
    """The versions a rule may send calls to: those of the form's models, as option values
    ``MODEL:VERSION`` and texts ``MODEL VERSION``."""
    out: dict[str, str] = {}
    for g in state.groups:
        if not g.model:
            continue
        versions = list(catalog.get(g.source, {}).get(g.model, []))
        if g.version and g.version not in versions:
            versions.append(g.version)
        for v in versions:
            out.setdefault(f"{g.model}:{v}", f"{g.model} {v}")
    return list(out.items())


def _rule_blocks(rule: RuleState, index: int, targets: Sequence[tuple[str, str]]) -> list[Block]:
    return [
        {
            "type": "section",
            "block_id": f"r{rule.uid}.head",
            "text": _md(f"*Rule {index + 1}*"),
            "accessory": {
                "type": "button",
                "action_id": A_REMOVE_RULE,
                "text": _text("Remove rule"),
                "value": str(rule.uid),
            },
        },
        _input(
            f"r{rule.uid}.header",
            "Header",
            _plain(A_VALUE, rule.header, max_length=64, placeholder="X-User-Group"),
        ),
        _input(
            f"r{rule.uid}.test",
            "Test",
            _select(A_VALUE, "equals or matches", RULE_TESTS, rule.test),
        ),
        _input(
            f"r{rule.uid}.value",
            "Value",
            _plain(A_VALUE, rule.value, max_length=256, placeholder="beta"),
            hint="The exact value, or a regular expression the whole value must match.",
        ),
        _input(
            f"r{rule.uid}.version",
            "Send matching calls to",
            _select(A_VALUE, "Choose a version", targets, rule.version),
            hint=None if targets else "Choose the models and versions above first.",
        ),
    ]


def _rules_heading(state: FormState) -> Block:
    text = (
        "*Routing rules* (checked in order, before the traffic ratios)"
        if state.rules
        else "*Routing rules*: none, every call follows the traffic ratios."
    )
    block: Block = {"type": "section", "block_id": "rules", "text": _md(text)}
    if can_add_rule(state):
        block["accessory"] = {
            "type": "button",
            "action_id": A_ADD_RULE,
            "text": _text("Add rule"),
            "value": "add",
        }
    return block


def deploy_modal(
    state: FormState,
    catalog: Catalog,
    pools: Sequence[str],
    flavors: Sequence[FlavorStatus],
) -> View:
    """The /deploy modal: the fields of the reference Deploy page, in its order.

    With ``state.warnings`` (the core's warnings about a submitted form), a notice above the
    fields lists them and the submit button becomes "Deploy anyway". With ``state.target`` it
    is the modify modal of that service: the same fields, the name and pool shown, not editable.
    """
    blocks: list[Block] = []
    if state.warnings:
        blocks.append(warnings_block(state.warnings, "Apply" if state.target else "Deploy"))
    auto_choices = AUTO_STOP_CHOICES
    if state.auto_stop not in {value for value, _ in AUTO_STOP_CHOICES}:
        auto_choices = (*AUTO_STOP_CHOICES, (state.auto_stop, f"Keep {state.auto_stop}"))
    if state.target:
        blocks.append(
            _section(
                f"*Name:* {state.target[1]} (owner {state.target[0]})\n"
                f"*Resource pool:* {state.pool}\n"
                "_A service keeps its name and pool; deploy a new service to change them._"
            )
        )
    else:
        blocks.append(
            _input(
                "name",
                "Name",
                _plain(A_VALUE, state.name, max_length=64, placeholder="service-name"),
                hint="1-64 letters, digits, - or _, starting with a letter.",
            )
        )
    blocks.append(
        _input(
            "auto_stop",
            "Auto stop",
            _select(A_AUTO_STOP, "When it stops", auto_choices, state.auto_stop),
            dispatch=True,
        )
    )
    if state.auto_stop == "custom":
        blocks.append(
            _input(
                "auto_stop_hours",
                "Auto stop after (hours)",
                _number(A_VALUE, state.custom_hours, 1, 24, "1 to 24"),
            )
        )
    blocks.append(
        _input(
            "description",
            "Description",
            _plain(A_VALUE, state.description, multiline=True, max_length=100),
            optional=True,
            hint="At most 100 characters, none of ! < > = & \" '",
        )
    )
    if not state.target:
        blocks.append(
            _input(
                "resource_pool",
                "Resource pool",
                _select(A_POOL, "Choose a pool", [(p, p) for p in pools], state.pool),
                dispatch=True,
            )
        )
    for i, g in enumerate(state.groups):
        blocks += _group_blocks(state, g, i, catalog, flavors)
    first = state.groups[0]
    single_version = first.model is not None and (
        len(catalog.get(first.source, {}).get(first.model, [])) == 1
    )
    if can_add_group(state) and not (single_version and len(state.groups) == 1):
        blocks.append(
            {
                "type": "actions",
                "block_id": "add_version",
                "elements": [
                    {
                        "type": "button",
                        "action_id": A_ADD,
                        "text": _text("Add model version and configuration"),
                        "value": "add",
                    }
                ],
            }
        )
    blocks.append(
        _input(
            "traffic_limit",
            "Traffic limit (requests per second)",
            _number(A_VALUE, state.traffic_limit or "100", 1, 1_000_000, "100"),
        )
    )
    blocks.append(_rules_heading(state))
    targets = rule_targets(state, catalog)
    for i, rule in enumerate(state.rules):
        blocks += _rule_blocks(rule, i, targets)
    submit = "Deploy"
    if state.target:
        submit = "Apply"
    if state.warnings:
        submit += " anyway"
    return {
        "type": "modal",
        "callback_id": MODIFY_CALLBACK if state.target else DEPLOY_CALLBACK,
        "title": _text(MODIFY_TITLE if state.target else MODAL_TITLE),
        "submit": _text(submit),
        "close": _text("Cancel"),
        "private_metadata": _meta(state),
        "blocks": blocks[:MAX_BLOCKS],
    }


def warnings_block(warnings: Sequence[str], verb: str = "Deploy") -> Block:
    """The notice shown above the form when the core warned about a submission."""
    doing = "deploying" if verb == "Deploy" else "applying"
    lines = "\n".join(f"• {_clip(w, 400)}" for w in warnings[:5])
    more = f"\n…and {len(warnings) - 5} more" if len(warnings) > 5 else ""
    return {
        "type": "section",
        "block_id": "warnings",
        "text": _md(
            _clip(
                f":warning: *Check before {doing}*\n{lines}{more}\n"
                f"Press *{verb} anyway* to go on, or change the environment variables.",
                3000,
            )
        ),
    }


def warning_mark(warnings: Sequence[FieldError]) -> str:
    """A short mark of a set of warnings: the same warnings are not asked about twice."""
    if not warnings:
        return ""
    text = "\n".join(sorted(f"{w.field}: {w.message}" for w in warnings))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# -- submission --------------------------------------------------------------------------------


def _number_or_text(value: str | None) -> int | str | None:
    if value is None or value.strip() == "":
        return None
    text = value.strip()
    return int(text) if re.fullmatch(r"-?\d+", text) else text


def parse_env(text: str | None) -> tuple[dict[str, str], list[str]]:
    """NAME=value lines into a dict, and the lines that are not NAME=value."""
    env: dict[str, str] = {}
    bad: list[str] = []
    for line in (text or "").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not sep or not name.strip():
            bad.append(line.strip())
            continue
        env[name.strip()] = value.strip()
    return env, bad


def spec_data(state: FormState) -> tuple[dict[str, Any], list[FieldError]]:
    """The submitted modal as spec data for the core, plus problems found while reading it.

    Empty fields are left out so the core reports them (or applies its defaults).
    """
    problems: list[FieldError] = []
    if state.auto_stop == "custom":
        hours = _number_or_text(state.custom_hours)
        auto_stop: Any = f"{hours}h" if hours is not None else None
        if hours is None:
            problems.append(FieldError("auto_stop", "enter the hours (1 to 24) for a custom stop"))
    else:
        auto_stop = state.auto_stop
    name = state.target[1] if state.target else (state.name or "").strip()
    data: dict[str, Any] = {
        "name": name,
        "description": (state.description or "").strip(),
        "resource_pool": state.pool,
    }
    if auto_stop is not None:
        data["auto_stop"] = auto_stop
    limit = _number_or_text(state.traffic_limit)
    if limit is not None:
        data["traffic_limit"] = limit
    models: list[dict[str, Any]] = []
    for i, g in enumerate(state.groups):
        entry: dict[str, Any] = {"source": g.source}
        if g.model:
            entry["model"] = g.model
        if g.version:
            entry["version"] = g.version
        for key, raw in (("traffic_ratio", g.traffic_ratio), ("instances", g.instances)):
            number = _number_or_text(raw)
            if number is not None:
                entry[key] = number
        if g.flavor:
            entry["flavor"] = g.flavor
        env, bad = parse_env(g.env)
        if bad:
            problems.append(
                FieldError(
                    f"models[{i}].env",
                    f"write one NAME=value per line; not understood: {_clip(bad[0], 60)}",
                )
            )
        entry["env"] = env
        models.append(entry)
    data["models"] = models
    data["rules"] = [_rule_data(state, r) for r in state.rules]
    return data, problems


def _rule_data(state: FormState, rule: RuleState) -> dict[str, Any]:
    """A rule row as spec data; the model is named only where two models share the version."""
    out: dict[str, Any] = {}
    if rule.header and rule.header.strip():
        out["header"] = rule.header.strip()
    if rule.value is not None:
        out["matches" if rule.test == "matches" else "equals"] = rule.value
    if rule.version:
        model, _, version = rule.version.rpartition(":")
        out["version"] = version
        sharing = {g.model for g in state.groups if g.version == version and g.model}
        if model and sharing - {model}:
            out["model"] = model
    return out


def error_block_ids(state: FormState, errors: Sequence[FieldError]) -> dict[str, str]:
    """Field errors of the core, keyed by the block id of the input they concern.

    Errors on fields the modal has no input for go under the name (the auto stop in the modify
    modal, which has no name input), prefixed with the field.
    """
    out: dict[str, list[str]] = {}
    top = "auto_stop" if state.target else "name"

    def put(block_id: str, message: str) -> None:
        out.setdefault(block_id, []).append(message)

    for error in errors:
        path = error.field
        match = re.match(r"^models\[(\d+)\](?:\.(\w+))?", path)
        if match:
            index = int(match.group(1))
            if index >= len(state.groups):
                put(top, f"{path}: {error.message}")
                continue
            g = state.groups[index]
            what = match.group(2) or "model"
            if what == "source":
                put(_bid(g, "source"), error.message)
            elif what in ("model", "version"):
                put(_bid(g, what), error.message)
            elif what == "flavor":
                put(_bid(g, "flavor", state.flavor_gen), error.message)
            elif what in ("traffic_ratio", "instances", "env"):
                put(_bid(g, what), error.message)
            else:
                put(_bid(g, "model"), f"{what}: {error.message}")
        elif path == "models":
            put(_bid(state.groups[0], "traffic_ratio"), error.message)
        elif path == "auto_stop" or path.startswith("auto_stop."):
            put("auto_stop_hours" if state.auto_stop == "custom" else "auto_stop", error.message)
        elif (rule := re.match(r"^rules\[(\d+)\](?:\.(\w+))?", path)) is not None:
            index = int(rule.group(1))
            if index >= len(state.rules):
                put(top, f"{path}: {error.message}")
                continue
            what = {"equals": "value", "matches": "value", "header": "header"}.get(
                rule.group(2) or "", "version" if rule.group(2) in ("version", "model") else "value"
            )
            put(f"r{state.rules[index].uid}.{what}", error.message)
        elif path == "rules" and state.rules:
            put(f"r{state.rules[0].uid}.header", error.message)
        elif path in ("description", "traffic_limit") or (
            path in ("name", "resource_pool") and not state.target
        ):
            put(path, error.message)
        else:
            put(top, f"{path}: {error.message}" if path not in ("", "spec") else error.message)
    return {block: _clip(" ".join(messages), 2000) for block, messages in out.items()}


# -- services: lists, App Home -------------------------------------------------------------------

STATUS_ICON = {
    "deploying": ":hourglass_flowing_sand:",
    "running": ":large_green_circle:",
    "concerning": ":large_yellow_circle:",
    "abnormal": ":red_circle:",
    "failed": ":x:",
    "stopping": ":double_vertical_bar:",
    "stopped": ":white_circle:",
    "deleting": ":wastebasket:",
}


def remaining(seconds: float) -> str:
    """A countdown as "1 h 05 min", "4 min", or "due"."""
    if seconds <= 0:
        return "due"
    minutes = int(seconds // 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{max(minutes, 1)} min"


def service_line(svc: Mapping[str, Any], now: float) -> str:
    """One service as mrkdwn: status, versions and ratios, auto stop countdown."""
    status = str(svc["status"])
    progress = f" {svc['progress']}%" if status == "deploying" else ""
    versions = ", ".join(
        f"{m['model']} {m['version']} ({m['traffic_ratio']}%)" for m in svc.get("models", [])
    )
    if svc.get("due_time"):
        stop = f"stops in {remaining(float(svc['due_time']) - now)}"
    elif svc.get("auto_stop") == "off":
        stop = "auto stop off"
    else:
        stop = f"auto stop {svc.get('auto_stop')}"
    reason = f"\n_{_clip(str(svc['reason']), 300)}_" if svc.get("reason") else ""
    return (
        f"{STATUS_ICON.get(status, '')} *{svc['name']}* ({svc['owner']}) · "
        f"{status.capitalize()}{progress} · {stop}\n{versions}{reason}"
    )


def _button(action_id: str, text: str, value: str, style: str | None = None) -> dict[str, Any]:
    button: dict[str, Any] = {
        "type": "button",
        "action_id": action_id,
        "text": _text(text),
        "value": value,
    }
    if style:
        button["style"] = style
    return button


def _confirm(title: str, text: str, yes: str) -> dict[str, Any]:
    return {
        "title": _text(title),
        "text": _md(text),
        "confirm": _text(yes),
        "deny": _text("Cancel"),
        "style": "danger",
    }


def action_value(svc: Mapping[str, Any], everyone: bool = False, hours: int | None = None) -> str:
    """What a service button or menu option carries: owner, name, list shown, and hours."""
    value: dict[str, Any] = {"o": svc["owner"], "n": svc["name"], "a": int(everyone)}
    if hours is not None:
        value["h"] = hours
    return json.dumps(value, separators=(",", ":"))


@dataclass(frozen=True)
class Target:
    """The service a button or menu option acts on, read back from its value."""

    owner: str
    name: str
    everyone: bool
    hours: int | None


def action_target(action: Mapping[str, Any]) -> Target:
    """The target of a button (``value``) or of a menu option (``selected_option.value``)."""
    raw = json.loads(selected_value(action) or "{}")
    hours = raw.get("h")
    return Target(
        owner=str(raw.get("o", "")),
        name=str(raw.get("n", "")),
        everyone=bool(raw.get("a")),
        hours=hours if isinstance(hours, int) and not isinstance(hours, bool) else None,
    )


def extend_element(svc: Mapping[str, Any], everyone: bool = False) -> list[dict[str, Any]]:
    """A menu to extend auto stop by 1, 4, 8 or 24 hours.

    Options carry owner and name; where those are too long for an option value (150
    characters), two buttons (1 h, 4 h) stand in, since a button value may be longer.
    """
    values = [(action_value(svc, everyone, h), f"Extend {h} h") for h in EXTEND_HOURS]
    if any(len(v) > OPTION_VALUE_MAX for v, _ in values):
        value = action_value(svc, everyone)
        return [_button(A_EXTEND_1, "Extend 1 h", value), _button(A_EXTEND_4, "Extend 4 h", value)]
    return [
        {
            "type": "static_select",
            "action_id": A_EXTEND,
            "placeholder": _text("Extend auto stop"),
            "options": [_option(v, t) for v, t in values],
        }
    ]


def service_blocks(svc: Mapping[str, Any], now: float, everyone: bool = False) -> list[Block]:
    """A service and its buttons: Stop, Start, Extend, Delete (Stop and Delete confirmed)."""
    value = action_value(svc, everyone)
    name = str(svc["name"])
    stop = _button(A_STOP, "Stop", value)
    stop["confirm"] = _confirm("Stop service?", f"Stop *{name}*? Its URL stops answering.", "Stop")
    delete = _button(A_DELETE, "Delete", value, "danger")
    delete["confirm"] = _confirm(
        "Delete service?", f"Delete *{name}* and its key? This cannot be undone.", "Delete"
    )
    # Modify is offered where the core lets a service be modified; the core says why not
    # (and who may) when pressed anyway from an older message.
    modify = [_button(A_MODIFY, "Modify", value)] if Status(str(svc["status"])) in UPDATABLE else []
    return [
        {"type": "section", "text": _md(_clip(service_line(svc, now), 3000))},
        {
            "type": "actions",
            "elements": [
                stop,
                _button(A_START, "Start", value, "primary"),
                *extend_element(svc, everyone),
                *modify,
                _button(A_DETAILS, "Details", value),
                _button(A_HISTORY, "History", value),
                delete,
            ],
        },
    ]


def services_message(
    services: Sequence[Mapping[str, Any]], now: float, *, everyone: bool = False
) -> tuple[str, list[Block]]:
    """The /services answer: fallback text and blocks (at most 50)."""
    whose = "All services" if everyone else "Your services"
    if not services:
        text = f"{whose}: none. Deploy one with /deploy."
        return text, [{"type": "section", "text": _md(text)}]
    blocks: list[Block] = [{"type": "header", "text": _text(f"{whose} ({len(services)})")}]
    shown = 0
    for svc in services:
        if len(blocks) + 3 > MAX_MESSAGE_BLOCKS - 1:
            break
        blocks += [*service_blocks(svc, now, everyone), {"type": "divider"}]
        shown += 1
    if shown < len(services):
        blocks.append(
            {
                "type": "context",
                "elements": [_md(f"{len(services) - shown} more not shown; use `opsbot ls`.")],
            }
        )
    text = f"{whose}: " + ", ".join(f"{s['name']} ({s['status']})" for s in services)
    return _clip(text, 3000), blocks


def home_view(services: Sequence[Mapping[str, Any]], used: int, quota: int, now: float) -> View:
    """App Home: quota used and the user's services with their buttons."""
    blocks: list[Block] = [
        {"type": "header", "text": _text("opsbot: your real-time services")},
        {
            "type": "section",
            "text": _md(f"*Quota:* {used}/{quota} services"),
            "accessory": _button(A_HOME_DEPLOY, "Deploy", "deploy", "primary"),
        },
        {"type": "divider"},
    ]
    if not services:
        blocks.append({"type": "section", "text": _md("No services yet. Press *Deploy*.")})
    for i, svc in enumerate(services):
        if len(blocks) + 3 > MAX_BLOCKS - 1:
            blocks.append(
                {
                    "type": "context",
                    "elements": [_md(f"{len(services) - i} more not shown; use `opsbot ls`.")],
                }
            )
            break
        blocks += [*service_blocks(svc, now), {"type": "divider"}]
    return {"type": "home", "blocks": blocks}


# -- modify, history, rollback, per-version numbers -----------------------------------------------


def _when(ts: float) -> str:
    """A time Slack shows in the reader's own time zone (UTC in the fallback)."""
    fallback = datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"<!date^{int(ts)}^{{date_short_pretty}} {{time}}|{fallback}>"


def _bullets(lines: Sequence[str], limit: int = 10) -> str:
    shown = [f"• {_clip(line, 200)}" for line in lines[:limit]]
    if len(lines) > limit:
        shown.append(f"• …and {len(lines) - limit} more")
    return "\n".join(shown)


def modified_message(
    name: str, changes: Sequence[str], snapshot: int | None, *, rolled_to: int | None = None
) -> tuple[str, list[Block]]:
    """What a modification (or a rollback) changed, and the snapshot it made."""
    if snapshot is None:
        text = f"Nothing changed in {name}: the form matched its current configuration."
        return text, [_section(f":information_source: {text}")]
    did = f"Rolled {name} back to #{rolled_to}" if rolled_to is not None else f"Modified {name}"
    text = f"{did} (snapshot #{snapshot}): {'; '.join(changes)}"
    body = (
        f":pencil2: *{did}* (snapshot #{snapshot}).\n{_bullets(changes)}\n"
        "Instances that change start before the old ones drain; traffic moves within seconds."
    )
    return _clip(text, 3000), [_section(body)]


@dataclass(frozen=True)
class HistoryEntry:
    """A config snapshot as the history shows it."""

    n: int
    created_at: float
    actor: str
    changes: Sequence[str]
    """What this snapshot changed from the one before (empty for the deploy, #1)."""
    rollback: Sequence[str] | None
    """What rolling back to it would change now; None or empty: nothing (it is current)."""


def rollback_value(owner: str, name: str, n: int) -> str:
    return json.dumps({"o": owner, "n": name, "to": n}, separators=(",", ":"))


def rollback_target(action: Mapping[str, Any]) -> tuple[str, str, int]:
    raw = json.loads(str(action.get("value") or "{}"))
    return str(raw.get("o", "")), str(raw.get("n", "")), int(raw.get("to", 0))


def history_view(owner: str, name: str, entries: Sequence[HistoryEntry]) -> View:
    """The snapshots of a service, newest first, each with "Roll back to #N" (confirmed)."""
    blocks: list[Block] = [
        _section(f"*{name}* (owner {owner}): {len(entries)} configuration snapshot(s)"),
        {"type": "divider"},
    ]
    newest = sorted(entries, key=lambda e: e.n, reverse=True)
    room = MAX_BLOCKS - len(blocks) - 1
    for entry in newest[:room]:
        what = _bullets(entry.changes) if entry.changes else "• deployed"
        current = " · _current_" if entry.n == newest[0].n else ""
        block = _section(
            f"*#{entry.n}* · {_when(entry.created_at)} · by {entry.actor}{current}\n{what}"
        )
        if entry.rollback:
            button = _button(
                A_ROLLBACK, f"Roll back to #{entry.n}", rollback_value(owner, name, entry.n)
            )
            button["confirm"] = _confirm(
                f"Roll back to #{entry.n}?",
                _clip(f"*{name}* would change:\n{_bullets(entry.rollback, 6)}", 300),
                "Roll back",
            )
            block["accessory"] = button
        blocks.append(block)
    if len(newest) > room:
        blocks.append(
            {
                "type": "context",
                "elements": [
                    _md(f"{len(newest) - room} older not shown; use `opsbot history {name}`.")
                ],
            }
        )
    return {
        "type": "modal",
        "callback_id": "history",
        "title": _text(HISTORY_TITLE),
        "close": _text("Close"),
        "private_metadata": json.dumps({"o": owner, "n": name}, separators=(",", ":")),
        "blocks": blocks,
    }


def _figure(value: Any, unit: str = "") -> str:
    return "–" if value is None else f"{value}{unit}"


def _mib(value: Any) -> str:
    return "–" if value is None else f"{value / (1024 * 1024):.0f} MiB"


def details_view(
    svc: Mapping[str, Any], now: float, numbers: Sequence[Mapping[str, Any]] | None
) -> View:
    """One service with per-version numbers: ratio, ready/desired, calls, failures, p50/p99,
    CPU and memory (``numbers`` None: the daemon gave none, only the spec is shown)."""
    blocks: list[Block] = [_section(service_line(svc, now))]
    if numbers is None:
        numbers = [
            {
                "model": m["model"],
                "version": m["version"],
                "traffic_ratio": m["traffic_ratio"],
                "desired": m.get("instances"),
                "ready": None,
            }
            for m in svc.get("models", [])
        ]
        blocks.append(
            {"type": "context", "elements": [_md("Live numbers come from the opsbot daemon.")]}
        )
    for row in numbers[: MAX_BLOCKS - 4]:
        blocks.append(
            {
                "type": "section",
                "text": _md(f"*{row['model']} {row['version']}*"),
                "fields": [
                    _md(f"*Ratio*\n{_figure(row.get('traffic_ratio'), '%')}"),
                    _md(
                        f"*Ready / desired*\n{_figure(row.get('ready'))} / "
                        f"{_figure(row.get('desired'))}"
                    ),
                    _md(f"*Calls*\n{_figure(row.get('calls'))}"),
                    _md(f"*Failures*\n{_figure(row.get('failures'))}"),
                    _md(
                        f"*p50 / p99*\n{_figure(row.get('p50_ms'))} / "
                        f"{_figure(row.get('p99_ms'), ' ms')}"
                    ),
                    _md(
                        f"*CPU / memory*\n{_figure(row.get('cpu_percent'), '%')} / "
                        f"{_mib(row.get('memory_bytes'))}"
                    ),
                ],
            }
        )
    rules = svc.get("rules") or []
    if rules:
        lines = [
            f"{r['header']} {'=' if r.get('equals') is not None else '~'} "
            f"{r.get('equals') if r.get('equals') is not None else r.get('matches')} -> "
            f"{r['version']}"
            for r in rules
        ]
        blocks.append(_section("*Routing rules*, in order:\n" + _bullets(lines)))
    return {
        "type": "modal",
        "callback_id": "details",
        "title": _text(DETAILS_TITLE),
        "close": _text("Close"),
        "blocks": blocks,
    }


def loading_view(title: str, what: str) -> View:
    return {
        "type": "modal",
        "callback_id": "loading",
        "title": _text(title),
        "close": _text("Close"),
        "blocks": [_section(f":hourglass_flowing_sand: {what}…")],
    }


# -- messages: deploy DMs, alerts, reminders ------------------------------------------------------


def _section(text: str) -> Block:
    return {"type": "section", "text": _md(_clip(text, 3000))}


def deploying_message(name: str, warnings: Sequence[FieldError] = ()) -> tuple[str, list[Block]]:
    text = f"Deploying {name}… I will update this message when it is Running."
    blocks = [_section(f":hourglass_flowing_sand: {text}")]
    if warnings:
        blocks.append(
            {
                "type": "context",
                "elements": [
                    _md(_clip("Warnings: " + "; ".join(w.message for w in warnings), 2000))
                ],
            }
        )
    return text, blocks


def running_message(svc: Mapping[str, Any], api_key: str | None) -> tuple[str, list[Block]]:
    """The deploy DM once Running: URL, a curl example and (here only) the key."""
    url = str(svc["url"])
    key = api_key or "$KEY"
    curl = (
        f"curl -X POST {url} -H 'X-Auth-Token: {key}' -H 'Content-Type: application/json' "
        "-d '{\"instances\": [[5.1, 3.5, 1.4, 0.2]]}'"
    )
    text = f"{svc['name']} is Running at {url}"
    blocks = [
        _section(f":large_green_circle: *{svc['name']}* is Running.\n*URL:* `{url}`"),
        _section(f"*Try it:*\n```{curl}```"),
    ]
    note = (
        "The key is shown only here; keep it secret."
        if api_key
        else "The key was not kept across a restart of opsbot (it is stored only as a hash): "
        f"get a new one with `opsbot key rotate {svc['name']}`."
    )
    blocks.append({"type": "context", "elements": [_md(_clip(note, 2000))]})
    return text, blocks


def failed_message(svc: Mapping[str, Any]) -> tuple[str, list[Block]]:
    reason = str(svc.get("reason") or "no reason was recorded")
    text = f"{svc['name']} failed to deploy: {reason}"
    todo = (
        f"See its events with `opsbot events {svc['name']}`, fix the cause, then press *Start* "
        "in /services (or `opsbot start`)."
    )
    return _clip(text, 3000), [_section(f":x: *{svc['name']}* failed: {reason}\n{todo}")]


def alert_message(
    service: str, owner: str, kind: str, why: str, owner_mention: str | None = None
) -> tuple[str, list[Block]]:
    """A service stopped (by someone, by auto stop) or failed or went abnormal."""
    who = owner_mention or owner
    verb = {
        "stopped": "stopped",
        "failed": "failed",
        "abnormal": "is abnormal",
        "auto_stop_failed": "did not auto stop",
        "stop_failed": "did not stop",
    }.get(kind, kind)
    text = f"{service} ({owner}) {verb}: {why}"
    icon = ":white_circle:" if kind == "stopped" else ":red_circle:"
    blocks = [_section(f"{icon} *{service}* (owner {who}) {verb}: {why}")]
    return _clip(text, 3000), blocks


def reminder_message(service: str, owner: str, message: str) -> tuple[str, list[Block]]:
    """Ten minutes before auto stop: extend buttons."""
    value = action_value({"owner": owner, "name": service})
    text = f"{service} {message}"
    return _clip(text, 3000), [
        _section(f":alarm_clock: *{service}* {message}"),
        {
            "type": "actions",
            "elements": [
                _button(A_EXTEND_1, "Extend 1 h", value, "primary"),
                _button(A_EXTEND_4, "Extend 4 h", value),
            ],
        },
    ]


def env_preview(env: Mapping[str, str], secret_names: Iterable[str] = ()) -> str:
    """Environment variables as shown in messages: secrets masked."""
    return ", ".join(f"{k}={v}" for k, v in masked_env(dict(env), secret_names).items())
