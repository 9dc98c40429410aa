"""Modifying running services: the new spec, the rolling replacement, history and rollback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from core_support import World, cpu_probe, entry, fields_of, message_for

from opsbot.core.controller import DRAINING, STARTING, instance_rows
from opsbot.core.errors import (
    CapacityExceeded,
    Conflict,
    InvalidInput,
    PermissionDenied,
    SpecInvalid,
)
from opsbot.core.events import Kind
from opsbot.core.routes import READY, load_routes
from opsbot.core.spec import parse_spec
from opsbot.core.status import Status
from opsbot.core.update import Changes, apply_changes, parse_changes, parse_rule, spec_diff


@pytest.fixture
def world(examples_home: Path) -> World:
    return World(examples_home)


def running(world: World, **spec: object) -> None:
    world.deploy(**spec)
    world.controller.reconcile_all()
    assert world.status() == Status.RUNNING


def rows(world: World) -> list[tuple[int, int, str, str]]:
    service = world.core.service(world.me, "svc")
    return [(r.idx, r.n, r.state, r.handle) for r in instance_rows(world.core.store, service.id)]


def ready_upstreams(world: World) -> int:
    route = load_routes(world.core.store.db)[world.core.service(world.me, "svc").uid]
    return sum(len(v.upstreams) for v in route.versions)


# -- building the new spec from flags -------------------------------------------------------


def test_traffic_changes_ratios_and_adds_a_version_of_the_same_model() -> None:
    current = parse_spec({"name": "svc", "models": [entry(instances=2, env={"A": "1"})]})
    data = apply_changes(current, Changes(traffic={"1.0.0": 90, "2.0.0": 10}))
    new = parse_spec(data)
    assert [(m.version, m.traffic_ratio, m.instances, m.env) for m in new.models] == [
        ("1.0.0", 90, 2, {"A": "1"}),
        ("2.0.0", 10, 2, {"A": "1"}),
    ]


def test_a_new_version_of_an_unclear_model_must_name_it() -> None:
    current = parse_spec(
        {
            "name": "svc",
            "models": [
                entry(traffic_ratio=50),
                entry(model="iris-onnx", traffic_ratio=50),
            ],
        }
    )
    with pytest.raises(InvalidInput) as exc:
        apply_changes(current, Changes(traffic={"3.0.0": 10}))
    assert "MODEL:3.0.0" in message_for(exc.value, "traffic")


def test_instances_for_an_unknown_version_is_refused_by_name() -> None:
    current = parse_spec({"name": "svc", "models": [entry()]})
    with pytest.raises(InvalidInput) as exc:
        apply_changes(current, Changes(instances={"9.9": 2}))
    assert "no version 9.9; it has 1.0.0" in message_for(exc.value, "instances")


def test_changes_sent_as_json_are_checked_field_by_field() -> None:
    assert parse_changes({"traffic": {"1.0.0": "50"}}).traffic == {"1.0.0": 50}
    with pytest.raises(InvalidInput) as exc:
        parse_changes({"traffic": {"1.0.0": "half"}, "colour": "red"})
    assert fields_of(exc.value) == ["changes.traffic.1.0.0", "changes.colour"]


def test_rules_are_written_header_equals_or_matches_arrow_version() -> None:
    assert parse_rule("X-Group=beta->2.0.0") == {
        "header": "X-Group",
        "equals": "beta",
        "version": "2.0.0",
    }
    assert parse_rule("X-User~^a.*->iris:1.0.0") == {
        "header": "X-User",
        "matches": "^a.*",
        "version": "1.0.0",
        "model": "iris",
    }
    with pytest.raises(InvalidInput):
        parse_rule("X-Group beta 2.0.0")


def test_diff_names_each_change_by_version() -> None:
    old = parse_spec({"name": "svc", "models": [entry()]}).model_dump(mode="json")
    new = parse_spec(
        {
            "name": "svc",
            "traffic_limit": 50,
            "models": [
                entry(traffic_ratio=90, instances=2),
                entry(version="2.0.0", traffic_ratio=10),
            ],
        }
    ).model_dump(mode="json")
    assert spec_diff(old, new) == [
        "traffic_limit: 100 -> 50",
        "iris 1.0.0 traffic_ratio: 100 -> 90",
        "iris 1.0.0 instances: 1 -> 2",
        "+ iris 2.0.0: 10% on 1 x cpu.2u8g",
    ]
    assert spec_diff(new, new) == []


# -- what may be modified, and when ---------------------------------------------------------


def test_a_deploying_service_cannot_be_modified(world: World) -> None:
    world.deploy()
    with pytest.raises(Conflict, match="Deploying; wait until it is Running"):
        world.core.update_service(world.me, "svc", Changes(traffic_limit=5))
    assert world.core.service(world.me, "svc").spec.traffic_limit == 100


def test_name_and_pool_stay(world: World) -> None:
    running(world)
    current = world.core.service(world.me, "svc").spec.model_dump(mode="json")
    with pytest.raises(InvalidInput) as exc:
        world.core.update_service(world.me, "svc", {**current, "name": "other"})
    assert fields_of(exc.value) == ["name"]


def test_bad_changes_change_nothing(examples_home: Path) -> None:
    world = World(examples_home, probe=cpu_probe(cpus=8))
    running(world)
    before = world.core.history(world.me, "svc")
    with pytest.raises(SpecInvalid) as exc:
        world.core.update_service(world.me, "svc", Changes(traffic={"1.0.0": 60}))
    assert "sum to 60%" in message_for(exc.value, "models[0].traffic_ratio")
    with pytest.raises(CapacityExceeded):
        world.core.update_service(world.me, "svc", Changes(instances={"*": 128}))
    assert world.core.history(world.me, "svc") == before
    assert world.core.service(world.me, "svc").spec.models[0].instances == 1


def test_nothing_to_change_makes_no_snapshot(world: World) -> None:
    running(world)
    result = world.core.update_service(world.me, "svc", Changes(traffic_limit=100))
    assert result.changes == () and result.snapshot is None
    assert len(world.core.history(world.me, "svc")) == 1


# -- the controller brings instances to the new spec without a gap --------------------------


def test_ratio_and_limit_changes_touch_no_instance(world: World) -> None:
    running(world, models=[entry(traffic_ratio=90), entry(version="2.0.0", traffic_ratio=10)])
    started = list(world.runtime.started)
    result = world.core.update_service(
        world.me, "svc", Changes(traffic={"1.0.0": 50, "2.0.0": 50}, traffic_limit=7)
    )
    assert result.snapshot == 2
    world.controller.reconcile_all()
    assert world.runtime.started == started and world.runtime.stopped == []
    route = load_routes(world.core.store.db)[world.core.service(world.me, "svc").uid]
    assert [v.ratio for v in route.versions] == [50, 50] and route.traffic_limit == 7
    assert Kind.MODIFIED in world.kinds()


def test_a_changed_env_replaces_instances_only_once_the_new_ones_are_ready(world: World) -> None:
    running(world, models=[entry(instances=2)])
    old = {h for *_, h in rows(world)}
    world.core.update_service(world.me, "svc", Changes(env_set={"MODE": "fast"}))
    world.not_ready = {20003, 20004}  # the new instances take a while
    world.controller.reconcile_all()
    assert len(world.runtime.started) == 4
    assert ready_upstreams(world) == 2  # the old ones still serve
    assert world.status() == Status.RUNNING
    world.not_ready = {20004}
    world.controller.reconcile_all()  # sees the new one ready
    world.controller.reconcile_all()  # and retires an old one for it
    states = sorted(state for _, _, state, _ in rows(world))
    # one new ready, so one old leaves: it drains (out of the routes) before it stops
    assert states == [DRAINING, READY, READY, STARTING]
    assert ready_upstreams(world) == 2
    world.not_ready = set()
    world.controller.reconcile_all()
    assert ready_upstreams(world) >= 2
    world.controller.reconcile_all()
    assert ready_upstreams(world) == 2
    assert world.runtime.stopped == []  # nothing stopped while draining
    world.clock.advance(world.controller.drain_s)
    world.controller.reconcile_all()
    assert set(world.runtime.stopped) == old
    assert {h for *_, h in rows(world)}.isdisjoint(old)
    service = world.core.service(world.me, "svc")
    env = {
        r.handle: world.runtime.instances[r.handle].spec.env
        for r in instance_rows(world.core.store, service.id)
    }
    assert all(e == {"MODE": "fast"} for e in env.values())
    assert world.status() == Status.RUNNING


def test_more_instances_keep_the_service_running_while_they_start(world: World) -> None:
    running(world)
    world.core.update_service(world.me, "svc", Changes(instances={"*": 3}))
    world.not_ready = {20002, 20003}
    world.controller.reconcile_all()
    assert world.status() == Status.RUNNING
    assert len(rows(world)) == 3
    world.not_ready = set()
    world.controller.reconcile_all()
    assert ready_upstreams(world) == 3


def test_fewer_instances_drain_the_extra_ones(world: World) -> None:
    running(world, models=[entry(instances=3)])
    world.core.update_service(world.me, "svc", Changes(instances={"*": 1}))
    world.controller.reconcile_all()
    assert ready_upstreams(world) == 1
    assert world.runtime.stopped == []
    world.clock.advance(world.controller.drain_s)
    world.controller.reconcile_all()
    assert len(world.runtime.stopped) == 2 and len(rows(world)) == 1


def test_an_added_version_leaves_the_running_one_alone(world: World) -> None:
    running(world)
    (first,) = [h for *_, h in rows(world)]
    world.core.update_service(world.me, "svc", Changes(traffic={"1.0.0": 90, "2.0.0": 10}))
    world.controller.reconcile_all()
    assert first in [h for *_, h in rows(world)] and world.runtime.stopped == []
    # 1.0.0 is dropped later: the slot of 2.0.0 stays, its instance keeps running
    world.core.update_service(world.me, "svc", Changes(traffic={"2.0.0": 100}, remove=("1.0.0",)))
    world.controller.reconcile_all()
    world.clock.advance(world.controller.drain_s)
    world.controller.reconcile_all()
    assert world.runtime.stopped == [first]
    assert [(idx, state) for idx, _, state, _ in rows(world)] == [(1, READY)]


def test_a_new_version_that_fails_leaves_the_old_ones_serving(world: World) -> None:
    running(world)
    world.core.update_service(world.me, "svc", Changes(env_set={"WEIGHTS": "broken"}))
    world.not_ready = {20002}
    world.controller.reconcile_all()
    (new,) = [h for *_, state, h in rows(world) if state == STARTING]
    world.runtime.kill(new, code=3, reason="LOAD FAILED: bad weights")
    world.controller.reconcile_all()
    assert world.status() == Status.CONCERNING
    assert ready_upstreams(world) == 1


def test_rules_follow_their_version_across_modifications(world: World) -> None:
    running(world, models=[entry(traffic_ratio=90), entry(version="2.0.0", traffic_ratio=10)])
    rule = parse_rule("X-Group=beta->2.0.0")
    world.core.update_service(
        world.me, "svc", Changes(rules=[rule], traffic={"1.0.0": 100, "2.0.0": 0})
    )
    route = load_routes(world.core.store.db)[world.core.service(world.me, "svc").uid]
    assert route.ruled({"X-Group": "beta"}) == 1 and route.ruled({"X-Group": "alpha"}) is None
    # dropping 1.0.0 moves 2.0.0 to the front of the spec; the rule still names its slot
    world.core.update_service(world.me, "svc", Changes(traffic={"2.0.0": 100}, remove=("1.0.0",)))
    route = load_routes(world.core.store.db)[world.core.service(world.me, "svc").uid]
    assert route.ruled({"X-Group": "beta"}) == 1 == route.versions[0].idx


def test_a_rule_must_name_a_version_of_the_service(world: World) -> None:
    running(world)
    with pytest.raises(SpecInvalid) as exc:
        world.core.update_service(world.me, "svc", Changes(rules=[parse_rule("X-A=b->2.0.0")]))
    assert "not one version of this service" in message_for(exc.value, "rules[0].version")


def test_rule_patterns_run_in_linear_time_or_are_refused() -> None:
    models = [entry(traffic_ratio=50), entry(version="2.0.0", traffic_ratio=50)]
    nested = parse_spec(
        {"name": "svc", "models": models, "rules": [parse_rule("X-A~(a+)+b->2.0.0")]}
    )
    # exponential for a backtracking engine; RE2 answers at once
    assert nested.rules[0].applies("a" * 100_000) is False
    assert nested.rules[0].applies("aab") is True
    for pattern in (r"(a)\1", "(?=a)a", "("):
        with pytest.raises(SpecInvalid) as exc:
            parse_spec(
                {"name": "svc", "models": models, "rules": [parse_rule(f"X-A~{pattern}->2.0.0")]}
            )
        assert "not a regular expression opsbot can run" in message_for(
            exc.value, "rules[0].matches"
        )


def test_a_stored_spec_that_no_longer_validates_loses_its_rules_not_its_route(
    world: World,
) -> None:
    running(world, models=[entry(traffic_ratio=90), entry(version="2.0.0", traffic_ratio=10)])
    world.core.update_service(world.me, "svc", Changes(rules=[parse_rule("X-G=b->2.0.0")]))
    service = world.core.service(world.me, "svc")
    broken = service.spec.model_dump(mode="json")
    broken["rules"][0]["header"] = "not a header"
    with world.core.store.write() as db:
        db.execute("UPDATE services SET spec = ? WHERE id = ?", (json.dumps(broken), service.id))
    route = load_routes(world.core.store.db)[service.uid]
    assert route.rules == () and len(route.versions) == 2


# -- history and rollback ---------------------------------------------------------------------


def test_history_keeps_every_modification_and_rollback_applies_one_again(world: World) -> None:
    running(world)
    world.core.update_service(world.me, "svc", Changes(traffic_limit=10))
    world.core.update_service(world.me, "svc", Changes(instances={"*": 2}, description="two"))
    assert [s.n for s in world.core.history(world.me, "svc")] == [1, 2, 3]
    assert world.core.rollback_preview(world.me, "svc", 1) == [
        "description: 'two' -> ''",
        "traffic_limit: 10 -> 100",
        "iris 1.0.0 instances: 2 -> 1",
    ]
    result = world.core.rollback(world.me, "svc", 1)
    assert result.snapshot == 4
    spec = world.core.service(world.me, "svc").spec
    assert (spec.traffic_limit, spec.models[0].instances, spec.description) == (100, 1, "")
    events = world.core.events(world.me, service="svc")
    assert any(e.kind == Kind.MODIFIED and "rolled back to #1" in e.message for e in events)
    with pytest.raises(InvalidInput) as exc:
        world.core.rollback(world.me, "svc", 9)
    assert "choose 1 to 4" in message_for(exc.value, "to")


def test_only_the_owner_may_modify(world: World, examples_home: Path) -> None:
    running(world)
    other = world.core.user("mallory")
    with pytest.raises(Exception, match="only its owner"):
        world.core.update_service(other, "svc", Changes(traffic_limit=1), owner=world.me.name)


def test_modifiable_says_why_before_a_front_opens_its_form(world: World) -> None:
    world.deploy()
    with pytest.raises(Conflict, match="Deploying"):
        world.core.modifiable(world.me, "svc")
    world.controller.reconcile_all()
    assert world.core.modifiable(world.me, "svc").name == "svc"
    with pytest.raises(PermissionDenied):
        world.core.modifiable(world.core.user("mallory"), "svc", owner=world.me.name)


# -- Modify planned on the daemon: masked values mean keep, a plan before applying ------------


def test_masked_values_sent_back_keep_the_secret_and_a_typed_one_replaces_it(
    world: World,
) -> None:
    secret = "s3cr3t-Value-0123456789"
    running(world, models=[entry(env={"DB_PASSWORD": secret, "LEVEL": "info"})])
    shown = world.core.service(world.me, "svc").as_dict()
    masked = shown["models"][0]["env"]["DB_PASSWORD"]
    assert masked != secret and "****" in masked
    edited = {
        "name": "svc",
        "auto_stop": shown["auto_stop"],
        "models": [{**shown["models"][0], "env": {"DB_PASSWORD": masked, "LEVEL": "debug"}}],
    }
    plan = world.core.update_plan(world.me, "svc", edited)
    assert plan.changes == ("iris 1.0.0 env: LEVEL changed",)  # the secret is not a change
    assert plan.restarts == ("iris 1.0.0: 1 instance(s) replaced, one at a time",)
    assert plan.as_dict()["spec"]["models"][0]["env"]["DB_PASSWORD"] == masked  # shown masked
    assert world.core.history(world.me, "svc")[-1].n == 1  # a plan changes nothing
    world.core.update_service(world.me, "svc", edited)
    assert world.core.service(world.me, "svc").spec.models[0].env == {
        "DB_PASSWORD": secret,
        "LEVEL": "debug",
    }
    retyped = {**edited, "models": [{**edited["models"][0], "env": {"DB_PASSWORD": "new"}}]}
    world.core.update_service(world.me, "svc", retyped)
    assert world.core.service(world.me, "svc").spec.models[0].env == {"DB_PASSWORD": "new"}


def test_a_plan_says_what_restarts_and_what_does_not(world: World) -> None:
    running(world)
    current = world.core.service(world.me, "svc").spec.model_dump(mode="json")
    more = {**current, "traffic_limit": 5, "models": [{**current["models"][0], "instances": 3}]}
    plan = world.core.update_plan(world.me, "svc", more)
    assert plan.changes == ("traffic_limit: 100 -> 5", "iris 1.0.0 instances: 1 -> 3")
    assert plan.restarts == ("iris 1.0.0: 2 instance(s) start",)
    bad = {**current, "traffic_limit": 0}
    with pytest.raises(SpecInvalid) as exc:
        world.core.update_plan(world.me, "svc", bad)
    assert fields_of(exc.value) == ["traffic_limit"]


def test_history_comes_with_each_snapshots_diff(world: World) -> None:
    running(world)
    world.core.update_service(world.me, "svc", Changes(traffic_limit=10))
    history = world.core.history(world.me, "svc")
    assert [s.changes for s in history] == [(), ("traffic_limit: 100 -> 10",)]


def test_a_mask_that_hides_no_current_value_is_refused_by_name(world: World) -> None:
    running(world, models=[entry(env={"LEVEL": "info"})])
    current = world.core.service(world.me, "svc").spec.model_dump(mode="json")
    forged = {**current, "models": [{**current["models"][0], "env": {"API_KEY": "sk****78"}}]}
    with pytest.raises(InvalidInput) as exc:
        world.core.update_plan(world.me, "svc", forged)
    assert fields_of(exc.value) == ["models[0].env.API_KEY"]
    assert "type the value again" in message_for(exc.value, "models[0].env.API_KEY")
    with pytest.raises(InvalidInput):
        world.core.update_service(world.me, "svc", forged)
    assert world.core.service(world.me, "svc").spec.models[0].env == {"LEVEL": "info"}
