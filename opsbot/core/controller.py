"""The controller: level-triggered reconciliation of what the store wants with what runs.

Each pass reads every service, compares the instances its status and spec call for with the
instances table and the runtime, and closes the difference: starts what is missing, restarts
what died (with backoff), stops what is no longer wanted, and moves the service's status
(Deploying with progress -> Running; Concerning, Abnormal, Failed; Stopping -> Stopped;
Deleting -> gone). Requests from users only change the store and wake the loop early.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opsbot.core import events
from opsbot.core import services as svc
from opsbot.core.clock import Clock
from opsbot.core.events import Kind, Level
from opsbot.core.flavors import Flavor
from opsbot.core.hardware import Device, HardwareProbe
from opsbot.core.routes import READY
from opsbot.core.runtime import InstanceSpec, Runtime
from opsbot.core.services import Service
from opsbot.core.status import Status
from opsbot.core.store import Store, table

log = logging.getLogger(__name__)

STARTING, DOWN = "starting", "down"
ACTOR = "controller"
#: Exit code with which the model server says the model could not be loaded: no use retrying.
LOAD_FAILED_CODE = 3
BACKOFF_MAX_S = 60.0
#: Starts an instance gets while its service is Deploying before the deploy is called Failed.
DEPLOY_ATTEMPTS = 3
ACTIVE = (Status.DEPLOYING, Status.RUNNING, Status.CONCERNING, Status.ABNORMAL)


def http_ready(host: str, port: int, timeout: float = 1.0) -> bool:
    """The model server's readiness check (Open Inference Protocol v2)."""
    try:
        with urllib.request.urlopen(
            f"http://{host}:{port}/v2/health/ready", timeout=timeout
        ) as resp:
            return int(resp.status) == 200
    except (OSError, urllib.error.URLError, ValueError):
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

    @property
    def key_tail(self) -> tuple[int, int]:
        return (self.idx, self.n)


_INSTANCE_COLUMNS = (
    "id, service_id, idx, n, handle, host, port, state, reason, gpus, restarts, next_try, "
    "started_at"
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
        ready: Callable[[str, int], bool] = http_ready,
        on_event: Callable[[], None] | None = None,
    ):
        self.store = store
        self.runtime = runtime
        self.flavors = flavors
        self.probe = probe
        self.clock = clock
        self.deploy_timeout_s = deploy_timeout_s
        self.ready = ready
        self.on_event = on_event
        self.wake_event = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="opsbot-probe")
        self._lock = threading.Lock()

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
            if row.handle != owned.handle or row.port != owned.port:
                # The store lost the handle (killed between start and update): take the live one.
                with self.store.write() as db:
                    db.execute(
                        "UPDATE instances SET handle = ?, host = ?, port = ? WHERE id = ?",
                        (owned.handle, owned.host, owned.port, row.id),
                    )
            adopted += 1
        return adopted, removed

    # -- the loop ----------------------------------------------------------------------------

    def wake(self) -> None:
        self.wake_event.set()

    def run(self, stop: threading.Event, interval: float = 1.0) -> None:
        while not stop.is_set():
            try:
                self.reconcile_all()
            except Exception:  # the loop must survive any one bad pass; it is logged in full
                log.exception("reconcile pass failed")
            self.wake_event.wait(interval)
            self.wake_event.clear()

    def reconcile_all(self) -> None:
        with self._lock:
            ids = [r[0] for r in self.store.db.execute("SELECT id FROM services").fetchall()]
            for sid in ids:
                service = svc.service_by_id(self.store.db, sid)
                if service is not None:
                    self.reconcile(service)

    def reconcile(self, service: Service) -> None:
        rows = instance_rows(self.store, service.id)
        if service.status in ACTIVE:
            self._converge(service, rows)
        elif service.status in (Status.STOPPING, Status.DELETING):
            self._stop_all(rows)
            self._finish_stop(service)
        elif rows:  # Stopped or Failed with leftovers (a daemon killed mid-stop)
            self._stop_all(rows)

    # -- active services ---------------------------------------------------------------------

    def _plans(self, service: Service) -> list[VersionPlan]:
        rows = self.store.db.execute(
            "SELECT sv.idx, sv.instances, sv.flavor, sv.env, m.name, v.version, v.path, "
            "v.format, v.entry FROM service_versions sv "
            "JOIN model_versions v ON v.id = sv.model_version_id "
            "JOIN models m ON m.id = v.model_id WHERE sv.service_id = ? ORDER BY sv.idx",
            (service.id,),
        ).fetchall()
        plans = []
        for idx, count, flavor_id, env, name, version, path, fmt, entry in rows:
            flavor = self.flavors.get(flavor_id)
            if flavor is None:
                raise LookupError(f"flavor {flavor_id} is no longer in flavors.toml")
            plans.append(
                VersionPlan(
                    idx, count, flavor, name, version, Path(path), fmt, entry, json.loads(env)
                )
            )
        return plans

    def _converge(self, service: Service, rows: list[InstanceRow]) -> None:
        try:
            plans = self._plans(service)
        except LookupError as exc:
            self._fail(service, rows, str(exc))
            return
        wanted = {(p.idx, n): p for p in plans for n in range(p.instances)}
        have = {r.key_tail: r for r in rows}
        now = self.clock.now()
        for tail, extra in have.items():
            if tail not in wanted:
                self._stop_row(extra)
        for tail, plan in wanted.items():
            row = have.get(tail)
            if row is None:
                self._start(service, plan, tail[1], None)
            elif row.state == DOWN:
                if now >= row.next_try:
                    self._start(service, plan, tail[1], row)
            else:
                ended = self.runtime.exited(row.handle)
                if ended is not None:
                    if service.status == Status.DEPLOYING and (
                        ended.code == LOAD_FAILED_CODE or row.restarts + 1 >= DEPLOY_ATTEMPTS
                    ):
                        what = (
                            "model load failed"
                            if ended.code == LOAD_FAILED_CODE
                            else f"instance failed {DEPLOY_ATTEMPTS} times while deploying"
                        )
                        self._fail(
                            service,
                            instance_rows(self.store, service.id),
                            f"{what}: {ended.reason}",
                        )
                        return
                    self._mark_down(service, row, ended.reason)
        self._probe(service)
        self._settle(service)

    def _probe(self, service: Service) -> None:
        rows = [
            r
            for r in instance_rows(self.store, service.id)
            if r.state in (STARTING, READY) and r.port is not None
        ]
        results = list(self._pool.map(lambda r: self.ready(r.host, int(r.port or 0)), rows))
        changes = [(r, ok) for r, ok in zip(rows, results, strict=True) if ok != (r.state == READY)]
        if not changes:
            return
        with self.store.write() as db:
            for row, ok in changes:
                db.execute(
                    "UPDATE instances SET state = ?, updated_at = ? WHERE id = ?",
                    (READY if ok else STARTING, self.clock.now(), row.id),
                )

    def _settle(self, service: Service) -> None:
        rows = instance_rows(self.store, service.id)
        desired = sum(p.instances for p in self._plans(service))
        ready = sum(1 for r in rows if r.state == READY)
        now = self.clock.now()
        with self.store.write() as db:
            current = svc.service_by_id(db, service.id)
            if current is None or current.status != service.status:
                return  # someone asked for something else meanwhile; the next pass sees it
            status = current.status
            if status == Status.DEPLOYING:
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
                target = (
                    Status.RUNNING
                    if ready >= desired
                    else (Status.CONCERNING if ready > 0 else Status.ABNORMAL)
                )
                if target != status:
                    svc.transition(
                        db,
                        now,
                        current,
                        target,
                        actor=ACTOR,
                        message=f"{ready} of {desired} instances ready",
                        reason="" if target == Status.RUNNING else self._down_reasons(rows),
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
        devices = self._assign_devices(plan.flavor)
        if isinstance(devices, str):
            self._upsert(service, plan, n, row, state=DOWN, reason=devices, next_try=now + 5)
            return
        gpus = ",".join(f"{d.kind}:{d.index}" for d in devices)
        # Claim the row (and the devices) before starting, so a crash in between leaves a row
        # that adoption can match instead of an orphan.
        row_id = self._upsert(service, plan, n, row, state=STARTING, gpus=gpus, handle="")
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
        )
        try:
            started = self.runtime.start(spec)
        except Exception as exc:  # runtime errors are reported on the instance, then retried
            log.exception("starting %s failed", spec.key)
            self._upsert(
                service, plan, n, None, state=DOWN, reason=f"start failed: {exc}", next_try=now + 5
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
        with self.store.write() as db:
            db.execute(
                "UPDATE instances SET state = ?, reason = ?, next_try = ?, gpus = '', "
                "updated_at = ? WHERE id = ?",
                (DOWN, reason, now + backoff(row.restarts), now, row.id),
            )
            svc.record_event(
                db,
                now,
                service,
                Kind.INSTANCE_DOWN,
                f"instance {row.idx}/{row.n} stopped: {reason}; "
                f"restarting in {backoff(row.restarts):.0f} s",
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

    def _notify(self) -> None:
        if self.on_event:
            self.on_event()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
