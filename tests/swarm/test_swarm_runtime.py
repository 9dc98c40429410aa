"""The swarm runtime on a real two-node swarm (this engine, the manager, and a worker engine in
its own network namespace), driven the way the controller drives it: one Swarm service per
version with replicas = instances spread over both nodes and answering on each node's address,
the service spec (limits, reservations, generic resources, placement, env, labels), pools placed
by node label, scale changes, crashes, and services without this home's labels left alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import secrets
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker.errors
import pytest
from swarm_fixtures import (  # noqa: F401 - the fixtures
    WORKER,
    Cluster,
    cleanup,
    engine_fixture,
    image_fixture,
    live_tasks,
    node_availability,
    node_labels,
    pool_name,
    replicas,
    services_of,
    swarm_fixture,
    swarm_runtime,
    wait_for,
)

from opsbot.core.config import Config, PoolConfig, PublicPoolConfig
from opsbot.core.controller import http_ready
from opsbot.core.errors import OpsbotError
from opsbot.core.flavors import Flavor, load_flavors
from opsbot.core.hardware import normalise_arch
from opsbot.core.images import USER
from opsbot.core.instance_auth import INSTANCE_HEADER, daemon_secret, instance_secret
from opsbot.core.pools import PUBLIC, Pools
from opsbot.core.runtime import InstanceSpec, Started
from opsbot.core.runtimes.docker import staged_for_container
from opsbot.core.runtimes.swarm import (
    Handle,
    NotSwarmManager,
    SwarmProbe,
    SwarmRuntime,
    check_manager,
    service_name,
)

pytestmark = pytest.mark.slow

FLAVORS = {f.id: f for f in load_flavors()}
#: A dedicated pool whose label value is unique to this run.
POOL = pool_name()
CONFIG = Config(
    pools=[PoolConfig(name=POOL, cpus=16, memory_gib=64)],
    public_pool=PublicPoolConfig(cpu_overcommit=4, memory_overcommit=2),
)
UID = "5a7e" + secrets.token_hex(6)
#: Small, so that the reservations of a few instances fit the test machine (overcommit 4 and 2).
SMALL = Flavor(id="cpu.1u2g", name="CPU 1 vCPU | 2 GiB", cpus=1, memory_gib=2)
IRIS_ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]


@pytest.fixture
def runtime(tmp_path: Path, engine: Any, image: str, swarm: Cluster) -> Iterator[SwarmRuntime]:
    home = tmp_path / "home"
    rt = swarm_runtime(home, engine, image, CONFIG)
    yield rt
    cleanup(home, engine, image)
    assert services_of(engine, home) == []


def spec(
    dirs: dict[tuple[str, str], Path],
    n: int,
    *,
    idx: int = 0,
    version: str = "1.0.0",
    flavor: Flavor = SMALL,
    pool: str = "public",
    env: dict[str, str] | None = None,
) -> InstanceSpec:
    return InstanceSpec(
        service_uid=UID,
        owner="alice",
        idx=idx,
        n=n,
        model_name="iris",
        version=version,
        path=dirs[("iris", version)],
        format="sklearn",
        entry=None,
        flavor=flavor,
        env=env or {"LOG_LEVEL": "info"},
        pool=pool,
    )


def until_ready(started: list[Started], swarm: Cluster, timeout: float = 90) -> None:
    wait_for(
        "the instances to answer their readiness check",
        lambda: all(http_ready(s.host, s.port) for s in started),
        timeout,
        explain=swarm.state,
    )


def predict(rt: SwarmRuntime, spec: InstanceSpec, s: Started) -> Any:
    """A prediction straight from the instance, with its version's secret as the gateway sends
    it (without it the instance answers 401)."""
    secret = instance_secret(daemon_secret(rt.home), spec.service_uid, spec.idx)
    req = urllib.request.Request(
        f"http://{s.host}:{s.port}/predict",
        data=json.dumps({"instances": IRIS_ROWS}).encode(),
        headers={"Content-Type": "application/json", INSTANCE_HEADER: secret},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def inspect(rt: SwarmRuntime, s: InstanceSpec) -> dict[str, Any]:
    # the service is named after the spec the runtime starts: the version's files staged for
    # the container's user
    staged = staged_for_container(rt.home, s)
    found: dict[str, Any] = rt.client.api.inspect_service(service_name(rt.home, staged))
    return found


def settle(rt: SwarmRuntime, s: InstanceSpec, started: Started, timeout: float = 30) -> Started:
    """What the controller does each pass until the instance runs: keep it while it runs,
    else start it again."""
    deadline = time.monotonic() + timeout
    while rt.exited(started.handle) is not None:
        assert time.monotonic() < deadline, f"instance {s.n} never ran: {rt.exited(started.handle)}"
        time.sleep(0.5)
        started = rt.start(s)
    return started


def test_one_service_per_version_with_replicas_equal_to_instances(
    runtime: SwarmRuntime, example_dirs: dict[tuple[str, str], Path], engine: Any, swarm: Cluster
) -> None:
    v1 = [spec(example_dirs, n) for n in range(2)]
    v2 = spec(example_dirs, 0, idx=1, version="2.0.0")
    started = [runtime.start(s) for s in [*v1, v2]]
    services = services_of(engine, runtime.home)
    assert len(services) == 2
    by_idx = {s["Spec"]["Labels"]["opsbot.idx"]: s for s in services}
    assert replicas(by_idx["0"]) == 2 and replicas(by_idx["1"]) == 1
    labels = by_idx["1"]["Spec"]["Labels"]
    assert labels["opsbot.service"] == UID and labels["opsbot.version"] == "2.0.0"
    assert labels["opsbot.owner"] == "alice" and labels["opsbot.home"] == str(runtime.home)
    # each task has its own port, the service's base port plus its slot, on the node's address
    base = int(by_idx["0"]["Spec"]["Labels"]["opsbot.port"])
    assert [s.port for s in started[:2]] == [base + 1, base + 2]
    # Swarm spreads a version's replicas: one on each node, reached at that node's address
    assert {s.host for s in started[:2]} == {"127.0.0.1", swarm.worker_addr}
    nodes = {runtime.node_name(s.handle) for s in started[:2]}
    assert nodes == {socket.gethostname(), WORKER}
    assert len({s.port for s in started}) == 3
    until_ready(started, swarm)
    specs = [*v1, v2]
    assert all(
        predict(runtime, sp, s) == {"predictions": [0, 2]}
        for sp, s in zip(specs, started, strict=True)
    )
    assert all(runtime.exited(s.handle) is None for s in started)
    owned = runtime.owned()
    assert sorted(o.key for o in owned) == [f"{UID}/0/0", f"{UID}/0/1", f"{UID}/1/0"]
    assert {o.handle for o in owned} == {s.handle for s in started}
    # starting an instance that runs changes nothing: same task, same replicas
    again = runtime.start(v1[1])
    assert again == started[1]
    assert replicas(inspect(runtime, v1[1])) == 2
    # each task's lines, from its node (the worker's reach the manager through Swarm's logs)
    for s in started[:2]:
        wait_for(
            f"the log of the task on {runtime.node_name(s.handle)}",
            lambda s=s: any("ready" in line for line in runtime.logs(s.handle)),  # type: ignore[misc]
            15,
        )


def test_service_spec_carries_limits_reservations_gpus_placement_and_env(
    runtime: SwarmRuntime, example_dirs: dict[tuple[str, str], Path], engine: Any
) -> None:
    gpu = spec(example_dirs, 0, flavor=FLAVORS["gpu.t4"], pool=POOL, env={"MODE": "fast"})
    started = runtime.start(gpu)
    template = inspect(runtime, gpu)["Spec"]["TaskTemplate"]
    node_cpus = max(
        n["Description"]["Resources"]["NanoCPUs"] for n in engine.api.nodes()
    )  # the limit is at most the largest node's CPUs
    res = template["Resources"]
    assert res["Limits"] == {"NanoCPUs": min(8 * 10**9, node_cpus), "MemoryBytes": 32 * 2**30}
    # a dedicated pool is not overcommitted: the whole flavor is reserved
    assert res["Reservations"]["NanoCPUs"] == 8 * 10**9
    assert res["Reservations"]["MemoryBytes"] == 32 * 2**30
    assert res["Reservations"]["GenericResources"] == [
        {"DiscreteResourceSpec": {"Kind": "NVIDIA-GPU", "Value": 1}}
    ]
    assert sorted(template["Placement"]["Constraints"]) == [
        "node.labels.opsbot.accelerator == T4",
        f"node.labels.opsbot.pool == {POOL}",
    ]
    container = template["ContainerSpec"]
    env = dict(e.split("=", 1) for e in container["Env"])
    assert env["MODE"] == "fast" and env["OPSBOT_SLOT"] == "{{.Task.Slot}}"
    assert "CUDA_VISIBLE_DEVICES" not in env  # Swarm assigns the GPU (generic resource)
    assert container["User"] == USER and container["ReadOnly"] is True
    assert container["CapabilityDrop"] == ["ALL"]
    model = next(m for m in container["Mounts"] if m["Target"] == "/model")
    # only this version's files, staged for the container's user (never the registry's own)
    staged = staged_for_container(runtime.home, gpu).path
    assert model["ReadOnly"] is True and model["Source"] == str(staged) != str(gpu.path)
    assert container["Labels"]["opsbot.service"] == UID
    assert template["RestartPolicy"]["Condition"] == "any"
    networks = [engine.api.inspect_network(n["Target"])["Name"] for n in template["Networks"]]
    assert networks == ["host"]
    # no node has a T4 or the pool's label: the scheduler says so, and that is an exit
    ended = wait_for("the scheduler's verdict", lambda: runtime.exited(started.handle), 20)
    assert ended.reason.startswith("no Swarm node can run it: no suitable node")

    # the public pool: reservations are the flavor over the overcommit factors, and the
    # instances stay off the dedicated pools' nodes
    cpu = spec(example_dirs, 0, idx=1, flavor=FLAVORS["cpu.2u8g"])
    runtime.start(cpu)
    template = inspect(runtime, cpu)["Spec"]["TaskTemplate"]
    assert template["Resources"]["Reservations"] == {
        "NanoCPUs": 2 * 10**9 // 4,
        "MemoryBytes": 8 * 2**30 // 2,
    }
    assert template["Placement"]["Constraints"] == [f"node.labels.opsbot.pool != {POOL}"]
    env = dict(e.split("=", 1) for e in template["ContainerSpec"]["Env"])
    assert env["CUDA_VISIBLE_DEVICES"] == ""  # a CPU flavor sees no GPU


def test_a_dedicated_pool_runs_only_on_nodes_with_its_label(
    runtime: SwarmRuntime, example_dirs: dict[tuple[str, str], Path], engine: Any, swarm: Cluster
) -> None:
    s = spec(example_dirs, 0, pool=POOL)
    started = runtime.start(s)
    ended = wait_for("the scheduler's verdict", lambda: runtime.exited(started.handle), 20)
    assert "scheduling constraints not satisfied on 2 nodes" in ended.reason
    with node_labels(engine, swarm.worker, {"opsbot.pool": POOL}):
        started = settle(runtime, s, started)
        assert Handle.parse(started.handle).node == swarm.worker  # type: ignore[union-attr]
        assert started.host == swarm.worker_addr
        until_ready([started], swarm)
        assert predict(runtime, s, started) == {"predictions": [0, 2]}
        # a public instance now runs only on the node no pool holds
        public = [spec(example_dirs, n, idx=1) for n in range(2)]
        placed = [settle(runtime, p, runtime.start(p)) for p in public]
        assert {Handle.parse(p.handle).node for p in placed} == {swarm.manager}  # type: ignore[union-attr]


def test_the_probe_counts_the_swarm_nodes_and_their_pool_labels(
    runtime: SwarmRuntime, example_dirs: dict[tuple[str, str], Path], engine: Any, swarm: Cluster
) -> None:
    probe = SwarmProbe(engine, ttl_s=0)
    nodes = {n.name: n for n in probe.nodes()}
    assert set(nodes) == {socket.gethostname(), WORKER}
    for node in nodes.values():
        assert node.cpus == os.cpu_count() and node.memory_bytes > 2**30
        assert node.arch == normalise_arch(platform.machine()) and node.devices == ()
    assert nodes[WORKER].addr == swarm.worker_addr
    # what the tasks placed on a node reserve: one SMALL instance, 1 vCPU / 4 and 2 GiB / 2
    started = settle(runtime, spec(example_dirs, 0), runtime.start(spec(example_dirs, 0)))
    held = {n.name: n.reserved for n in probe.nodes()}
    where = runtime.node_name(started.handle)
    assert held[where] is not None and (held[where].cpus, held[where].memory_bytes) == (0.25, 2**30)  # type: ignore[union-attr]

    by_label = Config(pools=[PoolConfig(name=POOL)])  # no capacity declared: its nodes'
    pools = Pools(by_label, list(FLAVORS.values()), probe)
    both = sum(n.cpus for n in nodes.values()) * CONFIG.public_pool.cpu_overcommit
    assert pools.capacity(PUBLIC).cpus == both
    assert not pools.flavor_status(FLAVORS["cpu.2u8g"], POOL).available  # no node has its label
    with node_labels(engine, swarm.worker, {"opsbot.pool": POOL}):
        # labelled: the worker leaves the public pool and is the dedicated one, as it is
        assert pools.capacity(PUBLIC).cpus == nodes[socket.gethostname()].cpus * 4
        assert pools.capacity(POOL).cpus == nodes[WORKER].cpus
        assert pools.flavor_status(FLAVORS["cpu.2u8g"], POOL).available
        assert [s.node.name for s in pools.node_statuses() if s.pool == POOL] == [WORKER]
    assert pools.capacity(PUBLIC).cpus == both


def test_scale_up_and_down_keeps_exactly_the_instances(
    runtime: SwarmRuntime, example_dirs: dict[tuple[str, str], Path], engine: Any, swarm: Cluster
) -> None:
    specs = [spec(example_dirs, n) for n in range(3)]
    started = {s.n: runtime.start(s) for s in specs}
    service = inspect(runtime, specs[0])
    assert replicas(service) == 3
    until_ready(list(started.values()), swarm)

    # the middle instance goes: two replicas, two tasks, the others keep serving
    runtime.stop(started[1].handle)
    del started[1]
    service = inspect(runtime, specs[0])
    assert replicas(service) == 2
    wait_for("two tasks", lambda: len(live_tasks(engine, service["ID"])) == 2, 20)
    for n in started:
        started[n] = settle(runtime, specs[n], started[n])
    until_ready(list(started.values()), swarm)
    assert sorted(o.key for o in runtime.owned()) == [f"{UID}/0/0", f"{UID}/0/2"]
    assert len({s.port for s in started.values()}) == 2

    # and comes back: three again, on three distinct slots
    started[1] = runtime.start(specs[1])
    assert replicas(inspect(runtime, specs[0])) == 3
    until_ready(list(started.values()), swarm)
    tasks = live_tasks(engine, service["ID"])
    assert len(tasks) == 3 and len({t["Slot"] for t in tasks}) == 3
    assert sorted(o.key for o in runtime.owned()) == [f"{UID}/0/{n}" for n in range(3)]

    # all of them go: the service goes with the last
    for s in list(started.values()):
        runtime.stop(s.handle)
    assert services_of(engine, runtime.home) == []
    assert all(runtime.exited(s.handle) is not None for s in started.values())


def test_a_dead_task_is_an_exit_and_swarm_replaces_it(
    runtime: SwarmRuntime, example_dirs: dict[tuple[str, str], Path], engine: Any, swarm: Cluster
) -> None:
    s = spec(example_dirs, 0)
    started = runtime.start(s)
    until_ready([started], swarm)
    task = engine.api.inspect_task(Handle.parse(started.handle).task)  # type: ignore[union-attr]
    # the container lives on the engine of the node Swarm put it on
    on = engine if task["NodeID"] == swarm.manager else swarm.worker_client
    on.api.kill(task["Status"]["ContainerStatus"]["ContainerID"], "SIGKILL")
    ended = wait_for("the exit", lambda: runtime.exited(started.handle), 20)
    assert ended.code == 137
    # the controller starts it again: the instance is on Swarm's new task, same slot and port
    again = settle(runtime, s, started)
    assert Handle.parse(again.handle).task != Handle.parse(started.handle).task  # type: ignore[union-attr]
    assert again.port == started.port
    until_ready([again], swarm)
    assert runtime.exited(again.handle) is None
    assert replicas(inspect(runtime, s)) == 1


def test_a_drained_node_is_an_exit_with_the_reason_and_the_instance_moves(
    runtime: SwarmRuntime, example_dirs: dict[tuple[str, str], Path], engine: Any, swarm: Cluster
) -> None:
    specs = [spec(example_dirs, n) for n in range(2)]
    started = [runtime.start(s) for s in specs]
    until_ready(started, swarm)
    (there,) = [i for i, s in enumerate(started) if s.host == swarm.worker_addr]
    with node_availability(engine, swarm.worker, "drain"):
        ended = wait_for("the exit", lambda: runtime.exited(started[there].handle), 30)
        assert ended.reason == (
            f"node {WORKER} ({swarm.worker_addr}) is drained: Swarm moves the task to another "
            "node that fits"
        )
        moved = settle(runtime, specs[there], started[there], timeout=60)
        assert Handle.parse(moved.handle).node == swarm.manager  # type: ignore[union-attr]
        assert moved.port == started[there].port  # the same slot, on the node left
        until_ready([moved], swarm)
        assert runtime.exited(started[1 - there].handle) is None  # the other one stayed


def test_services_without_this_homes_labels_are_never_touched(
    runtime: SwarmRuntime, example_dirs: dict[tuple[str, str], Path], engine: Any, image: str
) -> None:
    s = spec(example_dirs, 0)
    taken = service_name(runtime.home, staged_for_container(runtime.home, s))
    sleeper = {"image": image, "command": ["python3", "-c", "import time; time.sleep(3600)"]}
    foreign = [
        engine.services.create(name=taken, **sleeper),  # the very name the runtime wants
        engine.services.create(
            name=f"foreign-{secrets.token_hex(3)}",
            labels={"opsbot.service": UID, "opsbot.home": "/elsewhere"},
            **sleeper,
        ),
    ]
    try:
        before = {f.id: engine.api.inspect_service(f.id)["Version"]["Index"] for f in foreign}
        with pytest.raises(OpsbotError, match="exists without this opsbot home's labels"):
            runtime.start(s)
        assert runtime.owned() == []
        for f in foreign:  # even a handle naming them does nothing
            runtime.stop(str(Handle(f.name, 0, 1, "x", "y")))
            assert runtime.exited(str(Handle(f.name, 0, 1, "x", "y"))) is not None
        assert cleanup(runtime.home, engine, image) == 0
        after = {f.id: engine.api.inspect_service(f.id)["Version"]["Index"] for f in foreign}
        assert after == before
    finally:
        for f in foreign:
            with contextlib.suppress(docker.errors.NotFound):
                f.remove()


class _NotInSwarm:
    def info(self) -> dict[str, Any]:
        return {"Swarm": {"LocalNodeState": "inactive", "ControlAvailable": False}}


def test_an_engine_that_is_no_swarm_manager_is_refused_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(NotSwarmManager) as refused:
        check_manager(_NotInSwarm())
    assert "docker swarm init --advertise-addr" in str(refused.value)
    assert refused.value.field == "runtime"
    with pytest.raises(NotSwarmManager):
        SwarmRuntime(tmp_path, client=_NotInSwarm(), image="x", config=Config())


def test_a_pool_that_lists_nodes_by_name_is_refused_on_swarm_with_the_fix(
    tmp_path: Path, engine: Any, image: str, swarm: Cluster
) -> None:
    named = Config(pools=[PoolConfig(name="team", cpus=1, memory_gib=1, nodes=["gpu-1"])])
    with pytest.raises(OpsbotError) as refused:
        SwarmRuntime(tmp_path, client=engine, image=image, config=named)
    assert refused.value.field == "pools"
    assert "label them instead (docker node update --label-add opsbot.pool=POOL NODE)" in str(
        refused.value
    )
