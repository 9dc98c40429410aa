"""Resource pools and admission control.

``public`` offers every node's vCPUs and memory times the overcommit factors of the config
(defaults: 4 x vCPUs, 2 x memory; accelerators never overcommitted), so a small machine can
run a few demo services. Dedicated pools declare their own capacity, allowed flavors and
members in the config file. A deploy that does not fit the free capacity is refused with what
is free.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import sqlite_utils

from opsbot.core.config import Config, PoolConfig
from opsbot.core.errors import CapacityExceeded
from opsbot.core.flavors import Flavor, FlavorStatus, fits_node
from opsbot.core.hardware import HardwareProbe, Node
from opsbot.core.status import HOLDS_CAPACITY

PUBLIC = "public"


@dataclass(frozen=True)
class Capacity:
    cpus: float = 0.0
    memory_gib: float = 0.0
    accelerators: dict[str, int] = field(default_factory=dict)

    def __add__(self, other: Capacity) -> Capacity:
        acc = dict(self.accelerators)
        for kind, n in other.accelerators.items():
            acc[kind] = acc.get(kind, 0) + n
        return Capacity(self.cpus + other.cpus, self.memory_gib + other.memory_gib, acc)

    def __sub__(self, other: Capacity) -> Capacity:
        acc = dict(self.accelerators)
        for kind, n in other.accelerators.items():
            acc[kind] = acc.get(kind, 0) - n
        return Capacity(self.cpus - other.cpus, self.memory_gib - other.memory_gib, acc)

    def shortfalls(self, demand: Capacity) -> list[str]:
        """What the demand needs beyond this capacity, as words; empty when it fits."""
        out = []
        if demand.cpus > self.cpus + 1e-9:
            out.append(f"{demand.cpus:g} vCPUs")
        if demand.memory_gib > self.memory_gib + 1e-9:
            out.append(f"{demand.memory_gib:g} GiB")
        for kind, n in demand.accelerators.items():
            if n > self.accelerators.get(kind, 0):
                out.append(f"{n} {kind}")
        return out

    def describe(self) -> str:
        parts = [f"{max(self.cpus, 0):g} vCPUs", f"{max(self.memory_gib, 0):.1f} GiB"]
        parts += [f"{max(n, 0)} {kind}" for kind, n in sorted(self.accelerators.items()) if n]
        return ", ".join(parts)

    def as_dict(self) -> dict[str, object]:
        return {
            "cpus": round(max(self.cpus, 0.0), 3),
            "memory_gib": round(max(self.memory_gib, 0.0), 3),
            "accelerators": {k: max(n, 0) for k, n in sorted(self.accelerators.items())},
        }


@dataclass(frozen=True)
class PoolStatus:
    """One pool as the Deploy form offers it: its kind, what it holds and what is free now."""

    name: str
    kind: str  # "public" or "dedicated"
    capacity: Capacity
    free: Capacity
    may_use: bool

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "kind": self.kind,
            "capacity": self.capacity.as_dict(),
            "free": self.free.as_dict(),
            "may_use": self.may_use,
            "free_text": self.free.describe(),
            "summary": f"{self.free.describe()} free of {self.capacity.describe()}",
        }


def demand(flavor: Flavor, instances: int) -> Capacity:
    acc: dict[str, int] = (
        {flavor.accelerator.kind: flavor.accelerator.count * instances}
        if flavor.accelerator
        else {}
    )
    return Capacity(flavor.cpus * instances, flavor.memory_gib * instances, acc)


class Pools:
    """The pools of one installation: their capacity, their flavors, who may use them."""

    def __init__(self, config: Config, flavors: Sequence[Flavor], probe: HardwareProbe):
        self.config = config
        self.flavors = {f.id: f for f in flavors}
        self.probe = probe

    def names(self) -> list[str]:
        return [PUBLIC, *(p.name for p in self.config.pools)]

    def get(self, name: str) -> PoolConfig | None:
        return self.config.pool(name)

    def exists(self, name: str) -> bool:
        return name == PUBLIC or self.get(name) is not None

    def may_use(self, user: str, name: str) -> bool:
        pool = self.get(name)
        return name == PUBLIC or (pool is not None and (not pool.members or user in pool.members))

    def _nodes(self, name: str) -> list[Node]:
        """The nodes a pool's instances may run on: for a dedicated pool those it names or that
        carry its label (``opsbot.pool=NAME``), else any; for public, those no dedicated pool
        has labelled for itself."""
        nodes = list(self.probe.nodes())
        if name == PUBLIC:
            dedicated = set(self.names()) - {PUBLIC}
            return [n for n in nodes if n.pool not in dedicated]
        pool = self.get(name)
        labelled = [n for n in nodes if n.pool == name]
        if pool and pool.nodes:
            return [n for n in nodes if n.name in pool.nodes or n.pool == name]
        return labelled or nodes

    def capacity(self, name: str) -> Capacity:
        pool = self.get(name)
        if pool is not None:
            return Capacity(pool.cpus, pool.memory_gib, dict(pool.accelerators))
        total = Capacity()
        public = self.config.public_pool
        for node in self._nodes(PUBLIC):
            acc: dict[str, int] = {}
            for d in node.devices:
                acc[d.kind] = acc.get(d.kind, 0) + 1
            total = total + Capacity(
                node.cpus * public.cpu_overcommit,
                node.memory_gib * public.memory_overcommit,
                acc,
            )
        return total

    def flavor_status(self, flavor: Flavor, pool_name: str = PUBLIC) -> FlavorStatus:
        """Whether one instance of the flavor can ever run in the pool, with the reason."""
        pool = self.get(pool_name)
        if pool is not None and pool.flavors and flavor.id not in pool.flavors:
            return FlavorStatus(flavor, False, f"not offered in pool {pool_name}")
        nodes = self._nodes(pool_name)
        if not nodes:
            return FlavorStatus(flavor, False, f"pool {pool_name} has no nodes")
        if pool is None:
            factors = (
                self.config.public_pool.cpu_overcommit,
                self.config.public_pool.memory_overcommit,
            )
            reasons = []
            for node in nodes:
                why = fits_node(flavor, node, *factors)
                if not why:
                    return FlavorStatus(flavor, True, "")
                reasons.append(why if len(nodes) == 1 else f"{node.name}: {why}")
            return FlavorStatus(flavor, False, " | ".join(reasons))
        # A dedicated pool's capacity is declared; the nodes must still have the hardware kind.
        reasons = []
        for node in nodes:
            why = fits_node(flavor, node, cpu_factor=float("inf"), memory_factor=float("inf"))
            if not why:
                break
            reasons.append(why)
        else:
            return FlavorStatus(flavor, False, " | ".join(reasons))
        short = self.capacity(pool_name).shortfalls(demand(flavor, 1))
        if short:
            return FlavorStatus(
                flavor, False, f"pool {pool_name} is smaller than one instance ({', '.join(short)})"
            )
        return FlavorStatus(flavor, True, "")

    def used(self, db: sqlite_utils.Database, name: str) -> Capacity:
        """What the services of the pool that hold capacity use now."""
        marks = ",".join("?" * len(HOLDS_CAPACITY))
        rows = db.execute(
            f"""SELECT sv.flavor, sv.instances FROM service_versions sv
                JOIN services s ON s.id = sv.service_id
                WHERE s.resource_pool = ? AND s.status IN ({marks})""",
            (name, *sorted(HOLDS_CAPACITY)),
        ).fetchall()
        return self.sum_demand((flavor, n) for flavor, n in rows)

    def status(self, db: sqlite_utils.Database, name: str, user: str) -> PoolStatus:
        """The pool's kind, capacity and free capacity now, and whether ``user`` may use it."""
        total = self.capacity(name)
        return PoolStatus(
            name=name,
            kind="public" if name == PUBLIC else "dedicated",
            capacity=total,
            free=total - self.used(db, name),
            may_use=self.may_use(user, name),
        )

    def sum_demand(self, entries: Iterable[tuple[str, int]]) -> Capacity:
        total = Capacity()
        for flavor_id, instances in entries:
            flavor = self.flavors.get(flavor_id)
            if flavor is not None:  # a flavor removed from the file no longer counts
                total = total + demand(flavor, instances)
        return total

    def admit(
        self,
        db: sqlite_utils.Database,
        name: str,
        needed: Capacity,
        *,
        releasing: Capacity | None = None,
    ) -> None:
        """Raise CapacityExceeded, saying what is free, when the demand does not fit now.

        ``releasing`` is what the demand replaces (a modified service's current use).
        """
        total = self.capacity(name)
        free = total - self.used(db, name)
        if releasing is not None:
            free = free + releasing
        short = free.shortfalls(needed)
        if short:
            raise CapacityExceeded(
                f"pool {name} cannot take {needed.describe()}: {free.describe()} free of "
                f"{total.describe()}. Stop a service, use fewer instances or a smaller flavor.",
                field="resource_pool",
            )
