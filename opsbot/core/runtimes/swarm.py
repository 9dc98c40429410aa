"""The swarm runtime: one Docker Swarm service per service version, one task per instance.

- **Services.** Each version of a service gets its own Swarm service, named
  ``opsbot-<home>-<uid>-<idx>-<config>``, whose replicas are the version's instances. The name
  carries a fingerprint of what the tasks run (model version, flavor, env, pool), so a
  modification that changes a version makes a second Swarm service beside the first; the
  controller's drain-and-replace retires the old instances and the old service goes with its
  last one. Swarm names are unique, so a restarted daemon can never make a duplicate.
- **Instances are task slots.** The service label ``opsbot.slots`` maps slot -> instance number.
  ``start`` gives an instance a slot that runs a task nobody holds, else one more replica, and
  writes the map and the replicas in one service update: a daemon killed at any point leaves a
  state the next one adopts as it is. ``stop`` takes the instance out of the map and the
  replicas down by one (the service goes with its last instance). Swarm picks the task a
  scale-down removes (not-running tasks first, then the highest slot); when it removes another
  instance's slot, that instance moves to the slot it left and re-attaches through the
  controller (an instance_down / instance_restarted pair; the gateway retries calls that find no
  connection on another instance).
- **Endpoints.** Host networking; a task listens on every address at the service's base port
  (label ``opsbot.port``) plus its slot, from ``{{.Task.Slot}}`` in its environment, so the
  gateway reaches it at its node's address and two tasks on one node never share a port. Base
  ports come in blocks of 128 (the most instances of one version) from 20000 to 32000, below the
  kernel's ephemeral ports.
- **Resources.** Limits: the flavor's CPUs (at most the largest node's) and memory. Reservations:
  the flavor divided by the public pool's overcommit factors, or the whole flavor in a dedicated
  pool; accelerators as generic resources (``NVIDIA-GPU``, ``ASCEND-NPU``) that the nodes
  advertise. Placement: a dedicated pool's instances run only on nodes labelled
  ``opsbot.pool=<pool>``, public ones only on nodes without a dedicated pool's label; a flavor's
  architecture and accelerator model become ``node.platform.arch`` and
  ``node.labels.opsbot.accelerator`` constraints.
- **Failures.** Swarm restarts a task that dies (after ``RESTART_DELAY_S``), so instances keep
  serving while the daemon is down and move off a node that fails. The controller still sees
  every death: a handle names one task, and once that task has ended ``exited`` says how, after
  which the controller's next ``start`` attaches the instance to the slot's new task. A task no
  node can take is an exit too, with the scheduler's reason.
- **Labels.** The docker runtime's (``opsbot.service``, ``opsbot.version``, ``opsbot.model``,
  ``opsbot.owner``, ``opsbot.home``) on the service and its containers, plus ``opsbot.idx``,
  ``opsbot.config``, ``opsbot.pool``, ``opsbot.port`` and ``opsbot.slots`` on the service. Only
  services that carry this home's label are listed, adopted or changed.

The containers are the docker runtime's (the serving image, the same command, user, mounts and
environment), with what Swarm's container spec offers of its hardening: a read-only root, every
capability dropped, an init (Swarm services have no ``no-new-privileges`` before API 1.45).
Several machines: the image must be loaded on every node, and the model directories and the
opsbot package must be at the same paths on every node (a shared file system).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import shlex
import socket
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker.errors
from docker import types as dt

from opsbot.core.config import POOL_LABEL_KEY, Config, load_config
from opsbot.core.errors import OpsbotError
from opsbot.core.flavors import Flavor
from opsbot.core.hardware import Device, Node, Reserved, normalise_arch
from opsbot.core.images import IMAGE_FORMAT, USER, require_image
from opsbot.core.instance_auth import daemon_secret, instance_secret
from opsbot.core.logcap import json_file_options
from opsbot.core.pools import PUBLIC
from opsbot.core.runtime import Exit, InstanceSpec, Owned, Started, failure_reason
from opsbot.core.runtimes.docker import (
    ENGINE_DOWN,
    LABEL_HOME,
    LABEL_MODEL,
    LABEL_OWNER,
    LABEL_SERVICE,
    LABEL_VERSION,
    StagedModels,
    connect,
    container_args,
    home_id,
)

log = logging.getLogger(__name__)

LABEL_IDX = "opsbot.idx"
LABEL_CONFIG = "opsbot.config"
LABEL_POOL = "opsbot.pool"
LABEL_PORT = "opsbot.port"
LABEL_SLOTS = "opsbot.slots"
#: The node label naming a node's accelerator model (its pool's label is the pool's config).
NODE_ACCELERATOR_LABEL = "opsbot.accelerator"
#: Generic resource kinds the nodes advertise (``node-generic-resources`` in daemon.json).
GENERIC_KINDS = {"nvidia": "NVIDIA-GPU", "ascend": "ASCEND-NPU"}
PORT_LOW, PORT_HIGH, PORT_BLOCK = 20000, 32000, 128
RESTART_DELAY_S = 2
STOP_GRACE_S = 10
#: How long ``start`` waits for Swarm to create and place the instance's task.
PLACE_WAIT_S = 5.0
#: Task lists are read at most this often per service (the controller asks every second).
CACHE_S = 0.5
LISTEN_ALL = "0.0.0.0"
#: Node states are read at most this often (a lost node is noticed within this).
NODE_TTL_S = 2.0
#: Node states in which a node's tasks no longer run there: Swarm reschedules them.
LOST_STATES = frozenset({"down", "disconnected", "unknown", "drain"})
_NS = 1_000_000_000
#: Desired states of a task that is meant to run (or to run again after a restart delay).
_RUNNABLE = frozenset(
    {"new", "pending", "assigned", "accepted", "preparing", "ready", "starting", "running"}
)
_ENDED = frozenset({"complete", "shutdown", "failed", "rejected", "remove", "orphaned"})
_INIT_HINT = (
    "run `docker swarm init --advertise-addr <this machine's address>` on it (one machine: "
    "--advertise-addr 127.0.0.1), or run opsbot on a manager of an existing swarm; workers join "
    "with the command `docker swarm join-token worker` prints"
)


class NotSwarmManager(OpsbotError):
    title = "Not a Swarm manager"
    status = 503


# -- what a service looks like ----------------------------------------------------------------


def fingerprint(spec: InstanceSpec) -> str:
    """What the tasks of a version run: instances with another fingerprint need a new service."""
    blob = json.dumps(
        [
            spec.model_name,
            spec.version,
            str(spec.path),
            spec.format,
            spec.entry,
            spec.flavor.model_dump(mode="json"),
            dict(spec.env),
            spec.pool,
        ],
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def service_name(home: Path, spec: InstanceSpec) -> str:
    home_hash = hashlib.sha256(home_id(home).encode()).hexdigest()[:6]
    return f"opsbot-{home_hash}-{spec.service_uid[:16]}-{spec.idx}-{fingerprint(spec)}"


def constraints(flavor: Flavor, pool: str, config: Config) -> list[str]:
    """Placement: the pool's nodes by label, the flavor's architecture and accelerator model."""
    out = []
    if pool == PUBLIC:
        out += [f"node.labels.{k} != {v}" for k, v in (p.node_label for p in config.pools)]
    else:
        found = config.pool(pool)
        key, value = found.node_label if found else (POOL_LABEL_KEY, pool)
        out.append(f"node.labels.{key} == {value}")
    if flavor.arch != "any":
        out.append(f"node.platform.arch == {flavor.arch}")
    if flavor.accelerator and flavor.accelerator.model:
        out.append(f"node.labels.{NODE_ACCELERATOR_LABEL} == {flavor.accelerator.model}")
    return out


def resources(flavor: Flavor, pool: str, config: Config, max_node_cpus: float) -> dt.Resources:
    """Limits from the flavor; reservations from the flavor over the pool's overcommit."""
    cpu_factor = config.public_pool.cpu_overcommit if pool == PUBLIC else 1.0
    memory_factor = config.public_pool.memory_overcommit if pool == PUBLIC else 1.0
    limit_cpus = min(flavor.cpus, max_node_cpus) if max_node_cpus > 0 else flavor.cpus
    generic = (
        {GENERIC_KINDS[flavor.accelerator.kind]: flavor.accelerator.count}
        if flavor.accelerator
        else None
    )
    return dt.Resources(
        cpu_limit=int(limit_cpus * _NS),
        mem_limit=flavor.memory_bytes,
        cpu_reservation=int(flavor.cpus / cpu_factor * _NS),
        mem_reservation=int(flavor.memory_bytes / memory_factor),
        generic_resources=generic,
    )


def _ready_check() -> list[str]:
    """The container's health check: the readiness route on the port its slot gives it."""
    code = (
        "import os, sys, urllib.request; "
        "port = int(os.environ['OPSBOT_PORT_BASE']) + int(os.environ['OPSBOT_SLOT']); "
        "sys.exit(0 if urllib.request.urlopen("
        "f'http://127.0.0.1:{port}/v2/health/ready', timeout=3).status == 200 else 1)"
    )
    return ["CMD", "python3", "-c", code]


def _slot_command(argv: list[str] | None) -> list[str] | None:
    """The docker runtime's command, listening on every address at base port + slot."""
    if argv is None:
        return None
    argv = list(argv)
    argv[argv.index("--host") + 1] = LISTEN_ALL
    at = argv.index("--port")
    del argv[at : at + 2]
    script = (
        "OPSBOT_PORT=$((OPSBOT_PORT_BASE + OPSBOT_SLOT)); export OPSBOT_PORT; exec "
        + shlex.join(argv)
        + ' --port "$OPSBOT_PORT"'
    )
    return ["/bin/sh", "-c", script]


def task_template(
    spec: InstanceSpec,
    *,
    image: str,
    home: Path,
    port_base: int,
    config: Config,
    max_node_cpus: float,
    container_labels: dict[str, str],
    secret: str | None = None,
) -> dt.TaskTemplate:
    """The tasks of one version: the docker runtime's container, placed and sized by Swarm."""
    # The docker runtime's container for this instance, port 0: the slot decides the port.
    like = container_args(spec, image=image, port=0, home=home, secret=secret)
    # No instance key or port (the slot decides them); accelerators are Swarm's to assign
    # (generic resources), so the devices the controller picked on this machine do not apply.
    dropped = {"OPSBOT_INSTANCE", "OPSBOT_PORT"}
    if spec.flavor.accelerator is not None:
        dropped |= {"CUDA_VISIBLE_DEVICES", "ASCEND_VISIBLE_DEVICES"}
    env = {k: v for k, v in like["environment"].items() if k not in dropped}
    env.update({"OPSBOT_PORT_BASE": str(port_base), "OPSBOT_SLOT": "{{.Task.Slot}}"})
    command = _slot_command(like["command"])
    container = dt.ContainerSpec(
        image=like["image"],
        command=command,
        env=env,
        user=USER,
        workdir=like["working_dir"],
        labels=container_labels,
        mounts=[
            *like["mounts"],
            dt.Mount("/tmp", None, type="tmpfs", tmpfs_size=256 * 2**20),
        ],
        stop_grace_period=STOP_GRACE_S * _NS,
        read_only=True,
        init=True,
        cap_drop=["ALL"],
        healthcheck=(
            dt.Healthcheck(
                test=_ready_check(),
                interval=5 * _NS,
                timeout=4 * _NS,
                retries=3,
                start_period=60 * _NS,
            )
            if spec.format != IMAGE_FORMAT
            else None
        ),
    )
    return dt.TaskTemplate(
        container_spec=container,
        resources=resources(spec.flavor, spec.pool, config, max_node_cpus),
        restart_policy=dt.RestartPolicy("any", delay=RESTART_DELAY_S * _NS),
        placement=dt.Placement(constraints=constraints(spec.flavor, spec.pool, config)),
        networks=[dt.NetworkAttachmentConfig("host")],
        log_driver={"Name": "json-file", "Options": json_file_options()},
    )


# -- handles ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Handle:
    """One instance's task: ``service/n/slot/task/node`` (task and node empty until known)."""

    service: str
    n: int
    slot: int
    task: str = ""
    node: str = ""

    def __str__(self) -> str:
        return f"{self.service}/{self.n}/{self.slot}/{self.task}/{self.node}"

    @classmethod
    def parse(cls, text: str) -> Handle | None:
        parts = text.split("/")
        if len(parts) != 5 or not parts[0]:
            return None
        try:
            return cls(parts[0], int(parts[1]), int(parts[2]), parts[3], parts[4])
        except ValueError:
            return None


@dataclass
class View:
    """One Swarm service as read now: its spec, its slot map and the task of each live slot."""

    id: str
    name: str
    version: int
    spec: dict[str, Any]
    replicas: int
    slots: dict[int, int]
    port_base: int
    current: dict[int, dict[str, Any]]
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def labels(self) -> dict[str, str]:
        found: dict[str, str] = self.spec.get("Labels") or {}
        return found

    def assignment(self) -> dict[int, int]:
        """Instance number -> slot. Once Swarm runs as many slots as replicas, an instance
        whose slot is gone (a scale-down removed it) takes a live slot nobody holds."""
        held = dict(self.slots)
        if len(self.current) >= self.replicas:
            lost = sorted(s for s in held if s not in self.current)
            free = sorted(s for s in self.current if s not in held)
            for old, new in zip(lost, free, strict=False):
                held[new] = held.pop(old)
        return {n: s for s, n in held.items()}


def _read_slots(labels: dict[str, str]) -> dict[int, int]:
    try:
        raw = json.loads(labels.get(LABEL_SLOTS, "{}"))
        return {int(s): int(n) for s, n in raw.items()}
    except (ValueError, TypeError, AttributeError):
        return {}


def _write_slots(by_n: dict[int, int]) -> str:
    return json.dumps({str(s): n for n, s in sorted(by_n.items())}, sort_keys=True)


def _task_state(task: dict[str, Any]) -> str:
    return str((task.get("Status") or {}).get("State", ""))


def _exit_code(task: dict[str, Any]) -> int | None:
    code = ((task.get("Status") or {}).get("ContainerStatus") or {}).get("ExitCode")
    return int(code) if isinstance(code, int) else None


# -- the runtime ------------------------------------------------------------------------------


#: Generic resource kinds back to opsbot's accelerator kinds.
KIND_OF_GENERIC = {generic: kind for kind, generic in GENERIC_KINDS.items()}


class SwarmProbe:
    """The swarm's nodes as hardware: what admission, pools and the flavors list count.

    Read from the manager (cached for ``ttl_s``): each node's CPUs and memory, the accelerators
    it advertises as generic resources (their model from the node label
    ``opsbot.accelerator``), its architecture, labels (a pool's label puts it in that pool),
    state, address, and what the tasks placed on it reserve. ``nodes()`` is the ready, active
    ones; ``inventory()`` every node.
    """

    #: Swarm places instances only on nodes whose labels let it: a pool is its labelled nodes.
    places_by_label = True

    def __init__(self, client: Any, ttl_s: float = 5.0):
        self.client = client
        self.ttl_s = ttl_s
        self._cache: tuple[float, list[Node]] | None = None
        self._lock = threading.Lock()

    def inventory(self) -> list[Node]:
        with self._lock:
            if self._cache is not None and time.monotonic() - self._cache[0] < self.ttl_s:
                return self._cache[1]
            try:
                listed = self.client.api.nodes()
                tasks = self.client.api.tasks(filters={"desired-state": "running"})
            except ENGINE_DOWN:
                if self._cache is not None:  # keep counting what was last seen
                    return self._cache[1]
                raise
            held = reservations(tasks)
            found = [node_of(n, held.get(n.get("ID", ""), Reserved())) for n in listed]
            self._cache = (time.monotonic(), found)
            return found

    def nodes(self) -> list[Node]:
        return [n for n in self.inventory() if n.ready]


def reservations(tasks: Sequence[dict[str, Any]]) -> dict[str, Reserved]:
    """Node id -> what the tasks placed on it reserve (tasks that hold their node: those
    assigned there and not yet ended)."""
    sums: dict[str, tuple[float, int, dict[str, int]]] = {}
    for task in tasks:
        node = task.get("NodeID") or ""
        if not node or _task_state(task) in _ENDED:
            continue
        res = (((task.get("Spec") or {}).get("Resources") or {}).get("Reservations")) or {}
        cpus, memory, acc = sums.get(node, (0.0, 0, {}))
        for generic in res.get("GenericResources") or []:
            discrete = generic.get("DiscreteResourceSpec") or {}
            kind = KIND_OF_GENERIC.get(discrete.get("Kind", ""))
            if kind is not None:
                acc[kind] = acc.get(kind, 0) + int(discrete.get("Value", 0))
        sums[node] = (
            cpus + res.get("NanoCPUs", 0) / _NS,
            memory + int(res.get("MemoryBytes", 0)),
            acc,
        )
    return {
        node: Reserved(cpus, memory, tuple(sorted(acc.items())))
        for node, (cpus, memory, acc) in sums.items()
    }


def node_address(attrs: dict[str, Any]) -> str:
    """Where a node's tasks answer: its address as the manager sees it (a manager that reports
    none: its listener's address)."""
    addr = str((attrs.get("Status") or {}).get("Addr", ""))
    if addr in ("", "0.0.0.0"):
        manager = str((attrs.get("ManagerStatus") or {}).get("Addr", ""))
        addr = manager.rpartition(":")[0] or "127.0.0.1"
    return addr


def node_of(attrs: dict[str, Any], reserved: Reserved | None = None) -> Node:
    """A Swarm node (its ``docker node inspect`` document) as a Node; its ``state`` is
    "ready" only when it is ready and active, else what it is (down, drain, pause...)."""
    spec = attrs.get("Spec") or {}
    status = str((attrs.get("Status") or {}).get("State", "unknown"))
    availability = str(spec.get("Availability", "active"))
    desc = attrs.get("Description") or {}
    res = desc.get("Resources") or {}
    labels = {str(k): str(v) for k, v in (spec.get("Labels") or {}).items()}
    model = labels.get(NODE_ACCELERATOR_LABEL, "")
    devices: list[Device] = []
    for generic in res.get("GenericResources") or []:
        discrete = generic.get("DiscreteResourceSpec") or {}
        kind = KIND_OF_GENERIC.get(discrete.get("Kind", ""))
        if kind is not None:
            devices += [Device(kind, model, i) for i in range(int(discrete.get("Value", 0)))]
    return Node(
        name=str(desc.get("Hostname") or attrs.get("ID", "")),
        cpus=int(res.get("NanoCPUs", 0) // 1_000_000_000),
        memory_bytes=int(res.get("MemoryBytes", 0)),
        arch=normalise_arch(str((desc.get("Platform") or {}).get("Architecture", ""))),
        devices=tuple(devices),
        labels=tuple(sorted(labels.items())),
        # A ready node that is drained or paused takes no new tasks: its availability says why.
        state=availability if status == "ready" and availability != "active" else status,
        addr=node_address(attrs),
        reserved=reserved,
    )


class SwarmRuntime:
    """Model servers as Swarm tasks, one service per version (see the module docstring)."""

    name = "swarm"
    #: Swarm places accelerators (generic resources) itself: the controller assigns none.
    places_devices = True

    def __init__(
        self,
        home: Path,
        *,
        client: Any = None,
        image: str | None = None,
        config: Config | None = None,
    ):
        self.home = Path(home).resolve()
        self.client = client if client is not None else connect()
        check_manager(self.client)
        self.image = image or require_image(self.client)
        self.config = config if config is not None else load_config(self.home)
        self.staged = StagedModels(self.home, self.config.run_dir)
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._cache: dict[str, tuple[float, View | None]] = {}
        self._nodes: tuple[float, dict[str, Node]] = (0.0, {})
        self._nodes_guard = threading.Lock()
        named = [p.name for p in self.config.pools if p.nodes]
        if named:
            raise OpsbotError(
                f"on Swarm a pool's nodes are the nodes with its label; pool(s) {', '.join(named)} "
                "list nodes by name: label them instead (docker node update --label-add "
                "opsbot.pool=POOL NODE) and remove `nodes` from config.toml",
                field="pools",
            )
        self._warned_down = False

    # -- reading ------------------------------------------------------------------------------

    def probe(self) -> SwarmProbe:
        """The swarm's nodes as hardware, for the core's pools and admission."""
        return SwarmProbe(self.client)

    @property
    def label_filter(self) -> list[str]:
        return [f"{LABEL_HOME}={home_id(self.home)}", LABEL_SERVICE]

    def _lock(self, name: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(name, threading.Lock())

    def _ours(self, service: dict[str, Any]) -> bool:
        labels = (service.get("Spec") or {}).get("Labels") or {}
        return labels.get(LABEL_HOME) == home_id(self.home) and LABEL_SERVICE in labels

    def view(self, name: str, *, fresh: bool = False) -> View | None:
        """The service of this home named ``name`` with its tasks; None if there is none."""
        now = time.monotonic()
        cached = self._cache.get(name)
        if not fresh and cached is not None and now - cached[0] < CACHE_S:
            return cached[1]
        try:
            service = self.client.api.inspect_service(name)
            tasks = self.client.api.tasks(filters={"service": service["ID"]})
        except docker.errors.NotFound:
            self._cache[name] = (now, None)
            return None
        if not self._ours(service):
            self._cache[name] = (now, None)
            return None
        found = self._view(service, tasks)
        self._cache[name] = (now, found)
        return found

    @staticmethod
    def _view(service: dict[str, Any], tasks: list[dict[str, Any]]) -> View:
        spec = service["Spec"]
        labels = spec.get("Labels") or {}
        current: dict[int, dict[str, Any]] = {}
        for task in tasks:
            slot = task.get("Slot")
            if not slot or task.get("DesiredState") not in _RUNNABLE:
                continue
            newest = current.get(slot)
            if newest is None or task["Version"]["Index"] > newest["Version"]["Index"]:
                current[slot] = task
        return View(
            id=service["ID"],
            name=spec["Name"],
            version=int(service["Version"]["Index"]),
            spec=spec,
            replicas=int(((spec.get("Mode") or {}).get("Replicated") or {}).get("Replicas", 0)),
            slots=_read_slots(labels),
            port_base=int(labels.get(LABEL_PORT, "0") or 0),
            current=current,
            tasks={t["ID"]: t for t in tasks},
        )

    def _node(self, node_id: str, *, fresh: bool = False) -> Node | None:
        """The swarm node with this id, read at most every ``NODE_TTL_S`` (its state changes)
        unless ``fresh``."""
        if not node_id:
            return None
        with self._nodes_guard:
            read_at, known = self._nodes
            if fresh or node_id not in known or time.monotonic() - read_at > NODE_TTL_S:
                known = {n["ID"]: node_of(n) for n in self.client.api.nodes()}
                self._nodes = (time.monotonic(), known)
            return known.get(node_id)

    def _node_addr(self, node_id: str) -> str:
        node = self._node(node_id)
        return node.addr if node is not None else ""

    def node_name(self, handle: str) -> str:
        """The name (hostname) of the node an instance's task runs on; "" until placed."""
        h = Handle.parse(handle)
        try:
            node = self._node(h.node) if h is not None else None
        except ENGINE_DOWN:
            return ""
        return node.name if node is not None else ""

    def _lost(self, node_id: str, *, fresh: bool = False) -> str:
        """Why the node a task was placed on runs it no more (down, drained); "" if it does
        (or the task is not placed yet)."""
        if not node_id:
            return ""
        node = self._node(node_id, fresh=fresh)
        if node is None:
            return f"node {node_id[:12]} left the swarm: Swarm moves the task to another node"
        if node.state in LOST_STATES:
            what = "drained" if node.state == "drain" else node.state
            return (
                f"node {node.name} ({node.addr}) is {what}: Swarm moves the task to another "
                "node that fits"
            )
        return ""

    def _max_node_cpus(self) -> float:
        cpus = [
            ((n.get("Description") or {}).get("Resources") or {}).get("NanoCPUs", 0) / _NS
            for n in self.client.api.nodes()
        ]
        return max(cpus, default=0.0)

    # -- changing -----------------------------------------------------------------------------

    def _port_base(self) -> int:
        """A block of ports no service of this swarm uses and free on this machine."""
        used = set()
        for service in self.client.api.services(filters={"label": LABEL_PORT}):
            with contextlib.suppress(ValueError):
                used.add(int(((service["Spec"].get("Labels") or {}).get(LABEL_PORT)) or 0))
        for base in range(PORT_LOW, PORT_HIGH - PORT_BLOCK + 1, PORT_BLOCK):
            if base not in used and all(_port_free(base + s) for s in range(1, 9)):
                return base
        raise OpsbotError(
            f"no free block of {PORT_BLOCK} ports between {PORT_LOW} and {PORT_HIGH} for a new "
            "Swarm service; stop some services",
            field="runtime",
        )

    def _create(self, spec: InstanceSpec, name: str) -> None:
        port_base = self._port_base()
        common = {
            LABEL_SERVICE: spec.service_uid,
            LABEL_VERSION: spec.version,
            LABEL_MODEL: spec.model_name,
            LABEL_OWNER: spec.owner,
            LABEL_HOME: home_id(self.home),
        }
        labels = {
            **common,
            LABEL_IDX: str(spec.idx),
            LABEL_CONFIG: fingerprint(spec),
            LABEL_POOL: spec.pool,
            LABEL_PORT: str(port_base),
            LABEL_SLOTS: _write_slots({spec.n: 1}),
        }
        template = task_template(
            spec,
            image=self.image,
            home=self.home,
            port_base=port_base,
            config=self.config,
            max_node_cpus=self._max_node_cpus(),
            container_labels=common,
            secret=instance_secret(daemon_secret(self.home), spec.service_uid, spec.idx),
        )
        try:
            self.client.api.create_service(
                template, name=name, labels=labels, mode=dt.ServiceMode("replicated", 1)
            )
        except docker.errors.APIError as exc:
            if exc.status_code == 409:
                raise OpsbotError(
                    f"a Swarm service named {name} exists without this opsbot home's labels; "
                    "remove or rename it (opsbot never touches it)",
                    field="runtime",
                ) from exc
            raise

    def _update(self, view: View, replicas: int, by_n: dict[int, int]) -> None:
        labels = {**view.labels, LABEL_SLOTS: _write_slots(by_n)}
        self.client.api.update_service(
            view.id,
            view.version,
            task_template=view.spec["TaskTemplate"],
            name=view.name,
            labels=labels,
            mode=dt.ServiceMode("replicated", replicas),
            networks=view.spec["TaskTemplate"].get("Networks"),
        )

    def start(self, spec: InstanceSpec) -> Started:
        spec = self.staged.stage(spec)
        name = service_name(self.home, spec)
        with self._lock(name):
            view = self._settled(name)
            if view is None:
                self._create(spec, name)
                slot = 1
            else:
                by_n = view.assignment()
                if spec.n in by_n:
                    slot = by_n[spec.n]
                    if by_n != {n: s for s, n in view.slots.items()}:
                        self._update(view, view.replicas, by_n)  # keep a move that happened
                else:
                    held = set(by_n.values())
                    idle = sorted(s for s in view.current if s not in held)
                    if idle:  # a live task nobody holds (a scale-down moved its instance)
                        slot, replicas = idle[0], view.replicas
                    else:  # one more replica: Swarm fills the lowest slot it lacks
                        slot = next(
                            s for s in itertools.count(1) if s not in view.current and s not in held
                        )
                        replicas = len(by_n) + 1
                    by_n[spec.n] = slot
                    self._update(view, replicas, by_n)
            self._cache.pop(name, None)
            return self._attach(name, spec.n, slot)

    def _settled(self, name: str) -> View | None:
        """The service once Swarm has a task for each replica (it makes them within moments)."""
        deadline = time.monotonic() + 2.0
        view = self.view(name, fresh=True)
        while view is not None and len(view.current) < view.replicas:
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
            view = self.view(name, fresh=True)
        return view

    def _attach(self, name: str, n: int, slot: int) -> Started:
        """The slot's task once Swarm placed it (or the scheduler said why it cannot)."""
        deadline = time.monotonic() + PLACE_WAIT_S
        while True:
            view = self.view(name, fresh=True)
            if view is None:
                raise OpsbotError(f"the Swarm service {name} vanished while starting")
            task = view.current.get(slot)
            node = (task or {}).get("NodeID", "")
            err = ((task or {}).get("Status") or {}).get("Err")
            if node or err or time.monotonic() > deadline:
                handle = Handle(name, n, slot, (task or {}).get("ID", ""), node)
                return Started(str(handle), self._node_addr(node), view.port_base + slot)
            time.sleep(0.05)

    def exited(self, handle: str) -> Exit | None:
        h = Handle.parse(handle)
        if h is None:
            return Exit(None, "never started as a Swarm task")
        try:
            view = self.view(h.service)
        except ENGINE_DOWN as exc:
            # Unknown is not dead: the readiness probe tells the truth meanwhile.
            if not self._warned_down:
                log.warning("docker engine unreachable: %s", exc)
                self._warned_down = True
            return None
        self._warned_down = False
        if view is None:
            return Exit(None, f"Swarm service {h.service} is gone")
        slot = view.assignment().get(h.n)
        if slot is None:
            return Exit(None, f"no task slot of {h.service} is this instance's any more")
        if slot != h.slot:
            return Exit(None, f"Swarm kept task slot {slot} for this instance; moving there")
        task = view.tasks.get(h.task)
        if task is None:
            current = view.current.get(slot)
            if current is not None and not h.task:
                return Exit(None, "Swarm made the task after the start: attaching to it")
            return Exit(None, f"task {h.task[:12] or '?'} of {h.service} is gone")
        state = _task_state(task)
        # Swarm shutting down a task that still runs is often its node's loss: read the node's
        # state now rather than from the cache, which may predate it.
        moving = task.get("DesiredState") not in _RUNNABLE
        try:
            lost = self._lost(task.get("NodeID", ""), fresh=moving) if state not in _ENDED else ""
        except ENGINE_DOWN:
            return None  # as above: unknown is not dead
        if lost:
            return Exit(None, lost)
        if state in _ENDED or task.get("DesiredState") not in _RUNNABLE:
            code = _exit_code(task)
            status = task.get("Status") or {}
            detail = status.get("Err") or status.get("Message") or state
            lines = self.logs(handle, 50)
            reason = failure_reason(lines, code) if lines else f"task {state}: {detail}"
            return Exit(code, reason)
        node = task.get("NodeID", "")
        if not node:
            err = (task.get("Status") or {}).get("Err")
            return Exit(None, f"no Swarm node can run it: {err}") if err else None
        if node != h.node:
            return Exit(None, "Swarm placed the task after the start: attaching to it")
        return None

    def foreign_listener(self, handle: str, host: str, port: int) -> str | None:
        """None: a task's port is on its node, whose sockets this daemon cannot see."""
        return None

    def stop(self, handle: str, grace_s: float = 10.0) -> None:
        h = Handle.parse(handle)
        if h is None:
            return
        with self._lock(h.service):
            view = self._settled(h.service)
            if view is None:
                return
            by_n = view.assignment()
            if by_n.pop(h.n, None) is None:
                return
            if not by_n:
                with contextlib.suppress(docker.errors.NotFound):
                    self.client.api.remove_service(view.id)
            else:
                self._update(view, len(by_n), by_n)
            self._cache.pop(h.service, None)
            self._wait_gone(view, h, removed=not by_n, timeout=grace_s + 10)

    def release(self, service_uid: str, keep: Collection[int]) -> None:
        self.staged.release(service_uid, keep)

    def sweep(self, keep: Mapping[str, Collection[int]]) -> None:
        self.staged.sweep(keep)

    def rotate_logs(self) -> None:
        """Nothing to do: the engine's json-file driver keeps the logs within the cap."""

    def _wait_gone(self, before: View, h: Handle, *, removed: bool, timeout: float) -> None:
        """Until the tasks Swarm stops for this call have ended, on whichever node they ran."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if removed:
                if not tasks_left(self.client, before.id):
                    return
            else:
                view = self.view(h.service, fresh=True)
                if view is None:
                    return
                stopping = [
                    t
                    for t in view.tasks.values()
                    if t.get("DesiredState") not in _RUNNABLE and _task_state(t) not in _ENDED
                ]
                if not stopping and len(view.current) <= view.replicas:
                    return
            time.sleep(0.1)
        log.warning("tasks of %s still stopping after %.0f s", h.service, timeout)

    def owned(self) -> Sequence[Owned]:
        found: list[Owned] = []
        for service in self.client.api.services(filters={"label": self.label_filter}):
            if not self._ours(service):
                continue
            labels = service["Spec"].get("Labels") or {}
            view = self.view(service["Spec"]["Name"], fresh=True)
            if view is None:
                continue
            for n, slot in sorted(view.assignment().items()):
                task = view.current.get(slot)
                if task is None:
                    continue
                node = task.get("NodeID", "")
                handle = Handle(view.name, n, slot, task["ID"], node)
                found.append(
                    Owned(
                        str(handle),
                        f"{labels[LABEL_SERVICE]}/{labels.get(LABEL_IDX, '0')}/{n}",
                        self._node_addr(node),
                        view.port_base + slot,
                    )
                )
        return found

    def logs(self, handle: str, tail: int = 100) -> list[str]:
        """The task's log lines: from its container when it ran on this engine, else from
        Swarm's service logs (which hold a task's lines only once it has been running)."""
        h = Handle.parse(handle)
        if h is None or not h.task:
            return []
        try:
            view = self.view(h.service)
            task = view.tasks.get(h.task) if view is not None else None
            container = ((task or {}).get("Status") or {}).get("ContainerStatus") or {}
            if container.get("ContainerID"):
                with contextlib.suppress(docker.errors.NotFound):
                    raw = self.client.api.logs(
                        container["ContainerID"], stdout=True, stderr=True, tail=tail
                    )
                    return bytes(raw).decode(errors="replace").splitlines()
            chunks = self.client.api.service_logs(
                h.service, details=True, stdout=True, stderr=True, tail=max(tail, 1) * 4
            )
            text = b"".join(chunks).decode(errors="replace")
        except (docker.errors.NotFound, docker.errors.APIError, *ENGINE_DOWN):
            return []
        mark = f"com.docker.swarm.task.id={h.task}"
        lines = []
        for line in text.splitlines():
            details, _, message = line.partition(" ")
            if mark in details.split(","):
                lines.append(message)
        return lines[-tail:]


def check_manager(client: Any) -> None:
    """Raise, saying how to fix it, unless the engine is a manager of an active swarm."""
    info = client.info()
    swarm = info.get("Swarm") or {}
    state = swarm.get("LocalNodeState", "inactive")
    if state != "active" or not swarm.get("ControlAvailable"):
        what = "a worker" if state == "active" else f"not in a swarm ({state})"
        raise NotSwarmManager(
            f"--runtime swarm needs a Docker Swarm manager; the engine is {what}: {_INIT_HINT}",
            field="runtime",
        )


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the model server binds
        try:
            sock.bind((LISTEN_ALL, port))
        except OSError:
            return False
    return True


def remove_all(runtime: SwarmRuntime) -> int:
    """Remove every Swarm service of the runtime's home; returns how many (tests, clean-ups)."""
    services = [
        s
        for s in runtime.client.api.services(filters={"label": runtime.label_filter})
        if runtime._ours(s)
    ]
    for service in services:
        with contextlib.suppress(docker.errors.NotFound):
            runtime.client.api.remove_service(service["ID"])
    deadline = time.monotonic() + 30
    for service in services:
        while time.monotonic() < deadline and tasks_left(runtime.client, service["ID"]):
            time.sleep(0.1)
    return len(services)


def tasks_left(client: Any, service_id: str) -> bool:
    """Whether a task of the service (removed or not) still runs or stops on any node: Swarm
    lists a removed service's tasks until their containers are gone."""
    return any(
        t.get("ServiceID") == service_id and _task_state(t) not in _ENDED
        for t in client.api.tasks()
    )
