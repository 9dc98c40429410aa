"""Auto-stop deadlines: extension, turning auto stop off and on, reminders and expiry.

The deadline (``services.due_time``) lives in the store; it is set when a service becomes
Running (see the controller) and moved only here. :func:`run_due` does whatever is due at the
clock's time and is idempotent: a reminder is recorded once per deadline (``reminded_due``), and
expiry compares-and-sets the status, so a job that fires twice, or late after a restart, does
the work exactly once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import sqlite_utils
from pydantic import ValidationError

from opsbot.core import events
from opsbot.core import services as svc
from opsbot.core.autostop import AutoStop, format_auto_stop
from opsbot.core.clock import Clock
from opsbot.core.errors import Conflict, FieldError, InvalidInput
from opsbot.core.events import Kind
from opsbot.core.services import Service
from opsbot.core.status import Status
from opsbot.core.store import Store
from opsbot.core.timefmt import format_remaining

#: Statuses in which a service's deadline runs.
TICKING = frozenset({Status.RUNNING, Status.CONCERNING, Status.ABNORMAL})
MAX_EXTEND_HOURS = 24
AUTO_STOP_ACTOR = "auto-stop"


def _ticking(service: Service) -> None:
    if service.status not in TICKING:
        raise Conflict(
            f"{service.name} is {service.status.label}; auto stop counts only while it runs "
            f"(start it with `opsbot start {service.name}`)",
            field="auto_stop",
        )


def extend(
    db: sqlite_utils.Database, now: float, service: Service, hours: int, actor: str
) -> float:
    """Move the deadline to ``hours`` from now (1 to 24, whole hours), turning auto stop on."""
    if isinstance(hours, bool) or not isinstance(hours, int) or not 1 <= hours <= MAX_EXTEND_HOURS:
        raise InvalidInput(
            [
                FieldError(
                    "hours", f"extend by whole hours from 1 to {MAX_EXTEND_HOURS}: 1, 2, 4 or 6"
                )
            ]
        )
    _ticking(service)
    due = now + hours * 3600
    db.execute(
        "UPDATE services SET due_time = ?, reminded_due = NULL, updated_at = ? WHERE id = ?",
        (due, now, service.id),
    )
    svc.record_event(
        db,
        now,
        service,
        Kind.EXTENDED,
        f"auto stop extended by {hours} h: stops in {format_remaining(due - now)}",
        actor=actor,
    )
    return due


def set_auto_stop(
    db: sqlite_utils.Database, now: float, service: Service, value: str, actor: str
) -> AutoStop:
    """Turn auto stop off, on (with the service's own duration), or on with a new duration.

    The new setting becomes part of the service's spec (a config snapshot is kept); a running
    service's deadline counts from now.
    """
    try:
        wanted = AutoStop.model_validate(value)
    except ValidationError as exc:
        message = str(exc.errors(include_url=False)[0]["msg"]).removeprefix("Value error, ")
        raise InvalidInput([FieldError("auto_stop", message)]) from None
    if value.strip().lower() in ("on", "true", "yes") or not wanted.enabled:
        # The duration outlives "off" (in auto_stop_minutes), so "on" brings back the service's own.
        kept = db.execute(
            "SELECT auto_stop_minutes FROM services WHERE id = ?", (service.id,)
        ).fetchone()[0]
        wanted = AutoStop(enabled=wanted.enabled, minutes=kept or service.spec.auto_stop.minutes)
    spec = service.spec.model_copy(update={"auto_stop": wanted})
    body = json.dumps(spec.model_dump(mode="json"))
    due = now + wanted.seconds if wanted.enabled and service.status in TICKING else None
    db.execute(
        "UPDATE services SET spec = ?, auto_stop_minutes = ?, due_time = ?, reminded_due = NULL, "
        "updated_at = ? WHERE id = ?",
        (body, wanted.minutes, due, now, service.id),
    )
    svc.snapshot(db, now, service.id, body, actor)
    if wanted.enabled:
        when = f"; stops in {format_remaining(due - now)}" if due else ""
        kind, message = Kind.AUTO_STOP_ENABLED, f"auto stop on: {format_auto_stop(wanted)}{when}"
    else:
        kind, message = Kind.AUTO_STOP_DISABLED, "auto stop off: the service runs until stopped"
    svc.record_event(
        db,
        now,
        service,
        kind,
        message,
        actor=actor,
    )
    return wanted


@dataclass(frozen=True)
class Due:
    """What one pass of :func:`run_due` did."""

    reminded: tuple[str, ...] = ()
    expired: tuple[str, ...] = ()


def run_due(store: Store, clock: Clock, reminder_minutes: int) -> Due:
    """Record reminders and stop expired services, as of the clock's time."""
    now = clock.now()
    marks = ",".join("?" for _ in TICKING)
    ticking = [s.value for s in TICKING]
    reminded: list[str] = []
    expired: list[str] = []
    with store.write() as db:
        rows = db.execute(
            f"SELECT id FROM services WHERE due_time IS NOT NULL AND status IN ({marks}) "
            "AND due_time <= ?",
            (*ticking, now),
        ).fetchall()
        for (sid,) in rows:
            service = svc.service_by_id(db, sid)
            if service is None or service.due_time is None:
                continue
            late = now - service.due_time
            why = "auto stop: its time ran out" + (
                f" ({format_remaining(late)} late: opsbot was down)" if late > 60 else ""
            )
            if svc.transition(
                db,
                now,
                service,
                Status.STOPPING,
                actor=AUTO_STOP_ACTOR,
                message=why,
                reason="auto stop",
                due_time=None,
            ):
                svc.record_event(
                    db,
                    now,
                    service,
                    Kind.EXPIRED,
                    f"auto stop after {format_auto_stop(service.spec.auto_stop)}",
                    actor=AUTO_STOP_ACTOR,
                )
                expired.append(service.name)
        lead = reminder_minutes * 60
        rows = db.execute(
            f"SELECT id, name, owner, due_time FROM services WHERE due_time IS NOT NULL "
            f"AND status IN ({marks}) AND due_time - ? <= ? "
            "AND (reminded_due IS NULL OR reminded_due != due_time)",
            (*ticking, lead, now),
        ).fetchall()
        for sid, name, owner, due in rows:
            db.execute("UPDATE services SET reminded_due = ? WHERE id = ?", (due, sid))
            events.record(
                db,
                time=now,
                kind=Kind.REMINDER,
                actor=AUTO_STOP_ACTOR,
                service_id=sid,
                service=name,
                owner=owner,
                message=f"stops in {format_remaining(due - now)}: extend it to keep it running "
                f"(`opsbot extend {name} 1h`)",
            )
            reminded.append(name)
    return Due(tuple(reminded), tuple(expired))


def pending(store: Store, reminder_minutes: int) -> dict[int, tuple[float, float]]:
    """Each service with a running deadline: (reminder time, deadline)."""
    marks = ",".join("?" for _ in TICKING)
    rows = store.db.execute(
        f"SELECT id, due_time FROM services WHERE due_time IS NOT NULL AND status IN ({marks})",
        [s.value for s in TICKING],
    ).fetchall()
    return {sid: (due - reminder_minutes * 60, due) for sid, due in rows}
