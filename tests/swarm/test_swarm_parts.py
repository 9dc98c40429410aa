"""The swarm runtime's parts that need no engine: which task slot an instance holds when Swarm
removed another slot than asked, handles, the command that picks the slot's port, and the
placement and reservations a flavor and a pool make."""

from __future__ import annotations

import os
import subprocess
from typing import Any

from opsbot.core.config import Config, PoolConfig, PublicPoolConfig
from opsbot.core.flavors import load_flavors
from opsbot.core.hardware import Reserved
from opsbot.core.runtimes.swarm import (
    Handle,
    View,
    _slot_command,
    constraints,
    node_of,
    reservations,
    resources,
)

FLAVORS = {f.id: f for f in load_flavors()}
CONFIG = Config(
    pools=[
        PoolConfig(name="team-a", cpus=8, memory_gib=32),
        PoolConfig(name="b", cpus=1, memory_gib=1),
    ],
    public_pool=PublicPoolConfig(cpu_overcommit=4, memory_overcommit=2),
)


def view(replicas: int, slots: dict[int, int], live: list[int]) -> View:
    current: dict[int, dict[str, Any]] = {s: {"ID": f"t{s}"} for s in live}
    return View("id", "svc", 1, {}, replicas, slots, 20000, current)


def test_an_instance_whose_slot_swarm_removed_takes_the_slot_left_over() -> None:
    # instances 0, 1, 2 on slots 1, 2, 3; instance 1 stopped, Swarm removed slot 3 instead of 2
    assert view(2, {1: 0, 3: 2}, [1, 2]).assignment() == {0: 1, 2: 2}
    # nothing moves while Swarm has not yet made every replica's task
    assert view(3, {1: 0, 2: 1, 3: 2}, [1, 2]).assignment() == {0: 1, 1: 2, 2: 3}
    # the usual case: the slots asked for are the slots that run
    assert view(2, {1: 0, 2: 5}, [1, 2]).assignment() == {0: 1, 5: 2}


def test_handles_round_trip_and_refuse_garbage() -> None:
    h = Handle("opsbot-abc-0123-0-ff", 3, 2, "task", "node")
    assert Handle.parse(str(h)) == h
    assert Handle.parse("") is None and Handle.parse("a/b/c/d/e") is None
    assert Handle.parse(str(Handle("svc", 0, 1))) == Handle("svc", 0, 1, "", "")


def test_the_task_listens_on_every_address_at_base_port_plus_slot() -> None:
    command = _slot_command(["echo", "--path", "/model x", "--host", "127.0.0.1", "--port", "0"])
    assert command is not None
    out = subprocess.run(
        command,
        env={**os.environ, "OPSBOT_PORT_BASE": "20000", "OPSBOT_SLOT": "3"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.split() == ["--path", "/model", "x", "--host", "0.0.0.0", "--port", "20003"]
    assert _slot_command(None) is None  # an image model brings its own command


def test_placement_keeps_pools_apart_and_follows_the_flavor() -> None:
    public = constraints(FLAVORS["cpu.2u8g"], "public", CONFIG)
    assert public == ["node.labels.opsbot.pool != team-a", "node.labels.opsbot.pool != b"]
    assert constraints(FLAVORS["ascend.310"], "team-a", CONFIG) == [
        "node.labels.opsbot.pool == team-a",
        "node.platform.arch == aarch64",
        "node.labels.opsbot.accelerator == 310",
    ]


def test_reservations_are_the_flavor_over_the_public_overcommit() -> None:
    public = resources(FLAVORS["gpu.t4"], "public", CONFIG, max_node_cpus=2)
    assert public["Limits"] == {"NanoCPUs": 2 * 10**9, "MemoryBytes": 32 * 2**30}
    assert public["Reservations"]["NanoCPUs"] == 2 * 10**9  # 8 vCPUs / 4
    assert public["Reservations"]["MemoryBytes"] == 16 * 2**30  # 32 GiB / 2
    npu = resources(FLAVORS["ascend.910x8"], "team-a", CONFIG, max_node_cpus=256)
    assert npu["Limits"]["NanoCPUs"] == 192 * 10**9
    assert npu["Reservations"]["NanoCPUs"] == 192 * 10**9  # a dedicated pool: no overcommit
    assert npu["Reservations"]["GenericResources"] == [
        {"DiscreteResourceSpec": {"Kind": "ASCEND-NPU", "Value": 8}}
    ]


def test_a_node_document_becomes_hardware_with_its_gpus_and_labels() -> None:
    attrs = {
        "ID": "n1",
        "Spec": {
            "Availability": "active",
            "Labels": {"opsbot.pool": "team-a", "opsbot.accelerator": "Tesla T4"},
        },
        "Status": {"State": "ready"},
        "Description": {
            "Hostname": "gpu-1",
            "Platform": {"Architecture": "x86_64"},
            "Resources": {
                "NanoCPUs": 16_000_000_000,
                "MemoryBytes": 64 * 2**30,
                "GenericResources": [{"DiscreteResourceSpec": {"Kind": "NVIDIA-GPU", "Value": 2}}],
            },
        },
    }
    node = node_of(attrs)
    assert (node.name, node.cpus, node.memory_gib) == ("gpu-1", 16, 64)
    assert node.label("opsbot.pool") == "team-a" and node.state == "ready"
    assert node.count("nvidia", "T4") == 2
    # a manager that reports no address of its own is reached at its listener's
    assert node.addr == "127.0.0.1"
    managed = {**attrs, "ManagerStatus": {"Addr": "10.0.0.5:2377"}}
    assert node_of(managed).addr == "10.0.0.5"
    worker = {**attrs, "Status": {"State": "ready", "Addr": "10.231.0.2"}}
    assert node_of(worker).addr == "10.231.0.2"
    # nodes that take no instances are listed with what they are, and Swarm's probe skips them
    drained = {**attrs, "Spec": {**attrs["Spec"], "Availability": "drain"}}
    down = {**attrs, "Status": {"State": "down"}}
    assert (node_of(drained).state, node_of(down).state) == ("drain", "down")
    assert not node_of(drained).ready and not node_of(down).ready


def test_what_the_tasks_on_a_node_reserve_is_summed_per_node() -> None:
    def task(node: str, state: str, cpus: float, gib: int, gpus: int = 0) -> dict[str, Any]:
        generic = [{"DiscreteResourceSpec": {"Kind": "NVIDIA-GPU", "Value": gpus}}] if gpus else []
        reservations = {"NanoCPUs": int(cpus * 10**9), "MemoryBytes": gib * 2**30}
        if generic:
            reservations["GenericResources"] = generic
        return {
            "NodeID": node,
            "Status": {"State": state},
            "Spec": {"Resources": {"Reservations": reservations}},
        }

    held = reservations(
        [
            task("a", "running", 0.5, 4),
            task("a", "starting", 2, 8, gpus=1),
            task("a", "shutdown", 8, 32),  # ended: holds nothing
            task("b", "running", 1, 2),
            task("", "pending", 4, 4),  # not placed: holds no node
        ]
    )
    assert held == {
        "a": Reserved(2.5, 12 * 2**30, (("nvidia", 1),)),
        "b": Reserved(1.0, 2 * 2**30, ()),
    }


def test_a_pool_that_names_its_own_label_is_placed_by_it() -> None:
    config = Config(pools=[PoolConfig(name="gpu", label="rack=gpu-east")])
    assert constraints(FLAVORS["cpu.2u8g"], "gpu", config) == ["node.labels.rack == gpu-east"]
    assert constraints(FLAVORS["cpu.2u8g"], "public", config) == ["node.labels.rack != gpu-east"]
