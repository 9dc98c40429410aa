"""Core: the one object every front end talks to (in-process, or through the control API).

It ties config, flavors, pools, registry and store together and exposes the operations of
opsbot as plain methods that take the calling user and raise OpsbotError subclasses.
"""

from __future__ import annotations

import grp
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from opsbot.core import deadlines, events, update
from opsbot.core import services as services_mod
from opsbot.core.address import show
from opsbot.core.admission import CheckedSpec, check_data
from opsbot.core.clock import Clock, SystemClock
from opsbot.core.config import Config, load_config
from opsbot.core.controller import instance_rows
from opsbot.core.errors import Conflict, FieldError, NotFound, PermissionDenied
from opsbot.core.examples import EXAMPLES, build_all
from opsbot.core.flavors import FlavorStatus, load_flavors
from opsbot.core.form import deploy_summary
from opsbot.core.hardware import HardwareProbe, LocalProbe
from opsbot.core.identity import User, link_slack, local_user_name, slack_user_name
from opsbot.core.identity import user as make_user
from opsbot.core.keys import metrics_token, rotate_metrics_token
from opsbot.core.pools import PUBLIC, Pools, PoolStatus
from opsbot.core.registry import ModelVersion, Registry
from opsbot.core.sandbox import SOCKET_NAME, reader_for, secure_home
from opsbot.core.services import Created, Service
from opsbot.core.spec import DeploySpec, Source, masked_spec
from opsbot.core.status import CAN_START, CAN_STOP, Status
from opsbot.core.store import DB_NAME, Store


@dataclass(frozen=True)
class Validation:
    """The outcome of validating a spec: the normalised spec and its warnings."""

    spec: DeploySpec
    warnings: list[FieldError]
    registry_checked: bool

    def as_dict(self) -> dict[str, Any]:
        """As the control API answers it and ``--json`` prints it: the normalised spec, its
        warnings, and the summary the user confirms before deploying (secrets masked)."""
        return {
            "spec": self.spec.model_dump(mode="json"),
            "warnings": [w.as_dict() for w in self.warnings],
            "registry_checked": self.registry_checked,
            "summary": [
                {"label": label, "value": value} for label, value in deploy_summary(self.spec)
            ],
        }


class Core:
    """The headless application: one per OPSBOT_HOME."""

    def __init__(
        self,
        home: Path,
        *,
        config: Config | None = None,
        probe: HardwareProbe | None = None,
        clock: Clock | None = None,
    ):
        self.home = Path(home)
        self.config = config if config is not None else load_config(self.home)
        flavors_file = self.config.flavors_file
        local_flavors = self.home / "flavors.toml"
        path = (
            Path(flavors_file)
            if flavors_file
            else (local_flavors if local_flavors.exists() else None)
        )
        self.flavors = load_flavors(path)
        self.probe = probe or LocalProbe()
        self.clock = clock or SystemClock()
        self.pools = Pools(self.config, self.flavors, self.probe)
        self._store: Store | None = None

    # The store is opened on first use, so commands that need none (flavors) create nothing.
    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store(self.home / DB_NAME)
        return self._store

    @property
    def registry(self) -> Registry:
        return Registry(
            self.store,
            self.home,
            self.clock,
            python=self.config.model_python,
            run_dir=self.config.run_dir,
        )

    def secure_home(self) -> None:
        """Make OPSBOT_HOME private (the daemon calls this at start; an existing home is
        tightened): see :func:`opsbot.core.sandbox.secure_home`."""
        group = self.config.socket_group
        gid = grp.getgrnam(group).gr_gid if group else None
        secure_home(self.home, group=gid, keep=(SOCKET_NAME,))

    def has_store(self) -> bool:
        return self._store is not None or (self.home / DB_NAME).exists()

    def user(self, name: str) -> User:
        return make_user(name, self.config)

    def slack_user(self, slack_id: str) -> User:
        return self.user(slack_user_name(self.store, slack_id))

    def link_slack(self, actor: User, local_name: str, slack_id: str) -> None:
        if not (actor.is_admin or actor.name == local_name):
            raise PermissionDenied("only an admin may link a Slack user to another account")
        link_slack(self.store, self.clock, local_name, slack_id)

    def metrics_token(self, actor: User, *, rotate: bool = False) -> str:
        """The scrape token of the gateway's ``/metrics`` (a new one with ``rotate``, the old
        one refused from the next scrape on). An admin's alone: /metrics names every service
        and its owner."""
        # The daemon's own account holds the token's file anyway.
        if not (actor.is_admin or actor.name == local_user_name()):
            raise PermissionDenied(
                "only an admin (admins in config.toml) or the daemon's own account may read "
                "or rotate the metrics scrape token: /metrics names every service and its owner"
            )
        return rotate_metrics_token(self.home) if rotate else metrics_token(self.home)

    # -- flavors and pools -----------------------------------------------------------------

    def flavor_statuses(self, pool: str = PUBLIC) -> list[FlavorStatus]:
        """Every flavor, with whether it can run in the pool and why not.

        Raises NotFound for a pool that does not exist (rather than answering for public).
        """
        if not self.pools.exists(pool):
            raise NotFound(
                f"no pool {pool!r}; choose one of {', '.join(self.pools.names())}",
                field="resource_pool",
            )
        return [self.pools.flavor_status(f, pool) for f in self.flavors]

    def pool_statuses(self, actor: User) -> list[PoolStatus]:
        """Every pool (public first) with its kind, capacity, what is free now, and whether the
        actor may deploy to it."""
        db = self.store.db
        return [self.pools.status(db, name, actor.name) for name in self.pools.names()]

    def node_report(self, actor: User) -> dict[str, Any]:
        """Each pool (public first) as ``pool_statuses`` gives it, with the nodes it holds:
        their state, address, CPUs, memory, accelerators and what their instances leave free
        (when the runtime can tell); and warnings about pool labels no pool names."""
        nodes = self.pools.node_statuses()
        return {
            "pools": [
                {**p.as_dict(), "nodes": [n.as_dict() for n in nodes if n.pool == p.name]}
                for p in self.pool_statuses(actor)
            ],
            "warnings": self.pools.stray_labels(),
        }

    def use_probe(self, probe: HardwareProbe) -> None:
        """Count another machine room (the swarm's nodes instead of this machine's)."""
        self.probe = probe
        self.pools = Pools(self.config, self.flavors, probe)

    # -- specs -----------------------------------------------------------------------------

    def validate(self, actor: User, data: Any, *, use_registry: bool | None = None) -> Validation:
        """Validate a spec against every rule that does not change with time.

        The registry is consulted when the store exists (or when asked); otherwise model
        versions are not checked and ``registry_checked`` says so. Raises SpecInvalid.
        """
        consult = self.has_store() if use_registry is None else use_registry
        checked = check_data(data, actor.name, self.registry if consult else None, self.pools)
        return Validation(checked.spec, list(checked.warnings), consult)

    def check(self, actor: User, data: Any) -> CheckedSpec:
        """Check a spec against every rule, the registry's included (SpecInvalid otherwise):
        what :meth:`create_service` takes to deploy it without checking it twice."""
        return check_data(data, actor.name, self.registry, self.pools)

    # -- services --------------------------------------------------------------------------

    def create_service(self, actor: User, data: Any | CheckedSpec) -> Created:
        """Validate and record a new Deploying service; the API key comes back only here, with
        the spec's warnings.

        ``data`` is the form (a dict, checked here once), or what :meth:`check` answered for
        this actor when a front showed the warnings and summary first: it is not checked again.
        Quota, name and capacity are checked in the write either way."""
        checked = data if isinstance(data, CheckedSpec) else self.check(actor, data)
        return services_mod.create_service(
            self.store, self.clock, self.pools, checked, actor.name, self.config.quota
        )

    def services(self, actor: User, *, everyone: bool = False) -> list[Service]:
        """The actor's services; everyone's for an admin who asks."""
        if everyone and not actor.is_admin:
            raise PermissionDenied(
                "only an admin may list everyone's services; list your own (leave out --all)"
            )
        return services_mod.list_services(self.store.db, None if everyone else actor.name)

    def service(self, actor: User, name: str, owner: str | None = None) -> Service:
        """A service the actor may see: their own, or any for an admin (reads are authorized
        like writes, on every route and front)."""
        service = services_mod.get_service(self.store.db, owner or actor.name, name)
        if not actor.can_act_on(service.owner):
            raise PermissionDenied(
                f"{service.name} belongs to {service.owner}; only its owner or an admin may see it"
            )
        return service

    def instances(self, service: Service) -> list[dict[str, Any]]:
        """The service's instances as the controller last saw them."""
        return [
            {
                "version_index": r.idx,
                "n": r.n,
                "state": r.state,
                "host": r.host,
                "port": r.port,
                "address": show(r.host, r.port) if r.host else "",
                "reason": r.reason,
                "restarts": r.restarts,
                "devices": r.gpus.split(",") if r.gpus else [],
                "started_at": r.started_at,
            }
            for r in instance_rows(self.store, service.id)
        ]

    def _acted_on(self, actor: User, name: str, owner: str | None) -> Service:
        service = services_mod.get_service(self.store.db, owner or actor.name, name)
        if not actor.can_act_on(service.owner):
            raise PermissionDenied(
                f"{service.name} belongs to {service.owner}; only its owner or an admin may "
                "change it"
            )
        return service

    def _move(self, service: Service, to: Status, actor: User, message: str, **kw: Any) -> Service:
        with self.store.write() as db:
            if not services_mod.transition(
                db, self.clock.now(), service, to, actor=actor.name, message=message, **kw
            ):
                raise Conflict(
                    f"{service.name} changed while you asked; look again with "
                    f"`opsbot show {service.name}`"
                )
        return self.service(actor, service.name, service.owner)

    def stop_service(
        self, actor: User, name: str, owner: str | None = None, why: str = ""
    ) -> Service:
        """Ask for a stop; the controller stops the instances and marks it Stopped."""
        service = self._acted_on(actor, name, owner)
        if service.status not in CAN_STOP:
            raise Conflict(
                f"{service.name} is {service.status.label}; only a service that is "
                f"{_labels(CAN_STOP)} can be stopped"
            )
        why = why or f"stopped by {actor.name}"
        return self._move(
            service, Status.STOPPING, actor, f"stop requested: {why}", reason=why, due_time=None
        )

    def start_service(self, actor: User, name: str, owner: str | None = None) -> Service:
        """Start a Stopped or Failed service again, if its pool has room."""
        service = self._acted_on(actor, name, owner)
        if service.status not in CAN_START:
            raise Conflict(
                f"{service.name} is {service.status.label}; only a service that is "
                f"{_labels(CAN_START)} can be started"
            )
        spec = service.spec
        needed = self.pools.sum_demand((m.flavor, m.instances) for m in spec.models)
        with self.store.write() as db:
            self.pools.admit(db, spec.resource_pool, needed)
            if not services_mod.transition(
                db,
                self.clock.now(),
                service,
                Status.DEPLOYING,
                actor=actor.name,
                message=f"start requested by {actor.name}",
                progress=0,
            ):
                raise Conflict(f"{service.name} changed while you asked; look again")
        return self.service(actor, service.name, service.owner)

    def delete_service(self, actor: User, name: str, owner: str | None = None) -> Service:
        """Ask for deletion: instances stop, then the service and its key are removed."""
        service = self._acted_on(actor, name, owner)
        if service.status == Status.DELETING:
            return service
        return self._move(
            service, Status.DELETING, actor, f"delete requested by {actor.name}", due_time=None
        )

    def rotate_key(self, actor: User, name: str, owner: str | None = None) -> str:
        service = self._acted_on(actor, name, owner)
        with self.store.write() as db:
            return services_mod.rotate_key(db, self.clock.now(), service, actor.name)

    def extend_plan(
        self, actor: User, name: str, hours: int, owner: str | None = None
    ) -> deadlines.ExtendPlan:
        """What extending by ``hours`` would do (time left, new deadline), changing nothing:
        what a front shows before the user confirms."""
        service = self._acted_on(actor, name, owner)
        return deadlines.plan_extend(self.clock.now(), service, hours)

    def extend_auto_stop(
        self, actor: User, name: str, hours: int, owner: str | None = None
    ) -> Service:
        """Add ``hours`` (1-24) to a running service's time left, capped at 24 h from now."""
        service = self._acted_on(actor, name, owner)
        with self.store.write() as db:
            deadlines.extend(db, self.clock.now(), service, hours, actor.name)
        return self.service(actor, service.name, service.owner)

    def set_auto_stop(
        self, actor: User, name: str, value: str, owner: str | None = None
    ) -> Service:
        """Turn auto stop "off", "on", or on with a duration such as "4h"."""
        service = self._acted_on(actor, name, owner)
        with self.store.write() as db:
            deadlines.set_auto_stop(db, self.clock.now(), service, value, actor.name)
        return self.service(actor, service.name, service.owner)

    def update_service(
        self,
        actor: User,
        name: str,
        data: Any,
        owner: str | None = None,
        *,
        message: str = "modified",
    ) -> update.Updated:
        """Modify a service: ``data`` is a whole new spec (a dict, as for a deploy) or
        :class:`update.Changes` applied to the current one. Checked like a deploy, checked
        against the pool's free capacity, stored with a config snapshot; the controller brings
        the instances to it without a gap."""
        service = self._acted_on(actor, name, owner)
        if isinstance(data, update.Changes):
            data = update.apply_changes(service.spec, data)
        data = update.keep_masked(service.spec, data)
        checked = check_data(data, service.owner, self.registry, self.pools)
        return update.update_service(
            self.store, self.clock, self.pools, service, checked, actor.name, message=message
        )

    def update_plan(
        self, actor: User, name: str, data: Any, owner: str | None = None
    ) -> update.Plan:
        """What :meth:`update_service` with this edited spec would change and restart, checked
        like it (masked values mean keep), changing nothing: what a front asks the user to
        confirm before applying."""
        service = self._acted_on(actor, name, owner)
        update.ensure_updatable(service)
        if isinstance(data, update.Changes):
            data = update.apply_changes(service.spec, data)
        data = update.keep_masked(service.spec, data)
        checked = check_data(data, service.owner, self.registry, self.pools)
        return update.plan(service.spec, checked.spec)

    def modifiable(self, actor: User, name: str, owner: str | None = None) -> Service:
        """The service, if the actor may modify it now; else PermissionDenied or Conflict with
        the reason (what a front checks before it opens a form)."""
        service = self._acted_on(actor, name, owner)
        update.ensure_updatable(service)
        return service

    def history(self, actor: User, name: str, owner: str | None = None) -> list[update.Snapshot]:
        """The service's config snapshots, oldest first (#1 is the deploy), env values masked
        as everywhere else."""
        return [
            replace(snap, spec=masked_spec(snap.spec))
            for snap in update.history(self.store, self.service(actor, name, owner))
        ]

    def rollback_preview(
        self, actor: User, name: str, to: int, owner: str | None = None
    ) -> list[str]:
        """What rolling back to snapshot ``to`` would change, a line per change."""
        service = self.service(actor, name, owner)
        target = update.snapshot_spec(self.store, service, to)
        return update.spec_diff(service.spec.model_dump(mode="json"), target)

    def rollback(self, actor: User, name: str, to: int, owner: str | None = None) -> update.Updated:
        """Apply snapshot ``to`` again, as a new modification (so it can be undone too)."""
        service = self._acted_on(actor, name, owner)
        target = update.snapshot_spec(self.store, service, to)
        return self.update_service(
            actor, name, target, service.owner, message=f"rolled back to #{to}"
        )

    def run_due(self) -> deadlines.Due:
        """Record due reminders and stop expired services (the scheduler calls this)."""
        return deadlines.run_due(self.store, self.clock, self.config.reminder_minutes)

    def quota_used(self, actor: User) -> tuple[int, int]:
        return services_mod.count_services(self.store.db, actor.name), self.config.quota

    def events(self, actor: User, **filters: Any) -> list[events.Event]:
        """Events the actor may see: of their own services, deleted ones included (everyone's
        for an admin). Asking for another owner's raises PermissionDenied."""
        owner = filters.get("owner")
        if owner is not None and not actor.can_act_on(owner):
            raise PermissionDenied(
                f"events of {owner}'s services are theirs; only an admin may read them"
            )
        if not actor.is_admin:
            filters["owner"] = actor.name
        return events.query(self.store.db, **filters)

    # -- models ----------------------------------------------------------------------------

    def create_model(
        self,
        actor: User,
        name: str,
        version: str,
        path: Path,
        fmt: str,
        *,
        origin: str = "custom",
        entry: str | None = None,
        description: str = "",
        on_building: Callable[[ModelVersion], None] | None = None,
        trusted_path: bool = False,
    ) -> ModelVersion:
        """Register a model version and check it (Building -> Normal or Failed).

        The directory is copied with the actor's own read rights (a local account), unless
        ``trusted_path``: one the daemon made itself (the examples)."""
        reader = None if trusted_path else reader_for(actor.name)
        mv = self.registry.create(
            actor.name,
            name,
            version,
            path,
            fmt,
            origin=origin,
            entry=entry,
            description=description,
            reader=reader,
        )
        if on_building:
            on_building(mv)
        return self.registry.check(mv)

    def models(self, actor: User, source: Source | None = None) -> list[tuple[str, ModelVersion]]:
        return self.registry.listing(actor.name, source)

    def delete_model(
        self, actor: User, name: str, version: str | None = None
    ) -> list[ModelVersion]:
        return self.registry.delete(actor.name, name, version)

    def publish_model(self, actor: User, name: str, public: bool = True) -> None:
        self.registry.publish(actor.name, name, public)

    def subscribe(self, actor: User, ref: str) -> None:
        self.registry.subscribe(actor.name, ref)

    def create_examples(
        self, actor: User, on_progress: Callable[[str], None] | None = None
    ) -> list[ModelVersion]:
        """Create the iris example models for the user (skipping those that exist), published."""
        have = {(v.name, v.version) for v in self.registry.mine(actor.name)}
        wanted = [e for e in EXAMPLES if (e.name, e.version) not in have]
        out: list[ModelVersion] = []
        if wanted:
            built = build_all()
            try:
                for example, path in built:
                    if (example.name, example.version) not in have:
                        if on_progress:
                            on_progress(f"{example.name} {example.version} ({example.format})")
                        out.append(
                            self.create_model(
                                actor,
                                example.name,
                                example.version,
                                path,
                                example.format,
                                description=example.description,
                                trusted_path=True,
                            )
                        )
            finally:
                shutil.rmtree(built[0][1].parent, ignore_errors=True)
        for name in sorted({e.name for e in EXAMPLES}):
            self.registry.publish(actor.name, name)
        # Read them again: they were published after they were created.
        return [self.registry.get(v.owner, v.name, v.version) for v in out]


def _labels(statuses: frozenset[Status]) -> str:
    return ", ".join(sorted(s.label for s in statuses))
