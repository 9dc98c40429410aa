"""Notifications: committed events reach every notifier in order; rolled-back ones never."""

from __future__ import annotations

from pathlib import Path

import pytest

from opsbot.core.events import Event, Kind, record
from opsbot.core.notify import Dispatcher, RecordingNotifier
from opsbot.core.store import Store


class Broken:
    def notify(self, event: Event) -> None:
        raise RuntimeError("slack is down")


def _event(db: object, n: int) -> None:
    record(db, time=float(n), kind=Kind.CREATED, actor="alice", service=f"s{n}", message="m")  # type: ignore[arg-type]


def test_committed_events_reach_every_notifier_in_order(tmp_path: Path) -> None:
    store = Store(tmp_path / "opsbot.db")
    with store.write() as db:
        _event(db, 0)  # before the dispatcher: not news
    first, second = RecordingNotifier(), RecordingNotifier()
    dispatcher = Dispatcher(store, [Broken(), first])
    dispatcher.subscribe(second)
    with store.write() as db:
        _event(db, 1)
        _event(db, 2)
    with pytest.raises(ZeroDivisionError), store.write() as db:
        _event(db, 3)
        raise ZeroDivisionError  # rolled back: nobody hears of it
    assert dispatcher.dispatch() == 2
    assert [e.service for e in first.events] == ["s1", "s2"]
    assert [e.service for e in second.events] == ["s1", "s2"]
    assert dispatcher.dispatch() == 0  # each event once
    dispatcher.unsubscribe(second)
    with store.write() as db:
        _event(db, 4)
    dispatcher.dispatch()
    assert [e.service for e in first.events] == ["s1", "s2", "s4"]
    assert len(second.events) == 2


def test_events_older_than_the_retention_are_purged(tmp_path: Path) -> None:
    import time

    from opsbot.daemon.server import Daemon

    daemon = Daemon(tmp_path / "home", examples=False, gateway_port=1, say=lambda m: None)
    store = daemon.core.store
    with store.write() as db:
        record(db, time=time.time() - 31 * 86400, kind=Kind.CREATED, actor="a", message="old")
        record(db, time=time.time() - 29 * 86400, kind=Kind.CREATED, actor="a", message="kept")
    daemon.purge_events()
    messages = [r[0] for r in store.db.execute("SELECT message FROM events")]
    assert messages == ["kept"]
