"""The controller against an in-memory runtime, a fake clock and fake readiness."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Collection, Iterator, Mapping
from dataclasses import replace
from pathlib import Path

import pytest
from core_support import World, entry, node, nvidia

from opsbot.core.controller import (
    BACKOFF_RESET_S,
    DEPLOY_ATTEMPTS,
    DOWN,
    FAILURE_THRESHOLD,
    FAILURE_WINDOW_S,
    backoff,
    instance_rows,
)
from opsbot.core.errors import Conflict, PermissionDenied
from opsbot.core.events import Kind
from opsbot.core.hardware import FakeProbe
from opsbot.core.routes import load_routes
from opsbot.core.runtime import FakeRuntime, device_env
from opsbot.core.status import Status


@pytest.fixture
def world(examples_home: Path) -> World:
    return World(examples_home)


def test_deploying_becomes_running_only_when_every_instance_is_ready(world: World) -> None:
    world.deploy(models=[entry(instances=3)])
    world.not_ready = {20001, 20002, 20003}
    world.controller.reconcile_all()
    assert world.status() == Status.DEPLOYING
    assert len(world.runtime.started) == 3
    world.not_ready = {20003}
    world.controller.reconcile_all()
    service = world.core.service(world.me, "svc")
    assert service.status == Status.DEPLOYING
    assert 10 < service.progress < 100
    world.not_ready = set()
    world.controller.reconcile_all()
    service = world.core.service(world.me, "svc")
    assert service.status == Status.RUNNING
    assert service.progress == 100
    # auto stop counts from Running: the default is one hour
    assert service.due_time == pytest.approx(world.clock.now() + 3600)
    assert Kind.RUNNING in world.kinds()


def test_the_controller_counts_each_finished_reconciliation(world: World) -> None:
    assert world.controller.reconciled == 0
    world.deploy(models=[entry(instances=1)])
    world.deploy(name="other", models=[entry(instances=1)])
    world.controller.reconcile_all()
    assert world.controller.reconciled == 2  # one per service per pass
    world.controller.reconcile_all()
    assert world.controller.reconciled == 4


def test_auto_stop_off_leaves_no_deadline(world: World) -> None:
    world.deploy(auto_stop="off")
    world.controller.reconcile_all()
    service = world.core.service(world.me, "svc")
    assert service.status == Status.RUNNING
    assert service.due_time is None


def test_routes_list_only_ready_instances(world: World) -> None:
    world.deploy(
        models=[
            entry(version="1.0.0", traffic_ratio=90, instances=2),
            entry(version="2.0.0", traffic_ratio=10),
        ]
    )
    world.not_ready = {20002}
    world.controller.reconcile_all()
    routes = load_routes(world.core.store.db)
    (route,) = routes.values()
    assert [v.ratio for v in route.versions] == [90, 10]
    assert [len(v.upstreams) for v in route.versions] == [1, 1]
    assert len(route.key_hashes) == 1


def test_a_crashed_instance_is_restarted_with_backoff(world: World) -> None:
    world.deploy(models=[entry(instances=2)])
    world.controller.reconcile_all()
    assert world.status() == Status.RUNNING
    first = world.handles()
    world.runtime.kill(first[0], code=-9, reason="killed by signal 9")
    world.controller.reconcile_all()
    assert world.status() == Status.CONCERNING
    service = world.core.service(world.me, "svc")
    assert "killed by signal 9" in service.reason
    rows = instance_rows(world.core.store, service.id)
    assert rows[0].state == DOWN
    # not before the backoff has passed
    world.controller.reconcile_all()
    assert len(world.runtime.started) == 2
    world.clock.advance(1.5)
    world.controller.reconcile_all()
    assert len(world.runtime.started) == 3
    assert world.status() == Status.RUNNING
    assert world.handles()[1] == first[1]  # the healthy one was left alone
    kinds = world.kinds()
    assert Kind.INSTANCE_DOWN in kinds and Kind.INSTANCE_RESTARTED in kinds
    assert Kind.CONCERNING in kinds


def test_an_instance_whose_port_another_program_answers_is_never_routed_to(
    world: World,
) -> None:
    # The runtime says the socket on the first instance's port is not the instance's (another
    # program took the port first; see tests/security/test_port_squatting.py). Readiness alone
    # would have routed to it.
    said = "another program holds its port 20001 (pid 7: squat; uid 0), not its container"
    world.runtime.foreign["fake-1"] = said
    world.deploy(models=[entry(instances=1)])
    world.controller.reconcile_all()
    assert world.status() == Status.DEPLOYING
    assert world.runtime.stopped == ["fake-1"]
    service = world.core.service(world.me, "svc")
    (row,) = instance_rows(world.core.store, service.id)
    assert (row.state, row.reason) == (DOWN, said)
    (route,) = load_routes(world.core.store.db).values()
    assert [v.upstreams for v in route.versions] == [()]
    assert any(said in e.message for e in world.core.events(world.me, service="svc"))
    # Started again after the backoff, on another port, and routed to once that one is its own.
    world.clock.advance(backoff(0) + 0.5)
    world.controller.reconcile_all()
    assert world.runtime.started == ["fake-1", "fake-2"]
    assert world.status() == Status.RUNNING
    (route,) = load_routes(world.core.store.db).values()
    assert [(u.host, u.port) for u in route.versions[0].upstreams] == [("127.0.0.1", 20002)]


def test_missed_checks_must_come_in_a_row(world: World) -> None:
    world.deploy()
    world.controller.reconcile_all()
    for _ in range(3):
        world.not_ready = {20001}
        for _ in range(FAILURE_THRESHOLD - 1):
            world.controller.reconcile_all()
            world.clock.advance(FAILURE_WINDOW_S)
        world.not_ready = set()  # one answer in between starts the count again
        world.controller.reconcile_all()
    assert world.status() == Status.RUNNING
    assert Kind.CONCERNING not in world.kinds() and Kind.ABNORMAL not in world.kinds()


def _next_delay(world: World) -> float:
    service = world.core.service(world.me, "svc")
    (row,) = instance_rows(world.core.store, service.id)
    assert row.state == DOWN
    return row.next_try - world.clock.now()


def test_restart_backoff_grows_in_a_crash_loop_and_resets_after_a_healthy_run(
    world: World,
) -> None:
    world.deploy()
    world.controller.reconcile_all()
    delays = []
    for _ in range(4):
        world.runtime.kill(world.runtime.started[-1])
        world.controller.reconcile_all()
        delays.append(_next_delay(world))
        world.clock.advance(delays[-1])
        world.controller.reconcile_all()
    assert delays == [backoff(0), backoff(1), backoff(2), backoff(3)]
    # Healthy for as long as Kubernetes waits before it forgets a crash loop: a crash now
    # costs the first delay again, and the one after grows from there.
    world.clock.advance(BACKOFF_RESET_S)
    world.runtime.kill(world.runtime.started[-1])
    world.controller.reconcile_all()
    assert _next_delay(world) == backoff(0)
    world.clock.advance(backoff(0))
    world.controller.reconcile_all()
    world.runtime.kill(world.runtime.started[-1])
    world.controller.reconcile_all()
    assert _next_delay(world) == backoff(1)


class SlowStopRuntime(FakeRuntime):
    """Stopping the instances named in ``slow`` waits until ``let_go`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.slow: set[str] = set()
        self.let_go = threading.Event()
        self.stopping = threading.Event()

    def stop(self, handle: str, grace_s: float = 10.0) -> None:
        if handle in self.slow:
            self.stopping.set()
            assert self.let_go.wait(30)
        super().stop(handle, grace_s)


def test_a_slow_stop_holds_up_no_other_service(examples_home: Path) -> None:
    world = World(examples_home)
    runtime = SlowStopRuntime()
    world.runtime = world.controller.runtime = runtime
    world.deploy(name="slow")
    world.deploy(name="other")
    world.controller.reconcile_all()
    assert world.status("slow") == world.status("other") == Status.RUNNING
    (slow,) = world.handles("slow")
    runtime.slow.add(slow)
    world.core.stop_service(world.me, "slow")
    try:
        world.controller.reconcile_all(wait=False)
        assert runtime.stopping.wait(10)
        # While "slow" is stuck in its stop, "other" loses its instance and is repaired.
        (other,) = world.handles("other")
        runtime.kill(other)
        started = len(runtime.started)
        service = world.core.service(world.me, "other")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            world.controller.reconcile_all(wait=False)  # "slow" is skipped: still stopping
            if instance_rows(world.core.store, service.id)[0].state == DOWN:
                break
            time.sleep(0.01)
        world.clock.advance(backoff(0))
        while len(runtime.started) == started and time.monotonic() < deadline:
            world.controller.reconcile_all(wait=False)
            time.sleep(0.01)
        assert len(runtime.started) == started + 1
        assert world.status("slow") == Status.STOPPING
    finally:
        runtime.let_go.set()
    deadline = time.monotonic() + 10
    while world.status("slow") != Status.STOPPED and time.monotonic() < deadline:
        world.controller.reconcile_all()
        time.sleep(0.01)
    assert world.status("slow") == Status.STOPPED
    world.controller.close()


def test_all_instances_down_is_abnormal(world: World) -> None:
    world.deploy()
    world.controller.reconcile_all()
    world.runtime.kill(world.handles()[0])
    world.controller.reconcile_all()
    assert world.status() == Status.ABNORMAL


def test_an_instance_that_stops_answering_makes_the_service_concerning(world: World) -> None:
    world.deploy(models=[entry(instances=2)])
    world.controller.reconcile_all()
    world.not_ready = {20001}
    # Checks missed in a row below the threshold (one slow answer under load) change nothing,
    # nor do more of them within the window.
    for _ in range(FAILURE_THRESHOLD + 2):
        world.controller.reconcile_all()
        assert world.status() == Status.RUNNING
    world.clock.advance(FAILURE_WINDOW_S)
    world.controller.reconcile_all()
    assert world.status() == Status.CONCERNING
    world.not_ready = set()
    world.controller.reconcile_all()
    assert world.status() == Status.RUNNING


def test_a_concerning_service_says_the_reason_it_has_now(world: World) -> None:
    # an instance stops answering (its node went away), then the runtime says why it ended
    world.deploy(models=[entry(instances=2)])
    world.controller.reconcile_all()
    world.not_ready = {20001}
    for _ in range(FAILURE_THRESHOLD):
        world.controller.reconcile_all()
    world.clock.advance(FAILURE_WINDOW_S)
    world.controller.reconcile_all()
    service = world.core.service(world.me, "svc")
    assert service.status == Status.CONCERNING
    assert service.reason == "stopped answering its readiness check"
    lost = "node gpu-2 (10.0.0.2) is down: Swarm moves the task to another node that fits"
    world.runtime.kill(world.handles()[0], reason=lost)
    world.controller.reconcile_all()
    service = world.core.service(world.me, "svc")
    assert (service.status, service.reason) == (Status.CONCERNING, lost)
    assert world.kinds().count(Kind.CONCERNING) == 1  # the same status: no second event
    world.not_ready = set()
    world.clock.advance(1.5)
    world.controller.reconcile_all()
    service = world.core.service(world.me, "svc")
    assert (service.status, service.reason) == (Status.RUNNING, "")


def test_model_load_failure_fails_the_deploy_with_the_reason(world: World) -> None:
    world.deploy()
    world.not_ready = {20001}
    world.controller.reconcile_all()
    world.runtime.kill(world.handles()[0], code=3, reason="no model.joblib in /x")
    world.controller.reconcile_all()
    service = world.core.service(world.me, "svc")
    assert service.status == Status.FAILED
    assert "model load failed" in service.reason and "no model.joblib" in service.reason
    assert world.runtime.instances == {}
    assert world.handles() == []


def test_a_crash_loop_while_deploying_fails_after_the_attempts(world: World) -> None:
    world.deploy()
    world.not_ready = {20000 + n for n in range(1, 10)}
    for _attempt in range(DEPLOY_ATTEMPTS):
        world.controller.reconcile_all()
        assert world.status() == Status.DEPLOYING
        world.runtime.kill(world.runtime.started[-1], code=1, reason="segfault")
        world.controller.reconcile_all()
        world.clock.advance(100)  # past the backoff: the next pass starts it again
    service = world.core.service(world.me, "svc")
    assert service.status == Status.FAILED
    assert f"failed {DEPLOY_ATTEMPTS} times" in service.reason


def test_deploy_timeout_fails_with_the_reason(examples_home: Path) -> None:
    world = World(examples_home, timeout_s=60)
    world.deploy()
    world.not_ready = {20001}
    world.controller.reconcile_all()
    world.clock.advance(59)
    world.controller.reconcile_all()
    assert world.status() == Status.DEPLOYING
    world.clock.advance(2)
    world.controller.reconcile_all()
    service = world.core.service(world.me, "svc")
    assert service.status == Status.FAILED
    assert "timed out after 1 min" in service.reason and "0 of 1" in service.reason
    assert world.runtime.instances == {}


def test_stop_then_start_then_delete(world: World) -> None:
    world.deploy(models=[entry(instances=2)])
    world.controller.reconcile_all()
    world.core.stop_service(world.me, "svc")
    assert world.status() == Status.STOPPING
    world.controller.reconcile_all()
    service = world.core.service(world.me, "svc")
    assert service.status == Status.STOPPED
    assert service.due_time is None
    assert world.runtime.instances == {} and len(world.runtime.stopped) == 2
    stopped = [e for e in world.core.events(world.me, service="svc") if e.kind == Kind.STOPPED]
    assert stopped and stopped[-1].actor == world.me.name
    with pytest.raises(Conflict, match="only a service that is"):
        world.core.stop_service(world.me, "svc")
    world.core.start_service(world.me, "svc")
    world.controller.reconcile_all()
    assert world.status() == Status.RUNNING
    world.core.delete_service(world.me, "svc")
    world.controller.reconcile_all()
    assert world.core.services(world.me) == []
    assert world.runtime.instances == {}
    assert world.kinds()[-1] == Kind.DELETED


def test_start_is_refused_while_running(world: World) -> None:
    world.deploy()
    world.controller.reconcile_all()
    with pytest.raises(Conflict, match="Running"):
        world.core.start_service(world.me, "svc")


def test_others_may_not_stop_my_service(world: World) -> None:
    world.deploy()
    with pytest.raises(PermissionDenied, match="only its owner or an admin"):
        world.core.stop_service(world.core.user("mallory"), "svc", owner=world.me.name)
    assert world.status() == Status.DEPLOYING


def test_adopt_keeps_known_instances_and_stops_strays(world: World) -> None:
    world.deploy(models=[entry(instances=2)])
    world.controller.reconcile_all()
    # A second controller (a restarted daemon) over the same runtime: nothing restarts.
    known = world.runtime.instances[world.handles()[0]].spec
    stray = world.runtime.start(replace(known, service_uid="gone"))
    again = world.restarted_controller()
    adopted, removed = again.adopt()
    assert (adopted, removed) == (2, 1)
    assert stray.handle in world.runtime.stopped
    started = len(world.runtime.started)
    again.reconcile_all()
    assert len(world.runtime.started) == started
    assert world.status() == Status.RUNNING


def test_gpu_flavors_get_distinct_devices(examples_home: Path) -> None:
    probe = FakeProbe(
        [node("gpu", 64, 512, devices=[nvidia("Tesla T4", 0), nvidia("Tesla T4", 1)])]
    )
    world = World(examples_home, probe=probe)
    world.deploy(models=[entry(flavor="gpu.t4", instances=2)])
    world.controller.reconcile_all()
    specs = [i.spec for i in world.runtime.instances.values()]
    envs = sorted(device_env(s.flavor, s.devices)["CUDA_VISIBLE_DEVICES"] for s in specs)
    assert envs == ["0", "1"]
    assert world.status() == Status.RUNNING


def test_cpu_flavors_see_no_gpu(world: World) -> None:
    world.deploy()
    world.controller.reconcile_all()
    (inst,) = world.runtime.instances.values()
    assert device_env(inst.spec.flavor, inst.spec.devices) == {"CUDA_VISIBLE_DEVICES": ""}


def test_routes_skip_services_that_are_not_serving(world: World) -> None:
    world.deploy()
    world.controller.reconcile_all()
    assert len(load_routes(world.core.store.db)) == 1
    world.core.stop_service(world.me, "svc")
    world.controller.reconcile_all()
    assert load_routes(world.core.store.db) == {}


class _Stubborn(FakeRuntime):
    """A runtime whose stop fails until told otherwise (an engine that went away)."""

    refuse: bool = True

    def stop(self, handle: str, grace_s: float = 10.0) -> None:
        if self.refuse:
            raise ConnectionError("engine unreachable")
        super().stop(handle, grace_s)


def test_an_auto_stop_that_cannot_stop_the_instances_says_so_once(examples_home: Path) -> None:
    world = World(examples_home)
    world.runtime = world.controller.runtime = _Stubborn()
    world.deploy(auto_stop="1h")
    world.controller.reconcile_all()
    assert world.status() == Status.RUNNING
    world.clock.advance(3600)
    world.core.run_due()
    for _ in range(3):  # the controller retries every pass, but says it once
        world.controller.reconcile_all()
    assert world.status() == Status.STOPPING
    failed = [
        e for e in world.core.events(world.me, service="svc") if e.kind == Kind.AUTO_STOP_FAILED
    ]
    assert len(failed) == 1 and "engine unreachable" in failed[0].message
    assert failed[0].level == "abnormal"
    world.runtime.refuse = False
    world.controller.reconcile_all()
    assert world.status() == Status.STOPPED
    assert world.runtime.instances == {}


def test_a_stop_by_hand_that_fails_is_a_stop_failed_event(examples_home: Path) -> None:
    world = World(examples_home)
    world.runtime = world.controller.runtime = _Stubborn()
    world.deploy()
    world.controller.reconcile_all()
    world.core.stop_service(world.me, "svc")
    world.controller.reconcile_all()
    assert Kind.STOP_FAILED in world.kinds() and Kind.AUTO_STOP_FAILED not in world.kinds()


class _Placing(FakeRuntime):
    """A runtime that places accelerators itself, as Swarm does with generic resources."""

    places_devices = True


def test_a_runtime_that_places_devices_gets_none_from_this_machine(examples_home: Path) -> None:
    # Admission counts one T4 (one node's worth); the instances' devices are the runtime's.
    probe = FakeProbe([node("gpu", 64, 512, devices=[nvidia("Tesla T4", 0)])])
    world = World(examples_home, probe=probe)
    world.runtime = world.controller.runtime = _Placing()
    world.deploy(models=[entry(flavor="gpu.t4")])
    world.controller.reconcile_all()
    (inst,) = world.runtime.instances.values()
    assert inst.spec.devices == ()
    service = world.core.service(world.me, "svc")
    assert [r.gpus for r in instance_rows(world.core.store, service.id)] == [""]
    assert world.status() == Status.RUNNING


def test_running_waits_until_the_gateway_routes_the_ready_instances(world: World) -> None:
    """With a gateway to ask, Running waits for it to list the instance, not for time: the
    fake clock never moves here."""
    routed: list[str] = []
    asked = 0

    def gateway() -> list[str]:
        nonlocal asked
        asked += 1
        return list(routed)

    world.controller.route_settle_s = 0.3  # used only without an answer
    world.controller.routed = gateway
    world.deploy(models=[entry(instances=2)])
    world.controller.reconcile_all()
    service = world.core.service(world.me, "svc")
    rows = instance_rows(world.core.store, service.id)
    assert [r.state for r in rows] == ["ready", "ready"]
    assert world.status() == Status.DEPLOYING and asked == 1
    routed.append(rows[0].address)
    world.controller.reconcile_all()
    assert world.status() == Status.DEPLOYING  # one of two is routed
    routed.append(rows[1].address)
    world.controller.reconcile_all()
    assert world.status() == Status.RUNNING
    before = asked
    world.controller.reconcile_all()
    assert asked == before  # instances seen routed are not asked about again


def test_without_an_answer_from_the_gateway_running_waits_the_settle_time(world: World) -> None:
    world.controller.route_settle_s = 0.3
    world.controller.routed = lambda: None
    world.deploy()
    world.controller.reconcile_all()
    assert world.status() == Status.DEPLOYING
    world.clock.advance(0.31)
    world.controller.reconcile_all()
    assert world.status() == Status.RUNNING


def test_a_starting_instance_that_answers_wakes_the_loop_between_passes(world: World) -> None:
    """The readiness of starting instances is polled on its own, every 50 ms, so a deploy does
    not wait for the next 1-second pass to be seen ready."""
    world.deploy()
    world.not_ready = {20001}
    world.controller.reconcile_all()
    assert world.status() == Status.DEPLOYING
    asked = threading.Semaphore(0)
    ready_now = threading.Event()

    def ready(host: str, port: int) -> bool:
        asked.release()
        return ready_now.is_set()

    world.controller.ready = ready
    world.controller.wake_event.clear()
    stop = threading.Event()
    watcher = threading.Thread(target=world.controller.watch_starting, args=(stop, 0.01))
    watcher.start()
    try:
        for _ in range(3):  # asked three times while loading: no wake-up
            assert asked.acquire(timeout=5)
        assert not world.controller.wake_event.is_set()
        ready_now.set()
        assert world.controller.wake_event.wait(5)
    finally:
        stop.set()
        watcher.join(5)
    world.not_ready = set()
    world.controller.reconcile_all()
    assert world.status() == Status.RUNNING


def test_a_service_woken_while_busy_is_reconciled_again_after(world: World) -> None:
    world.deploy()
    service = world.core.service(world.me, "svc")
    world.controller._busy.add(service.id)  # a reconciliation of it is under way
    world.controller.wake_event.clear()
    world.controller.reconcile_all()  # skips it
    assert world.status() == Status.DEPLOYING and not world.controller.wake_event.is_set()
    world.controller._reconcile_id(service.id, True)  # the one under way ends
    assert world.controller.wake_event.is_set()


def test_running_waits_until_the_gateway_can_have_read_the_ready_instances(world: World) -> None:
    world.controller.route_settle_s = 0.3
    world.deploy()
    world.controller.reconcile_all()
    assert world.status() == Status.DEPLOYING  # ready, but maybe not routed yet
    world.clock.advance(0.31)
    world.controller.reconcile_all()
    assert world.status() == Status.RUNNING


def test_a_reconciliation_the_store_could_not_record_is_reported(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.deploy()
    world.controller.reconcile_all()
    assert world.status() == Status.RUNNING and world.controller.failures() == []
    full = sqlite3.OperationalError("database or disk is full")

    @contextlib.contextmanager
    def no_room() -> Iterator[None]:
        raise full
        yield

    writable = world.core.store.write
    # An instance dies while the disk is full: the controller cannot record it.
    monkeypatch.setattr(world.core.store, "write", no_room)
    world.runtime.kill(world.handles()[0], code=-9)
    with pytest.raises(sqlite3.OperationalError):
        world.controller.reconcile_all()
    assert world.controller.failures() == [full]
    assert world.status() == Status.RUNNING  # what the store still says; the API withholds it
    seen: list[list[Exception]] = []
    stop = threading.Event()

    def on_pass(failures: list[Exception]) -> None:
        seen.append(failures)
        stop.set()

    world.controller.run(stop, interval=0, on_pass=on_pass)
    assert full in seen[0]
    monkeypatch.setattr(world.core.store, "write", writable)  # space freed
    world.controller.reconcile_all()
    assert world.controller.failures() == []
    assert world.status() != Status.RUNNING


# -- what the runtime keeps for a version (staged model copies) ------------------------------


def _uid(world: World, name: str = "svc") -> str:
    return world.core.service(world.me, name).uid


def test_deleting_a_service_releases_what_its_versions_kept(world: World) -> None:
    world.deploy(
        models=[entry(version="1.0.0", traffic_ratio=50), entry(version="2.0.0", traffic_ratio=50)]
    )
    world.deploy(name="other")
    world.controller.reconcile_all()
    uid, other = _uid(world), _uid(world, "other")
    assert world.runtime.staged == {uid: {0, 1}, other: {0}}
    world.core.delete_service(world.me, "svc")
    world.controller.reconcile_all()
    assert world.core.services(world.me)[0].name == "other"
    # The other service's running version keeps its copy.
    assert world.runtime.staged == {other: {0}}


def test_a_stopped_service_keeps_no_copy_and_a_start_stages_again(world: World) -> None:
    world.deploy()
    world.controller.reconcile_all()
    uid = _uid(world)
    world.core.stop_service(world.me, "svc")
    world.controller.reconcile_all()
    assert world.status() == Status.STOPPED
    assert uid not in world.runtime.staged
    world.core.start_service(world.me, "svc")
    world.controller.reconcile_all()
    assert world.runtime.staged == {uid: {0}}


def test_a_failed_first_deploy_releases_its_copy(world: World) -> None:
    world.deploy()
    world.not_ready = {20001}
    world.controller.reconcile_all()
    assert world.runtime.staged == {_uid(world): {0}}
    world.runtime.kill(world.handles()[0], code=3, reason="no model.joblib in /x")
    world.controller.reconcile_all()
    assert world.status() == Status.FAILED
    assert world.runtime.staged == {}


def test_a_crashed_instance_waiting_to_restart_keeps_its_copy(world: World) -> None:
    world.deploy()
    world.controller.reconcile_all()
    world.runtime.kill(world.handles()[0], code=-9, reason="killed by signal 9")
    world.controller.reconcile_all()
    assert world.status() == Status.ABNORMAL  # down, its restart not due yet
    assert world.runtime.staged == {_uid(world): {0}}


def test_a_dropped_version_keeps_its_copy_until_its_last_instance_is_gone(world: World) -> None:
    world.deploy(
        models=[
            entry(version="1.0.0", traffic_ratio=50, instances=2),
            entry(version="2.0.0", traffic_ratio=50),
        ]
    )
    world.controller.reconcile_all()
    uid = _uid(world)
    world.core.update_service(
        world.me, "svc", {"name": "svc", "models": [entry(version="1.0.0", instances=2)]}
    )
    world.controller.reconcile_all()  # version 2.0.0's instance drains: it still serves
    service = world.core.service(world.me, "svc")
    assert {r.idx for r in instance_rows(world.core.store, service.id)} == {0, 1}
    assert world.runtime.staged == {uid: {0, 1}}
    world.clock.advance(world.controller.drain_s)
    world.controller.reconcile_all()
    assert {r.idx for r in instance_rows(world.core.store, service.id)} == {0}
    assert world.runtime.staged == {uid: {0}}
    assert world.status() == Status.RUNNING


def test_the_first_pass_sweeps_copies_of_versions_without_an_instance(world: World) -> None:
    world.deploy(
        models=[entry(version="1.0.0", traffic_ratio=50), entry(version="2.0.0", traffic_ratio=50)]
    )
    world.controller.reconcile_all()
    uid = _uid(world)
    # What a daemon killed before its release leaves: a deleted service's copy, a slot of a
    # live service with no instance.
    world.runtime.staged["gone"] = {0}
    world.runtime.staged[uid].add(7)
    again = world.restarted_controller()
    again.adopt()
    swept: list[dict[str, set[int]]] = []
    sweep = world.runtime.sweep

    def seen(keep: Mapping[str, Collection[int]]) -> None:
        swept.append({k: set(v) for k, v in keep.items()})
        sweep(keep)

    world.runtime.sweep = seen  # type: ignore[method-assign]
    again.reconcile_all()
    again.reconcile_all()
    assert swept == [{uid: {0, 1}}]  # once, on the first pass
    assert world.runtime.staged == {uid: {0, 1}}
    assert world.status() == Status.RUNNING


# -- the instances' logs ---------------------------------------------------------------------


class _RotationFails(FakeRuntime):
    def rotate_logs(self) -> None:
        super().rotate_logs()
        raise OSError(28, "No space left on device")


@pytest.mark.parametrize("failing", [False, True])
def test_every_pass_has_the_runtime_rotate_the_instances_logs(world: World, failing: bool) -> None:
    """Rotation on each pass keeps a log near its cap; one that fails does not stop the loop
    (the runtime's backstop still bounds the log)."""
    if failing:
        world.runtime = world.controller.runtime = _RotationFails()
    world.deploy()
    passes: list[int] = []
    stop = threading.Event()

    def on_pass(failures: list[Exception]) -> None:
        passes.append(world.runtime.log_rotations)
        if len(passes) == 3:
            stop.set()

    world.controller.run(stop, interval=0, on_pass=on_pass)
    assert passes == [1, 2, 3]  # each pass, before it is reported
