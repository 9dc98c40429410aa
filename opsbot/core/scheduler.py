"""The auto-stop scheduler: APScheduler jobs derived from the deadlines in the store.

The store is the truth and the job store a cache: :meth:`AutoStopScheduler.sync` rebuilds the
jobs from the store (fixed ids, ``replace_existing``) at start and after every change. A job only
calls :func:`opsbot.core.deadlines.run_due`, which decides from the store what is due, so a job
that fires late (a deadline that passed while the daemon was down fires at once thanks to the
long misfire grace) or twice does the work exactly once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime

from apscheduler.schedulers.background import BackgroundScheduler

from opsbot.core.app import Core
from opsbot.core.deadlines import Due, pending
from opsbot.core.events import Event

log = logging.getLogger(__name__)

#: A job may run this late (a daemon that was down for a week still stops what expired).
MISFIRE_GRACE_S = 7 * 24 * 3600


class AutoStopScheduler:
    def __init__(
        self,
        run_due: Callable[[], Due],
        store_pending: Callable[[], dict[int, tuple[float, float]]],
        on_change: Callable[[], None] = lambda: None,
    ):
        self._run_due = run_due
        self._pending = store_pending
        self._on_change = on_change
        self._lock = threading.Lock()
        self.scheduler = BackgroundScheduler(
            timezone=UTC,
            job_defaults={"misfire_grace_time": MISFIRE_GRACE_S, "coalesce": True},
        )

    @classmethod
    def for_core(cls, core: Core, on_change: Callable[[], None]) -> AutoStopScheduler:
        return cls(
            core.run_due, lambda: pending(core.store, core.config.reminder_minutes), on_change
        )

    def start(self) -> None:
        self.scheduler.start()
        # Whatever fell due while the daemon was down happens now, then the rest is scheduled.
        self.fire()
        self.sync()

    def shutdown(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)

    def fire(self) -> Due:
        with self._lock:
            try:
                due = self._run_due()
            except Exception:  # a failed pass is retried by the next job or sync; logged in full
                log.exception("auto-stop pass failed")
                return Due()
        if due.reminded or due.expired:
            self._on_change()
        return due

    def sync(self) -> dict[str, datetime]:
        """Make the jobs match the store's deadlines; return them (id -> run time)."""
        wanted: dict[str, datetime] = {}
        for sid, (remind_at, due) in self._pending().items():
            wanted[f"autostop:{sid}"] = datetime.fromtimestamp(due, UTC)
            wanted[f"reminder:{sid}"] = datetime.fromtimestamp(remind_at, UTC)
        with self._lock:
            for job in self.scheduler.get_jobs():
                if job.id not in wanted:
                    job.remove()
            for job_id, when in wanted.items():
                self.scheduler.add_job(
                    self.fire, "date", run_date=when, id=job_id, replace_existing=True
                )
        return wanted


class SyncOnEvents:
    """A notifier that re-derives the jobs after every event (deadlines move with events)."""

    def __init__(self, scheduler: AutoStopScheduler):
        self.scheduler = scheduler

    def notify(self, event: Event) -> None:
        self.scheduler.sync()
