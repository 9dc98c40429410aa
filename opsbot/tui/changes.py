"""The Modify form's submission: what the user changed, as the update route's ``changes``.

The service the daemon shows carries secret-looking environment values masked. Sending the form
back as a whole spec would store those masks as the new values, so the form is sent as
:class:`opsbot.core.update.Changes` instead: only what differs from the service as shown (a
masked value left as it is, is left out, and the daemon keeps the real one). The changes are
applied here to the shown spec with the core's own :func:`~opsbot.core.update.apply_changes` to
check that they say what the form says, and to know where each version lands, so the core's
errors (which name versions by their place in the new spec) go beside the right form group.

No Textual here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from opsbot.core.errors import FieldError, OpsbotError
from opsbot.core.spec import parse_spec
from opsbot.core.update import apply_changes, parse_changes

#: A field path that names one version of the spec: models[2].flavor
ENTRY_PATH = re.compile(r"^models\[(\d+)\](.*)$", re.S)
MASK = "****"

Key = tuple[str, str]


def entry_key(entry: dict[str, Any]) -> Key:
    return (str(entry["model"]), str(entry["version"]))


def entry_ref(entry: dict[str, Any]) -> str:
    """How ``changes`` name a version: MODEL:VERSION, never ambiguous."""
    return f"{entry['model']}:{entry['version']}"


def is_masked(value: str) -> bool:
    """Whether an environment value is shown masked (the daemon masks secret-looking ones)."""
    return MASK in value


def shown_spec(service: dict[str, Any]) -> dict[str, Any]:
    """The spec of a service as the daemon shows it (secret-looking env values masked)."""
    return {
        "name": service["name"],
        "auto_stop": service.get("auto_stop", "1h"),
        "description": service.get("description", ""),
        "resource_pool": service.get("resource_pool", "public"),
        "traffic_limit": service.get("traffic_limit", 100),
        "models": [dict(m) for m in service.get("models", [])],
        "rules": [dict(r) for r in service.get("rules", [])],
    }


def bare_rule(rule: dict[str, Any]) -> dict[str, Any]:
    """A routing rule without its empty fields (equals or matches, model when not needed)."""
    return {k: v for k, v in rule.items() if v is not None}


@dataclass
class Plan:
    """What to send, where each version of the new spec comes from, and why it cannot be sent."""

    changes: dict[str, Any] = field(default_factory=dict)
    #: The versions of the spec the daemon will build, in its order (for error paths).
    order: list[Key] = field(default_factory=list)
    errors: list[FieldError] = field(default_factory=list)


def plan_changes(service: dict[str, Any], wanted: dict[str, Any]) -> Plan:
    """The ``changes`` that turn ``service`` into ``wanted`` (the form as a normalised spec, as
    ``POST /v1/validate`` answers it)."""
    old = shown_spec(service)
    before = {entry_key(m): m for m in old["models"]}
    keys = {entry_key(m) for m in wanted["models"]}
    kept = [m for m in old["models"] if entry_key(m) in keys]
    # A version added by the update starts with the first kept version's environment.
    copied: dict[str, str] = dict(kept[0].get("env") or {}) if kept else {}
    changes: dict[str, Any] = {}
    remove = [entry_ref(m) for m in old["models"] if entry_key(m) not in keys]
    traffic: dict[str, Any] = {}
    per_version: dict[str, dict[str, Any]] = {"instances": {}, "flavor": {}}
    env_set: dict[str, str] = {}
    env_unset: set[str] = set()
    edited: set[int] = set()
    secrets: list[FieldError] = []
    for i, m in enumerate(wanted["models"]):
        was = before.get(entry_key(m))
        ref = entry_ref(m)
        if was is None or was.get("traffic_ratio") != m["traffic_ratio"]:
            traffic[ref] = m["traffic_ratio"]
        for name, values in per_version.items():
            if was is None or was.get(name) != m[name]:
                values[ref] = m[name]
        base = dict(was.get("env") or {}) if was is not None else copied
        env = dict(m.get("env") or {})
        setting = {k: v for k, v in env.items() if base.get(k) != v}
        env_set |= setting
        env_unset |= {k for k in base if k not in env}
        if env != base:
            edited.add(i)
        masked = sorted(k for k, v in setting.items() if is_masked(v))
        if masked:
            # The daemon would store the mask itself: only a value typed in may be sent.
            secrets.append(
                FieldError(
                    f"models[{i}].env",
                    f"{', '.join(masked)}: the value shown is masked and this change cannot "
                    "carry the real one over; type the value again",
                )
            )
    if remove:
        changes["remove"] = remove
    if traffic:
        changes["traffic"] = traffic
    changes |= {name: values for name, values in per_version.items() if values}
    if env_set:
        changes["env_set"] = env_set
    if env_unset:
        changes["env_unset"] = sorted(env_unset)
    for name in ("traffic_limit", "description", "auto_stop"):
        if old.get(name) != wanted.get(name):
            changes[name] = wanted.get(name)
    if [bare_rule(r) for r in old["rules"]] != [bare_rule(r) for r in wanted.get("rules", [])]:
        changes["rules"] = [bare_rule(r) for r in wanted.get("rules", [])]
    if secrets:
        return Plan(changes=changes, errors=secrets)
    return _checked(old, wanted, changes, edited)


def _checked(
    old: dict[str, Any], wanted: dict[str, Any], changes: dict[str, Any], edited: set[int]
) -> Plan:
    """Apply ``changes`` to the shown spec as the core will: the order of the new versions, and
    when the changes cannot say what the form says of the environment (they set and unset
    variables on every version at once), an error beside each version concerned: the ones that
    would come out different and the ones the user edited."""
    plan = Plan(changes=changes)
    try:
        applied = apply_changes(parse_spec(old), parse_changes(changes))
    except OpsbotError as exc:
        plan.errors = exc.errors or [FieldError("spec", exc.message)]
        return plan
    plan.order = [entry_key(m) for m in applied["models"]]
    envs = {entry_key(m): m.get("env") or {} for m in applied["models"]}
    wrong = {
        i for i, m in enumerate(wanted["models"]) if envs.get(entry_key(m)) != (m.get("env") or {})
    }
    for i in sorted(wrong | edited if wrong else set()):
        plan.errors.append(
            FieldError(
                f"models[{i}].env",
                "a modification sets and unsets variables on every version at once: make "
                "the same change in each version (a masked value left as it is keeps its "
                "secret)",
            )
        )
    return plan


def to_form_paths(
    errors: list[FieldError], order: list[Key], wanted: dict[str, Any]
) -> list[FieldError]:
    """The core's errors about the new spec, with each ``models[i]`` renumbered to the form
    group of that version."""
    place = {entry_key(m): i for i, m in enumerate(wanted["models"])}
    out: list[FieldError] = []
    for error in errors:
        match = ENTRY_PATH.match(error.field)
        if match and int(match.group(1)) < len(order):
            index = place.get(order[int(match.group(1))])
            if index is not None:
                error = FieldError(f"models[{index}]{match.group(2)}", error.message)
        out.append(error)
    return out
