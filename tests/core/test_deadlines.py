"""Auto stop with a fake clock: reminders, expiry exactly once, extension, off and on, jobs."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from core_support import big_probe, entry

from opsbot.core.app import Core
from opsbot.core.clock import FakeClock
from opsbot.core.controller import Controller
from opsbot.core.deadlines import pending
from opsbot.core.errors import Conflict, InvalidInput
from opsbot.core.events import Kind
from opsbot.core.identity import local_user_name
from opsbot.core.runtime import FakeRuntime
from opsbot.core.scheduler import AutoStopScheduler
from opsbot.core.status import Status


class Fixture:
    def __init__(self, home: Path):
        self.clock = FakeClock()
        self.core = Core(home, probe=big_probe(), clock=self.clock)
        self.me = self.core.user(local_user_name())
        self.runtime = FakeRuntime()
        self.controller = Controller(
            self.core.store,
            self.runtime,
            {f.id: f for f in self.core.flavors},
            self.core.probe,
            self.clock,
            route_settle_s=0,  # the fake clock stands still
            ready=lambda host, port: True,
        )

    def running(self, name: str = "svc", auto_stop: str = "1h") -> None:
        self.core.create_service(
            self.me, {"name": name, "auto_stop": auto_stop, "models": [entry()]}
        )
        self.controller.reconcile_all()
        assert self.status(name) == Status.RUNNING

    def status(self, name: str = "svc") -> Status:
        return self.core.service(self.me, name).status

    def count(self, kind: Kind, name: str = "svc") -> int:
        return sum(1 for e in self.core.events(self.me, service=name) if e.kind == kind)


@pytest.fixture
def fx(examples_home: Path) -> Fixture:
    return Fixture(examples_home)


def test_deadline_fires_exactly_once_and_reminder_comes_before(fx: Fixture) -> None:
    fx.running(auto_stop="1h")
    fx.clock.advance(49 * 60)
    assert fx.core.run_due().reminded == ()
    fx.clock.advance(60)  # 10 minutes before the deadline
    assert fx.core.run_due().reminded == ("svc",)
    assert fx.core.run_due().reminded == ()  # once per deadline
    assert fx.count(Kind.REMINDER) == 1
    assert fx.status() == Status.RUNNING
    fx.clock.advance(10 * 60)
    due = fx.core.run_due()
    assert due.expired == ("svc",)
    assert fx.status() == Status.STOPPING
    for _ in range(3):  # a job that fires again, or late, changes nothing
        assert fx.core.run_due().expired == ()
    fx.controller.reconcile_all()
    service = fx.core.service(fx.me, "svc")
    assert service.status == Status.STOPPED
    assert service.status_actor == "auto-stop"
    assert fx.count(Kind.EXPIRED) == 1
    stopped = [e for e in fx.core.events(fx.me, service="svc") if e.kind == Kind.STOPPED]
    assert stopped[0].actor == "auto-stop" and "auto stop" in stopped[0].message
    assert fx.runtime.instances == {}


def test_extension_adds_to_the_time_left_and_moves_the_reminder(fx: Fixture) -> None:
    fx.running(auto_stop="1h")
    fx.clock.advance(55 * 60)
    assert fx.core.run_due().reminded == ("svc",)
    old_due = fx.core.service(fx.me, "svc").due_time
    assert old_due is not None
    service = fx.core.extend_auto_stop(fx.me, "svc", 2)
    assert service.due_time == pytest.approx(old_due + 2 * 3600)  # 5 min left + 2 h
    fx.clock.advance(60 * 60)  # past the old deadline
    assert fx.core.run_due() == type(fx.core.run_due())()  # nothing due
    assert fx.status() == Status.RUNNING
    fx.clock.advance(55 * 60)  # 10 minutes before the new deadline
    assert fx.core.run_due().reminded == ("svc",)  # a new reminder for the new deadline
    fx.clock.advance(10 * 60)
    assert fx.core.run_due().expired == ("svc",)
    assert fx.count(Kind.EXTENDED) == 1 and fx.count(Kind.REMINDER) == 2


def test_extending_never_shortens_the_time_left(fx: Fixture) -> None:
    fx.running(auto_stop="6h")
    fx.clock.advance(3 * 3600)  # 3 h left
    service = fx.core.extend_auto_stop(fx.me, "svc", 2)
    assert service.due_time == pytest.approx(fx.clock.now() + 5 * 3600)


def test_extension_is_capped_at_24_hours_from_now_and_says_so(fx: Fixture) -> None:
    fx.running(auto_stop="24h")
    fx.clock.advance(3600)  # 23 h left
    plan = fx.core.extend_plan(fx.me, "svc", 4)
    assert plan.capped and plan.time_left == pytest.approx(23 * 3600)
    assert plan.new_due == pytest.approx(fx.clock.now() + 24 * 3600)
    assert plan.text() == "23h 00m left; +1h 00m (capped at 24 h from now): stops in 24h 00m"
    assert fx.core.service(fx.me, "svc").due_time == pytest.approx(plan.due)  # a plan only
    service = fx.core.extend_auto_stop(fx.me, "svc", 4)
    assert service.due_time == pytest.approx(plan.new_due)
    with pytest.raises(Conflict, match="already stops in 24h 00m") as info:
        fx.core.extend_auto_stop(fx.me, "svc", 1)  # nothing left to add
    assert info.value.field == "hours"
    assert fx.count(Kind.EXTENDED) == 1


def test_extending_a_service_without_auto_stop_says_so_and_starts_no_countdown(
    fx: Fixture,
) -> None:
    fx.running()
    fx.core.set_auto_stop(fx.me, "svc", "off")
    plan = fx.core.extend_plan(fx.me, "svc", 2)
    assert plan.auto_stop_off and plan.new_due is None
    assert "auto stop off" in plan.text() and "autostop svc on" in plan.text()
    with pytest.raises(Conflict, match="auto stop off"):
        fx.core.extend_auto_stop(fx.me, "svc", 2)
    service = fx.core.service(fx.me, "svc")
    assert service.due_time is None and not service.spec.auto_stop.enabled
    assert fx.count(Kind.EXTENDED) == 0


@pytest.mark.parametrize("hours", [0, 25, -1, True, "2"])
def test_extension_takes_whole_hours_from_1_to_24(fx: Fixture, hours: object) -> None:
    fx.running()
    before = fx.core.service(fx.me, "svc").due_time
    with pytest.raises(InvalidInput) as info:
        fx.core.extend_auto_stop(fx.me, "svc", hours)  # type: ignore[arg-type]
    assert info.value.errors[0].field == "hours"
    assert fx.core.service(fx.me, "svc").due_time == before


def test_extension_needs_a_running_service(fx: Fixture) -> None:
    fx.running()
    fx.core.stop_service(fx.me, "svc")
    fx.controller.reconcile_all()
    with pytest.raises(Conflict, match="Stopped"):
        fx.core.extend_auto_stop(fx.me, "svc", 1)


def test_auto_stop_off_then_on_again(fx: Fixture) -> None:
    fx.running(auto_stop="2h")
    service = fx.core.set_auto_stop(fx.me, "svc", "off")
    assert service.due_time is None and not service.spec.auto_stop.enabled
    fx.clock.advance(10 * 3600)
    assert fx.core.run_due().expired == ()
    service = fx.core.set_auto_stop(fx.me, "svc", "on")
    assert service.spec.auto_stop.minutes == 120
    assert service.due_time == pytest.approx(fx.clock.now() + 2 * 3600)
    service = fx.core.set_auto_stop(fx.me, "svc", "4h")
    assert service.due_time == pytest.approx(fx.clock.now() + 4 * 3600)
    kinds = [e.kind for e in fx.core.events(fx.me, service="svc")]
    assert kinds.count(Kind.AUTO_STOP_DISABLED) == 1 and kinds.count(Kind.AUTO_STOP_ENABLED) == 2
    snapshots = fx.core.store.db.execute(
        "SELECT COUNT(*) FROM config_snapshots WHERE service_id = ?", (service.id,)
    ).fetchone()[0]
    assert snapshots == 4  # the deploy, then one per change


def test_bad_auto_stop_value_names_the_field(fx: Fixture) -> None:
    fx.running()
    with pytest.raises(InvalidInput) as info:
        fx.core.set_auto_stop(fx.me, "svc", "forever")
    assert info.value.errors[0].field == "auto_stop"
    assert "off" in info.value.errors[0].message


def test_scheduler_jobs_follow_the_store(fx: Fixture) -> None:
    fx.running("a", auto_stop="1h")
    fx.running("b", auto_stop="off")
    scheduler = AutoStopScheduler(
        fx.core.run_due, lambda: pending(fx.core.store, fx.core.config.reminder_minutes)
    )
    jobs = scheduler.sync()
    a = fx.core.service(fx.me, "a")
    assert set(jobs) == {f"autostop:{a.id}", f"reminder:{a.id}"}
    assert a.due_time is not None
    assert jobs[f"autostop:{a.id}"] == datetime.fromtimestamp(a.due_time, UTC)
    assert jobs[f"reminder:{a.id}"] == datetime.fromtimestamp(a.due_time - 600, UTC)
    fx.core.set_auto_stop(fx.me, "a", "off")
    assert scheduler.sync() == {}


def test_overdue_deadlines_fire_at_start_and_future_ones_are_kept(fx: Fixture) -> None:
    fx.running("soon", auto_stop="1h")
    fx.running("later", auto_stop="6h")
    fx.clock.advance(3 * 3600)  # the daemon was down for three hours
    changes: list[str] = []
    scheduler = AutoStopScheduler(
        fx.core.run_due,
        lambda: pending(fx.core.store, fx.core.config.reminder_minutes),
        lambda: changes.append("changed"),
    )
    scheduler.start()
    try:
        assert fx.status("soon") == Status.STOPPING
        assert fx.status("later") == Status.RUNNING
        later = fx.core.service(fx.me, "later")
        assert set(scheduler.sync()) == {f"autostop:{later.id}", f"reminder:{later.id}"}
        assert changes == ["changed"]
        # starting again (another restart) fires nothing twice
        scheduler.fire()
        assert fx.count(Kind.EXPIRED, "soon") == 1
    finally:
        scheduler.shutdown()
    events = [e for e in fx.core.events(fx.me, service="soon") if e.kind == Kind.STOPPING]
    assert "late" in events[0].message
