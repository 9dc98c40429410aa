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
from opsbot.core.autostop import PRESET_HOURS, AutoStop, format_auto_stop
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


#: The Extend choices every front offers (the auto stop presets): hours added to the time left.
EXTEND_HOURS: tuple[int, ...] = PRESET_HOURS


@dataclass(frozen=True)
class ExtendPlan:
    """What "Extend N h" does to a service now: the time left, the new deadline, and whether
    the 24-hour cap cut the addition. Fronts show it before the user confirms."""

    service: str
    hours: int
    now: float
    due: float | None
    new_due: float | None
    capped: bool

    @classmethod
    def compute(cls, service: str, hours: int, now: float, due: float | None) -> ExtendPlan:
        """The hours added to the time left (``due - now``), capped at 24 h from now, never
        shortening it; no new deadline where there is none (auto stop off). Pure: a front may
        compute it from a service it lists, the core applies the same."""
        if due is None:
            return cls(service, hours, now, None, None, False)
        wanted = max(due, now) + hours * 3600
        cap = now + MAX_EXTEND_HOURS * 3600
        return cls(service, hours, now, due, max(due, min(wanted, cap)), wanted > cap)

    @property
    def auto_stop_off(self) -> bool:
        """The service has no deadline to extend: auto stop is off (offer to turn it on)."""
        return self.due is None

    @property
    def time_left(self) -> float | None:
        return None if self.due is None else max(0.0, self.due - self.now)

    @property
    def added(self) -> float:
        if self.due is None or self.new_due is None:
            return 0.0
        return self.new_due - max(self.due, self.now)

    @property
    def choice(self) -> str:
        """The short line of a menu: "Extend 2 h: stops in 3h 05m"."""
        if self.new_due is None or self.added <= 0:
            return f"Extend {self.hours} h: not possible"
        return f"Extend {self.hours} h: stops in {format_remaining(self.new_due - self.now)}"

    def text(self) -> str:
        """One line a front shows before applying, and the refusal when nothing can be added."""
        if self.due is None or self.new_due is None:
            return (
                f"{self.service} has auto stop off: it runs until stopped. Turn auto stop on "
                f"(`opsbot autostop {self.service} on`) to give it a deadline."
            )
        left = format_remaining(self.time_left)
        after = format_remaining(self.new_due - self.now)
        if self.added <= 0:
            return (
                f"{self.service} already stops in {left}, the most it may have "
                f"({MAX_EXTEND_HOURS} h from now); nothing to add"
            )
        cap = f" (capped at {MAX_EXTEND_HOURS} h from now)" if self.capped else ""
        return f"{left} left; +{format_remaining(self.added)}{cap}: stops in {after}"

    def as_dict(self) -> dict[str, object]:
        return {
            "service": self.service,
            "hours": self.hours,
            "time_left_s": self.time_left,
            "due_time": self.due,
            "new_due_time": self.new_due,
            "added_s": self.added,
            "capped": self.capped,
            "auto_stop_off": self.auto_stop_off,
            "text": self.text(),
        }


def _check_hours(hours: int) -> None:
    if isinstance(hours, bool) or not isinstance(hours, int) or not 1 <= hours <= MAX_EXTEND_HOURS:
        choices = ", ".join(str(h) for h in EXTEND_HOURS)
        raise InvalidInput(
            [
                FieldError(
                    "hours",
                    f"extend by whole hours from 1 to {MAX_EXTEND_HOURS} (the menu offers "
                    f"{choices}); they are added to the time left",
                )
            ]
        )


def plan_extend(now: float, service: Service, hours: int) -> ExtendPlan:
    """What extending by ``hours`` would do: add them to the time left, capped at
    24 h from now, never shortening it. Raises InvalidInput for hours out of
    range and Conflict when the service is not running."""
    _check_hours(hours)
    _ticking(service)
    return ExtendPlan.compute(service.name, hours, now, service.due_time)


def extend(
    db: sqlite_utils.Database, now: float, service: Service, hours: int, actor: str
) -> ExtendPlan:
    """Add ``hours`` (1 to 24, whole hours) to the time left, as :func:`plan_extend` says.

    Refuses (Conflict, changing nothing) a service whose auto stop is off, and one that already
    has the most time it may have."""
    plan = plan_extend(now, service, hours)
    if plan.new_due is None or plan.added <= 0:
        raise Conflict(plan.text(), field="hours")
    db.execute(
        "UPDATE services SET due_time = ?, reminded_due = NULL, updated_at = ? WHERE id = ?",
        (plan.new_due, now, service.id),
    )
    svc.record_event(
        db,
        now,
        service,
        Kind.EXTENDED,
        f"auto stop extended by {format_remaining(plan.added)}: {plan.text()}",
        actor=actor,
    )
    return plan


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
