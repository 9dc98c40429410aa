"""The Deploy (and Modify) modal's form state: what the modal holds, read back from Slack,
changed by its dependent selects, and turned into spec data for the core.

The whole form (structure and every value, also of versions the modal does not show) is a draft
kept in the daemon's store (:class:`Drafts`: a restart loses none); ``private_metadata``
carries only the draft's short key (and, in a version's own modal, which version and the form's
view), so it never nears Slack's 3,000 characters. Values typed by the user arrive in
``view.state.values`` and are merged into the draft on every action. Blocks that depend on an
earlier choice (model after source, version after model, flavor after pool or version) carry a
generation number in their block id, renewed when the choice changes, so Slack forgets a value
that no longer fits.

How much of the form one modal shows is planned within Block Kit's budgets (see
:func:`inline`): a small form shows every version's inputs; a large one lists the versions,
each edited in a modal of its own pushed on top (``views.push``)."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter

from opsbot.core import form
from opsbot.core.errors import FieldError, OpsbotError
from opsbot.core.spec import MAX_RULES, MAX_VERSIONS, DeploySpec, masked_env
from opsbot.slack.views.blocks import (
    MAX_BLOCKS,
    SECTION_TEXT_MAX,
    TEXT_INPUT_MAX,
    _clip,
    confirm_lines,
    pack,
)

if TYPE_CHECKING:
    from opsbot.slack.drafts import Drafts  # reads and writes the store: not a view

AUTO_STOP_CHOICES = form.AUTO_STOP_CHOICES
SOURCES = form.SOURCES
#: Blocks every modal has besides the model groups and rules: name, auto stop (+ custom hours),
#: description, pool, add button, traffic limit, the rules heading, and the warnings shown
#: before confirmation.
_FIXED_BLOCKS = 9
#: Blocks of one model group: header, source, model, version, ratio, flavor, flavor notes,
#: instances, env.
_GROUP_BLOCKS = 9
#: Blocks of one routing rule: header with Remove, header name, test, value, version.
_RULE_BLOCKS = 5
#: Blocks of one version listed in a large form: its summary, and Edit / Remove.
_ROW_BLOCKS = 2
#: Environment inputs a version's modal shows at most (3,000 characters each); the longest
#: variables past that are kept as they are (see :func:`form_from_spec`).
MAX_ENV_INPUTS = 20
#: Every version of the core's limit can be added: a form that outgrows one modal lists them.
MAX_GROUPS = MAX_VERSIONS
RULE_TESTS = form.RULE_TESTS
#: Catalog of deployable models: source -> model (as the spec names it) -> Normal versions.
Catalog = Mapping[str, Mapping[str, Sequence[str]]]
#: The origin ("custom" or "exeml") of each (source, model, version) of the catalog.
Origins = Mapping[tuple[str, str, str], str]


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
    #: Variables of the service a NAME=value line cannot show (longer than Slack's input of
    #: 3,000 characters, or on several lines): sent back as they are, so they are kept;
    #: ``opsbot update`` changes them.
    kept_env: dict[str, str] = field(default_factory=dict)


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
    #: What the user confirms this time: the entered information before a deploy, the
    #: daemon's plan before a modification (not kept in the view; its mark is, in ``warned``).
    summary: list[str] = field(default_factory=list)
    rules: list[RuleState] = field(default_factory=list)
    next_rule: int = 0
    #: Modify mode: the (owner, name) of the service modified; name and pool are fixed.
    target: tuple[str, str] | None = None
    #: Where the modify modal was opened from: a message's response URL (None: App Home).
    origin: str | None = None
    everyone: bool = False
    #: The draft's key (see :class:`Drafts`); empty until the draft is first saved.
    key: str = ""
    #: The models offered, by the short option value that stands for each (see
    #: :func:`option_key`): a model's name (up to 129 characters) never travels as one.
    offered: dict[str, str] = field(default_factory=dict)

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


class DraftGone(OpsbotError):
    """A view names a draft the bot no longer holds (submitted, or left open too long), or one
    the acting user did not open."""

    title = "Form expired"


#: A draft as JSON and back, exactly: nested versions and rules, the target's tuple.
_FORM_JSON: TypeAdapter[FormState] = TypeAdapter(FormState)


def form_json(state: FormState) -> str:
    """``state`` as the JSON kept in the store (see :func:`form_from_json`)."""
    return _FORM_JSON.dump_json(state).decode()


def form_from_json(text: str) -> FormState:
    """The form :func:`form_json` wrote."""
    return _FORM_JSON.validate_json(text)


def option_key(name: str) -> str:
    """The option value that stands for ``name`` in a select: 16 characters whatever the name,
    resolved by the bot from the draft's ``offered`` (Slack takes 150 at most)."""
    return "k" + hashlib.sha256(name.encode()).hexdigest()[:15]


def offer(state: FormState, catalog: Catalog) -> FormState:
    """Record the models the form's selects offer, by their option values."""
    state.offered = {
        option_key(model): model for models in catalog.values() for model in models
    } | {option_key(g.model): g.model for g in state.groups if g.model}
    return state


def chosen_model(state: FormState, value: str | None) -> str | None:
    """The model an option value stands for (None for one the form never offered)."""
    return state.offered.get(value or "")


def _meta(state: FormState, **extra: Any) -> str:
    """``private_metadata``: the draft's key, and in a version's modal the version (``g``) and
    the form's view (``p``): a few dozen characters whatever the form holds."""
    return json.dumps({"d": state.key, **extra}, separators=(",", ":"))


def view_meta(view: Mapping[str, Any]) -> dict[str, Any]:
    """What a view's ``private_metadata`` says (see :func:`_meta`)."""
    raw = json.loads(view.get("private_metadata") or "{}")
    return raw if isinstance(raw, dict) else {}


def selected_value(value: Mapping[str, Any]) -> str | None:
    option = value.get("selected_option")
    if isinstance(option, Mapping):
        return str(option["value"])
    raw = value.get("value")
    return None if raw is None else str(raw)


def state_from_view(
    view: Mapping[str, Any], drafts: Drafts, owner: str, *, acting: str | None = None
) -> FormState:
    """Read a modal back: its draft, with the values the view holds merged over it (only the
    inputs it shows: a version's modal changes that version, the form the rest). Only
    ``owner``, who opened the form, may read it.

    ``acting`` is the block of a select whose choice an action applies (a new model resets
    the version): Slack sends its new value in the view too, left out here for the action."""
    state = drafts.load(str(view_meta(view).get("d") or ""), owner)
    values: Mapping[str, Mapping[str, Any]] = (view.get("state") or {}).get("values") or {}
    by_group = {g.uid: g for g in state.groups}
    by_rule = {r.uid: r for r in state.rules}
    env_parts: dict[int, dict[int, str]] = {}
    for block_id, actions in values.items():
        if block_id == acting:
            continue
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
            if what == "env":  # m3.env, m3.env.1, ...: one variable list in parts
                part = block_id.split(".")[2] if block_id.count(".") > 1 else "0"
                env_parts.setdefault(uid, {})[int(part) if part.isdigit() else 0] = chosen or ""
                continue
            if what == "flavor" and block_id != _bid(g, "flavor", state.flavor_gen):
                continue  # a stale flavor block: the pool changed since
            if what == "model" and block_id != _bid(g, "model"):
                continue
            if what == "version" and block_id != _bid(g, "version"):
                continue
            if what in ("source", "model", "version") and chosen is None:
                continue
            if what == "model":
                chosen = chosen_model(state, chosen)
            if what in (
                "source",
                "model",
                "version",
                "traffic_ratio",
                "flavor",
                "instances",
            ):
                setattr(g, what, chosen)
    for uid, parts in env_parts.items():
        lines = [parts[k].strip("\n") for k in sorted(parts) if parts[k].strip()]
        by_group[uid].env = "\n".join(lines) or None
    return state


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


def env_parts(text: str | None) -> list[str]:
    """Environment lines in parts of one input each (whole lines; a line longer than an input
    is never split: such variables are kept aside, see ``kept_env``)."""
    return pack((text or "").splitlines(), TEXT_INPUT_MAX)


def confirm_parts(state: FormState) -> list[str]:
    """The confirmation shown above a submitted form, in sections of Slack's 3,000 characters
    (none when there is nothing to confirm)."""
    if not state.warnings and not state.summary:
        return []
    verb = "Apply" if state.target else "Deploy"
    return pack(confirm_lines(state.warnings, verb, state.summary), SECTION_TEXT_MAX)


def _form_blocks(state: FormState, rows: int) -> int:
    return _FIXED_BLOCKS - 1 + rows * len(state.groups) + _RULE_BLOCKS * len(state.rules)


def inline(state: FormState) -> bool:
    """Whether the form shows every version's inputs in itself (the page's layout): only
    while all of it, the confirmation included, fits one modal's 100 blocks and each version's
    variables fit one input. Otherwise each version is a row with Edit (its own modal)."""
    used = _form_blocks(state, _GROUP_BLOCKS) + len(confirm_parts(state))
    return used <= MAX_BLOCKS and all(
        len(g.env or "") <= TEXT_INPUT_MAX and not g.kept_env for g in state.groups
    )


def confirm_room(state: FormState) -> int:
    """Blocks left for the confirmation once the form's own are placed (at least 20 when
    versions are rows: 8 fixed, 10 rows of 2, 10 rules of 5)."""
    return MAX_BLOCKS - _form_blocks(state, _GROUP_BLOCKS if inline(state) else _ROW_BLOCKS)


def can_add_group(state: FormState) -> bool:
    """Under the core's limit: a form too large for one modal lists its versions instead."""
    return len(state.groups) < MAX_GROUPS


def can_add_rule(state: FormState) -> bool:
    return len(state.rules) < MAX_RULES


def add_group(state: FormState, catalog: Catalog | None = None) -> FormState:
    """Another model version for a gated launch: the next version of the first group's source
    the form does not list yet (the core form's rule), else the first group's model."""
    if not can_add_group(state):
        return state
    first = state.groups[0]
    offered = [
        (model, version)
        for model, versions in (catalog or {}).get(first.source, {}).items()
        for version in versions
    ]
    used = [(g.model, g.version) for g in state.groups if g.model and g.version]
    nxt = form.next_version(
        sorted(offered, key=lambda ref: ref[0] != first.model),
        used,  # its own model first
    )
    model, version = nxt if nxt is not None else (first.model, None)
    state.groups.append(
        GroupState(uid=state.next_uid, source=first.source, model=model, version=version)
    )
    state.next_uid += 1
    return state


def choose_version(state: FormState, uid: int, version: str | None) -> FormState:
    """A new version: its kind of model (custom or ExeML) decides which flavors it can take,
    so the flavor choices are offered again (each group's choice kept where still possible)."""
    g = state.group(uid)
    if g.version != version:
        g.version = version
        state.flavor_gen += 1
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
    auto, hours = form.auto_stop_choice(str(spec.auto_stop))
    custom = hours or None
    groups = []
    for i, m in enumerate(spec.models):
        # Secrets masked, as everywhere they are shown; a masked value sent back is kept.
        shown = masked_env(m.env, m.secret_env)
        kept = _not_shown(shown)
        groups.append(
            GroupState(
                uid=i,
                source=m.source,
                model=m.model,
                version=m.version,
                traffic_ratio=None if m.traffic_ratio is None else str(m.traffic_ratio),
                flavor=m.flavor,
                instances=str(m.instances),
                env="\n".join(f"{k}={v}" for k, v in shown.items() if k not in kept) or None,
                kept_env={k: m.env[k] for k in kept},
            )
        )
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
                version=rule_target_value(
                    next((g.uid for g in groups if g.model == model), 0), r.version
                ),
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


def _not_shown(env: Mapping[str, str]) -> set[str]:
    """The variables a version's modal cannot show as NAME=value lines (values as shown,
    secrets masked): a value on several lines, a line longer than one input, then the longest
    until the rest fit the modal's inputs."""
    kept = {
        k
        for k, v in env.items()
        if len(k) + 1 + len(v) > TEXT_INPUT_MAX or len(f"{k}={v}".splitlines()) != 1
    }
    by_length = sorted((k for k in env if k not in kept), key=lambda k: -len(env[k]) - len(k))
    while by_length:
        text = "\n".join(f"{k}={env[k]}" for k in env if k not in kept)
        if len(env_parts(text)) < MAX_ENV_INPUTS:  # one input stays free for new variables
            break
        kept.add(by_length.pop(0))
    return kept


def rule_target_value(uid: int, version: str) -> str:
    """A rule's target as an option value: the group that holds the model, and the version
    (at most 75 characters; the model's name, up to 129, would pass Slack's 150)."""
    return f"{uid}:{version}"


def warning_mark(warnings: Sequence[FieldError], summary: Sequence[str] = ()) -> str:
    """A short mark of what the user was asked to confirm (the summary and the warnings): the
    same is not asked about twice, and anything changed since is asked about again."""
    if not warnings and not summary:
        return ""
    text = "\n".join([*summary, *sorted(f"{w.field}: {w.message}" for w in warnings)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def spec_data(state: FormState) -> tuple[dict[str, Any], list[FieldError]]:
    """The submitted modal as spec data for the core, plus problems found while reading it.

    Empty fields are left out so the core reports them (or applies its defaults).
    """
    problems: list[FieldError] = []
    auto_stop, problem = form.auto_stop_value(state.auto_stop, state.custom_hours)
    if problem is not None:
        problems.append(problem)
    name = state.target[1] if state.target else (state.name or "").strip()
    data: dict[str, Any] = {
        "name": name,
        "description": (state.description or "").strip(),
        "resource_pool": state.pool,
    }
    if auto_stop is not None:
        data["auto_stop"] = auto_stop
    limit = form.whole_or_text(state.traffic_limit)
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
            number = form.whole_or_text(raw)
            if number is not None:
                entry[key] = number
        if g.flavor:
            entry["flavor"] = g.flavor
        env, bad = form.parse_env_lines(g.env, f"models[{i}].env")
        problems += bad
        if len(env_parts(g.env)) > MAX_ENV_INPUTS:  # more than a version's modal can show
            problems.append(
                FieldError(
                    f"models[{i}].env",
                    f"more variables than Slack can show ({MAX_ENV_INPUTS} inputs of "
                    f"{TEXT_INPUT_MAX} characters): set the longest with `opsbot update`",
                )
            )
        entry["env"] = {**g.kept_env, **env}
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
        uid, _, version = rule.version.partition(":")
        holder = next((g for g in state.groups if str(g.uid) == uid), None)
        model = holder.model if holder is not None else None
        out["version"] = version
        sharing = {g.model for g in state.groups if g.version == version and g.model}
        if model and sharing - {model}:
            out["model"] = model
    return out


def error_block_ids(
    state: FormState, errors: Sequence[FieldError], *, own_modal: int | None = None
) -> dict[str, str]:
    """Field errors of the core, keyed by the block id of the input they concern (the core
    form's :func:`~opsbot.core.form.error_field` says which field a path belongs to).

    Errors on fields the modal shows no input for go under the name (the auto stop in the
    modify modal, which has no name input), prefixed with the field's label: so do a version's
    when the form lists versions as rows. In a version's own modal (``own_modal``, its uid)
    only that version's errors are kept: the rest are the form's, told when it is submitted.
    """
    out: dict[str, list[str]] = {}
    top = "auto_stop" if state.target else "name"
    fixed = {"name", "resource_pool"} if state.target else set()
    versions_shown = own_modal is None and inline(state)

    def put(block_id: str, message: str) -> None:
        out.setdefault(block_id, []).append(message)

    for error in errors:
        ref = form.error_field(error.field)
        elsewhere = (
            f"{form.field_label(error.field)}: {error.message}"
            if error.field not in ("", "spec")
            else error.message
        )
        index = ref.index or 0
        if own_modal is not None:
            if ref.section == "version" and error.field != "models":
                g = state.groups[index] if index < len(state.groups) else None
                if g is not None and g.uid == own_modal:
                    put(_bid(g, ref.key, state.flavor_gen), error.message)
            continue
        if ref.section == "version":
            if index >= len(state.groups) or not versions_shown:
                put(top, elsewhere)
                continue
            g = state.groups[index]
            put(_bid(g, ref.key, state.flavor_gen), error.message)
        elif ref.section == "rule":
            if index >= len(state.rules):
                put(top, elsewhere)
                continue
            what = {"header": "header", "rule_version": "version"}.get(ref.key, "value")
            put(f"r{state.rules[index].uid}.{what}", error.message)
        elif ref.key == "auto_stop":
            put("auto_stop_hours" if state.auto_stop == form.CUSTOM else "auto_stop", error.message)
        elif ref.key in ("name", "description", "resource_pool", "traffic_limit") and (
            ref.key not in fixed
        ):
            put(ref.key, error.message)
        else:
            put(top, elsewhere)
    return {block: _clip(" ".join(messages), 2000) for block, messages in out.items()}
