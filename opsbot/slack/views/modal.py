"""The /deploy modal (and Modify): the core form's fields in the reference page's order.

Planned within Block Kit's budgets (100 blocks a modal, 3,000 characters an input or a
section, 150 an option value, 75 an option text, 24 a title, 100 options a select): a form that
fits shows every version's inputs; a larger one lists each version as a row with Edit, which
pushes the version's own modal (:func:`version_modal`), so no field is ever cut off; a select
of more than 100 choices is an external_select, whose options the bot answers from
:func:`select_options` as the user types, so no choice is either."""

from __future__ import annotations

import re
from collections.abc import Sequence

from opsbot.core import form
from opsbot.core.flavors import FlavorStatus
from opsbot.core.form import LABELS
from opsbot.slack.views.blocks import (
    A_ADD,
    A_ADD_RULE,
    A_AUTO_STOP,
    A_EDIT,
    A_MODEL,
    A_POOL,
    A_REMOVE,
    A_REMOVE_RULE,
    A_SOURCE,
    A_VALUE,
    A_VERSION,
    DEPLOY_CALLBACK,
    MODAL_TITLE,
    MODIFY_CALLBACK,
    MODIFY_TITLE,
    TEXT_INPUT_MAX,
    VERSION_CALLBACK,
    Block,
    View,
    _button,
    _clip,
    _confirm,
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
    MAX_ENV_INPUTS,
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
    confirm_parts,
    confirm_room,
    env_parts,
    group_uid,
    inline,
    option_key,
    rule_target_value,
)


def flavor_choices(
    state: FormState, g: GroupState, flavors: Sequence[FlavorStatus], origins: Origins
) -> list[form.Choice]:
    """The core form's Specifications for this group's version (its kind of model decides
    which flavors it may take)."""
    origin = origins.get((g.source, g.model or "", g.version or ""), "custom")
    return form.flavor_choices([s.as_dict() for s in flavors], origin)


def auto_stop_options(state: FormState) -> list[tuple[str, str]]:
    """Auto Stop's choices: the core form's, and a spec's value the form cannot express
    ("90m"), kept as it is."""
    choices = list(AUTO_STOP_CHOICES)
    if state.auto_stop not in {value for value, _ in AUTO_STOP_CHOICES}:
        choices.append((state.auto_stop, f"Keep {state.auto_stop}"))
    return choices


def pool_options(pools: Sequence[str]) -> list[tuple[str, str]]:
    """The pools a new service may run in (a modified one keeps its own)."""
    return [(p, p) for p in pools]


def model_options(g: GroupState, catalog: Catalog) -> list[tuple[str, str]]:
    """The models of the group's source, by their option values (see :func:`option_key`)."""
    return [(option_key(m), m) for m in catalog.get(g.source, {})]


def version_options(g: GroupState, catalog: Catalog) -> list[tuple[str, str]]:
    """The Normal versions of the group's model."""
    return [(v, v) for v in catalog.get(g.source, {}).get(g.model or "", [])]


def flavor_options(
    state: FormState, g: GroupState, flavors: Sequence[FlavorStatus], origins: Origins
) -> list[tuple[str, str]]:
    """The flavors the group's version can take in the pool (the others are noted beside)."""
    return [(c.value, c.label) for c in flavor_choices(state, g, flavors, origins) if c.available]


def select_options(
    state: FormState,
    block_id: str,
    catalog: Catalog,
    pools: Sequence[str],
    flavors: Sequence[FlavorStatus],
    origins: Origins | None = None,
) -> list[tuple[str, str]]:
    """The options of the form's select in block ``block_id``, as the modal offers them: what
    an external_select (a select of more than 100) answers Slack from. Nothing for a block the
    form does not show (any more: a model block of an earlier source, a removed rule)."""
    if block_id == "auto_stop":
        return auto_stop_options(state)
    if block_id == "resource_pool":
        return [] if state.target else pool_options(pools)
    rule = re.fullmatch(r"r(\d+)\.(test|version)", block_id)
    if rule:
        if not any(r.uid == int(rule.group(1)) for r in state.rules):
            return []
        return list(RULE_TESTS) if rule.group(2) == "test" else rule_targets(state, catalog)
    try:
        g = state.group(group_uid(block_id))
    except (ValueError, KeyError):
        return []
    if block_id == _bid(g, "source"):
        return list(SOURCES)
    if block_id == _bid(g, "model"):
        return model_options(g, catalog)
    if block_id == _bid(g, "version"):
        return version_options(g, catalog)
    if block_id == _bid(g, "flavor", state.flavor_gen):
        return flavor_options(state, g, flavors, origins or {})
    return []


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
    *,
    own_modal: bool = False,
) -> list[Block]:
    """A version's inputs: in the form (with Remove), or in the version's own modal, where its
    variables take as many inputs as they need and Remove is the form's row's."""
    models = model_options(g, catalog)
    header: Block = {
        "type": "section",
        "block_id": _bid(g, "head"),
        "text": _md(f"*{_label('models')} {index + 1}*"),
    }
    if len(state.groups) > 1 and not own_modal:
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
            _select(A_MODEL, "Choose a model", models, option_key(g.model) if g.model else None),
            dispatch=True,
            hint=None if models else "No model in the Normal state here: create or subscribe.",
        ),
        _input(
            _bid(g, "version"),
            _label("version"),
            _select(A_VERSION, "Choose a version", version_options(g, catalog), g.version),
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
                flavor_options(state, g, flavors, origins),
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
        *_env_blocks(g, own_modal),
    ]


def _env_blocks(g: GroupState, own_modal: bool) -> list[Block]:
    """Environment Variable: one input in the form; in a version's own modal, the variables
    in inputs of 3,000 characters each and one more for new ones, and a note naming those kept
    as they are (too long for an input)."""
    parts = env_parts(g.env) if own_modal else [g.env or ""]
    if own_modal and len(parts) < MAX_ENV_INPUTS:  # spec_data refuses more than it shows
        parts.append("")
    blocks = [
        _input(
            _bid(g, "env") + (f".{i}" if i else ""),
            _label("env") + (f" ({i + 1} of {len(parts)})" if len(parts) > 1 else ""),
            _plain(
                A_VALUE,
                part or None,
                multiline=True,
                max_length=TEXT_INPUT_MAX,
                placeholder="NAME=value, one per line",
            ),
            optional=True,
            hint=_help("env") + "; a masked value (ab****yz) is kept as it is",
        )
        for i, part in enumerate(parts)
    ]
    if g.kept_env:
        names = ", ".join(sorted(g.kept_env))
        blocks.append(
            {
                "type": "context",
                "block_id": _bid(g, "kept_env"),
                "elements": [
                    _md(
                        _clip(
                            f"Kept as they are ({len(g.kept_env)}; too long for Slack's "
                            f"inputs, or on several lines): {names}. Change them with "
                            "`opsbot update`.",
                            2000,
                        )
                    )
                ],
            }
        )
    return blocks


def _version_row(state: FormState, g: GroupState, index: int) -> list[Block]:
    """A version of a form too large to show every version's inputs: what it holds, and Edit
    (its own modal) and Remove."""
    env, _ = form.parse_env_lines(g.env)
    what = " · ".join(
        [
            f"{g.model or '_no model yet_'} {g.version or ''}".strip(),
            f"{_label('traffic_ratio')} {g.traffic_ratio or '–'}",
            f"{_label('flavor')} {g.flavor or '–'}",
            f"{_label('instances')} {g.instances or '1'}",
            f"{_label('env')}: {len(env) + len(g.kept_env)}",
        ]
    )
    buttons = [_button(A_EDIT, "Edit", str(g.uid), "primary")]
    if len(state.groups) > 1:
        remove = _button(A_REMOVE, "Remove", str(g.uid))
        remove["confirm"] = _confirm(
            f"Remove version {index + 1}?",
            f"Remove {_clip(g.model or 'this version', 140)} {g.version or ''} from the form?",
            "Remove",
        )
        buttons.append(remove)
    return [
        {
            "type": "section",
            "block_id": _bid(g, "row"),
            "text": _md(_clip(f"*{_label('models')} {index + 1}*\n{what}", 3000)),
        },
        {"type": "actions", "block_id": _bid(g, "edit"), "elements": buttons},
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
            form.RULE_TEST_LABEL,
            _select(A_VALUE, form.RULE_TEST_PROMPT, RULE_TESTS, rule.test),
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
    blocks: list[Block] = confirm_blocks(confirm_parts(state), confirm_room(state))
    shown = inline(state)
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
            _select(A_AUTO_STOP, "When it stops", auto_stop_options(state), state.auto_stop),
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
                _select(A_POOL, "Choose a pool", pool_options(pools), state.pool),
                dispatch=True,
            )
        )
    for i, g in enumerate(state.groups):
        if shown:
            blocks += _group_blocks(state, g, i, catalog, flavors, origins or {})
        else:
            blocks += _version_row(state, g, i)
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
        "blocks": blocks,
    }


def confirm_blocks(parts: Sequence[str], room: int) -> list[Block]:
    """The confirmation above a submitted form, a section per part (``warnings``,
    ``warnings.1``, ...), in the ``room`` the form leaves; past it (a plan of hundreds of
    changes), the last section says how many lines more there are."""
    shown = list(parts[: max(room, 1)])
    if len(parts) > len(shown):
        rest = sum(p.count("\n") + 1 for p in parts[len(shown) :])
        shown[-1] = _clip(shown[-1], 2900) + f"\n…and {rest} more lines"
    return [
        {"type": "section", "block_id": "warnings" + (f".{i}" if i else ""), "text": _md(part)}
        for i, part in enumerate(shown)
    ]


def version_modal(
    state: FormState,
    uid: int,
    catalog: Catalog,
    flavors: Sequence[FlavorStatus],
    origins: Origins | None = None,
    *,
    parent: str,
) -> View:
    """A version's own modal, pushed over a form too large to show its inputs: the version's
    fields as the form has them; Done keeps them in the form (``parent``, its view id), which
    is then submitted as a whole."""
    g = state.group(uid)
    index = state.groups.index(g)
    title = f"Version {index + 1}"
    if state.target:
        title += f" of {len(state.groups)}"
    return {
        "type": "modal",
        "callback_id": VERSION_CALLBACK,
        "title": _text(title),
        "submit": _text("Done"),
        "close": _text("Back"),
        "private_metadata": _meta(state, g=uid, p=parent),
        "blocks": _group_blocks(state, g, index, catalog, flavors, origins or {}, own_modal=True),
    }
