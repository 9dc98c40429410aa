"""DeploySpec, the fields of the service itself: name, description, resource pool, traffic limit,
the list of models, and what an input that is no spec at all gets."""

from __future__ import annotations

from typing import Any

import pytest
from core_support import entry, fields_of, message_for, ok, refused, spec

from opsbot.core.errors import SpecInvalid
from opsbot.core.spec import DeploySpec, parse_spec, spec_to_dict

# -- name -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "svc", "Iris-2_canary", "x" + "y" * 63])
def test_name_valid(name: str) -> None:
    assert ok(spec(name=name)).name == name


def test_name_surrounding_whitespace_is_dropped() -> None:
    assert ok(spec(name="  svc  ")).name == "svc"


@pytest.mark.parametrize(
    "name",
    [
        "",
        "1svc",
        "-svc",
        "_svc",
        "my svc",
        "my.svc",
        "svc/x",
        "café",
        "sv\nc",
        "x" * 65,
    ],
)
def test_name_invalid(name: str) -> None:
    message_for(refused(spec(name=name)), "name", "letters", "starting with a letter")


@pytest.mark.parametrize("name", [None, 5, ["svc"], {"n": 1}])
def test_name_must_be_text(name: object) -> None:
    message_for(refused(spec(name=name)), "name", "string", "letters")


def test_name_is_required() -> None:
    error = refused({"models": [entry()]})
    message_for(error, "name", "required", "letters")


# -- description ----------------------------------------------------------------------------


def test_description_defaults_to_empty() -> None:
    assert ok(spec()).description == ""


@pytest.mark.parametrize(
    "text", ["Iris species, two versions (canary).", "d" * 100, "model: v2; 50% / 50%"]
)
def test_description_valid(text: str) -> None:
    assert ok(spec(description=text)).description == text


def test_description_longer_than_100_is_refused() -> None:
    message_for(refused(spec(description="d" * 101)), "description", "100")


@pytest.mark.parametrize("char", list("!<>=&\"'"))
def test_description_forbidden_characters(char: str) -> None:
    message = message_for(
        refused(spec(description=f"fast {char} cheap")), "description", "remove", "not allowed"
    )
    assert char in message


# -- resource_pool --------------------------------------------------------------------------


def test_resource_pool_defaults_to_public() -> None:
    assert ok(spec()).resource_pool == "public"


@pytest.mark.parametrize("pool", ["public", "team-a", "gpu_pool", "7th"])
def test_resource_pool_valid(pool: str) -> None:
    assert ok(spec(resource_pool=pool)).resource_pool == pool


@pytest.mark.parametrize("pool", ["", "my pool", "-x", "a/b", "p" * 65])
def test_resource_pool_invalid(pool: str) -> None:
    message_for(refused(spec(resource_pool=pool)), "resource_pool", "public")


# -- traffic_limit --------------------------------------------------------------------------


def test_traffic_limit_defaults_to_100() -> None:
    assert ok(spec()).traffic_limit == 100


@pytest.mark.parametrize(("given", "expected"), [(1, 1), (5000, 5000), ("7", 7)])
def test_traffic_limit_valid(given: object, expected: int) -> None:
    assert ok(spec(traffic_limit=given)).traffic_limit == expected


@pytest.mark.parametrize("limit", [0, -1, 1.5, "many", None, 10**7])
def test_traffic_limit_invalid(limit: object) -> None:
    message_for(refused(spec(traffic_limit=limit)), "traffic_limit", "requests per second")


@pytest.mark.parametrize("limit", [True, False])
def test_traffic_limit_is_not_a_boolean(limit: bool) -> None:
    message_for(refused(spec(traffic_limit=limit)), "traffic_limit", "whole number")


# -- models (the list) ----------------------------------------------------------------------


def test_models_are_required() -> None:
    message_for(refused({"name": "svc"}), "models", "required", "model versions")


def test_models_may_not_be_empty() -> None:
    message_for(refused(spec(models=[])), "models", "at least 1")


def test_models_at_most_ten() -> None:
    models = [entry(version=f"{i}.0", traffic_ratio=10 if i == 0 else 9) for i in range(11)]
    message_for(refused(spec(models=models)), "models", "at most 10")


def test_ten_models_are_allowed() -> None:
    models = [entry(version=f"{i}.0", traffic_ratio=10) for i in range(10)]
    assert len(ok(spec(models=models)).models) == 10


@pytest.mark.parametrize("models", ["iris", 3, {"model": "iris"}])
def test_models_must_be_a_list(models: object) -> None:
    message_for(refused(spec(models=models)), "models", "list")


@pytest.mark.parametrize("item", [None, "iris 1.0.0", 7])
def test_model_entry_must_be_a_table(item: object) -> None:
    message_for(refused(spec(models=[item])), "models[0]", "dictionary")


# -- the spec as a whole --------------------------------------------------------------------


def test_minimal_spec_gets_every_default() -> None:
    result = spec_to_dict(ok({"name": "svc", "models": [{"model": "iris", "version": "1"}]}))
    assert result == {
        "name": "svc",
        "auto_stop": "1h",
        "description": "",
        "resource_pool": "public",
        "models": [
            {
                "source": "mine",
                "model": "iris",
                "version": "1",
                "traffic_ratio": 100,
                "flavor": "cpu.2u8g",
                "instances": 1,
                "env": {},
            }
        ],
        "traffic_limit": 100,
        "rules": [],
    }


def test_normalised_spec_parses_to_itself() -> None:
    first = ok(spec(auto_stop="120m", description="two hours", traffic_limit="50"))
    again = parse_spec(spec_to_dict(first))
    assert again == first
    assert spec_to_dict(again)["auto_stop"] == "2h"


def test_a_deployspec_passes_through() -> None:
    parsed = ok(spec())
    assert parse_spec(parsed) is parsed
    assert isinstance(parsed, DeploySpec)


def test_unknown_field_is_named_with_the_known_ones() -> None:
    message = message_for(refused(spec(replicas=3)), "replicas", "unknown field")
    for known in ("name", "auto_stop", "models", "traffic_limit"):
        assert known in message


def test_a_key_that_is_not_text_is_refused() -> None:
    data: dict[Any, Any] = {**spec(), 1: "x"}
    message_for(refused(data), "spec", "keys should be strings")


@pytest.mark.parametrize("data", [None, [], "name = 'svc'", 42, 1.5])
def test_input_that_is_not_a_table(data: object) -> None:
    message_for(refused(data), "spec", "expected a table of fields")


def test_every_problem_is_reported_at_once() -> None:
    error = refused(
        {
            "name": "9",
            "description": "<b>",
            "traffic_limit": 0,
            "models": [entry(instances=0)],
        }
    )
    assert set(fields_of(error)) >= {
        "name",
        "description",
        "traffic_limit",
        "models[0].instances",
    }
    assert isinstance(error, SpecInvalid)
    assert error.title == "Invalid deploy spec"
    assert error.status == 422
    as_dict = error.as_dict()
    assert as_dict["error"] == "SpecInvalid"
    assert {"field": "name", "message": error.errors[0].message} in as_dict["errors"]
    # The message of the exception lists each problem with its field.
    assert "traffic_limit:" in str(error)
