"""The rules of the form that need the world (Core.check and admission.check_spec): the version
must exist and be Normal, the flavor must exist, be available in the pool and allow the model
(ExeML flavors take only ExeML models); every problem comes back at once, each with its field."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from core_support import (
    EXEML_MODEL,
    entry,
    fields_of,
    gated,
    make_core,
    message_for,
    node,
    nvidia,
    snapshot,
    spec,
)

from opsbot.core.admission import check_spec
from opsbot.core.app import DB_NAME, Core
from opsbot.core.errors import SpecInvalid
from opsbot.core.hardware import FakeProbe


@pytest.fixture
def core(examples_home: Path) -> Core:
    return make_core(examples_home)


def check_error(core: Core, user: str, data: dict[str, Any]) -> SpecInvalid:
    with pytest.raises(SpecInvalid) as info:
        core.check(core.user(user), data)
    return info.value


def set_status(home: Path, name: str, version: str, status: str, reason: str = "") -> None:
    # The registry's own tests drive real checks to Failed; here only the rule matters.
    conn = sqlite3.connect(home / DB_NAME)
    with conn:
        conn.execute(
            """UPDATE model_versions SET status = ?, reason = ? WHERE version = ?
               AND model_id = (SELECT id FROM models WHERE name = ?)""",
            (status, reason, version, name),
        )
    conn.close()


def test_gated_launch_resolves_both_versions(core: Core, me: str) -> None:
    checked = core.check(core.user(me), gated())
    assert [(v.name, v.version, v.status) for v in checked.versions] == [
        ("iris", "1.0.0", "normal"),
        ("iris", "2.0.0", "normal"),
    ]
    assert checked.warnings == ()


def test_warnings_come_back_with_the_checked_spec(core: Core, me: str) -> None:
    checked = core.check(core.user(me), spec(models=[entry(env={"DB_PASSWORD": "hunter2"})]))
    assert [w.field for w in checked.warnings] == ["models[0].env.DB_PASSWORD"]


def test_check_applies_the_spec_rules_first(core: Core, me: str) -> None:
    error = check_error(core, me, spec(name="9lives"))
    assert fields_of(error) == ["name"]


# -- the version ----------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["building", "failed"])
def test_version_must_be_normal(core: Core, me: str, examples_home: Path, status: str) -> None:
    set_status(examples_home, "iris", "2.0.0", status, "joblib could not load model.joblib")
    error = check_error(core, me, gated())
    assert fields_of(error) == ["models[1].version"]
    message = message_for(error, "models[1].version", status.capitalize(), "Normal")
    if status == "failed":
        assert "joblib could not load" in message


def test_unknown_version(core: Core, me: str) -> None:
    error = check_error(core, me, spec(models=[entry(version="3.0.0")]))
    message_for(error, "models[0].version", "no version '3.0.0'", "1.0.0, 2.0.0")


def test_unknown_model(core: Core, me: str) -> None:
    error = check_error(core, me, spec(models=[entry(model="tulips")]))
    message_for(error, "models[0].model", "no model 'tulips'", "opsbot model create")


def test_another_users_models_are_not_mine(core: Core, me: str) -> None:
    error = check_error(core, "bob", spec())
    message_for(error, "models[0].model", "My Models")
    # The source and the reference disagree: OWNER/NAME of someone else is no model of mine.
    error = check_error(core, "bob", spec(models=[entry(source="mine", model=f"{me}/iris")]))
    message_for(error, "models[0].model", f"belongs to {me}", "leave the source out")


def test_owner_slash_name_without_a_source_is_a_subscription(core: Core, me: str) -> None:
    bob = core.user("bob")
    wanted = spec(models=[entry(model=f"{me}/iris")])
    error = check_error(core, "bob", wanted)
    message_for(error, "models[0].model", "My Subscriptions", f"opsbot model subscribe {me}/iris")
    core.subscribe(bob, f"{me}/iris")
    checked = core.check(bob, wanted)
    assert checked.spec.models[0].source == "subscribed"
    assert (checked.versions[0].owner, checked.versions[0].name) == (me, "iris")


def test_a_checked_spec_is_deployed_without_a_second_check(
    core: Core, me: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    actor = core.user(me)
    checked = core.check(actor, spec(models=[entry(env={"DB_PASSWORD": "hunter2hunter2"})]))
    calls: list[object] = []
    monkeypatch.setattr("opsbot.core.admission.check_spec", lambda *a: calls.append(a))
    created = core.create_service(actor, checked)
    assert calls == [] and created.service.name == "svc"
    # The one check's warnings come back with the service (the API's deploy answer has them).
    assert [w.field for w in created.warnings] == [w.field for w in checked.warnings]
    assert created.warnings and "DB_PASSWORD" in created.warnings[0].field


def test_subscribed_model(core: Core, me: str) -> None:
    bob = core.user("bob")
    wanted = spec(models=[entry(source="subscribed", model=f"{me}/iris")])
    error = check_error(core, "bob", wanted)
    message_for(error, "models[0].model", "My Subscriptions", f"opsbot model subscribe {me}/iris")
    core.subscribe(bob, f"{me}/iris")
    (version,) = core.check(bob, wanted).versions
    assert (version.owner, version.name, version.version) == (me, "iris", "1.0.0")


def test_subscribed_model_is_named_owner_slash_name(core: Core, me: str) -> None:
    core.subscribe(core.user("bob"), f"{me}/iris")
    error = check_error(core, "bob", spec(models=[entry(source="subscribed")]))
    message_for(error, "models[0].model", "OWNER/NAME")


# -- the flavor -----------------------------------------------------------------------------


def test_unknown_flavor(core: Core, me: str) -> None:
    error = check_error(core, me, spec(models=[entry(flavor="gpu.a100")]))
    message_for(error, "models[0].flavor", "no flavor 'gpu.a100'", "cpu.2u8g", "gpu.v100")


def test_flavor_no_node_can_host(core: Core, me: str) -> None:
    error = check_error(core, me, spec(models=[entry(flavor="gpu.v100")]))
    message_for(error, "models[0].flavor", "gpu.v100 is unavailable", "V100")


def test_flavor_a_node_can_host(examples_home: Path, me: str) -> None:
    gpu = FakeProbe([node(cpus=16, memory_gib=64, devices=[nvidia("Tesla V100")])])
    core = make_core(examples_home, gpu)
    (version,) = core.check(core.user(me), spec(models=[entry(flavor="gpu.v100")])).versions
    assert version.version == "1.0.0"


def test_exeml_flavor_refuses_a_custom_model(core: Core, me: str) -> None:
    error = check_error(core, me, spec(models=[entry(flavor="exeml.cpu")]))
    message_for(error, "models[0].flavor", "exeml.cpu takes only exeml models", "iris is custom")


def test_exeml_flavor_takes_an_exeml_model(core: Core, me: str) -> None:
    checked = core.check(core.user(me), spec(models=[entry(model=EXEML_MODEL, flavor="exeml.cpu")]))
    assert [(v.name, v.origin) for v in checked.versions] == [(EXEML_MODEL, "exeml")]


def test_exeml_gpu_flavor_needs_a_gpu_too(core: Core, me: str) -> None:
    error = check_error(core, me, spec(models=[entry(model=EXEML_MODEL, flavor="exeml.gpu")]))
    message_for(error, "models[0].flavor", "exeml.gpu is unavailable", "NVIDIA")


# -- everything at once ---------------------------------------------------------------------


def test_every_problem_with_its_field(core: Core, me: str) -> None:
    data = {
        "name": "svc",
        "resource_pool": "gpus",
        "models": [
            entry(version="9.9", traffic_ratio=50),
            entry(version="2.0.0", traffic_ratio=50, flavor="exeml.cpu"),
        ],
    }
    error = check_error(core, me, data)
    assert fields_of(error) == ["resource_pool", "models[0].version", "models[1].flavor"]
    for e in error.errors:
        assert len(e.message.split()) >= 3


def test_a_spec_refused_on_its_fields_has_its_versions_checked_too(core: Core, me: str) -> None:
    # The versions were checked against the registry only once every field was valid: a user
    # who fixed a bad name learned of a missing version on the next try.
    data = {
        "name": "bad name",
        "traffic_limit": 0,
        "resource_pool": "gpus",
        "models": [
            entry(version="9.9", traffic_ratio=50),
            entry(version="2.0.0", traffic_ratio=50, flavor="exeml.cpu"),
        ],
    }
    error = check_error(core, me, data)
    assert fields_of(error) == [
        "name",
        "traffic_limit",
        "resource_pool",
        "models[0].version",
        "models[1].flavor",
    ]
    message_for(error, "resource_pool", "no pool 'gpus'")


def test_an_invalid_pool_name_is_told_once_and_the_versions_still_checked(
    core: Core, me: str
) -> None:
    error = check_error(core, me, spec(resource_pool="no pool!", models=[entry(version="9.9")]))
    assert fields_of(error) == ["resource_pool", "models[0].version"]
    message_for(error, "resource_pool", "not a pool name")


def test_a_version_invalid_itself_is_not_looked_up(core: Core, me: str) -> None:
    error = check_error(core, me, spec(name="bad name", models=[entry(version="9.9", instances=0)]))
    assert fields_of(error) == ["name", "models[0].instances"]


def test_beside_other_errors_another_users_private_model_reads_as_missing(
    core: Core, me: str
) -> None:
    # The looked-up versions of a refused spec say no more than a valid spec's: whether a
    # model the actor may not see exists is not told.
    def said(model: str) -> str:
        error = check_error(core, "bob", spec(name="bad name", models=[entry(model=model)]))
        assert fields_of(error) == ["name", "models[0].model"]
        return message_for(error, "models[0].model", "My Subscriptions")

    assert said(f"{me}/iris") == said(f"{me}/ghost").replace("ghost", "iris")


def test_an_oversized_refused_spec_looks_nothing_up(
    core: Core, me: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    looked_up: list[object] = []
    monkeypatch.setattr(core.registry, "resolve", lambda *a: looked_up.append(a))
    versions = [entry(version=str(i)) for i in range(20_000)]
    error = check_error(core, me, spec(name="bad name", models=versions))
    assert fields_of(error) == ["name", "models"]
    message_for(error, "models", "at most 10")
    assert looked_up == []


def test_a_refused_spec_changes_nothing(core: Core, me: str, examples_home: Path) -> None:
    before = snapshot(examples_home)
    with pytest.raises(SpecInvalid):
        core.create_service(core.user(me), spec(models=[entry(version="3.0.0")]))
    with pytest.raises(SpecInvalid):
        core.create_service(core.user(me), spec(name="bad name"))
    assert snapshot(examples_home) == before


# -- validation without a registry ----------------------------------------------------------


def test_validate_without_a_store_skips_versions_and_creates_nothing(home: Path, me: str) -> None:
    core = make_core(home)
    result = core.validate(core.user(me), spec(models=[entry(version="3.0.0")]))
    assert result.registry_checked is False
    assert result.spec.models[0].version == "3.0.0"
    assert list(home.iterdir()) == []
    # Flavors are checked all the same.
    with pytest.raises(SpecInvalid) as info:
        core.validate(core.user(me), spec(models=[entry(flavor="gpu.t4")]))
    message_for(info.value, "models[0].flavor", "unavailable")


def test_validate_with_a_store_checks_versions(core: Core, me: str) -> None:
    result = core.validate(core.user(me), gated())
    assert result.registry_checked is True
    with pytest.raises(SpecInvalid) as info:
        core.validate(core.user(me), spec(models=[entry(version="3.0.0")]))
    message_for(info.value, "models[0].version", "3.0.0")


def test_check_spec_without_registry(core: Core, me: str) -> None:
    from opsbot.core.spec import parse_spec

    checked = check_spec(parse_spec(spec(models=[entry(model="ghost")])), me, None, core.pools)
    assert checked.versions == ()
