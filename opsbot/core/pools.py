"""Resource pools and admission control.

``public`` offers the vCPUs and memory of every node no dedicated pool holds, times the
overcommit factors of the config (defaults: 4 x vCPUs, 2 x memory; accelerators never
overcommitted), so a small machine can run a few demo services. A dedicated pool is the nodes
that carry its node label (``opsbot.pool=<name>`` unless the config names another) and offers
what they have, not overcommitted, unless the config declares its capacity (a share of one
machine). Its flavors and members come from the config. A deploy that does not fit the free
capacity is refused with what is free.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import sqlite_utils

from opsbot.core.config import POOL_LABEL_KEY, Config, PoolConfig
from opsbot.core.errors import CapacityExceeded
from opsbot.core.flavors import Flavor, FlavorStatus, fits_node
from opsbot.core.hardware import GIB, HardwareProbe, Node, inventory
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


def in_pool(node: Node, pool: PoolConfig) -> bool:
    """Whether the node belongs to the dedicated pool: it carries the pool's label, or the
    pool names it."""
    key, value = pool.node_label
    return node.label(key) == value or node.name in pool.nodes


def node_capacity(node: Node) -> Capacity:
    """What a node has, as it is (no overcommit)."""
    acc: dict[str, int] = {}
    for d in node.devices:
        acc[d.kind] = acc.get(d.kind, 0) + 1
    return Capacity(float(node.cpus), node.memory_gib, acc)


def node_free(node: Node) -> Capacity | None:
    """What a node has that its instances do not hold, when the probe knows what they hold."""
    if node.reserved is None:
        return None
    held = Capacity(
        node.reserved.cpus, node.reserved.memory_bytes / GIB, dict(node.reserved.accelerators)
    )
    return node_capacity(node) - held


@dataclass(frozen=True)
class NodeStatus:
    """One node as ``opsbot nodes`` shows it: the pool it serves, what it has, what is free."""

    node: Node
    pool: str

    def as_dict(self) -> dict[str, object]:
        n = self.node
        free = node_free(n)
        return {
            "name": n.name,
            "pool": self.pool,
            "state": n.state,
            "addr": n.addr,
            "arch": n.arch,
            "labels": dict(n.labels),
            "capacity": node_capacity(n).as_dict(),
            "accelerator_models": sorted({d.model for d in n.devices}),
            "free": free.as_dict() if free is not None else None,
            "capacity_text": node_capacity(n).describe(),
            "free_text": free.describe() if free is not None else "",
            "summary": (
                f"{free.describe()} free of {node_capacity(n).describe()}"
                if free is not None
                else node_capacity(n).describe()
            ),
        }


class Pools:
    """The pools of one installation: their capacity, their flavors, who may use them."""

    def __init__(self, config: Config, flavors: Sequence[Flavor], probe: HardwareProbe):
        self.config = config
        self.flavors = {f.id: f for f in flavors}
        self.probe = probe

    @property
    def places_by_label(self) -> bool:
        """Whether instances run only where the labels say (Swarm), rather than on this one
        machine whatever its labels."""
        return bool(getattr(self.probe, "places_by_label", False))

    def names(self) -> list[str]:
        return [PUBLIC, *(p.name for p in self.config.pools)]

    def get(self, name: str) -> PoolConfig | None:
        return self.config.pool(name)

    def exists(self, name: str) -> bool:
        return name == PUBLIC or self.get(name) is not None

    def may_use(self, user: str, name: str) -> bool:
        pool = self.get(name)
        return name == PUBLIC or (pool is not None and (not pool.members or user in pool.members))

    def pool_of(self, node: Node) -> str:
        """The pool a node serves: the first dedicated pool it belongs to, else public."""
        return next((p.name for p in self.config.pools if in_pool(node, p)), PUBLIC)

    def members(self, name: str, nodes: Sequence[Node]) -> list[Node]:
        """The nodes among ``nodes`` that a pool's instances may run on.

        A dedicated pool: the nodes it holds (by label or name). When it names none and no node
        carries its label, on a runtime that does not place by label (one machine), the pool is
        a share of every node. Public: the
        nodes no dedicated pool holds.
        """
        if name == PUBLIC:
            return [n for n in nodes if self.pool_of(n) == PUBLIC]
        pool = self.get(name)
        if pool is None:
            return []
        held = [n for n in nodes if in_pool(n, pool)]
        return held if held or pool.nodes or self.places_by_label else list(nodes)

    def _nodes(self, name: str) -> list[Node]:
        return self.members(name, list(self.probe.nodes()))

    def capacity(self, name: str) -> Capacity:
        pool = self.get(name)
        if pool is not None and pool.declared:
            return Capacity(pool.cpus or 0.0, pool.memory_gib or 0.0, dict(pool.accelerators))
        total = Capacity()
        if pool is not None:  # what its nodes have, not overcommitted
            for node in self._nodes(name):
                total = total + node_capacity(node)
            return total
        public = self.config.public_pool
        for node in self._nodes(PUBLIC):
            has = node_capacity(node)
            total = total + Capacity(
                has.cpus * public.cpu_overcommit,
                has.memory_gib * public.memory_overcommit,
                has.accelerators,
            )
        return total

    def node_statuses(self) -> list[NodeStatus]:
        """Every node the probe knows (those down or drained too), with the pool it serves."""
        return [NodeStatus(n, self.pool_of(n)) for n in inventory(self.probe)]

    def stray_labels(self) -> list[str]:
        """Nodes carrying a pool label (a label key some pool uses, ``opsbot.pool`` always)
        whose value names no pool of the config, as warnings that say what to do: such a node
        serves the public pool, which is rarely what whoever labelled it meant."""
        keys = {POOL_LABEL_KEY, *(p.node_label[0] for p in self.config.pools)}
        known = {p.node_label for p in self.config.pools}
        out = []
        for node in inventory(self.probe):
            for key, value in node.labels:
                if key in keys and (key, value) not in known:
                    out.append(
                        f"node {node.name} carries {key}={value}, which no pool in config.toml "
                        f"names, so it serves the public pool; add a pool with that label or "
                        f"remove it: docker node update --label-rm {key} {node.name}"
                    )
        return out

    def flavor_status(self, flavor: Flavor, pool_name: str = PUBLIC) -> FlavorStatus:
        """Whether one instance of the flavor can ever run in the pool, with the reason."""
        pool = self.get(pool_name)
        if pool is not None and pool.flavors and flavor.id not in pool.flavors:
            return FlavorStatus(flavor, False, f"not offered in pool {pool_name}")
        nodes = self._nodes(pool_name)
        if not nodes:
            fix = (
                f": label one with `docker node update --label-add {'='.join(pool.node_label)} "
                "NODE`"
                if pool is not None
                else ""
            )
            return FlavorStatus(flavor, False, f"pool {pool_name} has no nodes{fix}")
        if pool is None or not pool.declared:
            # Public: a node's share times the overcommit; a pool of nodes: a node as it is.
            factors = (
                (self.config.public_pool.cpu_overcommit, self.config.public_pool.memory_overcommit)
                if pool is None
                else (1.0, 1.0)
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
