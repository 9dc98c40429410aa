"""Resource pools: public (the nodes times the overcommit factors), dedicated pools from the
config, members, and admission control that refuses with what is free."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest
from core_support import count, entry, make_core, message_for, node, nvidia, spec

from opsbot.core.app import DB_NAME, Core
from opsbot.core.config import Config, PoolConfig, PublicPoolConfig
from opsbot.core.errors import CapacityExceeded, NotFound, SpecInvalid
from opsbot.core.flavors import load_flavors
from opsbot.core.hardware import GIB, FakeProbe, Node, Reserved
from opsbot.core.pools import PUBLIC, Capacity, Pools, demand

TEAM = PoolConfig(
    name="team",
    cpus=4,
    memory_gib=16,
    accelerators={"nvidia": 1},
    flavors=["cpu.2u8g", "gpu.v100", "gpu.t4"],
    members=["alice"],
)


def pools(*nodes: Node, config: Config | None = None) -> Pools:
    return Pools(config or Config(), load_flavors(), FakeProbe(nodes))


# -- capacity -------------------------------------------------------------------------------


def test_public_capacity_is_the_nodes_times_overcommit() -> None:
    p = pools(node("a", cpus=2, memory_gib=4), node("b", cpus=6, memory_gib=12))
    # 8 vCPUs x 4 and 16 GiB x 2, the documented defaults.
    assert p.capacity(PUBLIC) == Capacity(32, 32, {})


def test_accelerators_are_never_overcommitted() -> None:
    gpus = [nvidia("T4", 0), nvidia("T4", 1)]
    p = pools(node("gpu", cpus=4, memory_gib=8, devices=gpus))
    assert p.capacity(PUBLIC) == Capacity(16, 16, {"nvidia": 2})


def test_overcommit_factors_come_from_the_config() -> None:
    config = Config(public_pool=PublicPoolConfig(cpu_overcommit=1.0, memory_overcommit=1.0))
    p = pools(node(cpus=2, memory_gib=4), config=config)
    assert p.capacity(PUBLIC) == Capacity(2, 4, {})
    # With no overcommit a 2-vCPU node cannot host one 8-vCPU instance.
    status = p.flavor_status(p.flavors["gpu.t4"], PUBLIC)
    assert not status.available
    assert "needs 8 vCPUs, the node offers 2" in status.reason


def test_overcommit_lets_a_small_machine_host_a_flavor() -> None:
    # 2 vCPUs x 4 = 8 and 4 GiB x 2 = 8: one cpu.2u8g instance fits a very small machine.
    p = pools(node(cpus=2, memory_gib=4))
    assert p.flavor_status(p.flavors["cpu.2u8g"], PUBLIC).available


def test_dedicated_pool_capacity_is_declared() -> None:
    p = pools(node(), config=Config(pools=[TEAM]))
    assert p.names() == ["public", "team"]
    assert p.capacity("team") == Capacity(4, 16, {"nvidia": 1})
    assert p.exists("team") and p.exists(PUBLIC) and not p.exists("other")


def test_dedicated_pool_offers_only_its_flavors() -> None:
    p = pools(node(cpus=8, devices=[nvidia("T4")]), config=Config(pools=[TEAM]))
    status = p.flavor_status(p.flavors["gpu.any"], "team")
    assert not status.available
    assert status.reason == "not offered in pool team"
    assert p.flavor_status(p.flavors["cpu.2u8g"], "team").available


def test_dedicated_pool_still_needs_the_hardware() -> None:
    p = pools(node(), config=Config(pools=[TEAM]))
    status = p.flavor_status(p.flavors["gpu.t4"], "team")
    assert not status.available
    assert "T4" in status.reason


def test_dedicated_pool_smaller_than_one_instance() -> None:
    p = pools(node(cpus=64, memory_gib=256, devices=[nvidia("V100")]), config=Config(pools=[TEAM]))
    # gpu.v100 needs 8 vCPUs and 64 GiB; the pool has 4 and 16.
    status = p.flavor_status(p.flavors["gpu.v100"], "team")
    assert not status.available
    assert "smaller than one instance" in status.reason
    assert "8 vCPUs" in status.reason


def test_dedicated_pool_runs_on_its_nodes() -> None:
    pool = TEAM.model_copy(update={"nodes": ["gpu-1"], "cpus": 32, "memory_gib": 128})
    with_gpu = pools(
        node("cpu-1"), node("gpu-1", devices=[nvidia("T4")]), config=Config(pools=[pool])
    )
    assert with_gpu.flavor_status(with_gpu.flavors["gpu.t4"], "team").available
    without = pools(
        node("cpu-1", devices=[nvidia("T4")]), node("gpu-1"), config=Config(pools=[pool])
    )
    assert not without.flavor_status(without.flavors["gpu.t4"], "team").available
    missing = pools(node("cpu-1"), config=Config(pools=[pool]))
    status = missing.flavor_status(missing.flavors["cpu.2u8g"], "team")
    assert not status.available
    assert status.reason == (
        "pool team has no nodes: label one with "
        "`docker node update --label-add opsbot.pool=team NODE`"
    )


def test_members() -> None:
    open_pool = TEAM.model_copy(update={"name": "open", "members": []})
    p = pools(node(), config=Config(pools=[TEAM, open_pool]))
    assert p.may_use("alice", "team")
    assert not p.may_use("bob", "team")
    assert p.may_use("bob", "open")
    assert p.may_use("bob", PUBLIC)
    assert not p.may_use("alice", "nope")


def test_capacity_arithmetic() -> None:
    free = Capacity(4, 16, {"nvidia": 1}) - Capacity(2, 8, {"nvidia": 1})
    assert free == Capacity(2, 8, {"nvidia": 0})
    assert free.shortfalls(Capacity(2, 8, {})) == []
    assert free.shortfalls(Capacity(3, 9, {"nvidia": 1})) == ["3 vCPUs", "9 GiB", "1 nvidia"]
    assert Capacity(2, 7.5, {"ascend": 2}).describe() == "2 vCPUs, 7.5 GiB, 2 ascend"
    assert Capacity(-1, -2, {}).describe() == "0 vCPUs, 0.0 GiB"


def test_demand_of_a_flavor() -> None:
    p = pools(node())
    assert demand(p.flavors["gpu.v100"], 3) == Capacity(24, 192, {"nvidia": 3})
    assert demand(p.flavors["cpu.2u8g"], 2) == Capacity(4, 16, {})
    assert p.sum_demand([("cpu.2u8g", 1), ("gone.flavor", 5)]) == Capacity(2, 8, {})


# -- admission through the core -------------------------------------------------------------


def team_core(home: Path, me: str) -> Core:
    team = TEAM.model_copy(update={"members": [me]})
    probe = FakeProbe([node(cpus=64, memory_gib=256, devices=[nvidia("V100")])])
    return make_core(home, probe, Config(pools=[team]))


def test_dedicated_pool_admits_until_full(examples_home: Path, me: str) -> None:
    core = team_core(examples_home, me)
    actor = core.user(me)
    # Two cpu.2u8g instances take the whole pool: 4 vCPUs, 16 GiB.
    core.create_service(
        actor, spec(name="first", resource_pool="team", models=[entry(instances=2)])
    )
    with pytest.raises(CapacityExceeded) as info:
        core.create_service(actor, spec(name="second", resource_pool="team"))
    error = info.value
    assert error.field == "resource_pool"
    assert [e.field for e in error.errors] == ["resource_pool"]
    assert "0 vCPUs, 0.0 GiB, 1 nvidia free of 4 vCPUs, 16.0 GiB, 1 nvidia" in error.message
    assert "Stop a service" in error.message
    assert count(examples_home, "SELECT COUNT(*) FROM services") == 1
    assert count(examples_home, "SELECT COUNT(*) FROM events WHERE kind = 'capacity_refused'") == 1


def test_public_pool_refuses_with_what_is_free(examples_home: Path, me: str) -> None:
    # 2 vCPUs and 4 GiB: the public pool offers 8 vCPUs and 8 GiB, one cpu.2u8g instance.
    core = make_core(examples_home, FakeProbe([node(cpus=2, memory_gib=4)]))
    actor = core.user(me)
    core.create_service(actor, spec(name="first"))
    with pytest.raises(CapacityExceeded) as info:
        core.create_service(actor, spec(name="second"))
    assert info.value.field == "resource_pool"
    assert "6 vCPUs, 0.0 GiB free of 8 vCPUs, 8.0 GiB" in info.value.message
    assert [s.name for s in core.services(actor)] == ["first"]


def test_stopped_services_hold_no_capacity(examples_home: Path, me: str) -> None:
    core = make_core(examples_home, FakeProbe([node(cpus=2, memory_gib=4)]))
    actor = core.user(me)
    core.create_service(actor, spec(name="first"))
    conn = sqlite3.connect(examples_home / DB_NAME)
    with conn:
        conn.execute("UPDATE services SET status = 'stopped' WHERE name = 'first'")
    conn.close()
    core.create_service(actor, spec(name="second"))
    assert len(core.services(actor)) == 2


def test_too_many_instances_at_once(examples_home: Path, me: str) -> None:
    core = make_core(examples_home, FakeProbe([node(cpus=2, memory_gib=4)]))
    with pytest.raises(CapacityExceeded) as info:
        core.create_service(core.user(me), spec(models=[entry(instances=2)]))
    assert "cannot take 4 vCPUs, 16.0 GiB" in info.value.message
    assert core.services(core.user(me)) == []


def test_pool_members_only(examples_home: Path, me: str) -> None:
    core = team_core(examples_home, me)
    stranger = core.user("mallory")
    with pytest.raises(SpecInvalid) as info:
        core.check(stranger, spec(resource_pool="team"))
    message_for(info.value, "resource_pool", "mallory", "not a member", "ask an admin")


def test_unknown_pool(examples_home: Path, me: str) -> None:
    core = team_core(examples_home, me)
    with pytest.raises(SpecInvalid) as info:
        core.check(core.user(me), spec(resource_pool="gpus"))
    message_for(info.value, "resource_pool", "no pool 'gpus'", "public, team")


def test_flavor_not_offered_in_the_pool(examples_home: Path, me: str) -> None:
    core = team_core(examples_home, me)
    with pytest.raises(SpecInvalid) as info:
        core.check(core.user(me), spec(resource_pool="team", models=[entry(flavor="gpu.any")]))
    message_for(
        info.value, "models[0].flavor", "gpu.any is unavailable", "not offered in pool team"
    )


def test_flavor_statuses_of_an_unknown_pool(home: Path) -> None:
    core = make_core(home, config=Config(pools=[TEAM]))
    assert {s.flavor.id for s in core.flavor_statuses("team")} == {f.id for f in core.flavors}
    with pytest.raises(NotFound) as info:
        core.flavor_statuses("tema")
    assert info.value.field == "resource_pool"
    assert "no pool 'tema'; choose one of public, team" in info.value.message


def _labelled(name: str, pool: str | None, cpus: int = 8) -> Node:
    n = node(name, cpus)
    return Node(
        n.name, n.cpus, n.memory_bytes, n.arch, labels=(("opsbot.pool", pool),) if pool else ()
    )


def test_nodes_labelled_for_a_dedicated_pool_are_its_own_and_not_public() -> None:
    config = Config(pools=[TEAM])
    p = pools(_labelled("a", None, 8), _labelled("b", "team", 16), config=config)
    public = config.public_pool
    assert p.capacity(PUBLIC).cpus == 8 * public.cpu_overcommit  # b is not counted
    assert [n.name for n in p._nodes("team")] == ["b"]
    # a label for a pool the config does not know leaves the node public
    stray = pools(_labelled("c", "nobody", 4), config=config)
    assert [n.name for n in stray._nodes(PUBLIC)] == ["c"]


# -- pools of labelled nodes ----------------------------------------------------------------


class LabelledProbe(FakeProbe):
    """A swarm's nodes: instances run only where the labels say."""

    places_by_label = True

    def __init__(self, nodes: list[Node], down: list[Node] | None = None):
        super().__init__(nodes)
        self.down = down or []

    def inventory(self) -> list[Node]:
        return [*self.nodes(), *self.down]


def labelled(name: str, cpus: int, gib: float, *labels: str, **kw: object) -> Node:
    pairs = tuple(sorted(tuple(label.split("=", 1)) for label in labels))
    return replace(node(name, cpus=cpus, memory_gib=gib), labels=pairs, **kw)  # type: ignore[arg-type]


TEAM_A = PoolConfig(name="team-a")  # no capacity declared: what its nodes have


def test_a_pool_of_labelled_nodes_offers_what_they_have_and_public_the_rest() -> None:
    gpu = labelled("gpu-1", 16, 64, "opsbot.pool=team-a", devices=(nvidia("T4"),))
    probe = LabelledProbe([node("cpu-1", cpus=4, memory_gib=8), gpu])
    p = Pools(Config(pools=[TEAM_A]), load_flavors(), probe)
    assert p.capacity("team-a") == Capacity(16, 64, {"nvidia": 1})  # never overcommitted
    assert p.capacity(PUBLIC) == Capacity(16, 16, {})  # cpu-1 times 4 and 2
    assert p.flavor_status(p.flavors["gpu.t4"], "team-a").available
    assert not p.flavor_status(p.flavors["gpu.t4"], PUBLIC).available
    # one instance must fit one node as it is: 32 GiB of gpu.t4 fits 64, 64 GiB of v100 does
    # only just; a flavor larger than every node of the pool is refused with the node's words
    big = p.flavor_status(p.flavors["ascend.910x8"], "team-a")
    assert not big.available and "vCPUs" in big.reason


def test_a_pool_whose_label_no_node_carries_has_no_nodes_on_a_swarm() -> None:
    probe = LabelledProbe([node("cpu-1")])
    p = Pools(Config(pools=[TEAM_A]), load_flavors(), probe)
    status = p.flavor_status(p.flavors["cpu.2u8g"], "team-a")
    assert not status.available
    assert "label one with `docker node update --label-add opsbot.pool=team-a NODE`" in (
        status.reason
    )
    assert p.capacity("team-a") == Capacity()
    # on one machine (no placing by label) a pool without labelled nodes is a share of it
    local = pools(node("cpu-1"), config=Config(pools=[TEAM]))
    assert local.flavor_status(local.flavors["cpu.2u8g"], "team").available


def test_a_deploy_to_a_pool_of_nodes_is_refused_with_what_is_free(
    examples_home: Path, me: str
) -> None:
    probe = LabelledProbe([labelled("a-1", 4, 16, "opsbot.pool=team-a"), node("cpu-1")])
    core = make_core(examples_home, probe, Config(pools=[TEAM_A]))
    actor = core.user(me)
    make = spec(name="small", resource_pool="team-a", models=[entry(instances=2)])
    core.create_service(actor, make)  # 2 x cpu.2u8g = 4 vCPUs, 16 GiB: all of a-1
    with pytest.raises(CapacityExceeded) as refused:
        core.create_service(actor, spec(name="more", resource_pool="team-a"))
    assert refused.value.field == "resource_pool"
    assert (
        "pool team-a cannot take 2 vCPUs, 8.0 GiB: 0 vCPUs, 0.0 GiB free of 4 vCPUs, 16.0 GiB"
        in refused.value.message
    )


def test_nodes_are_listed_with_their_pool_state_and_what_is_free() -> None:
    a1 = labelled(
        "a-1", 4, 16, "opsbot.pool=team-a", reserved=Reserved(1.5, 4 * GIB), addr="10.0.0.2"
    )
    gone = labelled("old-1", 2, 4, state="down")
    p = Pools(Config(pools=[TEAM_A]), load_flavors(), LabelledProbe([a1, node("cpu-1")], [gone]))
    listed = {s.node.name: s.as_dict() for s in p.node_statuses()}
    assert listed["a-1"]["pool"] == "team-a" and listed["a-1"]["addr"] == "10.0.0.2"
    assert listed["a-1"]["free"] == {"cpus": 2.5, "memory_gib": 12.0, "accelerators": {}}
    assert listed["a-1"]["summary"] == "2.5 vCPUs, 12.0 GiB free of 4 vCPUs, 16.0 GiB"
    assert listed["cpu-1"]["pool"] == PUBLIC and listed["cpu-1"]["free"] is None
    assert listed["old-1"]["state"] == "down"
    assert p.capacity(PUBLIC) == Capacity(32, 64, {})  # a node that is down offers nothing


def test_pool_labels_no_pool_names_are_reported_with_the_fix() -> None:
    stale = labelled("cpu-1", 4, 8, "opsbot.pool=team-z", "rack=east")
    custom = PoolConfig(name="east", label="rack=west")
    p = Pools(Config(pools=[TEAM_A, custom]), load_flavors(), LabelledProbe([stale]))
    assert p.stray_labels() == [
        "node cpu-1 carries opsbot.pool=team-z, which no pool in config.toml names, so it "
        "serves the public pool; add a pool with that label or remove it: "
        "docker node update --label-rm opsbot.pool cpu-1",
        "node cpu-1 carries rack=east, which no pool in config.toml names, so it serves the "
        "public pool; add a pool with that label or remove it: "
        "docker node update --label-rm rack cpu-1",
    ]
    assert p.pool_of(stale) == PUBLIC
    assert Pools(Config(pools=[]), load_flavors(), LabelledProbe([node()])).stray_labels() == []
