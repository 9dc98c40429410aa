"""Modifying a service: a new spec applied to a live service, its history and rollback.

A modification is a whole new DeploySpec, checked by the same rules as a deploy (a front may
build it from the current spec with :func:`apply_changes`). It is stored at once, with a config
snapshot; the controller then brings the running instances to it without dropping a call:
instances whose configuration changed are replaced by new ones that become ready before the old
ones drain and stop (see :mod:`opsbot.core.controller`). Ratios, rules, the traffic limit and the
description take effect within one gateway poll.

Each version keeps its slot (``service_versions.idx``) across modifications for as long as the
service names it, so instances of an unchanged version are never restarted by an update.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import sqlite_utils
from pydantic import ConfigDict, TypeAdapter, ValidationError

from opsbot.core import services as svc
from opsbot.core.admission import CheckedSpec
from opsbot.core.clock import Clock
from opsbot.core.deadlines import TICKING
from opsbot.core.errors import Conflict, FieldError, InvalidInput, NotFound
from opsbot.core.events import Kind
from opsbot.core.pools import Pools
from opsbot.core.spec import DeploySpec, ModelEntry, mask_value, masked_env
from opsbot.core.status import HOLDS_CAPACITY, Status
from opsbot.core.store import Store

#: Statuses in which a service may be modified. Deploying, Stopping and Deleting are refused:
#: their instances are on the move already.
UPDATABLE = frozenset(
    {Status.RUNNING, Status.CONCERNING, Status.ABNORMAL, Status.STOPPED, Status.FAILED}
)


@dataclass(frozen=True)
class Snapshot:
    n: int
    spec: dict[str, Any]
    actor: str
    created_at: float
    #: What this snapshot changed from the one before (the deploy, #1, changed nothing).
    changes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Plan:
    """What a modification would do, for the user to confirm before it is applied."""

    changes: tuple[str, ...]
    """A line per change, as the history shows it."""
    restarts: tuple[str, ...]
    """Which versions' instances start, restart or stop; the rest keep running."""
    spec: dict[str, Any]
    """The spec that would be applied (masked values already resolved, shown masked)."""

    def as_dict(self) -> dict[str, Any]:
        spec = json.loads(json.dumps(self.spec))
        for entry in spec["models"]:
            entry["env"] = masked_env(entry["env"], entry.get("secret_env") or ())
        return {"changes": list(self.changes), "restarts": list(self.restarts), "spec": spec}


@dataclass(frozen=True)
class Updated:
    service: svc.Service
    changes: tuple[str, ...]
    snapshot: int | None
    """The number of the config snapshot the change made; None when nothing changed."""


# -- building a new spec from flags ------------------------------------------------------------


@dataclass(frozen=True)
class Changes:
    """What a command line asks to change; every part optional.

    ``traffic`` maps VERSION (or MODEL:VERSION) to a ratio; a version the service does not name
    yet is added (with the first version's flavor, instances and env) when the model is clear.
    ``instances`` and ``flavor`` map VERSION (or "*" for every version) to the new value.
    """

    traffic: dict[str, int] | None = None
    remove: tuple[str, ...] = ()
    instances: dict[str, int] | None = None
    flavor: dict[str, str] | None = None
    env_set: dict[str, str] | None = None
    env_unset: tuple[str, ...] = ()
    traffic_limit: int | None = None
    description: str | None = None
    auto_stop: str | None = None
    rules: list[dict[str, Any]] | None = None

    __pydantic_config__ = ConfigDict(extra="forbid")


_CHANGES = TypeAdapter(Changes)


def parse_changes(data: Any) -> Changes:
    """Changes sent as JSON (the control API); errors name the field under ``changes``."""
    try:
        return _CHANGES.validate_python(data, strict=False)
    except ValidationError as exc:
        raise InvalidInput(
            [
                FieldError(
                    ".".join(["changes", *(str(p) for p in e["loc"])]),
                    str(e["msg"]).removeprefix("Value error, "),
                )
                for e in exc.errors(include_url=False)
            ]
        ) from None


def changes_as_json(changes: Changes) -> dict[str, Any]:
    return {k: v for k, v in asdict(changes).items() if v not in (None, ())}


def parse_assignments(text: str, field: str, *, default_key: str | None = None) -> dict[str, str]:
    """ "1.0.0=50,2.0.0=50" as {"1.0.0": "50", ...}; a bare value applies to ``default_key``."""
    out: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",")):
        key, sep, value = part.rpartition("=")
        if not sep and default_key is not None and part:
            key, value = default_key, part
        elif not sep or not key or not value:
            example = "1.0.0=90,2.0.0=10" if field == "traffic" else "2.0.0=3"
            raise InvalidInput(
                [FieldError(field, f"{part!r} is not VERSION=VALUE; e.g. {example}")]
            )
        if key.strip() in out:
            # A repeated key would silently replace the first (and its ratio vanish from the
            # sum): name it instead.
            raise InvalidInput(
                [FieldError(field, f"{key.strip()} is given twice in {text!r}; give it once")]
            )
        out[key.strip()] = value.strip()
    return out


def parse_rule(text: str) -> dict[str, Any]:
    """A routing rule written "HEADER=VALUE->VERSION" (equals) or "HEADER~REGEX->VERSION"
    (matches); VERSION may be MODEL:VERSION."""
    head, arrow, target = text.rpartition("->")
    cut = min((i for i in (head.find("="), head.find("~")) if i > 0), default=-1)
    if not arrow or cut < 0 or not target.strip():
        raise InvalidInput(
            [
                FieldError(
                    "rules",
                    f"{text!r} is not a rule; write HEADER=VALUE->VERSION or "
                    "HEADER~REGEX->VERSION, e.g. X-User-Group=beta->2.0.0",
                )
            ]
        )
    header, op, value = head[:cut].strip(), head[cut], head[cut + 1 :].strip()
    model, _, version = target.strip().rpartition(":")
    rule: dict[str, Any] = {"header": header, "version": version}
    rule["equals" if op == "=" else "matches"] = value
    if model:
        rule["model"] = model
    return rule


def _find(models: list[dict[str, Any]], ref: str, field: str) -> int | None:
    """The index of the entry VERSION or MODEL:VERSION names; None when no entry has it."""
    model, _, version = ref.rpartition(":")
    hits = [
        i
        for i, m in enumerate(models)
        if m["version"] == version and (not model or m["model"] == model)
    ]
    if len(hits) > 1:
        names = ", ".join(f"{models[i]['model']}:{version}" for i in hits)
        raise InvalidInput([FieldError(field, f"{ref} is ambiguous; write one of {names}")])
    return hits[0] if hits else None


def _targets(models: list[dict[str, Any]], ref: str, field: str) -> list[int]:
    if ref == "*":
        return list(range(len(models)))
    i = _find(models, ref, field)
    if i is None:
        listed = ", ".join(str(m["version"]) for m in models)
        raise InvalidInput(
            [FieldError(field, f"the service has no version {ref}; it has {listed}")]
        )
    return [i]


def _new_entry(models: list[dict[str, Any]], ref: str) -> dict[str, Any]:
    """A version added by --traffic: the model named, or the service's only model, with the
    first version's flavor, instances and env."""
    model, _, version = ref.rpartition(":")
    names = sorted({str(m["model"]) for m in models})
    if not model and len(names) != 1:
        raise InvalidInput(
            [
                FieldError(
                    "traffic",
                    f"{ref} is a new version and the model is not clear; write MODEL:{version}"
                    + (f" (one of {', '.join(names)})" if names else ""),
                )
            ]
        )
    model = model or names[0]
    source = "subscribed" if "/" in model else "mine"
    if models:
        return {**models[0], "source": source, "model": model, "version": version}
    return ModelEntry(source=source, model=model, version=version).model_dump(mode="json")


def apply_changes(current: DeploySpec, changes: Changes) -> dict[str, Any]:
    """The current spec with the changes applied, as a dict for :func:`parse_spec`.

    Only references are resolved here (which version a flag means); every rule of the form is
    checked afterwards, by the same code that checks a deploy.
    """
    data = current.model_dump(mode="json")
    models: list[dict[str, Any]] = data["models"]
    for ref in changes.remove:
        for i in sorted(_targets(models, ref, "remove"), reverse=True):
            del models[i]
    if changes.traffic is not None:
        for ref, ratio in changes.traffic.items():
            found = _find(models, ref, "traffic")
            if found is None:
                models.append(_new_entry(models, ref))
                found = len(models) - 1
            models[found]["traffic_ratio"] = ratio
    for mapping, key in ((changes.instances, "instances"), (changes.flavor, "flavor")):
        for ref, value in (mapping or {}).items():
            for i in _targets(models, ref, key):
                models[i][key] = value
    for m in models:
        env = dict(m.get("env") or {})
        env.update(changes.env_set or {})
        for name in changes.env_unset:
            env.pop(name, None)
        m["env"] = env
    if changes.traffic_limit is not None:
        data["traffic_limit"] = changes.traffic_limit
    if changes.description is not None:
        data["description"] = changes.description
    if changes.auto_stop is not None:
        data["auto_stop"] = changes.auto_stop
    if changes.rules is not None:
        data["rules"] = changes.rules
    return data


# -- differences -------------------------------------------------------------------------------


def _entry_key(entry: dict[str, Any]) -> str:
    return f"{entry['model']} {entry['version']}"


def spec_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What changes from one spec to another, a line per change, versions matched by name."""
    lines: list[str] = []
    for field in ("description", "auto_stop", "resource_pool", "traffic_limit"):
        if old.get(field) != new.get(field):
            lines.append(f"{field}: {old.get(field)!r} -> {new.get(field)!r}")
    before = {_entry_key(m): m for m in old["models"]}
    after = {_entry_key(m): m for m in new["models"]}
    for key, m in after.items():
        if key not in before:
            lines.append(f"+ {key}: {m['traffic_ratio']}% on {m['instances']} x {m['flavor']}")
            continue
        was = before[key]
        for field in ("traffic_ratio", "instances", "flavor"):
            if was[field] != m[field]:
                lines.append(f"{key} {field}: {was[field]} -> {m[field]}")
        if was.get("env", {}) != m.get("env", {}):
            names = sorted(set(was.get("env", {})) ^ set(m.get("env", {}))) or sorted(
                k for k in m.get("env", {}) if m["env"][k] != was.get("env", {}).get(k)
            )
            lines.append(f"{key} env: {', '.join(names)} changed")
    for key in before:
        if key not in after:
            lines.append(f"- {key}")
    if old.get("rules", []) != new.get("rules", []):
        lines.append(f"rules: {len(old.get('rules', []))} -> {len(new.get('rules', []))}")
    return lines


#: What :func:`~opsbot.core.spec.mask_value` puts in place of a secret's middle.
MASK = "****"


def keep_masked(current: DeploySpec, data: Any) -> Any:
    """An edited spec with its masked values resolved: a front shows secrets masked, and a
    masked value sent back means "keep". A variable whose value is exactly the mask of the
    same variable of the same version (or, for a version added, of any current version) gets
    that value back; anything else is taken as typed."""
    if not isinstance(data, dict) or not isinstance(data.get("models"), list):
        return data
    by_key = {(m.model, m.version): (m.env, set(m.secret_env)) for m in current.models}
    out_models: list[Any] = []
    errors: list[FieldError] = []
    for i, entry in enumerate(data["models"]):
        env = entry.get("env") if isinstance(entry, dict) else None
        if not isinstance(env, dict):
            out_models.append(entry)
            continue
        own = by_key.get((entry.get("model"), entry.get("version")))
        sources = [own] if own is not None else list(by_key.values())
        resolved: dict[Any, Any] = {}
        for name, value in env.items():
            resolved[name] = value
            for known, secret in sources:
                real = known.get(name) if isinstance(name, str) else None
                shown = None if real is None else mask_value(name, real, name in secret)
                if real is not None and real != value and value == shown:
                    resolved[name] = real
                    break
            else:
                if isinstance(value, str) and MASK in value:
                    # A mask that hides no current value: storing it would lose the secret.
                    errors.append(
                        FieldError(
                            f"models[{i}].env.{name}",
                            f"{name} shows a masked value that hides none of this service's "
                            "values: type the value again",
                        )
                    )
        out_models.append({**entry, "env": resolved})
    if errors:
        raise InvalidInput(errors)
    return {**data, "models": out_models}


def restarts(old: DeploySpec, new: DeploySpec) -> list[str]:
    """Which versions' instances a modification starts, replaces or stops: a version whose
    flavor or environment changes is replaced (new instances ready before the old drain);
    more or fewer instances start or stop only those; ratios, rules, the limit, the
    description and auto stop restart nothing."""
    before = {m.key: m for m in old.models}
    after = {m.key: m for m in new.models}
    lines: list[str] = []
    for key, m in after.items():
        name = f"{key[0]} {key[1]}"
        was = before.get(key)
        if was is None:
            lines.append(f"{name}: starts {m.instances} instance(s)")
        elif was.flavor != m.flavor or was.env != m.env:
            lines.append(f"{name}: {m.instances} instance(s) replaced, one at a time")
        elif was.instances != m.instances:
            verb = "start" if m.instances > was.instances else "stop"
            lines.append(f"{name}: {abs(m.instances - was.instances)} instance(s) {verb}")
    for key, was in before.items():
        if key not in after:
            lines.append(f"{key[0]} {key[1]}: {was.instances} instance(s) stop")
    return lines


def plan(current: DeploySpec, new: DeploySpec) -> Plan:
    """What applying ``new`` to a service running ``current`` changes and restarts."""
    body = new.model_dump(mode="json")
    return Plan(
        tuple(spec_diff(current.model_dump(mode="json"), body)),
        tuple(restarts(current, new)),
        body,
    )


# -- applying ----------------------------------------------------------------------------------


def ensure_updatable(service: svc.Service) -> None:
    """Raise Conflict, saying when to come back, unless the service may be modified now."""
    if service.status not in UPDATABLE:
        raise Conflict(
            f"{service.name} is {service.status.label}; wait until it is Running (or "
            "Stopped), then modify it",
            title="Not now",
        )


def update_service(
    store: Store,
    clock: Clock,
    pools: Pools,
    service: svc.Service,
    checked: CheckedSpec,
    actor: str,
    *,
    message: str = "modified",
) -> Updated:
    """Store the new spec of a service, with a snapshot and an event; the controller does the
    rest. Refused while the service is Deploying, Stopping or Deleting."""
    spec = checked.spec
    now = clock.now()
    with store.write() as db:
        current = svc.service_by_id(db, service.id)
        if current is None:
            raise NotFound(f"{service.name} no longer exists")
        ensure_updatable(current)
        if spec.name != current.name:
            raise InvalidInput(
                [FieldError("name", "a service keeps its name; deploy a new service instead")]
            )
        if spec.resource_pool != current.spec.resource_pool:
            raise InvalidInput(
                [
                    FieldError(
                        "resource_pool",
                        "a service stays in its pool; deploy a new service in the other pool",
                    )
                ]
            )
        old = current.spec.model_dump(mode="json")
        new = spec.model_dump(mode="json")
        changes = spec_diff(old, new)
        if not changes:
            return Updated(current, (), None)
        if current.status in HOLDS_CAPACITY:
            pools.admit(
                db,
                spec.resource_pool,
                pools.sum_demand((m.flavor, m.instances) for m in spec.models),
                releasing=pools.sum_demand((m.flavor, m.instances) for m in current.spec.models),
            )
        _write_versions(db, current, checked)
        body = json.dumps(new)
        due: float | None = current.due_time
        if spec.auto_stop != current.spec.auto_stop:
            due = now + spec.auto_stop.seconds if spec.auto_stop.enabled else None
            if current.status not in TICKING:
                due = None
        db.execute(
            "UPDATE services SET spec = ?, traffic_limit = ?, auto_stop_minutes = ?, "
            "due_time = ?, reminded_due = CASE WHEN ? THEN NULL ELSE reminded_due END, "
            "updated_at = ? WHERE id = ?",
            (
                body,
                spec.traffic_limit,
                spec.auto_stop.minutes,
                due,
                due != current.due_time,
                now,
                current.id,
            ),
        )
        n = svc.snapshot(db, now, current.id, body, actor)
        svc.record_event(
            db, now, current, Kind.MODIFIED, f"{message} (#{n}): {'; '.join(changes)}", actor=actor
        )
        after = svc.service_by_id(db, current.id)
        assert after is not None
    return Updated(after, tuple(changes), n)


def _write_versions(db: sqlite_utils.Database, service: svc.Service, checked: CheckedSpec) -> None:
    """Rewrite the service's versions, each keeping its slot while it is named."""
    old = {
        mv_id: idx
        for idx, mv_id in db.execute(
            "SELECT idx, model_version_id FROM service_versions WHERE service_id = ?",
            (service.id,),
        )
    }
    used = db.execute(
        "SELECT MAX(idx) FROM (SELECT idx FROM service_versions WHERE service_id = ? "
        "UNION ALL SELECT idx FROM instances WHERE service_id = ?)",
        (service.id, service.id),
    ).fetchone()[0]
    fresh = (used if used is not None else -1) + 1
    db.execute("DELETE FROM service_versions WHERE service_id = ?", (service.id,))
    for entry, mv in zip(checked.spec.models, checked.versions, strict=True):
        idx = old.get(mv.id)
        if idx is None:
            idx, fresh = fresh, fresh + 1
        svc.insert_version(db, service.id, idx, entry, mv.id)


def history(store: Store, service: svc.Service) -> list[Snapshot]:
    rows = store.db.execute(
        "SELECT n, spec, actor, created_at FROM config_snapshots WHERE service_id = ? ORDER BY n",
        (service.id,),
    ).fetchall()
    out: list[Snapshot] = []
    before: dict[str, Any] | None = None
    for n, body, actor, at in rows:
        spec = json.loads(body)
        changes = tuple(spec_diff(before, spec)) if before is not None else ()
        out.append(Snapshot(n, spec, actor, at, changes))
        before = spec
    return out


def snapshot_spec(store: Store, service: svc.Service, n: int) -> dict[str, Any]:
    row = store.db.execute(
        "SELECT spec FROM config_snapshots WHERE service_id = ? AND n = ?", (service.id, n)
    ).fetchone()
    if row is None:
        last = store.db.execute(
            "SELECT MAX(n) FROM config_snapshots WHERE service_id = ?", (service.id,)
        ).fetchone()[0]
        raise InvalidInput(
            [
                FieldError(
                    "to",
                    f"{service.name} has no snapshot #{n}; choose 1 to {last} "
                    f"(`opsbot history {service.name}`)",
                )
            ]
        )
    data: dict[str, Any] = json.loads(row[0])
    return data
