"""DeploySpec, one entry of ``models`` at a time: source, model, version, traffic_ratio,
flavor, instances, env; the rules across entries (ratios sum to 100, versions distinct); and
secret-looking env values (warnings and masking)."""

from __future__ import annotations

import pytest
from core_support import entry, fields_of, message_for, ok, refused, spec

from opsbot.core.spec import (
    MAX_ENV,
    MAX_ENV_NAME,
    MAX_ENV_VALUE,
    looks_secret,
    mask_value,
    masked_env,
    spec_warnings,
)


def one(**fields: object) -> dict[str, object]:
    return spec(models=[entry(**fields)])


# -- source ---------------------------------------------------------------------------------


def test_source_defaults_to_mine() -> None:
    assert ok(spec()).models[0].source == "mine"


@pytest.mark.parametrize(("source", "model"), [("mine", "iris"), ("subscribed", "alice/iris")])
def test_source_valid(source: str, model: str) -> None:
    assert ok(one(source=source, model=model)).models[0].source == source


@pytest.mark.parametrize(
    ("model", "source"), [("iris", "mine"), ("alice/iris", "subscribed"), ("me/iris", "subscribed")]
)
def test_source_left_out_follows_the_reference(model: str, source: str) -> None:
    entry_ = ok(spec(models=[{"model": model, "version": "1.0.0"}])).models[0]
    assert entry_.source == source


def test_a_subscription_named_without_its_owner_is_refused() -> None:
    message_for(
        refused(one(source="subscribed", model="iris")),
        "models[0].model",
        "OWNER/NAME",
        "alice/iris",
        "set the source to mine",
    )


@pytest.mark.parametrize("source", ["theirs", "", "MINE", None, 1])
def test_source_invalid(source: object) -> None:
    message_for(refused(one(source=source)), "models[0].source", '"mine"', '"subscribed"')


# -- model ----------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["iris", "iris-onnx", "alice/iris", "m" * 64])
def test_model_valid(model: str) -> None:
    assert ok(one(model=model)).models[0].model == model


@pytest.mark.parametrize(
    "model", ["a/b/c", "/iris", "iris/", "1iris", "iris model", "iris\n/x", "m" * 65]
)
def test_model_invalid(model: str) -> None:
    message_for(refused(one(model=model)), "models[0].model", "OWNER/NAME")


def test_model_empty_or_missing() -> None:
    message_for(refused(one(model="")), "models[0].model", "at least 1")
    message_for(
        refused(spec(models=[{"version": "1.0.0"}])), "models[0].model", "required", "model name"
    )


# -- version --------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.0.0", "v2", "2024-01_a", "7"])
def test_version_valid(version: str) -> None:
    assert ok(one(version=version)).models[0].version == version


@pytest.mark.parametrize("version", ["1.0 beta", ".1", "-1", "1/2", "..", "1.0\nx"])
def test_version_invalid(version: str) -> None:
    message_for(refused(one(version=version)), "models[0].version", "letters, digits")


def test_version_missing() -> None:
    message_for(refused(spec(models=[{"model": "iris"}])), "models[0].version", "required")


# -- flavor ---------------------------------------------------------------------------------


def test_flavor_defaults_to_the_cpu_flavor() -> None:
    assert ok(spec()).models[0].flavor == "cpu.2u8g"


@pytest.mark.parametrize("flavor", ["gpu.v100", "ascend.910x8", "exeml.cpu"])
def test_flavor_valid(flavor: str) -> None:
    assert ok(one(flavor=flavor)).models[0].flavor == flavor


@pytest.mark.parametrize("flavor", ["gpu v100", ".gpu", "gpu/v100"])
def test_flavor_invalid(flavor: str) -> None:
    message_for(refused(one(flavor=flavor)), "models[0].flavor", "letters, digits")


# -- instances ------------------------------------------------------------------------------


def test_instances_default_to_one() -> None:
    assert ok(spec()).models[0].instances == 1


@pytest.mark.parametrize("n", [1, 2, 128, "3"])
def test_instances_valid(n: object) -> None:
    assert ok(one(instances=n)).models[0].instances == int(str(n))


@pytest.mark.parametrize("n", [0, 129, -1, 1.5, "some", None])
def test_instances_invalid(n: object) -> None:
    message_for(refused(one(instances=n)), "models[0].instances", "1 to 128")


def test_instances_not_a_boolean() -> None:
    message_for(refused(one(instances=True)), "models[0].instances", "whole number")


def test_error_names_the_index_of_the_entry() -> None:
    models = [
        entry(version="1.0.0", traffic_ratio=50),
        entry(version="2.0.0", traffic_ratio=50, instances=500),
    ]
    error = refused(spec(models=models))
    assert fields_of(error) == ["models[1].instances"]
    message_for(error, "models[1].instances", "128")


def test_unknown_field_of_an_entry() -> None:
    message = message_for(refused(one(replicas=2)), "models[0].replicas", "unknown field")
    for known in ("source", "model", "version", "traffic_ratio", "flavor", "instances", "env"):
        assert known in message


# -- traffic_ratio --------------------------------------------------------------------------


def test_single_entry_takes_all_traffic_by_default() -> None:
    assert ok(spec()).models[0].traffic_ratio == 100


def test_single_entry_at_100() -> None:
    assert ok(one(traffic_ratio=100)).models[0].traffic_ratio == 100


@pytest.mark.parametrize("ratio", [0, 50, 99])
def test_single_entry_below_100(ratio: int) -> None:
    message_for(refused(one(traffic_ratio=ratio)), "models[0].traffic_ratio", f"{ratio}%", "100")


@pytest.mark.parametrize("ratio", [-1, 101, 2.5, "half", True])
def test_ratio_not_a_whole_percentage(ratio: object) -> None:
    message_for(refused(one(traffic_ratio=ratio)), "models[0].traffic_ratio")


def test_gated_launch_ratios_sum_to_100() -> None:
    models = [entry(version="1.0.0", traffic_ratio=70), entry(version="2.0.0", traffic_ratio=30)]
    parsed = ok(spec(models=models))
    assert [m.traffic_ratio for m in parsed.models] == [70, 30]
    assert parsed.ratios == {("iris", "1.0.0"): 70, ("iris", "2.0.0"): 30}


def test_gated_launch_may_give_a_version_no_traffic() -> None:
    models = [entry(version="1.0.0", traffic_ratio=100), entry(version="2.0.0", traffic_ratio=0)]
    assert [m.traffic_ratio for m in ok(spec(models=models)).models] == [100, 0]


@pytest.mark.parametrize(("a", "b", "total"), [(50, 40, 90), (70, 40, 110), (0, 0, 0)])
def test_gated_launch_ratios_not_100(a: int, b: int, total: int) -> None:
    models = [entry(version="1.0.0", traffic_ratio=a), entry(version="2.0.0", traffic_ratio=b)]
    error = refused(spec(models=models))
    assert fields_of(error) == ["models"]
    message_for(error, "models", f"sum to {total}%", "100%")


def test_rules_across_versions_are_listed_beside_other_fields_errors() -> None:
    # pydantic checks the rules across versions only once every field is valid: a user who
    # fixed a bad name learned of a bad ratio sum on the next try.
    models = [entry(traffic_ratio=60), entry(traffic_ratio=30)]
    rules = [{"header": "x-group", "matches": "beta", "version": "9.9.9"}]
    error = refused(spec(name="bad name", traffic_limit=0, models=models, rules=rules))
    assert fields_of(error) == [
        "name",
        "traffic_limit",
        "models",
        "models[0].version",
        "models[1].version",
        "rules[0].version",
    ]
    message_for(error, "models", "sum to 90%")
    message_for(error, "models[1].version", "listed 2 times")
    message = message_for(error, "rules[0].version", "9.9.9 is not one version")
    assert "choose one of: iris 1.0.0 (" in message  # a version listed twice is offered once


def test_rules_across_versions_wait_for_the_versions_themselves() -> None:
    # A version's own error first: its ratio may be the very field that is wrong.
    models = [entry(traffic_ratio="half"), entry(version="2.0.0", traffic_ratio=30)]
    error = refused(spec(name="bad name", models=models))
    assert fields_of(error) == ["name", "models[0].traffic_ratio"]


def test_a_lone_version_beside_other_errors_needs_no_ratio() -> None:
    assert fields_of(refused(spec(name="bad name"))) == ["name"]


def test_gated_launch_missing_ratio() -> None:
    models = [entry(version="1.0.0", traffic_ratio=100), entry(version="2.0.0")]
    error = refused(spec(models=models))
    assert fields_of(error) == ["models[1].traffic_ratio"]
    message_for(error, "models[1].traffic_ratio", "set a traffic ratio", "100")


def test_gated_launch_missing_every_ratio() -> None:
    error = refused(spec(models=[entry(version="1.0.0"), entry(version="2.0.0")]))
    assert fields_of(error) == ["models[0].traffic_ratio", "models[1].traffic_ratio"]


# -- versions distinct ----------------------------------------------------------------------


def test_versions_must_be_distinct() -> None:
    models = [entry(traffic_ratio=50), entry(traffic_ratio=50, instances=2)]
    error = refused(spec(models=models))
    assert fields_of(error) == ["models[0].version", "models[1].version"]
    message_for(error, "models[1].version", "iris 1.0.0", "2 times", "once")


def test_same_version_of_different_models_is_fine() -> None:
    models = [
        entry(model="iris", traffic_ratio=50),
        entry(model="iris-onnx", traffic_ratio=50),
    ]
    assert len(ok(spec(models=models)).models) == 2


def test_distinct_and_ratio_errors_together() -> None:
    models = [entry(traffic_ratio=50), entry(traffic_ratio=20)]
    error = refused(spec(models=models))
    assert set(fields_of(error)) == {"models", "models[0].version", "models[1].version"}


# -- env ------------------------------------------------------------------------------------


def test_env_defaults_to_empty() -> None:
    assert ok(spec()).models[0].env == {}


@pytest.mark.parametrize("name", ["A", "_X", "MY_VAR_2", "lower", "x" * MAX_ENV_NAME])
def test_env_name_valid(name: str) -> None:
    assert ok(one(env={name: "1"})).models[0].env == {name: "1"}


@pytest.mark.parametrize("name", ["1A", "A-B", "A B", "", "É", "A=B", "A\nB"])
def test_env_name_invalid(name: str) -> None:
    message_for(refused(one(env={name: "1"})), "models[0].env", "not a valid variable name", "_")


@pytest.mark.parametrize(
    "name", ["PATH", "HOME", "CUDA_VISIBLE_DEVICES", "ASCEND_VISIBLE_DEVICES", "OPSBOT_MODEL"]
)
def test_env_reserved_names(name: str) -> None:
    message = message_for(refused(one(env={name: "x"})), "models[0].env", "set by opsbot")
    assert name in message


def test_env_numbers_and_booleans_become_text() -> None:
    env = ok(one(env={"N": 5, "F": 1.5, "YES": True, "NO": False})).models[0].env
    assert env == {"N": "5", "F": "1.5", "YES": "true", "NO": "false"}


@pytest.mark.parametrize("value", [None, [1], {"a": 1}, float("nan"), float("inf")])
def test_env_value_must_be_text(value: object) -> None:
    message_for(refused(one(env={"A": value})), "models[0].env.A", "string")


def test_env_name_length() -> None:
    longest = "N" * MAX_ENV_NAME
    assert ok(one(env={longest: "1"})).models[0].env == {longest: "1"}
    message = message_for(
        refused(one(env={longest + "N": "1"})), "models[0].env", f"longer than {MAX_ENV_NAME}"
    )
    assert "shorter name" in message and longest not in message  # the name is cut in the message


def test_env_value_length_and_nul() -> None:
    assert ok(one(env={"A": "v" * MAX_ENV_VALUE})).models[0].env["A"] == "v" * MAX_ENV_VALUE
    message_for(refused(one(env={"A": "v" * (MAX_ENV_VALUE + 1)})), "models[0].env", "longer than")
    message_for(refused(one(env={"A": "a\x00b"})), "models[0].env", "NUL")


def test_env_at_most_100_variables() -> None:
    assert len(ok(one(env={f"V{i}": "x" for i in range(MAX_ENV)})).models[0].env) == MAX_ENV
    message_for(
        refused(one(env={f"V{i}": "x" for i in range(MAX_ENV + 1)})), "models[0].env", "at most"
    )


def test_env_must_be_a_table() -> None:
    message_for(refused(one(env="A=1")), "models[0].env", "dictionary")
    message_for(refused(one(env={1: "x"})), "models[0].env", "string")


# -- secrets: warnings and masking ----------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["DB_PASSWORD", "API_TOKEN", "CLIENT_SECRET", "AWS_ACCESS_KEY_ID", "private_key", "PASSWD"],
)
def test_secret_names_give_a_warning(name: str) -> None:
    parsed = ok(one(env={name: "hunter2", "LOG_LEVEL": "debug"}))
    warnings = spec_warnings(parsed)
    assert [w.field for w in warnings] == [f"models[0].env.{name}"]
    assert "secret" in warnings[0].message
    assert "masked" in warnings[0].message


def test_high_entropy_value_gives_a_warning() -> None:
    parsed = ok(one(env={"CONFIG": "q8Zr2LmX7vT4kP9wN3sBx"}))
    assert [w.field for w in spec_warnings(parsed)] == ["models[0].env.CONFIG"]


@pytest.mark.parametrize(
    "value",
    [
        "debug",
        "a" * 40,  # long, but no entropy
        "the quick brown fox jumps over it",  # words with spaces
        "abcdefghijklmnopqrst",  # 20 letters of one class
        "https",
    ],
)
def test_ordinary_values_give_no_warning(value: str) -> None:
    assert spec_warnings(ok(one(env={"SETTING": value}))) == []
    assert not looks_secret("SETTING", value)


def test_warning_names_the_entry() -> None:
    models = [
        entry(version="1.0.0", traffic_ratio=50),
        entry(version="2.0.0", traffic_ratio=50, env={"DB_PASSWORD": "x"}),
    ]
    assert [w.field for w in spec_warnings(ok(spec(models=models)))] == [
        "models[1].env.DB_PASSWORD"
    ]


def test_secret_values_do_not_stop_the_spec() -> None:
    parsed = ok(one(env={"DB_PASSWORD": "hunter2"}))
    assert parsed.models[0].env == {"DB_PASSWORD": "hunter2"}


def test_masking() -> None:
    assert mask_value("DB_PASSWORD", "hunter2") == "****"
    assert mask_value("API_TOKEN", "tok-1234567890-xy") == "to****xy"
    assert mask_value("CONFIG", "q8Zr2LmX7vT4kP9wN3sBx") == "q8****Bx"
    assert mask_value("LOG_LEVEL", "debug") == "debug"
    assert masked_env({"DB_PASSWORD": "hunter2", "LOG_LEVEL": "debug"}) == {
        "DB_PASSWORD": "****",
        "LOG_LEVEL": "debug",
    }
