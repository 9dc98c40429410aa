"""Events: every change of state, kept with time, level, kind, message and who."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

import sqlite_utils

from opsbot.core.store import table


class Level(StrEnum):
    NORMAL = "normal"
    ABNORMAL = "abnormal"


class Kind(StrEnum):
    """The catalogue of event kinds (in the spirit of ModelArts' service events)."""

    CREATED = "created"
    DEPLOYING = "deploying"
    RUNNING = "running"
    CONCERNING = "concerning"
    ABNORMAL = "abnormal"
    FAILED = "failed"
    STOPPING = "stopping"
    STOPPED = "stopped"
    STARTING = "starting"
    DELETING = "deleting"
    DELETED = "deleted"
    QUOTA_REFUSED = "quota_refused"
    CAPACITY_REFUSED = "capacity_refused"
    INSTANCE_DOWN = "instance_down"
    INSTANCE_RESTARTED = "instance_restarted"
    AUTO_STOP_ENABLED = "auto_stop_enabled"
    AUTO_STOP_DISABLED = "auto_stop_disabled"
    EXTENDED = "extended"
    REMINDER = "reminder"
    EXPIRED = "expired"
    AUTO_STOP_FAILED = "auto_stop_failed"
    STOP_FAILED = "stop_failed"
    MODIFIED = "modified"
    KEY_ROTATED = "key_rotated"


@dataclass(frozen=True)
class Event:
    id: int
    time: float
    service_id: int | None
    service: str | None
    owner: str | None
    level: str
    kind: str
    message: str
    actor: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def record(
    db: sqlite_utils.Database,
    *,
    time: float,
    kind: Kind,
    message: str,
    actor: str,
    level: Level = Level.NORMAL,
    service_id: int | None = None,
    service: str | None = None,
    owner: str | None = None,
) -> Event:
    """Append one event; call inside the transaction that made the change."""
    row = {
        "time": time,
        "service_id": service_id,
        "service": service,
        "owner": owner,
        "level": level.value,
        "kind": kind.value,
        "message": message,
        "actor": actor,
    }
    event_id = table(db, "events").insert(row).last_pk
    return Event(id=int(event_id), **row)  # type: ignore[arg-type]


def query(
    db: sqlite_utils.Database,
    *,
    owner: str | None = None,
    service: str | None = None,
    level: str | None = None,
    since: float | None = None,
    after_id: int = 0,
    limit: int = 1000,
) -> list[Event]:
    where = ["id > ?"]
    params: list[Any] = [after_id]
    for column, value in (("owner", owner), ("service", service), ("level", level)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    if since is not None:
        where.append("time >= ?")
        params.append(since)
    rows = db.execute(
        f"SELECT id, time, service_id, service, owner, level, kind, message, actor FROM events "
        f"WHERE {' AND '.join(where)} ORDER BY id LIMIT ?",
        (*params, limit),
    ).fetchall()
    return [Event(*r) for r in rows]
