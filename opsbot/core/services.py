"""Services as the store holds them, and their creation under quota and capacity."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

import sqlite_utils

from opsbot.core import events
from opsbot.core.admission import CheckedSpec
from opsbot.core.autostop import format_auto_stop
from opsbot.core.clock import Clock
from opsbot.core.errors import (
    CapacityExceeded,
    Conflict,
    FieldError,
    NotFound,
    QuotaExceeded,
)
from opsbot.core.events import Kind, Level
from opsbot.core.keys import hash_key, key_prefix, new_key
from opsbot.core.pools import Pools
from opsbot.core.routes import READY
from opsbot.core.spec import DeploySpec, ModelEntry, masked_spec, parse_spec
from opsbot.core.status import Status
from opsbot.core.store import Store, table


@dataclass(frozen=True)
class Service:
    id: int
    uid: str
    owner: str
    name: str
    status: Status
    progress: int
    reason: str
    spec: DeploySpec
    due_time: float | None
    created_at: float
    updated_at: float
    status_since: float | None = None
    status_actor: str = ""
    #: Instances that answered their readiness check, as the controller last saw them.
    ready_instances: int = 0

    @property
    def desired_instances(self) -> int:
        """The instances the spec asks for, over every version."""
        return sum(m.instances for m in self.spec.models)

    def as_dict(self, *, gateway_url: str = "") -> dict[str, Any]:
        """The service as every front end shows it; secret-looking env values masked."""
        spec = masked_spec(self.spec.model_dump(mode="json"))
        return {
            "id": self.uid,
            "name": self.name,
            "owner": self.owner,
            "status": self.status.value,
            "progress": self.progress,
            "reason": self.reason,
            "url": f"{gateway_url}/v1/infers/{self.uid}"
            if gateway_url
            else f"/v1/infers/{self.uid}",
            "auto_stop": format_auto_stop(self.spec.auto_stop),
            "due_time": self.due_time,
            "resource_pool": self.spec.resource_pool,
            "traffic_limit": self.spec.traffic_limit,
            "description": self.spec.description,
            "models": spec["models"],
            "rules": spec["rules"],
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "status_since": self.status_since,
            "status_actor": self.status_actor,
            "instances_ready": self.ready_instances,
            "instances_desired": self.desired_instances,
        }


_COLUMNS = (
    "id, uid, owner, name, status, progress, reason, spec, due_time, created_at, updated_at, "
    "status_since, status_actor, "
    f"(SELECT COUNT(*) FROM instances i WHERE i.service_id = services.id AND i.state = '{READY}')"
)


def _service(row: tuple[Any, ...]) -> Service:
    return Service(
        id=row[0],
        uid=row[1],
        owner=row[2],
        name=row[3],
        status=Status(row[4]),
        progress=row[5],
        reason=row[6],
        spec=parse_spec(json.loads(row[7])),
        due_time=row[8],
        created_at=row[9],
        updated_at=row[10],
        status_since=row[11],
        status_actor=row[12],
        ready_instances=row[13],
    )


def list_services(db: sqlite_utils.Database, owner: str | None = None) -> list[Service]:
    if owner is None:
        rows = db.execute(f"SELECT {_COLUMNS} FROM services ORDER BY owner, name").fetchall()
    else:
        rows = db.execute(
            f"SELECT {_COLUMNS} FROM services WHERE owner = ? ORDER BY name", (owner,)
        ).fetchall()
    return [_service(r) for r in rows]


def get_service(db: sqlite_utils.Database, owner: str, name: str) -> Service:
    row = db.execute(
        f"SELECT {_COLUMNS} FROM services WHERE owner = ? AND name = ?", (owner, name)
    ).fetchone()
    if row is None:
        raise NotFound(f"{owner} has no service {name!r}: see `opsbot services`")
    return _service(row)


def count_services(db: sqlite_utils.Database, owner: str) -> int:
    """Services the owner holds: every state counts until the service is deleted."""
    return int(db.execute("SELECT COUNT(*) FROM services WHERE owner = ?", (owner,)).fetchone()[0])


@dataclass(frozen=True)
class Created:
    service: Service
    api_key: str
    #: The spec's warnings (secrets in env), from the one check the deploy made.
    warnings: tuple[FieldError, ...] = ()


def create_service(
    store: Store, clock: Clock, pools: Pools, checked: CheckedSpec, owner: str, quota: int
) -> Created:
    """Insert a Deploying service: quota, name and capacity checked in one BEGIN IMMEDIATE.

    A refusal (quota or capacity) is recorded as an abnormal event and raised; nothing else
    changes.
    """
    spec = checked.spec
    try:
        with store.write() as db:
            if db.execute(
                "SELECT 1 FROM services WHERE owner = ? AND name = ?", (owner, spec.name)
            ).fetchone():
                raise Conflict(
                    f"you already have a service named {spec.name}; choose another name",
                    field="name",
                )
            held = count_services(db, owner)
            if held >= quota:
                raise QuotaExceeded(
                    f"{owner} holds {held} of {quota} services; delete one "
                    "(`opsbot delete NAME`) before deploying another",
                    field="name",
                )
            needed = pools.sum_demand((m.flavor, m.instances) for m in spec.models)
            pools.admit(db, spec.resource_pool, needed)
            service = _insert(db, clock.now(), checked, owner)
            key = new_key()
            table(db, "api_keys").insert(
                {
                    "service_id": service.id,
                    "key_hash": hash_key(key),
                    "prefix": key_prefix(key),
                    "created_at": clock.now(),
                }
            )
            record_event(
                db,
                clock.now(),
                service,
                Kind.CREATED,
                f"deploy requested: {_summary(spec)}",
                actor=owner,
            )
    except (QuotaExceeded, CapacityExceeded) as exc:
        kind = Kind.QUOTA_REFUSED if isinstance(exc, QuotaExceeded) else Kind.CAPACITY_REFUSED
        _refused(store, clock, owner, spec.name, kind, exc.message)
        raise
    return Created(service, key, checked.warnings)


def _refused(store: Store, clock: Clock, owner: str, name: str, kind: Kind, message: str) -> None:
    with store.write() as db:
        events.record(
            db,
            time=clock.now(),
            kind=kind,
            level=Level.ABNORMAL,
            actor=owner,
            service=name,
            owner=owner,
            message=message,
        )


def _summary(spec: DeploySpec) -> str:
    parts = [
        f"{m.model} {m.version} {m.traffic_ratio}% on {m.instances} x {m.flavor}"
        for m in spec.models
    ]
    return "; ".join(parts)


def _insert(db: sqlite_utils.Database, now: float, checked: CheckedSpec, owner: str) -> Service:
    spec = checked.spec
    body = json.dumps(spec.model_dump(mode="json"))
    service_id = (
        table(db, "services")
        .insert(
            {
                "uid": secrets.token_hex(8),
                "owner": owner,
                "name": spec.name,
                "status": Status.DEPLOYING.value,
                "progress": 0,
                "reason": "",
                "spec": body,
                "resource_pool": spec.resource_pool,
                "traffic_limit": spec.traffic_limit,
                "auto_stop_minutes": spec.auto_stop.minutes,
                "due_time": None,
                "status_since": now,
                "status_actor": owner,
                "created_at": now,
                "updated_at": now,
            }
        )
        .last_pk
    )
    assert service_id is not None
    for idx, (entry, mv) in enumerate(zip(spec.models, checked.versions, strict=True)):
        insert_version(db, service_id, idx, entry, mv.id)
    snapshot(db, now, service_id, body, owner)
    row = db.execute(f"SELECT {_COLUMNS} FROM services WHERE id = ?", (service_id,)).fetchone()
    return _service(row)


def insert_version(
    db: sqlite_utils.Database, service_id: int, idx: int, entry: ModelEntry, model_version_id: int
) -> None:
    """One version of a service in its slot ``idx`` (what the controller and gateway read)."""
    table(db, "service_versions").insert(
        {
            "service_id": service_id,
            "idx": idx,
            "model_version_id": model_version_id,
            "traffic_ratio": entry.traffic_ratio,
            "flavor": entry.flavor,
            "instances": entry.instances,
            "env": json.dumps(entry.env),
        }
    )


def snapshot(db: sqlite_utils.Database, now: float, service_id: int, body: str, actor: str) -> int:
    """Keep a copy of the service's spec as it is now; returns its number (1, 2, ...)."""
    n = int(
        db.execute(
            "SELECT COALESCE(MAX(n), 0) + 1 FROM config_snapshots WHERE service_id = ?",
            (service_id,),
        ).fetchone()[0]
    )
    table(db, "config_snapshots").insert(
        {"service_id": service_id, "n": n, "spec": body, "actor": actor, "created_at": now}
    )
    return n


def record_event(
    db: sqlite_utils.Database,
    now: float,
    service: Service,
    kind: Kind,
    message: str,
    *,
    actor: str,
    level: Level = Level.NORMAL,
) -> None:
    """Record an event about a service (its id, name and owner filled in)."""
    events.record(
        db,
        time=now,
        kind=kind,
        level=level,
        actor=actor,
        service_id=service.id,
        service=service.name,
        owner=service.owner,
        message=message,
    )


# -- transitions ---------------------------------------------------------------------------

_TRANSITION_KIND = {
    Status.DEPLOYING: Kind.DEPLOYING,
    Status.RUNNING: Kind.RUNNING,
    Status.CONCERNING: Kind.CONCERNING,
    Status.ABNORMAL: Kind.ABNORMAL,
    Status.FAILED: Kind.FAILED,
    Status.STOPPING: Kind.STOPPING,
    Status.STOPPED: Kind.STOPPED,
    Status.DELETING: Kind.DELETING,
}
_ABNORMAL = {Status.CONCERNING, Status.ABNORMAL, Status.FAILED}


def transition(
    db: sqlite_utils.Database,
    now: float,
    service: Service,
    to: Status,
    *,
    actor: str,
    message: str,
    reason: str = "",
    progress: int | None = None,
    due_time: float | bool | None = False,
) -> bool:
    """Move a service from the status it had when read to ``to``, with an event.

    The update only applies if nobody changed the status in between (compare-and-set); returns
    whether it applied. ``due_time=False`` leaves the deadline as it is.
    """
    sets = ["status = ?", "status_since = ?", "status_actor = ?", "reason = ?", "updated_at = ?"]
    args: list[Any] = [to.value, now, actor, reason, now]
    if progress is not None:
        sets.append("progress = ?")
        args.append(progress)
    if due_time is not False:
        sets.append("due_time = ?")
        args.append(due_time)
    cursor = db.execute(
        f"UPDATE services SET {', '.join(sets)} WHERE id = ? AND status = ?",
        [*args, service.id, service.status.value],
    )
    if cursor.rowcount != 1:
        return False
    level = Level.ABNORMAL if to in _ABNORMAL else Level.NORMAL
    record_event(db, now, service, _TRANSITION_KIND[to], message, actor=actor, level=level)
    return True


def service_by_id(db: sqlite_utils.Database, service_id: int) -> Service | None:
    row = db.execute(f"SELECT {_COLUMNS} FROM services WHERE id = ?", (service_id,)).fetchone()
    return _service(row) if row else None


def rotate_key(db: sqlite_utils.Database, now: float, service: Service, actor: str) -> str:
    """Replace the service's API key; the old one stops working at once."""
    key = new_key()
    db.execute("DELETE FROM api_keys WHERE service_id = ?", (service.id,))
    table(db, "api_keys").insert(
        {
            "service_id": service.id,
            "key_hash": hash_key(key),
            "prefix": key_prefix(key),
            "created_at": now,
        }
    )
    record_event(
        db,
        now,
        service,
        Kind.KEY_ROTATED,
        f"API key rotated; the new key starts {key_prefix(key)}",
        actor=actor,
    )
    return key
