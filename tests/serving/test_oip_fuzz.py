"""No request body makes the model server answer 5xx: hypothesis drives the whole parse, check
and predict path of ``/predict`` and ``/v2/models/{name}/infer`` with JSON of every shape, tensors
near the valid ones, and binary tensor data of any length."""

from __future__ import annotations

import json
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from opsbot.serving.oip import DATATYPES, Declared, fits
from opsbot.serving.server import ModelState, load_for_serving


@pytest.fixture(scope="module")
def iris(example_dirs: dict[tuple[str, str], Path]) -> ModelState:
    state = ModelState(
        path=example_dirs[("iris-onnx", "1.0.0")],
        fmt="onnx",
        entry=None,
        name="iris-onnx",
        version="1.0.0",
        loader=load_for_serving,
        executor=ThreadPoolExecutor(max_workers=1),
    )
    state.model = state._load_sync()
    return state


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=5),
)
anything = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=30,
)
tensors = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["X", "input", ""]) | anything,
        "shape": st.lists(st.integers(min_value=-2, max_value=6), max_size=4) | anything,
        "datatype": st.sampled_from(sorted(DATATYPES)) | anything,
        "data": st.lists(scalars, max_size=30)
        | st.lists(st.lists(st.floats(width=32), min_size=4, max_size=4), max_size=5)
        | anything,
        "parameters": st.fixed_dictionaries(
            {}, optional={"binary_data_size": st.integers(min_value=-1, max_value=80)}
        )
        | anything,
    },
)
requests = st.fixed_dictionaries(
    {},
    optional={
        "id": anything,
        "inputs": st.lists(tensors, max_size=2) | anything,
        "outputs": st.lists(
            st.fixed_dictionaries(
                {"name": st.sampled_from(["label", "probs"]) | anything},
                optional={"parameters": anything},
            ),
            max_size=2,
        )
        | anything,
        "parameters": anything,
    },
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=requests, tail=st.binary(max_size=64), declared=st.booleans())
# Found by this test: a datatype that is a list (unhashable) was looked up in the set of names.
@example(
    body={"inputs": [{"name": "X", "shape": [1, 4], "datatype": [], "data": [1, 2, 3, 4]}]},
    tail=b"",
    declared=False,
)
def test_no_infer_body_gets_a_5xx(iris: ModelState, body: Any, tail: bytes, declared: bool) -> None:
    assert iris.model is not None
    head = json.dumps(body).encode()
    raw = head + tail if declared else head
    status, reply, _ = iris.infer_sync(iris.model, raw, str(len(head)) if declared else None, "m")
    assert status in (200, 400), reply
    if status == 400:
        assert set(json.loads(reply)) == {"error"}


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=anything | st.fixed_dictionaries({"instances": anything}))
def test_no_predict_body_gets_a_5xx(iris: ModelState, body: Any) -> None:
    assert iris.model is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflow on the way is a 400, not a warning
        status, reply = iris.predict_sync(iris.model, json.dumps(body).encode())
    assert status in (200, 400), reply


@pytest.mark.parametrize(
    ("given_type", "declared", "ok"),
    [
        ("FP32", "FP32", True),
        ("FP32", "FP64", True),
        ("FP64", "FP32", False),
        ("INT64", "FP32", True),
        ("UINT8", "INT16", True),
        ("UINT16", "INT16", False),
        ("INT8", "UINT8", False),
        ("BOOL", "INT8", True),
        ("INT8", "BOOL", False),
        ("BYTES", "FP32", False),
        ("FP32", "BYTES", False),
    ],
)
def test_which_datatypes_fit_which(given_type: str, declared: str, ok: bool) -> None:
    assert fits(given_type, declared) is ok


def test_a_model_s_declared_tensors_of_any_shape_read_as_unknown_not_as_a_crash() -> None:
    declared = Declared.parse(
        [
            {"name": "a", "datatype": ["FP32"], "shape": [-1, 4]},
            {"name": "b", "datatype": "FP32", "shape": ["x", None]},
            {"name": "c", "datatype": "INT64", "shape": [-1, True]},
            {"name": "d", "datatype": "FP32", "shape": [-1, 4]},
        ]
    )
    assert [(d.name, d.datatype, d.shape) for d in declared] == [
        ("a", "", (-1, 4)),
        ("b", "FP32", ()),
        ("c", "INT64", ()),
        ("d", "FP32", (-1, 4)),
    ]
