"""The model server: predictions, the Open Inference Protocol v2, readiness, and its errors.

Most tests run the aiohttp app in-process; the ``slow`` ones start ``python -m
opsbot.serving.server`` as the process runtime does and talk to it over a real socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import joblib
import pytest
from aiohttp import test_utils, web

import opsbot
from opsbot.core.address import connection, get_status, unix_address
from opsbot.core.examples import SAMPLE_ROWS, train
from opsbot.serving.loaders import LoadedModel, load_model
from opsbot.serving.server import LOAD_FAILED, STATE, make_app, onnx_providers

REPO = Path(opsbot.__file__).resolve().parent.parent
Client = test_utils.TestClient[web.Request, web.Application]

# A python-format model whose load() waits for a file named "go" in its folder, so a test
# decides when loading ends; predict() sums each row and fails on purpose for some inputs.
GATED_MODEL = """
import time
from pathlib import Path


class Model:
    def load(self, path):
        gate = Path(path) / "go"
        deadline = time.monotonic() + 60
        while not gate.exists():
            if time.monotonic() > deadline:
                raise RuntimeError("the gate file never appeared")
            time.sleep(0.01)

    def predict(self, instances):
        if instances == ["boom"]:
            raise RuntimeError("kaboom")
        if instances == ["object"]:
            return [object()]
        if all(isinstance(row, str) for row in instances):
            return [row.upper() for row in instances]
        return [sum(row) for row in instances]
"""


@pytest.fixture(scope="session")
def examples(example_dirs: dict[tuple[str, str], Path]) -> dict[str, Path]:
    """The example iris models, keyed "name-version"."""
    return {f"{name}-{version}": path for (name, version), path in example_dirs.items()}


@pytest.fixture(scope="session")
def iris_rows() -> list[list[float]]:
    from sklearn.datasets import load_iris

    x, _ = load_iris(return_X_y=True)
    rows: list[list[float]] = x.tolist()
    return rows


# A python-format model whose predict() does pure-Python work (holding the GIL between switches)
# until a file named "release" appears in its folder.
SPINNING_MODEL = """
import time
from pathlib import Path


class Model:
    def load(self, path):
        self.release = Path(path) / "release"

    def predict(self, instances):
        deadline = time.monotonic() + 30
        # Busy the way a native kernel is (it lets go of the GIL): a model spinning pure
        # Python starves every thread of the process, probes included (the known limit of
        # predicting in threads, not what this test is about).
        while not self.release.exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        return [0 for _ in instances]
"""


@pytest.fixture
def gated_model(tmp_path: Path) -> Path:
    folder = tmp_path / "gated"
    folder.mkdir()
    (folder / "model.py").write_text(GATED_MODEL)
    return folder


def open_gate(folder: Path) -> None:
    (folder / "go").write_text("")


async def wait_ready(client: Client, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with client.get("/v2/health/ready") as resp:
            if resp.status == 200:
                return
        await asyncio.sleep(0.01)
    raise AssertionError("the model server did not become ready")


@contextlib.asynccontextmanager
async def serving(
    path: Path,
    fmt: str,
    name: str = "iris",
    version: str = "1.0.0",
    *,
    entry: str | None = None,
    ready: bool = True,
    **options: Any,
) -> AsyncIterator[Client]:
    app = make_app(path, fmt, entry, name, version, **options)
    async with test_utils.TestClient(test_utils.TestServer(app)) as client:
        if ready:
            await wait_ready(client)
        yield client


async def post_json(client: Client, url: str, body: Any) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with client.post(url, data=data) as resp:
        assert resp.content_type == "application/json"
        return resp.status, await resp.json()


async def get_json(client: Client, url: str) -> tuple[int, Any]:
    async with client.get(url) as resp:
        assert resp.content_type == "application/json"
        return resp.status, await resp.json()


# -- predictions -------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("version", ["1.0.0", "2.0.0"])
async def test_sklearn_predictions_equal_scikit_learn(
    examples: dict[str, Path], iris_rows: list[list[float]], version: str
) -> None:
    folder = examples[f"iris-{version}"]
    expected = joblib.load(folder / "model.joblib").predict(iris_rows).tolist()
    async with serving(folder, "sklearn", version=version) as client:
        status, body = await post_json(client, "/predict", {"instances": iris_rows})
    assert status == 200
    assert body == {"predictions": expected}


@pytest.mark.asyncio
async def test_onnx_predictions_equal_scikit_learn(
    examples: dict[str, Path], iris_rows: list[list[float]]
) -> None:
    expected = train("1.0.0").predict(iris_rows).tolist()
    async with serving(examples["iris-onnx-1.0.0"], "onnx", "iris-onnx") as client:
        status, body = await post_json(client, "/predict", {"instances": iris_rows})
    assert status == 200
    assert body == {"predictions": expected}


@pytest.mark.asyncio
async def test_concurrent_predictions_are_each_right(
    examples: dict[str, Path], iris_rows: list[list[float]]
) -> None:
    folder = examples["iris-1.0.0"]
    expected = joblib.load(folder / "model.joblib").predict(iris_rows).tolist()
    async with serving(folder, "sklearn", threads=4) as client:
        replies = await asyncio.gather(
            *(post_json(client, "/predict", {"instances": [row]}) for row in iris_rows)
        )
    assert [status for status, _ in replies] == [200] * len(iris_rows)
    assert [body["predictions"][0] for _, body in replies] == expected


@pytest.mark.asyncio
async def test_probes_answer_while_the_pool_predicts_and_a_full_queue_gets_503(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "spinning"
    folder.mkdir()
    (folder / "model.py").write_text(SPINNING_MODEL)
    async with serving(folder, "python", "spin", threads=1, queue=2) as client:
        state = client.server.app[STATE]
        calls = [
            asyncio.create_task(post_json(client, "/predict", {"instances": [[1]]}))
            for _ in range(2)
        ]
        deadline = time.monotonic() + 10
        while state.pending < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert state.pending == 2
        # The one prediction thread is busy and one call waits: health answers at once.
        for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/spin/ready"):
            started = time.monotonic()
            status, _ = await get_json(client, path)
            assert status == 200
            assert time.monotonic() - started < 0.5, path
        async with client.post("/predict", json={"instances": [[1]]}) as resp:
            assert resp.status == 503
            assert resp.headers["Retry-After"] == "1"
            assert "2 predictions queued or running" in (await resp.json())["error"]
        (folder / "release").write_text("")
        assert [await call for call in calls] == [(200, {"predictions": [0]})] * 2
        assert state.pending == 0


# -- Open Inference Protocol v2 ----------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("layout", ["flat", "nested"])
async def test_v2_infer_round_trip(
    examples: dict[str, Path], iris_rows: list[list[float]], layout: str
) -> None:
    folder = examples["iris-1.0.0"]
    expected = joblib.load(folder / "model.joblib").predict(iris_rows).tolist()
    data = [v for row in iris_rows for v in row] if layout == "flat" else iris_rows
    request = {
        "id": "req-7",
        "inputs": [{"name": "input", "shape": [150, 4], "datatype": "FP64", "data": data}],
    }
    async with serving(folder, "sklearn") as client:
        status, body = await post_json(client, "/v2/models/iris/infer", request)
        versioned = await post_json(client, "/v2/models/iris/versions/1.0.0/infer", request)
    assert status == 200
    assert body == {
        "model_name": "iris",
        "model_version": "1.0.0",
        "id": "req-7",
        "outputs": [{"name": "predictions", "shape": [150], "datatype": "INT64", "data": expected}],
    }
    assert versioned == (200, body)


@pytest.mark.asyncio
async def test_v2_infer_onnx_names_its_output(
    examples: dict[str, Path], iris_rows: list[list[float]]
) -> None:
    expected = train("1.0.0").predict(iris_rows[:10]).tolist()
    flat = [v for row in iris_rows[:10] for v in row]
    request = {"inputs": [{"name": "X", "shape": [10, 4], "datatype": "FP32", "data": flat}]}
    async with serving(examples["iris-onnx-1.0.0"], "onnx", "iris-onnx") as client:
        status, body = await post_json(client, "/v2/models/iris-onnx/infer", request)
    assert status == 200
    assert "id" not in body
    assert body["outputs"] == [
        {"name": "label", "shape": [10], "datatype": "INT64", "data": expected}
    ]


@pytest.mark.asyncio
async def test_v2_metadata_and_health(examples: dict[str, Path]) -> None:
    async with serving(examples["iris-1.0.0"], "sklearn") as client:
        assert await get_json(client, "/v2/health/live") == (200, {"live": True})
        assert await get_json(client, "/v2/health/ready") == (200, {"ready": True})
        status, server = await get_json(client, "/v2")
        assert status == 200
        assert server == {
            "name": "opsbot-model-server",
            "version": opsbot.__version__,
            "extensions": ["binary_tensor_data"],
        }
        status, meta = await get_json(client, "/v2/models/iris")
        assert status == 200
        assert meta["name"] == "iris"
        assert meta["versions"] == ["1.0.0"]
        assert meta["platform"] == "sklearn"
        assert meta["inputs"] == [{"name": "input", "datatype": "FP64", "shape": [-1, 4]}]
        assert meta["outputs"][0]["name"] == "predictions"
        assert await get_json(client, "/v2/models/iris/versions/1.0.0") == (200, meta)
        ready = await get_json(client, "/v2/models/iris/ready")
        assert ready == (200, {"name": "iris", "ready": True})


@pytest.mark.asyncio
async def test_onnx_metadata_reports_providers(
    examples: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    async with serving(examples["iris-onnx-1.0.0"], "onnx", "iris-onnx") as client:
        status, meta = await get_json(client, "/v2/models/iris-onnx")
    assert status == 200
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["providers"] == ["CPUExecutionProvider"]
    assert meta["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, 4]}]


@pytest.mark.parametrize(
    ("visible", "available", "expected"),
    [
        ("", ["CUDAExecutionProvider", "CPUExecutionProvider"], ["CPUExecutionProvider"]),
        ("-1", ["CUDAExecutionProvider", "CPUExecutionProvider"], ["CPUExecutionProvider"]),
        ("0", ["CPUExecutionProvider"], ["CPUExecutionProvider"]),
        (
            "0,1",
            ["CUDAExecutionProvider", "CPUExecutionProvider"],
            ["CUDAExecutionProvider", "CPUExecutionProvider"],
        ),
    ],
)
def test_onnx_providers_follow_cuda_visible_devices(
    visible: str, available: list[str], expected: list[str]
) -> None:
    assert onnx_providers(visible, available) == expected


def test_onnx_providers_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    both = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert onnx_providers(available=both) == ["CPUExecutionProvider"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    assert onnx_providers(available=both) == both


# -- readiness ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_not_ready_until_loaded(examples: dict[str, Path]) -> None:
    release = threading.Event()

    def held_loader(path: Path, fmt: str, entry: str | None) -> LoadedModel:
        assert release.wait(30), "the test never released the loader"
        return load_model(path, fmt, entry)

    request = {
        "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP64", "data": SAMPLE_ROWS[0]}]
    }
    folder = examples["iris-1.0.0"]
    async with serving(folder, "sklearn", loader=held_loader, ready=False) as client:
        try:
            assert await get_json(client, "/v2/health/live") == (200, {"live": True})
            status, body = await get_json(client, "/v2/health/ready")
            assert status == 503
            assert body["ready"] is False
            assert "still loading" in body["error"]
            async with client.post("/predict", json={"instances": SAMPLE_ROWS}) as resp:
                assert resp.status == 503
                assert resp.headers["Retry-After"] == "1"
                assert "still loading" in (await resp.json())["error"]
            assert (await post_json(client, "/v2/models/iris/infer", request))[0] == 503
            assert (await get_json(client, "/v2/models/iris"))[0] == 503
            ready = await get_json(client, "/v2/models/iris/ready")
            assert ready == (503, {"name": "iris", "ready": False})
        finally:
            release.set()
        await wait_ready(client)
        status, body = await post_json(client, "/predict", {"instances": SAMPLE_ROWS})
        assert status == 200
        assert len(body["predictions"]) == len(SAMPLE_ROWS)
        assert (await post_json(client, "/v2/models/iris/infer", request))[0] == 200


@pytest.mark.asyncio
async def test_python_model_loads_in_the_background(gated_model: Path) -> None:
    async with serving(gated_model, "python", "summer", ready=False) as client:
        assert (await get_json(client, "/v2/health/ready"))[0] == 503
        open_gate(gated_model)
        await wait_ready(client)
        status, body = await post_json(client, "/predict", {"instances": [[1, 2], [3, 4.5]]})
        assert (status, body) == (200, {"predictions": [3, 7.5]})
        request = {
            "inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["a", "b"]}]
        }
        status, body = await post_json(client, "/v2/models/summer/infer", request)
        assert status == 200
        assert body["outputs"] == [
            {"name": "predictions", "shape": [2], "datatype": "BYTES", "data": ["A", "B"]}
        ]


@pytest.mark.asyncio
async def test_load_failure_keeps_it_unready_with_the_reason(tmp_path: Path) -> None:
    async with serving(tmp_path, "sklearn", ready=False) as client:
        deadline = time.monotonic() + 10
        while True:
            status, body = await get_json(client, "/v2/health/ready")
            if "failed to load" in body["error"] or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.01)
        assert status == 503
        assert "no model.joblib or model.pkl" in body["error"]
        status, body = await post_json(client, "/predict", {"instances": SAMPLE_ROWS})
        assert status == 503
        assert "failed to load" in body["error"]


# -- malformed input: always a 400 that says what to send --------------------------------

BAD_PREDICT_BODIES: list[tuple[str, Any]] = [
    ("empty body", b""),
    ("not JSON", b"{instances: [[1, 2, 3, 4]]"),
    ("not UTF-8", b"\xff\xfe\xfa"),
    ("not an object", [[5.1, 3.5, 1.4, 0.2]]),
    ("no instances", {"inputs": [[5.1, 3.5, 1.4, 0.2]]}),
    ("instances not a list", {"instances": "5.1, 3.5, 1.4, 0.2"}),
    ("instances empty", {"instances": []}),
    ("one flat row", {"instances": [5.1, 3.5, 1.4, 0.2]}),
    ("too few features", {"instances": [[5.1, 3.5, 1.4]]}),
    ("too many features", {"instances": [[5.1, 3.5, 1.4, 0.2, 9.9]]}),
    ("ragged rows", {"instances": [[5.1, 3.5, 1.4, 0.2], [1.0, 2.0]]}),
    ("strings", {"instances": [["a", "b", "c", "d"]]}),
    ("nulls", {"instances": [[None, 3.5, 1.4, 0.2]]}),
    ("objects", {"instances": [{"sepal": 5.1}]}),
    ("too deep", {"instances": [[[5.1, 3.5, 1.4, 0.2]]]}),
]


@pytest.mark.asyncio
@pytest.mark.parametrize("fmt", ["sklearn", "onnx"])
async def test_malformed_predict_gets_400_with_a_message(
    examples: dict[str, Path], fmt: str
) -> None:
    folder = examples["iris-1.0.0" if fmt == "sklearn" else "iris-onnx-1.0.0"]
    async with serving(folder, fmt) as client:
        for case, body in BAD_PREDICT_BODIES:
            status, reply = await post_json(client, "/predict", body)
            assert status == 400, (case, reply)
            assert set(reply) == {"error"}, case
            message = reply["error"]
            assert isinstance(message, str), case
            # Every message ends with an example of what to send, from the model's sample.
            assert '{"instances": [[5.1, 3.5, 1.4, 0.2]]}' in message, (case, message)


def v2(tensor: Any, **extra: Any) -> dict[str, Any]:
    return {"inputs": [tensor], **extra}


GOOD_TENSOR = {"name": "input", "shape": [1, 4], "datatype": "FP64", "data": SAMPLE_ROWS[0]}

BAD_INFER_BODIES: list[tuple[str, Any, str]] = [
    ("empty body", b"", "body is empty"),
    ("not JSON", b'{"inputs": [', "not valid JSON"),
    ("not an object", [GOOD_TENSOR], "JSON object"),
    ("no inputs", {"instances": [SAMPLE_ROWS[0]]}, '"inputs"'),
    ("inputs empty", {"inputs": []}, '"inputs"'),
    ("inputs not a list", {"inputs": GOOD_TENSOR}, '"inputs"'),
    ("two inputs", {"inputs": [GOOD_TENSOR, GOOD_TENSOR]}, "one input tensor"),
    ("tensor not an object", {"inputs": [[5.1, 3.5, 1.4, 0.2]]}, "inputs[0] must be"),
    ("no shape", v2({k: v for k, v in GOOD_TENSOR.items() if k != "shape"}), "no shape"),
    ("no data or datatype", v2({"name": "input", "shape": [1, 4]}), "no datatype, data"),
    ("name not a string", v2({**GOOD_TENSOR, "name": 3}), "name must be a string"),
    ("shape not a list", v2({**GOOD_TENSOR, "shape": "1x4"}), "shape must be"),
    ("shape of floats", v2({**GOOD_TENSOR, "shape": [1.0, 4.0]}), "shape must be"),
    ("negative shape", v2({**GOOD_TENSOR, "shape": [-1, 4]}), "shape must be"),
    ("empty shape", v2({**GOOD_TENSOR, "shape": []}), "shape must be"),
    ("unknown datatype", v2({**GOOD_TENSOR, "datatype": "FLOAT"}), "not a v2 datatype"),
    ("data not a list", v2({**GOOD_TENSOR, "data": "5.1 3.5"}), "data must be a list"),
    ("data empty", v2({**GOOD_TENSOR, "data": [], "shape": [0, 4]}), "holds no values"),
    ("flat data too short", v2({**GOOD_TENSOR, "data": [5.1, 3.5, 1.4]}), "shape says [1, 4]"),
    (
        "nested data off shape",
        v2({**GOOD_TENSOR, "shape": [2, 4], "data": [SAMPLE_ROWS[0]] * 3}),
        "shape says [2, 4]",
    ),
    ("ragged data", v2({**GOOD_TENSOR, "data": [[5.1, 3.5], [1.4]]}), "regular array"),
    ("strings for FP64", v2({**GOOD_TENSOR, "data": ["a", "b", "c", "d"]}), "hold numbers"),
    ("floats for INT64", v2({**GOOD_TENSOR, "datatype": "INT64"}), "hold integers"),
    ("numbers for BOOL", v2({**GOOD_TENSOR, "datatype": "BOOL"}), "hold true/false"),
    ("BYTES for an FP64 input", v2({**GOOD_TENSOR, "datatype": "BYTES"}), "send FP64"),
    ("INT8 out of range", v2({**GOOD_TENSOR, "datatype": "INT8", "data": [1000, 2, 3, 4]}), "1000"),
    ("FP64 narrowed", v2({**GOOD_TENSOR, "datatype": "FP32", "data": [1e300, 2, 3, 4]}), "FP32"),
    ("unknown input", v2({**GOOD_TENSOR, "name": "pixels"}), "use 'input'"),
    ("unknown output", v2(GOOD_TENSOR, outputs=[{"name": "probs"}]), "ask for 'predictions'"),
    ("outputs not a list", v2(GOOD_TENSOR, outputs={"name": "x"}), '"outputs" must be a list'),
    (
        "classification",
        v2(GOOD_TENSOR, outputs=[{"name": "predictions", "parameters": {"classification": 2}}]),
        "classification",
    ),
    ("deep JSON", b'{"inputs": ' + b"[" * 5000 + b"]" * 5000 + b"}", "nested too deeply"),
    (
        "negative UINT8",
        v2({**GOOD_TENSOR, "datatype": "UINT8", "data": [-1, 2, 3, 4]}),
        "outside UINT8's range 0 to 255",
    ),
    ("nulls in data", v2({**GOOD_TENSOR, "data": [None, 3.5, 1.4, 0.2]}), "regular array"),
    ("id not a string", v2(GOOD_TENSOR, id=7), '"id" must be a string'),
    (
        "wrong feature count",
        v2({**GOOD_TENSOR, "shape": [1, 3], "data": [5.1, 3.5, 1.4]}),
        "which takes [N, 4]",
    ),
    (
        "wrong rank for the model",
        v2({**GOOD_TENSOR, "shape": [4], "data": SAMPLE_ROWS[0]}),
        "which takes [N, 4]",
    ),
]


@pytest.mark.asyncio
async def test_malformed_infer_gets_400_with_a_message(examples: dict[str, Path]) -> None:
    async with serving(examples["iris-1.0.0"], "sklearn") as client:
        assert (await post_json(client, "/v2/models/iris/infer", v2(GOOD_TENSOR)))[0] == 200
        for case, body, says in BAD_INFER_BODIES:
            status, reply = await post_json(client, "/v2/models/iris/infer", body)
            assert status == 400, (case, reply)
            assert set(reply) == {"error"}, case
            assert says in reply["error"], (case, reply["error"])


@pytest.mark.asyncio
async def test_a_model_that_raises_gets_400(gated_model: Path) -> None:
    open_gate(gated_model)
    async with serving(gated_model, "python", "summer") as client:
        status, body = await post_json(client, "/predict", {"instances": ["boom"]})
        assert status == 400
        assert "RuntimeError: kaboom" in body["error"]
        request = v2({"name": "text", "shape": [1], "datatype": "BYTES", "data": ["boom"]})
        status, body = await post_json(client, "/v2/models/summer/infer", request)
        assert status == 400
        assert "kaboom" in body["error"]
        # Output that cannot be JSON is the model's fault, not the caller's: a 500 that says so.
        status, body = await post_json(client, "/predict", {"instances": ["object"]})
        assert status == 500
        assert "cannot be sent as JSON" in body["error"]


@pytest.mark.asyncio
async def test_unknown_model_or_version_gets_404(examples: dict[str, Path]) -> None:
    async with serving(examples["iris-1.0.0"], "sklearn") as client:
        for status, body in [
            await get_json(client, "/v2/models/petals"),
            await get_json(client, "/v2/models/petals/ready"),
            await post_json(client, "/v2/models/petals/infer", v2(GOOD_TENSOR)),
        ]:
            assert status == 404
            assert "no model 'petals'" in body["error"]
            assert "'iris'" in body["error"]
        status, body = await post_json(
            client, "/v2/models/iris/versions/9.9.9/infer", v2(GOOD_TENSOR)
        )
        assert status == 404
        assert "no version '9.9.9'" in body["error"]


@pytest.mark.asyncio
async def test_unknown_route_and_wrong_method_answer_json(examples: dict[str, Path]) -> None:
    async with serving(examples["iris-1.0.0"], "sklearn") as client:
        status, body = await get_json(client, "/v1/predict")
        assert status == 404
        assert "POST /predict" in body["error"]
        async with client.get("/predict") as resp:
            assert resp.status == 405
            assert resp.headers["Allow"] == "POST"
            assert "use POST" in (await resp.json())["error"]


def test_make_app_refuses_an_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown format 'tensorflow'"):
        make_app(tmp_path, "tensorflow", None, "m", "1")


# -- the real process, as the process runtime starts it ----------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http(port: int, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data)
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


class Server:
    """One ``python -m opsbot.serving.server`` child, its log in a file."""

    def __init__(self, log: Path, proc: subprocess.Popen[bytes], port: int):
        self.log, self.proc, self.port = log, proc, port

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, path: str, status: int = 200, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited early:\n{self.output()}")
            try:
                if http(self.port, path)[0] == status:
                    return
            except OSError:  # not listening yet
                pass
            time.sleep(0.02)
        raise AssertionError(f"GET {path} never answered {status}:\n{self.output()}")


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    """The server processes a test started: killed, if still running, and reaped after it."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


@pytest.fixture
def start_server(tmp_path: Path, started: list[subprocess.Popen[bytes]]) -> Any:
    def start(folder: Path, fmt: str, name: str, port: int | None = None) -> Server:
        port = port or free_port()
        log = tmp_path / f"server-{port}.log"
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        argv = [
            sys.executable,
            "-m",
            "opsbot.serving.server",
            "--path",
            str(folder),
            "--format",
            fmt,
            "--name",
            name,
            "--version",
            "1.0.0",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        with log.open("wb") as out:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env
            )
        started.append(proc)
        return Server(log, proc, port)

    return start


@pytest.mark.slow
def test_real_server_serves_then_stops_on_sigterm(
    examples: dict[str, Path], start_server: Any
) -> None:
    folder = examples["iris-1.0.0"]
    server: Server = start_server(folder, "sklearn", "iris")
    server.wait_for("/v2/health/ready")
    expected = joblib.load(folder / "model.joblib").predict(SAMPLE_ROWS).tolist()
    assert http(server.port, "/predict", {"instances": SAMPLE_ROWS}) == (
        200,
        {"predictions": expected},
    )
    status, body = http(server.port, "/v2/models/iris/infer", v2(GOOD_TENSOR))
    assert status == 200
    assert body["outputs"][0]["data"] == expected[:1]
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=15) == 0
    assert "stopping on signal" in server.output()
    with pytest.raises(OSError):
        http(server.port, "/v2/health/live")


@pytest.mark.slow
def test_real_server_answers_liveness_while_loading_and_stops_mid_load(
    gated_model: Path, start_server: Any
) -> None:
    server: Server = start_server(gated_model, "python", "summer")
    server.wait_for("/v2/health/live")
    assert http(server.port, "/v2/health/ready")[0] == 503
    server.proc.send_signal(signal.SIGTERM)
    # The load never ends on its own (the gate stays shut), yet SIGTERM ends the process.
    assert server.proc.wait(timeout=15) == 0


@pytest.mark.slow
@pytest.mark.parametrize("broken", ["empty folder", "corrupt file"])
def test_real_server_load_failure_exits_3(tmp_path: Path, start_server: Any, broken: str) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    if broken == "corrupt file":
        (folder / "model.joblib").write_bytes(b"this is not a pickle")
    server: Server = start_server(folder, "sklearn", "iris")
    assert server.proc.wait(timeout=60) == 3
    lines = [ln for ln in server.output().splitlines() if ln.startswith(LOAD_FAILED)]
    assert len(lines) == 1, server.output()
    if broken == "empty folder":
        assert "has no model.joblib or model.pkl" in lines[0]
    else:
        assert "joblib could not load model.joblib" in lines[0]


@pytest.mark.slow
def test_real_server_port_taken_exits_4(examples: dict[str, Path], start_server: Any) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server: Server = start_server(examples["iris-1.0.0"], "sklearn", "iris", port=port)
        assert server.proc.wait(timeout=60) == 4
    assert f"LISTEN FAILED: cannot listen on 127.0.0.1:{port}" in server.output()


@pytest.mark.asyncio
async def test_values_beyond_an_fp32_input_are_400(examples: dict[str, Path]) -> None:
    async with serving(examples["iris-onnx-1.0.0"], "onnx", "iris-onnx") as client:
        status, body = await post_json(client, "/predict", {"instances": [[1e300, 1, 1, 1]]})
    assert status == 400
    assert "beyond what the model's float32 input can hold" in body["error"]


def _start_on(
    tmp_path: Path,
    folder: Path,
    fds: list[int],
    started: list[subprocess.Popen[bytes]],
    where: tuple[str, ...] = (),
) -> Server:
    """The server on the sockets ``fds`` (passed as the process runtime passes them), or where
    the arguments ``where`` say."""
    log = tmp_path / "server-fds.log"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    argv = [sys.executable, "-m", "opsbot.serving.server", "--path", str(folder)]
    argv += ["--format", "sklearn", "--name", "iris", "--version", "1.0.0"]
    for fd in fds:
        argv += ["--listen-fd", str(fd)]
    argv += where
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, pass_fds=fds, close_fds=True
        )
    started.append(proc)
    return Server(log, proc, 0)


@pytest.mark.slow
def test_real_server_serves_on_each_socket_it_is_passed(
    examples: dict[str, Path], tmp_path: Path, started: list[subprocess.Popen[bytes]]
) -> None:
    """A unix socket and a TCP one, bound by the caller: the server answers on both, and the
    unix socket's caller names no host (what the gateway's hop to an instance is)."""
    folder = examples["iris-1.0.0"]
    path = str(tmp_path / "i.sock")
    unix = socket.socket(socket.AF_UNIX)
    tcp = socket.socket()
    try:
        unix.bind(path)
        tcp.bind(("127.0.0.1", 0))
        for sock in (unix, tcp):
            sock.listen()
        server = _start_on(tmp_path, folder, [unix.fileno(), tcp.fileno()], started)
        server.port = tcp.getsockname()[1]
        server.wait_for("/v2/health/ready")
        unix.close()  # the server has its own: the caller's copy is not what keeps it open
        tcp.close()
        expected = joblib.load(folder / "model.joblib").predict(SAMPLE_ROWS).tolist()
        assert http(server.port, "/predict", {"instances": SAMPLE_ROWS}) == (
            200,
            {"predictions": expected},
        )
        conn = connection(*unix_address(path), timeout=5)
        conn.request("POST", "/predict", body=json.dumps({"instances": SAMPLE_ROWS}))
        answer = conn.getresponse()
        assert (answer.status, json.loads(answer.read())) == (200, {"predictions": expected})
        conn.close()
        assert "listening on http://unix:" in server.output()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=15) == 0
    finally:
        unix.close()
        tcp.close()


@pytest.mark.slow
def test_real_server_makes_its_unix_socket_over_a_stale_one_and_never_over_a_file(
    examples: dict[str, Path], tmp_path: Path, started: list[subprocess.Popen[bytes]]
) -> None:
    """``--unix PATH``, as the docker runtime runs it: a socket an earlier life of the container
    left at PATH is replaced, anything else there is a listen failure (exit 4)."""
    path = tmp_path / "model.sock"
    with socket.socket(socket.AF_UNIX) as old:
        old.bind(str(path))  # left behind, nobody listening
    server = _start_on(tmp_path, examples["iris-1.0.0"], [], started, ("--unix", str(path)))
    host, port = unix_address(str(path))
    deadline = time.monotonic() + 60
    while True:
        try:
            if get_status(host, port, "/v2/health/ready", timeout=2) == 200:
                break
        except OSError:
            pass
        assert server.proc.poll() is None, server.output()
        assert time.monotonic() < deadline, server.output()
        time.sleep(0.1)
    # Any account that reaches the directory may connect: the directory is what is private.
    assert stat.S_IMODE(path.stat().st_mode) == 0o666
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=15) == 0

    path.unlink(missing_ok=True)
    path.write_text("not a socket")
    refused = _start_on(tmp_path, examples["iris-1.0.0"], [], started, ("--unix", str(path)))
    assert refused.proc.wait(timeout=60) == 4
    assert f"LISTEN FAILED: cannot listen on {path}" in refused.output()
    assert path.read_text() == "not a socket"


@pytest.mark.slow
def test_real_server_refuses_a_descriptor_that_does_not_listen_exits_4(
    examples: dict[str, Path], tmp_path: Path, started: list[subprocess.Popen[bytes]]
) -> None:
    with socket.socket(socket.AF_UNIX) as idle:
        idle.bind(str(tmp_path / "idle.sock"))  # bound, never listening
        fd = idle.fileno()
        server = _start_on(tmp_path, examples["iris-1.0.0"], [fd], started)
        assert server.proc.wait(timeout=60) == 4
    out = server.output()
    assert f"LISTEN FAILED: cannot listen on descriptor {fd}" in out, out
    assert "does not listen" in out
