"""parse_spec on arbitrary input: it returns a DeploySpec or raises SpecInvalid, never anything
else, and every error it raises names a field and says something."""

from __future__ import annotations

import copy
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opsbot.core.errors import SpecInvalid
from opsbot.core.spec import DeploySpec, parse_spec, spec_to_dict

FIELDS = ["name", "auto_stop", "description", "resource_pool", "models", "traffic_limit"]
ENTRY_FIELDS = ["source", "model", "version", "traffic_ratio", "flavor", "instances", "env"]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-300, max_value=300),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(),
    st.sampled_from(
        ["1h", "90m", "off", "on", "25h", "public", "iris", "1.0.0", "mine", "subscribed", "100"]
    ),
)
keys = st.one_of(st.text(max_size=12), st.sampled_from(FIELDS + ENTRY_FIELDS + ["hours"]))

#: Anything JSON (or TOML, or a form) could hand over, nested.
json_like = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(keys, children, max_size=5),
    ),
    max_leaves=20,
)

#: Tables shaped like a spec, with anything in each field, so validation goes deep.
entry_like = st.fixed_dictionaries({}, optional={f: json_like for f in ENTRY_FIELDS})
spec_like = st.fixed_dictionaries(
    {},
    optional={
        "name": json_like,
        "auto_stop": json_like,
        "description": json_like,
        "resource_pool": json_like,
        "traffic_limit": json_like,
        "models": st.one_of(st.lists(entry_like, max_size=4), json_like),
    },
)

VALID: dict[str, Any] = {
    "name": "svc",
    "auto_stop": "2h",
    "description": "canary",
    "resource_pool": "public",
    "models": [
        {
            "source": "mine",
            "model": "iris",
            "version": "1.0.0",
            "traffic_ratio": 80,
            "flavor": "cpu.2u8g",
            "instances": 2,
            "env": {"LOG_LEVEL": "debug"},
        },
        {"model": "iris", "version": "2.0.0", "traffic_ratio": 20},
    ],
    "traffic_limit": 50,
}


@st.composite
def mutated(draw: st.DrawFn) -> dict[str, Any]:
    """A valid spec with a few of its fields replaced by anything, removed, or added to."""
    data = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        where = draw(st.sampled_from(["top", "entry", "env"]))
        if where == "top":
            target = data
            field = draw(st.sampled_from([*FIELDS, "extra"]))
        else:
            models = data.get("models")
            if not isinstance(models, list) or not models or not isinstance(models[0], dict):
                continue
            target = models[draw(st.integers(min_value=0, max_value=len(models) - 1))]
            if not isinstance(target, dict):
                continue
            if where == "env":
                env = target.setdefault("env", {})
                if not isinstance(env, dict):
                    continue
                target = env
                field = draw(keys)
            else:
                field = draw(st.sampled_from([*ENTRY_FIELDS, "extra"]))
        if draw(st.booleans()) and field in target:
            del target[field]
        else:
            target[field] = draw(json_like)
    return data


def _only_spec_invalid(data: Any) -> None:
    try:
        result = parse_spec(data)
    except SpecInvalid as exc:
        assert exc.errors, "SpecInvalid without any field error"
        for error in exc.errors:
            assert isinstance(error.field, str) and error.field
            assert isinstance(error.message, str) and error.message.strip()
        json.dumps(exc.as_dict())  # every front end can send it as it is
        return
    # Whatever passes is a real spec, and its normalised form passes again unchanged.
    assert isinstance(result, DeploySpec)
    assert sum(m.traffic_ratio or 0 for m in result.models) == 100
    assert parse_spec(spec_to_dict(result)) == result


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(json_like)
def test_anything_json_like(data: Any) -> None:
    _only_spec_invalid(data)


@FUZZ
@given(spec_like)
def test_tables_shaped_like_a_spec(data: dict[str, Any]) -> None:
    _only_spec_invalid(data)


@FUZZ
@given(mutated())
def test_mutations_of_a_valid_spec(data: dict[str, Any]) -> None:
    _only_spec_invalid(data)


def test_the_spec_being_mutated_is_valid() -> None:
    parsed = parse_spec(VALID)
    assert [m.traffic_ratio for m in parsed.models] == [80, 20]
