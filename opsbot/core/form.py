"""The Deploy form as every front shows it: fields, labels, help, choices, defaults and verbs.

:mod:`opsbot.core.spec` says what a valid spec is; this module says how the reference page's
form asks for one. The dashboard, the Slack modal and the CLI render from here and restate
nothing: the fields in the page's order with its labels, each field's help and default, the
auto stop presets and the custom-hours rule, the flavors a version may choose (with the reason
the others cannot be chosen), the next version a gated launch adds, environment lines, the
field an error path belongs to, which verbs each status allows and for whom, and the summary
a user confirms before a deploy ("After confirming the entered information").

Headless: no front is imported here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

from opsbot.core import update
from opsbot.core.autostop import MAX_MINUTES, PRESET_HOURS
from opsbot.core.errors import FieldError
from opsbot.core.spec import (
    DEFAULT_FLAVOR,
    MAX_ENV,
    MAX_RULES,
    MAX_VERSIONS,
    DeploySpec,
    masked_env,
)
from opsbot.core.status import CAN_MODIFY, CAN_START, CAN_STOP, Status

Section = Literal["basic", "version", "limit", "rule"]


@dataclass(frozen=True)
class FormField:
    """One field of the form: the spec key it fills, the page's label, and its help."""

    key: str
    label: str
    help: str
    section: Section
    default: str = ""


#: The fields in the reference page's order, with its labels (Table 1 and Table 2), then the
#: routing rules opsbot adds after the traffic limit.
FIELDS: tuple[FormField, ...] = (
    FormField("name", "Name", "1 to 64 letters, digits, - or _, starting with a letter", "basic"),
    FormField(
        "auto_stop",
        "Auto Stop",
        "the service stops by itself this long after it starts; Custom takes whole hours 1-24",
        "basic",
        "1h",
    ),
    FormField(
        "description", "Description", "at most 100 characters, none of ! < > = & \" '", "basic"
    ),
    FormField(
        "resource_pool",
        "Resource Pool",
        "the public pool, or a dedicated pool from the config",
        "basic",
        "public",
    ),
    FormField("source", "Model Source", "My Models or My Subscriptions", "version", "mine"),
    FormField("model", "Model", "a model with a version in the Normal state", "version"),
    FormField("version", "Version", "a Normal version of the model", "version"),
    FormField(
        "traffic_ratio",
        "Traffic Ratio (%)",
        "the share of calls this version gets; the versions of a service sum to 100",
        "version",
        "100",
    ),
    FormField(
        "flavor",
        "Specifications",
        "what one instance gets; ExeML specifications take only ExeML models",
        "version",
        DEFAULT_FLAVOR,
    ),
    FormField(
        "instances",
        "Compute Nodes",
        "instances of this version, 1 to 128 (more than 1 is distributed)",
        "version",
        "1",
    ),
    FormField(
        "env",
        "Environment Variable",
        "NAME=value, one per line; do not enter secrets such as plaintext passwords",
        "version",
    ),
    FormField(
        "traffic_limit",
        "Traffic Limit",
        "the most calls per second the service accepts",
        "limit",
        "100",
    ),
    FormField("header", "Header", "the HTTP header a rule tests, such as X-User-Group", "rule"),
    FormField("equals", "Value", "the exact header value that matches", "rule"),
    FormField("matches", "Pattern", "a regular expression the whole value must match", "rule"),
    FormField("rule_version", "Version", "the version that gets the matching calls", "rule"),
)

FIELD_BY_KEY: dict[str, FormField] = {f.key: f for f in FIELDS}
#: The labels by spec key ("models" and "rules" name the lists themselves).
LABELS: dict[str, str] = {
    **{f.key: f.label for f in FIELDS},
    "models": "Model and Configuration",
    "rules": "Routing rules",
}
SOURCES: tuple[tuple[str, str], ...] = (("mine", "My Models"), ("subscribed", "My Subscriptions"))
RULE_TESTS: tuple[tuple[str, str], ...] = (
    ("equals", "equals"),
    ("matches", "matches (regular expression)"),
)
#: The label of a rule's choice between its tests, and what it asks for.
RULE_TEST_LABEL = "Test"
RULE_TEST_PROMPT = "equals or matches"
ADD_VERSION_LABEL = "Add Model Version and Configuration"
LIMITS = {"versions": MAX_VERSIONS, "rules": MAX_RULES, "env": MAX_ENV}


# -- auto stop --------------------------------------------------------------------------------

CUSTOM = "custom"
#: The Auto Stop choices, in the page's order: presets, Custom (whole hours), Off.
AUTO_STOP_CHOICES: tuple[tuple[str, str], ...] = (
    *((f"{h}h", f"{h} hour{'s' if h > 1 else ''} later") for h in PRESET_HOURS),
    (CUSTOM, "Custom (1-24 hours)"),
    ("off", "Off"),
)
CUSTOM_HOURS = (1, MAX_MINUTES // 60)
CUSTOM_HOURS_LABEL = "Custom: hours from 1 to 24"


def auto_stop_choice(value: str) -> tuple[str, str]:
    """The choice and custom hours that show a spec's auto stop: "3h" is Custom 3; "90m", which
    the form cannot express, stays a choice of its own ("Keep 90m")."""
    if value in {v for v, _ in AUTO_STOP_CHOICES}:
        return value, ""
    match = re.fullmatch(r"(\d+)h", value)
    if match:
        return CUSTOM, match.group(1)
    return value, ""


def auto_stop_value(choice: str, custom_hours: str | None) -> tuple[str | None, FieldError | None]:
    """The spec's auto stop from the form's choice and custom hours box.

    Custom takes whole hours from 1 to 24 (the page's rule); anything else is an error on
    ``auto_stop`` and no value."""
    if choice != CUSTOM:
        return choice, None
    text = (custom_hours or "").strip()
    low, high = CUSTOM_HOURS
    if not text.isdigit() or not low <= int(text) <= high:
        shown = f"{text!r} is not" if text else "enter"
        return None, FieldError(
            "auto_stop", f"{shown} a whole number of hours from {low} to {high} for Custom"
        )
    return f"{int(text)}h", None


# -- numbers and environment lines ------------------------------------------------------------


def whole_or_text(text: str | None) -> int | str | None:
    """A number box's value: an int when it is one, the text itself otherwise (so the core
    names the problem), None when empty (the default applies)."""
    value = (text or "").strip()
    if not value:
        return None
    return int(value) if re.fullmatch(r"[+-]?\d+", value) else value


def parse_env_lines(
    text: str | None, field: str = "env"
) -> tuple[dict[str, str], list[FieldError]]:
    """``NAME=value`` lines into variables; blank lines and ``#`` comments are skipped.

    A line without ``=`` or without a name is an error on ``field`` naming the line."""
    env: dict[str, str] = {}
    errors: list[FieldError] = []
    for number, line in enumerate((text or "").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not sep or not name.strip():
            shown = line.strip()
            shown = shown if len(shown) <= 40 else shown[:39] + "…"
            errors.append(
                FieldError(field, f"line {number} ({shown!r}) is not NAME=value: one per line")
            )
            continue
        env[name.strip()] = value.strip()
    return env, errors


def is_masked(value: str) -> bool:
    """Whether a value is shown masked; sent back unchanged, it means "keep"."""
    return update.MASK in value


def env_lines(
    env: Mapping[str, str], *, masked: bool = True, secret_names: Iterable[str] = ()
) -> str:
    """Variables as ``NAME=value`` lines, secrets (those named in ``secret_names`` and those
    that look like one) masked unless told otherwise (a masked value sent back means "keep")."""
    shown = masked_env(dict(env), secret_names) if masked else dict(env)
    return "\n".join(f"{name}={value}" for name, value in shown.items())


# -- error paths ------------------------------------------------------------------------------

_PATH = re.compile(r"^(models|rules)\[(\d+)\](?:\.(\w+))?(?:\.(.+))?$")


@dataclass(frozen=True)
class FieldRef:
    """Where an error path lands in the form: a top field, or a field of version/rule i."""

    key: str
    section: Literal["top", "version", "rule"] = "top"
    index: int | None = None


def error_field(path: str) -> FieldRef:
    """The form field an error path of the core belongs to.

    ``models[1].env.X`` is Environment Variable of version 2; ``models`` (ratios that do not sum
    to 100) is the first version's Traffic Ratio; ``auto_stop.minutes`` is Auto Stop;
    ``rules[0].model`` is the rule's Version. Anything else goes to the top of the form."""
    match = _PATH.match(path)
    if match:
        kind, index, key, _ = match.groups()
        if kind == "models":
            return FieldRef(key if key in FIELD_BY_KEY else "model", "version", int(index))
        # A rule without a field (exactly one of equals and matches) is its test's value.
        key = {"model": "rule_version", "version": "rule_version"}.get(key or "", key or "equals")
        return FieldRef(key if key in FIELD_BY_KEY else "equals", "rule", int(index))
    if path == "models":
        return FieldRef("traffic_ratio", "version", 0)
    if path == "rules":
        return FieldRef("header", "rule", 0)
    top = path.split(".", 1)[0]
    return FieldRef(top if top in FIELD_BY_KEY else "form")


def field_label(path: str) -> str:
    """How the form names the field an error path points at: ``models[0].env.DB_PASSWORD`` is
    "Version 1, environment variable DB_PASSWORD"."""
    if path in LABELS:
        return LABELS[path]
    match = _PATH.match(path)
    if match is None:
        return path
    kind, index, key, rest = match.groups()
    where = f"{'Version' if kind == 'models' else 'Rule'} {int(index) + 1}"
    if key is None:
        return where
    if key == "env" and rest:
        return f"{where}, environment variable {rest}"
    if kind == "rules" and key in ("version", "model"):
        key = "rule_version"
    return f"{where}, {LABELS.get(key, key).lower()}"


# -- choices ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Choice:
    """One option of a select: shown always; chosen only when available (else the reason)."""

    value: str
    label: str
    available: bool = True
    reason: str = ""


ORIGIN_WORDS = {"custom": "custom", "exeml": "ExeML"}


def flavor_choices(flavors: Iterable[Mapping[str, Any]], origin: str = "custom") -> list[Choice]:
    """The Specifications of one version: every flavor of the pool (as ``GET /v1/flavors``
    lists them), unavailable where no node can host it in this pool or it does not take the
    version's kind of model (ExeML specifications take only ExeML models)."""
    out: list[Choice] = []
    for f in flavors:
        allows = [str(a) for a in f.get("allows") or ["custom"]]
        reason = ""
        if not f.get("available", True):
            reason = str(f.get("reason") or "no node can host it")
        elif origin not in allows:
            kinds = " or ".join(ORIGIN_WORDS.get(a, a) for a in allows)
            reason = (
                f"takes only {kinds} models; this version is {ORIGIN_WORDS.get(origin, origin)}"
            )
        name = str(f.get("name") or f["id"])
        out.append(Choice(str(f["id"]), name, not reason, reason))
    return out


def search_choices(choices: Iterable[tuple[str, str]], typed: str) -> list[tuple[str, str]]:
    """The (value, label) choices whose label holds ``typed``, ignoring case, best first: the
    label itself, then labels that start with it, then those where a word (after ``-``, ``_``,
    ``.``, ``/`` or a space) starts with it, then the rest, the earlier it appears the better;
    ties keep the form's order. Nothing typed (or only spaces) keeps every choice, in order.

    How a front that cannot show a long list at once (a Slack select takes 100 options) offers
    all of it: the user types part of a name and picks among the matches."""
    needle = typed.strip().casefold()
    if not needle:
        return list(choices)
    ranked: list[tuple[tuple[int, int], int, tuple[str, str]]] = []
    for order, choice in enumerate(choices):
        label = choice[1].casefold()
        at = label.find(needle)
        if at < 0:
            continue
        word = _word_start(label, needle)
        if label == needle:
            rank = (0, 0)
        elif at == 0:
            rank = (1, 0)
        elif word is not None:
            rank = (2, word)
        else:
            rank = (3, at)
        ranked.append((rank, order, choice))
    return [choice for _, _, choice in sorted(ranked, key=lambda r: (r[0], r[1]))]


#: What separates the words of a name, for :func:`search_choices`.
WORD_SEPARATORS = "-_./ "


def _word_start(label: str, needle: str) -> int | None:
    """Where a word of ``label`` starts with ``needle`` (None when none does)."""
    start = 0
    while (at := label.find(needle, start)) >= 0:
        if at == 0 or label[at - 1] in WORD_SEPARATORS:
            return at
        start = at + 1
    return None


def default_flavor(choices: Sequence[Choice], current: str | None = None) -> str | None:
    """The flavor a version starts with: its own when it can be chosen, else the spec's default
    when it can, else the first that can; None when none can."""
    usable = [c.value for c in choices if c.available]
    for wanted in (current, DEFAULT_FLAVOR):
        if wanted and wanted in usable:
            return wanted
    return usable[0] if usable else None


def next_version(
    versions: Sequence[tuple[str, str]], used: Iterable[tuple[str, str]]
) -> tuple[str, str] | None:
    """The (model, version) a new group of a gated launch starts with: the first Normal version,
    in the order offered, that the form does not list yet (a copy would be a duplicate)."""
    taken = set(used)
    return next((v for v in versions if v not in taken), None)


def can_add_version(count: int, model_versions: int | None = None) -> bool:
    """Whether "Add Model Version and Configuration" is offered: under the limit, and not for a
    model that has one version only (the page hides it then)."""
    if count >= MAX_VERSIONS:
        return False
    return not (count == 1 and model_versions == 1)


# -- verbs ------------------------------------------------------------------------------------


class Verb(StrEnum):
    START = "start"
    STOP = "stop"
    EXTEND = "extend"
    AUTO_STOP = "auto_stop"
    MODIFY = "modify"
    DELETE = "delete"
    ROTATE_KEY = "rotate_key"
    HISTORY = "history"


#: Statuses whose deadline runs, so Extend has something to add to.
CAN_EXTEND = frozenset({Status.RUNNING, Status.CONCERNING, Status.ABNORMAL})
_BY_STATUS: dict[Verb, frozenset[Status]] = {
    Verb.START: CAN_START,
    Verb.STOP: CAN_STOP,
    Verb.EXTEND: CAN_EXTEND,
    Verb.AUTO_STOP: frozenset(CAN_MODIFY),
    Verb.MODIFY: frozenset(CAN_MODIFY),
    Verb.DELETE: frozenset(set(Status) - {Status.DELETING}),
    Verb.ROTATE_KEY: frozenset(set(Status) - {Status.DELETING}),
    Verb.HISTORY: frozenset(Status),
}
#: Verbs that only look, open to anyone who can see the service.
READ_ONLY = frozenset({Verb.HISTORY})


def allowed_verbs(status: Status | str, *, owner: bool, admin: bool) -> frozenset[Verb]:
    """What a user may do to a service in this status: the owner and admins act, others only
    look. The core enforces the same sets; fronts use this to offer only what will be taken."""
    state = Status(status)
    acting = owner or admin
    return frozenset(
        verb
        for verb, statuses in _BY_STATUS.items()
        if state in statuses and (acting or verb in READ_ONLY)
    )


# -- the summary to confirm ---------------------------------------------------------------------


def deploy_summary(spec: DeploySpec) -> list[tuple[str, str]]:
    """The entered information, as the page has the user confirm it before deploying: a
    (label, value) line per field, each version on its own lines, secrets masked."""
    lines: list[tuple[str, str]] = [
        (LABELS["name"], spec.name),
        (LABELS["auto_stop"], _auto_stop_words(str(spec.auto_stop))),
        (LABELS["description"], spec.description or "-"),
        (LABELS["resource_pool"], spec.resource_pool),
    ]
    sources = dict(SOURCES)
    for i, m in enumerate(spec.models, 1):
        where = f"Version {i}: " if len(spec.models) > 1 else ""
        lines += [
            (f"{where}{LABELS['source']}", sources.get(m.source, m.source)),
            (f"{where}{LABELS['model']}", f"{m.model} {m.version}"),
            (f"{where}{LABELS['traffic_ratio']}", str(m.traffic_ratio)),
            (f"{where}{LABELS['flavor']}", m.flavor),
            (f"{where}{LABELS['instances']}", str(m.instances)),
            (
                f"{where}{LABELS['env']}",
                ", ".join(f"{k}={v}" for k, v in masked_env(m.env, m.secret_env).items()) or "-",
            ),
        ]
    lines.append((LABELS["traffic_limit"], f"{spec.traffic_limit} calls per second"))
    for i, rule in enumerate(spec.rules, 1):
        test = f"= {rule.equals}" if rule.equals is not None else f"~ {rule.matches}"
        target = f"{rule.model} {rule.version}" if rule.model else rule.version
        lines.append((f"Rule {i}", f"{rule.header} {test} -> {target}"))
    return lines


def _auto_stop_words(value: str) -> str:
    labels = dict(AUTO_STOP_CHOICES)
    if value in labels:
        return labels[value]
    return f"{value} later"
