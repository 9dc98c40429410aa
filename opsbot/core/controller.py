"""The controller: level-triggered reconciliation of what the store wants with what runs.

Each pass reads every service, compares the instances its status and spec call for with the
instances table and the runtime, and closes the difference: starts what is missing, restarts
what died (with backoff), stops what is no longer wanted, and moves the service's status
(Deploying with progress -> Running; Concerning, Abnormal, Failed; Stopping -> Stopped;
Deleting -> gone). Requests from users only change the store and wake the loop early.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import threading
from collections.abc import Callable, Collection
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for_all
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opsbot.core import events
from opsbot.core import services as svc
from opsbot.core.address import get_status, show
from opsbot.core.clock import Clock
from opsbot.core.deadlines import AUTO_STOP_ACTOR
from opsbot.core.events import Kind, Level
from opsbot.core.flavors import Flavor
from opsbot.core.hardware import Device, HardwareProbe
from opsbot.core.routes import READY
from opsbot.core.runtime import InstanceSpec, Runtime
from opsbot.core.services import Service
from opsbot.core.status import Status
from opsbot.core.store import Store, table

log = logging.getLogger(__name__)

STARTING, DOWN, DRAINING = "starting", "down", "draining"
NOT_ANSWERING = "stopped answering its readiness check"
ACTOR = "controller"
#: Exit code with which the model server says the model could not be loaded: no use retrying.
LOAD_FAILED_CODE = 3
BACKOFF_MAX_S = 60.0
#: An instance that ran this long before it died starts again after the shortest delay, as if it
#: had never crashed (Kubernetes resets its CrashLoopBackOff after 10 minutes of running).
BACKOFF_RESET_S = 600.0
#: Consecutive missed readiness checks, spanning at least FAILURE_WINDOW_S, before a ready
#: instance leaves the routes (Kubernetes' failureThreshold x periodSeconds): a heavy call can
#: keep a Python model server from answering for a few seconds (a 10 MB JSON body takes about
#: 1.7 s to parse on these machines, holding the GIL), which is not an outage. An instance that
#: dies is seen at once by its exit, and one that refuses connections by the gateway.
FAILURE_THRESHOLD = 3
FAILURE_WINDOW_S = 10.0
#: Services reconciled at once: one whose instances are slow to stop holds up no other.
RECONCILE_WORKERS = 8
#: How long an instance leaves the routes before it is stopped: a few gateway polls; calls
#: still in flight then finish during the model server's own SIGTERM grace.
DRAIN_S = 2.0
#: Without a gateway to ask (``routed``), or while it does not answer: how long an instance must
#: have been ready before its service is called Running. The gateway reads the store every
#: 200 ms, so by then it routes to the instance and a caller who sees Running is served.
ROUTE_SETTLE_S = 0.3
#: How often the instances still starting are asked whether they are ready, between passes: a
#: deploy is Running a moment after its model has loaded, not at the next 1-second pass.
READY_POLL_S = 0.05
#: How soon the gateway is asked again while it does not yet route a ready instance.
ROUTE_RECHECK_S = 0.05
#: Starts an instance gets while its service is Deploying before the deploy is called Failed.
DEPLOY_ATTEMPTS = 3
ACTIVE = (Status.DEPLOYING, Status.RUNNING, Status.CONCERNING, Status.ABNORMAL)


def http_ready(host: str, port: int, timeout: float = 1.0) -> bool:
    """The model server's readiness check (Open Inference Protocol v2)."""
    try:
        return get_status(host, port, "/v2/health/ready", timeout) == 200
    except (OSError, http.client.HTTPException, ValueError):
        return False


def backoff(restarts: int) -> float:
    return float(min(BACKOFF_MAX_S, 2 ** min(restarts, 6)))


@dataclass
class InstanceRow:
    id: int
    service_id: int
    idx: int
    n: int
    handle: str
    host: str
    port: int | None
    state: str
    reason: str
    gpus: str
    restarts: int
    next_try: float
    started_at: float | None
    config: str = ""
    updated_at: float = 0.0

    @property
    def key_tail(self) -> tuple[int, int]:
        return (self.idx, self.n)

    @property
    def address(self) -> str:
        """``host:port`` or ``unix:PATH``, as the gateway names its upstreams."""
        return show(self.host, self.port)


_INSTANCE_COLUMNS = (
    "id, service_id, idx, n, handle, host, port, state, reason, gpus, restarts, next_try, "
    "started_at, config, updated_at"
)


def instance_rows(store: Store, service_id: int) -> list[InstanceRow]:
    rows = store.db.execute(
        f"SELECT {_INSTANCE_COLUMNS} FROM instances WHERE service_id = ? ORDER BY idx, n",
        (service_id,),
    ).fetchall()
    return [InstanceRow(*r) for r in rows]


@dataclass(frozen=True)
class VersionPlan:
    idx: int
    instances: int
    flavor: Flavor
    model_name: str
    version: str
    path: Path
    format: str
    entry: str | None
    env: dict[str, str]
    config: str
    """A fingerprint of what the instances run (model version, flavor, env): instances started
    under another one are replaced."""


def fingerprint(model_version_id: int, flavor: str, env: str) -> str:
    blob = json.dumps([model_version_id, flavor, json.loads(env)], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class Controller:
    def __init__(
        self,
        store: Store,
        runtime: Runtime,
        flavors: dict[str, Flavor],
        probe: HardwareProbe,
        clock: Clock,
        *,
        deploy_timeout_s: float = 1200.0,
        drain_s: float = DRAIN_S,
        route_settle_s: float = ROUTE_SETTLE_S,
        ready: Callable[[str, int], bool] = http_ready,
        on_event: Callable[[], None] | None = None,
        failure_threshold: int = FAILURE_THRESHOLD,
        failure_window_s: float = FAILURE_WINDOW_S,
        backoff_reset_s: float = BACKOFF_RESET_S,
        routed: Callable[[], Collection[str] | None] | None = None,
    ):
        """``routed`` tells the upstream addresses (``host:port``) the gateway routes to once it
        has read the store afresh, or None when it does not answer; without it a service waits
        ``route_settle_s`` after its last instance became ready before it is called Running."""
        self.store = store
        self.runtime = runtime
        self.flavors = flavors
        self.probe = probe
        self.clock = clock
        self.deploy_timeout_s = deploy_timeout_s
        self.drain_s = drain_s
        self.route_settle_s = route_settle_s
        self.ready = ready
        self.routed = routed
        self.on_event = on_event
        self.wake_event = threading.Event()
        self.failure_threshold = max(1, failure_threshold)
        self.failure_window_s = failure_window_s
        self.backoff_reset_s = backoff_reset_s
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="opsbot-probe")
        self._workers = ThreadPoolExecutor(
            max_workers=RECONCILE_WORKERS, thread_name_prefix="opsbot-reconcile"
        )
        self._lock = threading.Lock()
        # Services being reconciled now: a pass skips them rather than wait for them.
        self._busy: set[int] = set()
        self._running: set[Future[None]] = set()
        # Services whose last reconciliation failed, with the error (a full disk, say).
        self._failed: dict[int, Exception] = {}
        # Reconciliations of a service finished since start, whatever their outcome: what a
        # watcher waits on to know the controller has looked again ("after two more looks,
        # nothing was restarted"), instead of sleeping for a guess of passes.
        self._reconciled = 0
        # Consecutive missed readiness checks of instances still ready, by instance row id: how
        # many, and when the first of them was.
        self._misses: dict[int, tuple[int, float]] = {}
        # Services woken while busy: reconciled again once the running reconciliation is done.
        self._again: set[int] = set()
        # Ready instances the gateway was seen routing, by service: (row id, ready since).
        self._confirmed: dict[int, set[tuple[int, float]]] = {}
        # Whether the first pass swept what earlier lives left on disk.
        self._swept = False

    # -- start-up ----------------------------------------------------------------------------

    def adopt(self) -> tuple[int, int]:
        """Match running instances to the store by identity; stop the ones nobody wants.

        Returns (adopted, removed). Instances the runtime finds but the store does not list
        (a daemon killed between start and insert, a deleted service) are strays.
        """
        by_key: dict[str, tuple[int, InstanceRow]] = {}
        for sid, uid in self.store.db.execute("SELECT id, uid FROM services").fetchall():
            for row in instance_rows(self.store, sid):
                by_key[f"{uid}/{row.idx}/{row.n}"] = (sid, row)
        adopted = removed = 0
        claimed: set[int] = set()
        for owned in self.runtime.owned():
            match = by_key.get(owned.key)
            if match is None or match[1].id in claimed:
                log.info("stopping stray instance %s (%s)", owned.key, owned.handle)
                self.runtime.stop(owned.handle)
                removed += 1
                continue
            _, row = match
            claimed.add(row.id)
            if (row.handle, row.host, row.port) != (owned.handle, owned.host, owned.port):
                # The store lost the handle (killed between start and update): take the live one.
                with self.store.write() as db:
                    db.execute(
                        "UPDATE instances SET handle = ?, host = ?, port = ? WHERE id = ?",
                        (owned.handle, owned.host, owned.port, row.id),
                    )
            adopted += 1
        return adopted, removed

    def sweep(self) -> None:
        """Have the runtime remove what it keeps for versions without an instance (a daemon
        killed between a version's last stop and its release, a service deleted then). The
        first pass does it, before it starts anything."""
        keep: dict[str, set[int]] = {}
        for uid, idx in self.store.db.execute(
            "SELECT s.uid, i.idx FROM instances i JOIN services s ON s.id = i.service_id"
        ).fetchall():
            keep.setdefault(uid, set()).add(idx)
        self.runtime.sweep(keep)

    # -- the loop ----------------------------------------------------------------------------

    def wake(self) -> None:
        self.wake_event.set()

    def run(
        self,
        stop: threading.Event,
        interval: float = 1.0,
        on_pass: Callable[[list[Exception]], None] | None = None,
    ) -> None:
        """Reconcile every ``interval`` (or when woken) until ``stop``. ``on_pass`` hears,
        after each pass, what is failing now (the pass itself, or services' last
        reconciliations): the daemon learns so when the store cannot record what it saw."""
        watcher = threading.Thread(
            target=self.watch_starting, args=(stop,), name="opsbot-ready-watch", daemon=True
        )
        watcher.start()
        while not stop.is_set():
            failed: list[Exception] = []
            try:
                # Each service in its own worker: the loop goes on while a slow one finishes.
                self.reconcile_all(wait=False)
            except Exception as exc:  # the loop must survive any one bad pass; logged in full
                log.exception("reconcile pass failed")
                failed.append(exc)
            try:  # each pass, so that a log grows little past its cap between two
                self.runtime.rotate_logs()
            except Exception:  # the runtime's backstop still bounds them; said, not fatal
                log.exception("rotating the instances' logs failed")
            if on_pass is not None:
                on_pass([*failed, *self.failures()])
            self.wake_event.wait(interval)
            self.wake_event.clear()
        # Leave nothing half done behind: the store may be closed once this returns.
        with self._lock:
            running = list(self._running)
        wait_for_all(running)
        watcher.join()

    def watch_starting(self, stop: threading.Event, interval: float = READY_POLL_S) -> None:
        """Until ``stop``: ask every starting instance whether it is ready, each ``interval``,
        and wake the loop when one is, so its pass marks it ready at once."""
        db = self.store.db  # this thread's own connection
        try:
            while not stop.wait(interval):
                try:
                    rows = db.execute(
                        "SELECT host, port FROM instances WHERE state = ? AND port IS NOT NULL",
                        (STARTING,),
                    ).fetchall()
                    if rows and any(self._pool.map(lambda r: self.ready(r[0], int(r[1])), rows)):
                        self.wake()
                except Exception:  # the pass still finds them; this only makes it sooner
                    log.exception("watching starting instances failed")
                    stop.wait(1.0)
        finally:
            self.store.close()

    def reconcile_all(self, *, wait: bool = True) -> None:
        """Reconcile every service, each in a worker of its own; a service whose last
        reconciliation is still running (an instance slow to stop) is left to it.

        With ``wait`` the call returns once this pass's services are done, raising the first
        error; without it, errors are logged.
        """
        with self._lock:
            sweep, self._swept = not self._swept, True
        if sweep:  # before any instance starts
            self.sweep()
        ids = [r[0] for r in self.store.db.execute("SELECT id FROM services").fetchall()]
        with self._lock:  # a service gone is failing no more
            for gone in set(self._failed) - set(ids):
                del self._failed[gone]
        futures: list[Future[None]] = []
        for sid in ids:
            with self._lock:
                if sid in self._busy:
                    self._again.add(sid)
                    continue
                self._busy.add(sid)
            future = self._workers.submit(self._reconcile_id, sid, wait)
            with self._lock:
                self._running.add(future)
            future.add_done_callback(self._finished)
            futures.append(future)
        if wait:
            for future in futures:
                future.result()

    def _finished(self, future: Future[None]) -> None:
        with self._lock:
            self._running.discard(future)

    @property
    def reconciled(self) -> int:
        """How many reconciliations of a service have finished since the controller started."""
        with self._lock:
            return self._reconciled

    def failures(self) -> list[Exception]:
        """The errors of the services whose last reconciliation failed."""
        with self._lock:
            return list(self._failed.values())

    def _reconcile_id(self, sid: int, raise_errors: bool) -> None:
        try:
            service = svc.service_by_id(self.store.db, sid)
            if service is not None:
                self.reconcile(service)
            with self._lock:
                self._failed.pop(sid, None)
        except Exception as exc:
            with self._lock:
                self._failed[sid] = exc
            if raise_errors:
                raise
            log.exception("reconciling service %d failed", sid)
        finally:
            with self._lock:
                self._reconciled += 1
                self._busy.discard(sid)
                again = sid in self._again
                self._again.discard(sid)
            if again:  # woken meanwhile (an instance became ready): the loop runs a pass now
                self.wake()

    def reconcile(self, service: Service) -> None:
        try:
            self._reconcile(service)
        finally:
            # What the runtime keeps for a version goes with the version's last instance; here,
            # where the service's instances are started and stopped (one reconciliation of a
            # service at a time), so nothing of a version starting meanwhile is removed.
            keep = {r.idx for r in instance_rows(self.store, service.id)}
            self.runtime.release(service.uid, keep)

    def _reconcile(self, service: Service) -> None:
        rows = instance_rows(self.store, service.id)
        if service.status in ACTIVE:
            self._converge(service, rows)
        elif service.status in (Status.STOPPING, Status.DELETING):
            try:
                self._stop_all(rows)
            except Exception as exc:  # the runtime refused: said once, retried every pass
                log.exception("stopping %s failed", service.name)
                self._stop_failed(service, exc)
                return
            self._finish_stop(service)
        elif rows:  # Stopped or Failed with leftovers (a daemon killed mid-stop)
            self._stop_all(rows)

    # -- active services ---------------------------------------------------------------------

    def _plans(self, service: Service) -> list[VersionPlan]:
        rows = self.store.db.execute(
            "SELECT sv.idx, sv.instances, sv.flavor, sv.env, m.name, v.version, v.path, "
            "v.format, v.entry, v.id FROM service_versions sv "
            "JOIN model_versions v ON v.id = sv.model_version_id "
            "JOIN models m ON m.id = v.model_id WHERE sv.service_id = ? ORDER BY sv.idx",
            (service.id,),
        ).fetchall()
        plans = []
        for idx, count, flavor_id, env, name, version, path, fmt, entry, mv_id in rows:
            flavor = self.flavors.get(flavor_id)
            if flavor is None:
                raise LookupError(f"flavor {flavor_id} is no longer in flavors.toml")
            plans.append(
                VersionPlan(
                    idx,
                    count,
                    flavor,
                    name,
                    version,
                    Path(path),
                    fmt,
                    entry,
                    json.loads(env),
                    fingerprint(mv_id, flavor_id, env),
                )
            )
        return plans

    def _converge(self, service: Service, rows: list[InstanceRow]) -> None:
        try:
            plans = self._plans(service)
        except LookupError as exc:
            self._fail(service, rows, str(exc))
            return
        now = self.clock.now()
        for row in rows:
            if row.state == DRAINING and now >= row.next_try:
                self._stop_row(row)
        live = [r for r in rows if r.state != DRAINING]
        planned = {p.idx for p in plans}
        self._retire([r for r in live if r.idx not in planned])  # versions no longer named
        for plan in plans:
            group = [r for r in live if r.idx == plan.idx]
            taken = {r.n for r in rows if r.idx == plan.idx}
            if not self._converge_version(service, plan, group, taken):
                return
        self._probe(service)
        self._settle(service)

    def _converge_version(
        self, service: Service, plan: VersionPlan, group: list[InstanceRow], taken: set[int]
    ) -> bool:
        """Bring one version to its plan; False when the service has just failed.

        Instances started under another configuration are stale: they keep serving until
        current ones are ready, then leave one for one (drained first when they take calls).
        """
        now = self.clock.now()
        current = [r for r in group if r.config in ("", plan.config)]
        stale = [r for r in group if r.config not in ("", plan.config)]
        # Fewer wanted (or too many after a crash): the ones not ready, then the newest, go.
        current.sort(key=lambda r: (r.state != READY, r.n))
        self._retire(current[plan.instances :])
        current = current[: plan.instances]
        for _ in range(plan.instances - len(current)):
            n = next(i for i in range(len(taken) + 1) if i not in taken)
            taken.add(n)
            self._start(service, plan, n, None)
        for row in current:
            if row.state == DOWN:
                if now >= row.next_try:
                    self._start(service, plan, row.n, row)
                continue
            ended = self.runtime.exited(row.handle)
            if ended is None:
                continue
            if service.status == Status.DEPLOYING and (
                ended.code == LOAD_FAILED_CODE or row.restarts + 1 >= DEPLOY_ATTEMPTS
            ):
                what = (
                    "model load failed"
                    if ended.code == LOAD_FAILED_CODE
                    else f"instance failed {DEPLOY_ATTEMPTS} times while deploying"
                )
                self._fail(
                    service, instance_rows(self.store, service.id), f"{what}: {ended.reason}"
                )
                return False
            self._mark_down(service, row, ended.reason)
        ready_now = sum(1 for r in current if r.state == READY)
        serving = [r for r in stale if r.state == READY]
        self._retire([r for r in stale if r.state != READY])
        surplus = len(serving) + ready_now - plan.instances
        if surplus > 0:
            self._retire(sorted(serving, key=lambda r: r.n)[:surplus])
        return True

    def _retire(self, rows: list[InstanceRow]) -> None:
        """Take instances out of service: ready ones drain first, the others stop now."""
        ready = [r for r in rows if r.state == READY]
        self._stop_all([r for r in rows if r.state != READY])
        if not ready:
            return
        now = self.clock.now()
        with self.store.write() as db:
            for row in ready:
                db.execute(
                    "UPDATE instances SET state = ?, next_try = ?, updated_at = ? WHERE id = ?",
                    (DRAINING, now + self.drain_s, now, row.id),
                )
        self._notify()

    def _probe(self, service: Service) -> None:
        rows = [
            r
            for r in instance_rows(self.store, service.id)
            if r.state in (STARTING, READY) and r.port is not None
        ]
        results = list(self._pool.map(lambda r: self.ready(r.host, int(r.port or 0)), rows))
        changes = []
        impostors = []
        now = self.clock.now()
        for row, ok in zip(rows, results, strict=True):
            if ok:
                self._misses.pop(row.id, None)
                if row.state != READY:
                    # Before its first call: the answer may have come from a program that
                    # took the port the instance was given (the docker runtime's free port).
                    foreign = self.runtime.foreign_listener(row.handle, row.host, row.port or 0)
                    if foreign:
                        impostors.append((row, foreign))
                    else:
                        changes.append((row, True))
            elif row.state == READY:
                # A ready instance leaves the routes only after enough checks in a row failed,
                # over long enough.
                count, since = self._misses.get(row.id, (0, now))
                count += 1
                if count >= self.failure_threshold and now - since >= self.failure_window_s:
                    self._misses.pop(row.id, None)
                    changes.append((row, False))
                else:
                    self._misses[row.id] = (count, since)
        for row, foreign in impostors:
            # Never routed to: stopped, and started again on another port after the backoff.
            log.warning("instance %s/%s: %s", row.idx, row.n, foreign)
            self.runtime.stop(row.handle)
            self._mark_down(service, row, foreign)
        if not changes:
            return
        with self.store.write() as db:
            for row, ok in changes:
                db.execute(
                    "UPDATE instances SET state = ?, reason = ?, updated_at = ? WHERE id = ?",
                    (
                        READY if ok else STARTING,
                        "" if ok else NOT_ANSWERING,
                        self.clock.now(),
                        row.id,
                    ),
                )

    def _settle(self, service: Service) -> None:
        rows = instance_rows(self.store, service.id)
        desired = sum(p.instances for p in self._plans(service))
        ready = sum(1 for r in rows if r.state == READY)
        now = self.clock.now()
        settling = self._unrouted(service, rows, now)
        with self.store.write() as db:
            current = svc.service_by_id(db, service.id)
            if current is None or current.status != service.status:
                return  # someone asked for something else meanwhile; the next pass sees it
            status = current.status
            if status == Status.DEPLOYING:
                if ready >= desired and settling:
                    self._wake_later(settling)
                    return
                if ready >= desired:
                    minutes = current.spec.auto_stop.minutes
                    due = now + minutes * 60 if current.spec.auto_stop.enabled else None
                    svc.transition(
                        db,
                        now,
                        current,
                        Status.RUNNING,
                        actor=ACTOR,
                        progress=100,
                        due_time=due,
                        message=f"running: {ready} of {desired} instances ready",
                    )
                    self._notify()
                    return
                started = current.status_since or current.created_at
                if now - started > self.deploy_timeout_s:
                    pass  # handled below, outside this transaction
                else:
                    progress = 10 + int(85 * ready / max(desired, 1))
                    if progress != current.progress:
                        db.execute(
                            "UPDATE services SET progress = ?, updated_at = ? WHERE id = ?",
                            (progress, now, current.id),
                        )
                        self._notify()
                    return
            else:
                # Instances a modification adds (never restarted yet) are on their way, not
                # missing; an instance that is down is a concern even while old ones serve.
                coming = sum(
                    1 for r in rows if r.state == STARTING and r.restarts == 0 and not r.reason
                )
                down = any(r.state == DOWN for r in rows)
                target = (
                    Status.RUNNING
                    if not down and ready > 0 and ready + coming >= desired
                    else (Status.CONCERNING if ready > 0 else Status.ABNORMAL)
                )
                reason = "" if target == Status.RUNNING else self._down_reasons(rows)
                if target == Status.RUNNING and settling:
                    self._wake_later(settling)
                elif target == status and reason != current.reason:
                    # Still Concerning (or Abnormal), for another reason now: say the current
                    # one (an instance that stopped answering turns out to be on a lost node).
                    db.execute(
                        "UPDATE services SET reason = ?, updated_at = ? WHERE id = ?",
                        (reason, now, current.id),
                    )
                    self._notify()
                elif target != status:
                    svc.transition(
                        db,
                        now,
                        current,
                        target,
                        actor=ACTOR,
                        message=f"{ready} of {desired} instances ready",
                        reason=reason,
                    )
                    self._notify()
                return
        minutes = int(self.deploy_timeout_s // 60)
        self._fail(
            service,
            rows,
            f"deploy timed out after {minutes} min with {ready} of {desired} instances ready"
            f"{': ' + self._down_reasons(rows) if self._down_reasons(rows) else ''}",
        )

    def _unrouted(self, service: Service, rows: list[InstanceRow], now: float) -> float:
        """How soon to look again when a ready instance may not be in the gateway's routes yet;
        0 when every one is.

        The gateway is asked (it reads the store afresh first) until it lists them; instances
        it was seen routing are not asked about again. Without an answer, instances ready for
        ``route_settle_s`` count as routed.
        """
        ready = {(r.id, r.updated_at): r for r in rows if r.state == READY}
        confirmed = self._confirmed.get(service.id, set()) & ready.keys()
        self._confirmed[service.id] = confirmed
        pending = [key for key in ready if key not in confirmed]
        if not pending:
            return 0.0
        routed = self.routed() if self.routed is not None else None
        if routed is not None:
            found = {key for key in pending if ready[key].address in routed}
            confirmed |= found
            return ROUTE_RECHECK_S if len(found) < len(pending) else 0.0
        young = any(now - ready[key].updated_at < self.route_settle_s for key in pending)
        return self.route_settle_s if young else 0.0

    @staticmethod
    def _down_reasons(rows: list[InstanceRow]) -> str:
        return "; ".join(sorted({r.reason for r in rows if r.state != READY and r.reason}))

    def _assign_devices(self, flavor: Flavor) -> tuple[Device, ...] | str:
        acc = flavor.accelerator
        if acc is None:
            return ()
        held = {
            g
            for (gpus,) in self.store.db.execute("SELECT gpus FROM instances WHERE gpus != ''")
            for g in gpus.split(",")
        }
        for node in self.probe.nodes():
            free = [
                d for d in node.matching(acc.kind, acc.model) if f"{d.kind}:{d.index}" not in held
            ]
            if len(free) >= acc.count:
                return tuple(free[: acc.count])
        return f"waiting for {acc.count} free {acc.kind} {acc.model or 'device'}(s)"

    def _start(self, service: Service, plan: VersionPlan, n: int, row: InstanceRow | None) -> None:
        now = self.clock.now()
        # A runtime that places accelerators itself (Swarm) gets none from this machine's.
        places = getattr(self.runtime, "places_devices", False)
        devices = () if places else self._assign_devices(plan.flavor)
        if isinstance(devices, str):
            self._upsert(
                service,
                plan,
                n,
                row,
                state=DOWN,
                reason=devices,
                next_try=now + 5,
                config=plan.config,
            )
            return
        gpus = ",".join(f"{d.kind}:{d.index}" for d in devices)
        # Claim the row (and the devices) before starting, so a crash in between leaves a row
        # that adoption can match instead of an orphan.
        row_id = self._upsert(
            service, plan, n, row, state=STARTING, gpus=gpus, handle="", config=plan.config
        )
        spec = InstanceSpec(
            service_uid=service.uid,
            owner=service.owner,
            idx=plan.idx,
            n=n,
            model_name=plan.model_name,
            version=plan.version,
            path=plan.path,
            format=plan.format,
            entry=plan.entry,
            flavor=plan.flavor,
            env=plan.env,
            devices=devices,
            pool=service.spec.resource_pool,
        )
        try:
            started = self.runtime.start(spec)
        except Exception as exc:  # runtime errors are reported on the instance, then retried
            log.exception("starting %s failed", spec.key)
            self._upsert(
                service,
                plan,
                n,
                None,
                state=DOWN,
                reason=f"start failed: {exc}",
                next_try=now + 5,
                config=plan.config,
            )
            return
        with self.store.write() as db:
            db.execute(
                "UPDATE instances SET handle = ?, host = ?, port = ?, started_at = ?, "
                "updated_at = ? WHERE id = ?",
                (started.handle, started.host, started.port, now, now, row_id),
            )
            if row is not None:
                svc.record_event(
                    db,
                    now,
                    service,
                    Kind.INSTANCE_RESTARTED,
                    f"instance {plan.idx}/{n} restarted (restart {row.restarts + 1})"
                    + (f" after: {row.reason}" if row.reason else ""),
                    actor=ACTOR,
                    level=Level.ABNORMAL,
                )
        self._notify()

    def _upsert(
        self,
        service: Service,
        plan: VersionPlan,
        n: int,
        row: InstanceRow | None,
        **values: Any,
    ) -> int:
        now = self.clock.now()
        with self.store.write() as db:
            existing = db.execute(
                "SELECT id, restarts FROM instances WHERE service_id = ? AND idx = ? AND n = ?",
                (service.id, plan.idx, n),
            ).fetchone()
            if existing is None:
                pk = (
                    table(db, "instances")
                    .insert(
                        {
                            "service_id": service.id,
                            "idx": plan.idx,
                            "n": n,
                            "runtime": self.runtime.name,
                            "updated_at": now,
                            **values,
                        }
                    )
                    .last_pk
                )
                assert pk is not None
                return int(pk)
            restarts = existing[1] + (1 if row is not None and values["state"] == STARTING else 0)
            table(db, "instances").update(
                existing[0], {"restarts": restarts, "updated_at": now, **values}
            )
            return int(existing[0])

    def _mark_down(self, service: Service, row: InstanceRow, reason: str) -> None:
        now = self.clock.now()
        self._misses.pop(row.id, None)
        # An instance that had run a good while crashed once, not in a loop: start afresh.
        ran = now - row.started_at if row.started_at is not None else 0.0
        restarts = 0 if ran >= self.backoff_reset_s else row.restarts
        delay = backoff(restarts)
        with self.store.write() as db:
            db.execute(
                "UPDATE instances SET state = ?, reason = ?, next_try = ?, restarts = ?, "
                "gpus = '', updated_at = ? WHERE id = ?",
                (DOWN, reason, now + delay, restarts, now, row.id),
            )
            svc.record_event(
                db,
                now,
                service,
                Kind.INSTANCE_DOWN,
                f"instance {row.idx}/{row.n} stopped: {reason}; restarting in {delay:.0f} s",
                actor=ACTOR,
                level=Level.ABNORMAL,
            )
        self._notify()

    # -- stopping ----------------------------------------------------------------------------

    def _stop_row(self, row: InstanceRow) -> None:
        if row.handle:
            self.runtime.stop(row.handle)
        with self.store.write() as db:
            db.execute("DELETE FROM instances WHERE id = ?", (row.id,))

    def _stop_all(self, rows: list[InstanceRow]) -> None:
        list(self._pool.map(self._stop_row, rows))

    def _finish_stop(self, service: Service) -> None:
        self._confirmed.pop(service.id, None)
        now = self.clock.now()
        with self.store.write() as db:
            current = svc.service_by_id(db, service.id)
            if current is None or current.status != service.status:
                return
            if current.status == Status.DELETING:
                db.execute("DELETE FROM services WHERE id = ?", (current.id,))
                events.record(
                    db,
                    time=now,
                    kind=Kind.DELETED,
                    actor=current.status_actor or ACTOR,
                    service_id=None,
                    service=current.name,
                    owner=current.owner,
                    message="service deleted",
                )
            else:
                svc.transition(
                    db,
                    now,
                    current,
                    Status.STOPPED,
                    actor=current.status_actor or ACTOR,
                    progress=0,
                    due_time=None,
                    reason=current.reason,
                    message="stopped" + (f": {current.reason}" if current.reason else ""),
                )
        self._notify()

    def _stop_failed(self, service: Service, exc: Exception) -> None:
        """Record that the instances would not stop (once per distinct reason)."""
        auto = service.status == Status.STOPPING and service.status_actor == AUTO_STOP_ACTOR
        kind = Kind.AUTO_STOP_FAILED if auto else Kind.STOP_FAILED
        what = "auto stop" if auto else "stop"
        message = (
            f"{what} could not stop the instances: {exc}; retrying every few seconds. "
            "Check the runtime (for docker: is the engine up?)"
        )
        with self.store.write() as db:
            last = db.execute(
                "SELECT kind, message FROM events WHERE service_id = ? ORDER BY id DESC LIMIT 1",
                (service.id,),
            ).fetchone()
            if last is not None and tuple(last) == (kind.value, message):
                return
            svc.record_event(
                db, self.clock.now(), service, kind, message, actor=ACTOR, level=Level.ABNORMAL
            )
        self._notify()

    def _fail(self, service: Service, rows: list[InstanceRow], reason: str) -> None:
        self._stop_all(rows)
        with self.store.write() as db:
            current = svc.service_by_id(db, service.id)
            if current is None or current.status != service.status:
                return
            svc.transition(
                db,
                self.clock.now(),
                current,
                Status.FAILED,
                actor=ACTOR,
                reason=reason,
                due_time=None,
                message=f"failed: {reason}",
            )
        self._notify()

    def _wake_later(self, seconds: float) -> None:
        timer = threading.Timer(seconds, self.wake)
        timer.daemon = True
        timer.start()

    def _notify(self) -> None:
        if self.on_event:
            self.on_event()

    def close(self) -> None:
        self._workers.shutdown(wait=False, cancel_futures=True)
        self._pool.shutdown(wait=False, cancel_futures=True)
