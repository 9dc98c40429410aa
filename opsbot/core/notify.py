"""Notifications: every event reaches every subscribed notifier.

Events are written to the store inside the transactions that cause them; the dispatcher reads
them back in order after they are committed and hands each to the notifiers, so nothing is told
about a change that was rolled back. A notifier that fails is logged and does not hold up others.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Protocol

from opsbot.core import events
from opsbot.core.events import Event
from opsbot.core.store import Store

log = logging.getLogger(__name__)


class Notifier(Protocol):
    def notify(self, event: Event) -> None:
        """Called once per event, in order, from the dispatcher's thread."""
        ...


class RecordingNotifier:
    """Keeps what it is told: for tests and for the control API's live stream."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._cond = threading.Condition()

    def notify(self, event: Event) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[list[Event]], bool], timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self.events), timeout)


class Dispatcher:
    """Reads committed events after the last one dispatched and hands them to the notifiers."""

    def __init__(
        self, store: Store, notifiers: Sequence[Notifier] = (), start_after: int | None = None
    ):
        self.store = store
        self.notifiers: list[Notifier] = list(notifiers)
        self.last_id = self._max_id() if start_after is None else start_after
        self.wake_event = threading.Event()

    def _max_id(self) -> int:
        row = self.store.db.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()
        return int(row[0])

    def subscribe(self, notifier: Notifier) -> None:
        self.notifiers.append(notifier)

    def unsubscribe(self, notifier: Notifier) -> None:
        if notifier in self.notifiers:
            self.notifiers.remove(notifier)

    def wake(self) -> None:
        self.wake_event.set()

    def dispatch(self) -> int:
        """Deliver every event committed since the last call; return how many."""
        batch = events.query(self.store.db, after_id=self.last_id, limit=500)
        for event in batch:
            for notifier in list(self.notifiers):
                try:
                    notifier.notify(event)
                except Exception:  # one broken notifier must not silence the others
                    log.exception("notifier %r failed on event %s", notifier, event.id)
            self.last_id = event.id
        return len(batch)

    def run(self, stop: threading.Event, interval: float = 0.25) -> None:
        while not stop.is_set():
            try:
                while self.dispatch():
                    pass
            except Exception:  # keep dispatching after a store hiccup; it is logged in full
                log.exception("event dispatch failed")
            self.wake_event.wait(interval)
            self.wake_event.clear()
