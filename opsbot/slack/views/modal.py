"""The /deploy modal (and Modify): the core form's fields in the reference page's order."""

from __future__ import annotations

from collections.abc import Sequence

from opsbot.core import form
from opsbot.core.flavors import FlavorStatus
from opsbot.core.form import LABELS
from opsbot.slack.views.blocks import (
    A_ADD,
    A_ADD_RULE,
    A_AUTO_STOP,
    A_MODEL,
    A_POOL,
    A_REMOVE,
    A_REMOVE_RULE,
    A_SOURCE,
    A_VALUE,
    A_VERSION,
    DEPLOY_CALLBACK,
    MAX_BLOCKS,
    MODAL_TITLE,
    MODIFY_CALLBACK,
    MODIFY_TITLE,
    Block,
    View,
    _clip,
    _input,
    _md,
    _number,
    _plain,
    _section,
    _select,
    _text,
)
from opsbot.slack.views.state import (
    AUTO_STOP_CHOICES,
    RULE_TESTS,
    SOURCES,
    Catalog,
    FormState,
    GroupState,
    Origins,
    RuleState,
    _bid,
    _meta,
    can_add_group,
    can_add_rule,
    rule_target_value,
)


def flavor_choices(
    state: FormState, g: GroupState, flavors: Sequence[FlavorStatus], origins: Origins
) -> list[form.Choice]:
    """The core form's Specifications for this group's version (its kind of model decides
    which flavors it may take)."""
    origin = origins.get((g.source, g.model or "", g.version or ""), "custom")
    return form.flavor_choices([s.as_dict() for s in flavors], origin)


def _label(key: str) -> str:
    return LABELS[key]


def _help(key: str) -> str:
    return form.FIELD_BY_KEY[key].help


def _group_blocks(
    state: FormState,
    g: GroupState,
    index: int,
    catalog: Catalog,
    flavors: Sequence[FlavorStatus],
    origins: Origins,
) -> list[Block]:
    models = catalog.get(g.source, {})
    versions = list(models.get(g.model or "", []))
    header: Block = {
        "type": "section",
        "block_id": _bid(g, "head"),
        "text": _md(f"*{_label('models')} {index + 1}*"),
    }
    if len(state.groups) > 1:
        header["accessory"] = {
            "type": "button",
            "action_id": A_REMOVE,
            "text": _text("Remove"),
            "value": str(g.uid),
        }
    choices = flavor_choices(state, g, flavors, origins)
    # Shown, as on the reference page, but not choosable: Slack cannot grey an option, so the
    # select offers the flavors this version can take and the notes say why the others cannot.
    refused = [c for c in choices if not c.available]
    notes = (
        "; ".join(f"{c.label}: {c.reason}" for c in refused)
        if refused
        else "every flavor can run here"
    )
    return [
        header,
        _input(
            _bid(g, "source"),
            _label("source"),
            _select(A_SOURCE, "My Models or My Subscriptions", SOURCES, g.source),
            dispatch=True,
        ),
        _input(
            _bid(g, "model"),
            _label("model"),
            _select(A_MODEL, "Choose a model", [(m, m) for m in models], g.model),
            dispatch=True,
            hint=None if models else "No model in the Normal state here: create or subscribe.",
        ),
        _input(
            _bid(g, "version"),
            _label("version"),
            _select(A_VERSION, "Choose a version", [(v, v) for v in versions], g.version),
            dispatch=True,
            hint=None if g.model else "Choose a model first.",
        ),
        _input(
            _bid(g, "traffic_ratio"),
            _label("traffic_ratio"),
            _number(
                A_VALUE,
                g.traffic_ratio or ("100" if len(state.groups) == 1 else None),
                0,
                100,
                "100",
            ),
            optional=len(state.groups) == 1,
            hint=_help("traffic_ratio"),
        ),
        _input(
            _bid(g, "flavor", state.flavor_gen),
            _label("flavor"),
            _select(
                A_VALUE,
                "Choose a flavor",
                [(c.value, c.label) for c in choices if c.available],
                form.default_flavor(choices, g.flavor),
            ),
        ),
        {
            "type": "context",
            "block_id": _bid(g, "flavor_notes"),
            "elements": [_md(_clip(f"Not available: {notes}", 2000))],
        },
        _input(
            _bid(g, "instances"),
            _label("instances"),
            _number(A_VALUE, g.instances or "1", 1, 128, "1"),
            hint=_help("instances"),
        ),
        _input(
            _bid(g, "env"),
            _label("env"),
            _plain(
                A_VALUE,
                g.env,
                multiline=True,
                max_length=3000,
                placeholder="NAME=value, one per line",
            ),
            optional=True,
            hint=_help("env") + "; a masked value (ab****yz) is kept as it is",
        ),
    ]


def rule_targets(state: FormState, catalog: Catalog) -> list[tuple[str, str]]:
    """The versions a rule may send calls to: those of the form's models, as option values
    ``GROUP:VERSION`` (see :func:`rule_target_value`) and texts ``MODEL VERSION``."""
    out: dict[str, str] = {}
    seen: set[str] = set()
    for g in state.groups:
        if not g.model or g.model in seen:
            continue
        seen.add(g.model)
        versions = list(catalog.get(g.source, {}).get(g.model, []))
        for other in state.groups:
            if other.model == g.model and other.version and other.version not in versions:
                versions.append(other.version)
        for v in versions:
            out.setdefault(rule_target_value(g.uid, v), f"{g.model} {v}")
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
            _label("header"),
            _plain(A_VALUE, rule.header, max_length=64, placeholder="X-User-Group"),
        ),
        _input(
            f"r{rule.uid}.test",
            "Test",
            _select(A_VALUE, "equals or matches", RULE_TESTS, rule.test),
        ),
        _input(
            f"r{rule.uid}.value",
            _label("equals"),
            _plain(A_VALUE, rule.value, max_length=256, placeholder="beta"),
            hint=f"{_help('equals')}, or {_help('matches')}",
        ),
        _input(
            f"r{rule.uid}.version",
            _label("rule_version"),
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
    origins: Origins | None = None,
) -> View:
    """The /deploy modal: the fields of the reference Deploy page, in its order.

    With ``state.warnings`` (the core's warnings about a submitted form), a notice above the
    fields lists them and the submit button becomes "Deploy anyway". With ``state.target`` it
    is the modify modal of that service: the same fields, the name and pool shown, not editable.
    """
    blocks: list[Block] = []
    if state.warnings or state.summary:
        blocks.append(
            warnings_block(state.warnings, "Apply" if state.target else "Deploy", state.summary)
        )
    auto_choices = AUTO_STOP_CHOICES
    if state.auto_stop not in {value for value, _ in AUTO_STOP_CHOICES}:  # "90m": kept as is
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
                _label("name"),
                _plain(A_VALUE, state.name, max_length=64, placeholder="service-name"),
                hint=_help("name"),
            )
        )
    blocks.append(
        _input(
            "auto_stop",
            _label("auto_stop"),
            _select(A_AUTO_STOP, "When it stops", auto_choices, state.auto_stop),
            dispatch=True,
        )
    )
    if state.auto_stop == "custom":
        blocks.append(
            _input(
                "auto_stop_hours",
                form.CUSTOM_HOURS_LABEL,
                _number(A_VALUE, state.custom_hours, *form.CUSTOM_HOURS, "1 to 24"),
            )
        )
    blocks.append(
        _input(
            "description",
            _label("description"),
            _plain(A_VALUE, state.description, multiline=True, max_length=100),
            optional=True,
            hint=_help("description"),
        )
    )
    if not state.target:
        blocks.append(
            _input(
                "resource_pool",
                _label("resource_pool"),
                _select(A_POOL, "Choose a pool", [(p, p) for p in pools], state.pool),
                dispatch=True,
            )
        )
    for i, g in enumerate(state.groups):
        blocks += _group_blocks(state, g, i, catalog, flavors, origins or {})
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
                        "text": _text(form.ADD_VERSION_LABEL),
                        "value": "add",
                    }
                ],
            }
        )
    blocks.append(
        _input(
            "traffic_limit",
            _label("traffic_limit"),
            _number(A_VALUE, state.traffic_limit or "100", 1, 1_000_000, "100"),
            hint=_help("traffic_limit"),
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
    elif state.summary:
        submit = f"Confirm: {submit.lower()}"
    return {
        "type": "modal",
        "callback_id": MODIFY_CALLBACK if state.target else DEPLOY_CALLBACK,
        "title": _text(MODIFY_TITLE if state.target else MODAL_TITLE),
        "submit": _text(submit),
        "close": _text("Cancel"),
        "private_metadata": _meta(state),
        "blocks": blocks[:MAX_BLOCKS],
    }


def warnings_block(
    warnings: Sequence[str], verb: str = "Deploy", summary: Sequence[str] = ()
) -> Block:
    """The notice shown above the form once it is submitted: what the user confirms (the
    entered information, or the daemon's plan of a modification) and the core's warnings."""
    doing = "deploying" if verb == "Deploy" else "applying"
    parts: list[str] = []
    if summary:
        shown = "\n".join(f"• {_clip(line, 200)}" for line in summary[:30])
        more = f"\n…and {len(summary) - 30} more" if len(summary) > 30 else ""
        parts.append(f"*Check before {doing}*\n{shown}{more}")
    if warnings:
        lines = "\n".join(f"• {_clip(w, 400)}" for w in warnings[:5])
        more = f"\n…and {len(warnings) - 5} more" if len(warnings) > 5 else ""
        parts.append(f":warning: *Warnings*\n{lines}{more}")
        parts.append(f"Press *{verb} anyway* to go on, or change the environment variables.")
    else:
        parts.append("Press *Confirm* to go on, or change the form.")
    return {
        "type": "section",
        "block_id": "warnings",
        "text": _md(_clip("\n".join(parts), 3000)),
    }
