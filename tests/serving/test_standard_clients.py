"""The gateway as standard clients see it, unmodified: tritonclient.http and KServe's REST client.

Real processes, as a deployment runs them: two model servers (scikit-learn and ONNX) and the
gateway (``python -m opsbot.serving.gateway``), routed from a store the tests fill by hand.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
import tritonclient.http as triton
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from tritonclient.utils import InferenceServerException

from opsbot.serving import HEADER_LENGTH
from serving.test_gateway import KEY, Home
from serving.test_server import REPO, free_port

# tritonclient writes Inference-Header-Content-Length into the headers dict it is given:
# every call gets its own copy.
AUTH = {"X-Auth-Token": KEY}
ONNX_KEY = "ob_the-onnx-key"
ONNX_AUTH = {"X-Auth-Token": ONNX_KEY}


@dataclass
class Deployment:
    port: int
    sklearn_uid: str
    onnx_uid: str
    rows: np.ndarray[Any, Any]
    expected: list[int]
    home: Home

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"


def _env() -> dict[str, str]:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _wait(port: int, path: str, procs: list[subprocess.Popen[bytes]], logs: list[Path]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise AssertionError("\n".join(log.read_text(errors="replace") for log in logs))
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"GET {path} on {port} never answered 200")


@pytest.fixture(scope="module")
def deployment(
    tmp_path_factory: pytest.TempPathFactory, example_dirs: dict[tuple[str, str], Path]
) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("standard")
    built = {f"{name}-{version}": path for (name, version), path in example_dirs.items()}
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []

    def start(argv: list[str], name: str) -> None:
        log = root / f"{name}.log"
        logs.append(log)
        with log.open("wb") as out:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", *argv],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=_env(),
                )
            )

    ports = {}
    for name, fmt in (("iris", "sklearn"), ("iris-onnx", "onnx")):
        port = ports[name] = free_port()
        start(
            [
                "opsbot.serving.server",
                *("--path", str(built[f"{name}-1.0.0"]), "--format", fmt, "--name", name),
                *("--version", "1.0.0", "--host", "127.0.0.1", "--port", str(port)),
            ],
            name,
        )
    home = Home(root / "home")
    sklearn_uid = home.add_service([("1.0.0", 100, [ports["iris"]])], name="iris-svc")
    onnx_uid = home.add_service(
        [("1.0.0", 100, [ports["iris-onnx"]])], name="flowers", model="iris-onnx", key=ONNX_KEY
    )
    gateway_port = free_port()
    start(
        [
            "opsbot.serving.gateway",
            *("--home", str(home.path), "--host", "127.0.0.1", "--port", str(gateway_port)),
            *("--log-level", "WARNING"),
        ],
        "gateway",
    )
    try:
        for port in ports.values():
            _wait(port, "/v2/health/ready", procs, logs)
        _wait(gateway_port, "/v2/health/ready", procs, logs)
        from sklearn.datasets import load_iris

        rows, _ = load_iris(return_X_y=True)
        expected = joblib.load(built["iris-1.0.0"] / "model.joblib").predict(rows).tolist()
        yield Deployment(gateway_port, sklearn_uid, onnx_uid, rows, expected, home)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        home.store.close()


# -- tritonclient.http ------------------------------------------------------------------------


def test_tritonclient_health_and_metadata(deployment: Deployment) -> None:
    client = triton.InferenceServerClient(url=deployment.url)
    try:
        assert client.is_server_live()
        assert client.is_server_ready()
        assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
        for named in ("iris-svc", "alice.iris-svc", deployment.sklearn_uid):
            assert client.is_model_ready(named, headers=dict(AUTH))
            assert client.is_model_ready(named, "1.0.0", headers=dict(AUTH))
            assert not client.is_model_ready(named, "9.9.9", headers=dict(AUTH))
            meta = client.get_model_metadata(named, headers=dict(AUTH))
            assert meta["name"] == named
            assert meta["versions"] == ["1.0.0"]
            assert meta["inputs"] == [{"name": "input", "datatype": "FP64", "shape": [-1, 4]}]
            assert meta["outputs"] == [{"name": "predictions", "datatype": "INT64", "shape": [-1]}]
        onnx = client.get_model_metadata("flowers", "1.0.0", headers=dict(ONNX_AUTH))
        assert onnx["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, 4]}]
        assert not client.is_model_ready("iris-svc")  # no key: refused, so not ready to you
        with pytest.raises(InferenceServerException, match="no running service"):
            client.get_model_metadata("nothing-here", headers=dict(AUTH))
    finally:
        client.close()


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("compression", [None, "gzip", "deflate"])
def test_tritonclient_infer_with_its_defaults_and_options(
    deployment: Deployment, binary: bool, compression: str | None
) -> None:
    client = triton.InferenceServerClient(url=deployment.url)
    try:
        tensor = triton.InferInput("input", list(deployment.rows.shape), "FP64")
        tensor.set_data_from_numpy(deployment.rows, binary_data=binary)
        outputs = (
            None if binary else [triton.InferRequestedOutput("predictions", binary_data=False)]
        )
        result = client.infer(
            "iris-svc",
            [tensor],
            outputs=outputs,
            headers=dict(AUTH),
            request_compression_algorithm=compression,
            response_compression_algorithm=compression,
        )
        assert result.as_numpy("predictions").tolist() == deployment.expected
        response = result.get_response()
        assert (response["model_name"], response["model_version"]) == ("iris-svc", "1.0.0")
        assert ("parameters" in response["outputs"][0]) == binary

        pinned = client.infer(
            deployment.sklearn_uid, [tensor], model_version="1.0.0", headers=dict(AUTH)
        )
        assert pinned.get_response()["model_name"] == deployment.sklearn_uid
        assert pinned.as_numpy("predictions").tolist() == deployment.expected
    finally:
        client.close()


def test_tritonclient_onnx_fp32_binary_round_trip(deployment: Deployment) -> None:
    client = triton.InferenceServerClient(url=deployment.url)
    try:
        rows = deployment.rows[:10].astype(np.float32)
        tensor = triton.InferInput("X", [10, 4], "FP32")
        tensor.set_data_from_numpy(rows)
        result = client.infer("flowers", [tensor], headers=dict(ONNX_AUTH))
        label = result.as_numpy("label")
        assert label.dtype == np.int64
        assert label.tolist() == deployment.expected[:10]
    finally:
        client.close()


@pytest.mark.parametrize(
    ("name", "datatype", "data", "says"),
    [
        ("X", "FP64", np.zeros((2, 4)), "send FP32"),
        ("X", "FP32", np.zeros((2, 3), dtype=np.float32), "which takes [N, 4]"),
        ("pixels", "FP32", np.zeros((2, 4), dtype=np.float32), "use 'X'"),
        ("X", "BYTES", np.array([[b"a"] * 4] * 2, dtype=np.object_), "send FP32"),
    ],
)
def test_tritonclient_gets_400_for_what_the_model_cannot_take(
    deployment: Deployment, name: str, datatype: str, data: Any, says: str
) -> None:
    client = triton.InferenceServerClient(url=deployment.url)
    try:
        tensor = triton.InferInput(name, list(data.shape), datatype)
        tensor.set_data_from_numpy(data)
        with pytest.raises(InferenceServerException) as caught:
            client.infer("flowers", [tensor], headers=dict(ONNX_AUTH))
        assert caught.value.status() == "400"
        assert says in caught.value.message()
        good = triton.InferInput("X", [1, 4], "FP32")
        good.set_data_from_numpy(np.zeros((1, 4), dtype=np.float32))
        with pytest.raises(InferenceServerException, match="ask for 'label'"):
            client.infer(
                "flowers",
                [good],
                outputs=[triton.InferRequestedOutput("probs")],
                headers=dict(ONNX_AUTH),
            )
    finally:
        client.close()


# -- KServe's REST client -----------------------------------------------------------------------


async def test_kserve_client_v2(deployment: Deployment) -> None:
    base = f"http://{deployment.url}"
    client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0))
    try:
        assert await client.is_server_live(base)
        assert await client.is_server_ready(base)
        assert await client.is_model_ready(base, "iris-svc", headers=dict(AUTH))
        rows = deployment.rows[:5]
        for binary in (False, True):
            tensor = InferInput("input", list(rows.shape), "FP64")
            tensor.set_data_from_numpy(rows, binary_data=binary)
            request = InferRequest("iris-svc", [tensor], request_id="k-1")
            response = await client.infer(base, request, "iris-svc", headers=dict(AUTH))
            assert response.model_name == "iris-svc"
            assert response.id == "k-1"
            assert response.outputs[0].as_numpy().tolist() == deployment.expected[:5]
    finally:
        await client.close()


async def test_kserve_client_v1(deployment: Deployment) -> None:
    base = f"http://{deployment.url}"
    client = InferenceRESTClient(RESTConfig(protocol="v1", retries=0))
    try:
        assert await client.is_server_live(base)
        assert await client.is_model_ready(base, "iris-svc", headers=dict(AUTH))
        reply = await client.infer(
            base, {"instances": deployment.rows[:3].tolist()}, "iris-svc", headers=dict(AUTH)
        )
        assert reply == {"predictions": deployment.expected[:3]}
    finally:
        await client.close()


# -- hostile bodies -------------------------------------------------------------------------------


def _post(port: int, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=body, headers={**AUTH, **headers}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_no_body_shape_gets_a_5xx(deployment: Deployment) -> None:
    port = deployment.port
    infer = "/v2/models/iris-svc/infer"
    deep = b'{"inputs": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    good = json.dumps(
        {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP64", "data": [1, 2, 3, 4]}]}
    ).encode()
    tensor = {"name": "input", "shape": [1, 4], "datatype": "FP64"}
    short_binary = json.dumps(
        {"inputs": [{**tensor, "parameters": {"binary_data_size": 32}}]}
    ).encode()
    cases: list[tuple[str, bytes, dict[str, str], int, str]] = [
        ("deep JSON", deep, {}, 400, "nested too deeply"),
        ("deep JSON, gzip", gzip.compress(deep), {"Content-Encoding": "gzip"}, 400, "nested"),
        ("not gzip", b"plain text", {"Content-Encoding": "gzip"}, 400, "could not be read"),
        ("not deflate", b"plain text", {"Content-Encoding": "deflate"}, 400, "could not be read"),
        ("brotli", b"x", {"Content-Encoding": "br"}, 415, "gzip or deflate"),
        (
            "INT8 1000",
            good.replace(b'"FP64", "data": [1', b'"INT8", "data": [1000'),
            {},
            400,
            "outside INT8's range",
        ),
        ("header length past the body", good, {HEADER_LENGTH: "99999"}, 400, HEADER_LENGTH),
        (
            "binary size past the body",
            short_binary,
            {HEADER_LENGTH: str(len(short_binary))},
            400,
            "binary_data_size",
        ),
        (
            "gzip, decoded over the cap",
            gzip.compress(b" " * 13_000_000),
            {"Content-Encoding": "gzip"},
            413,
            "cap",
        ),
        ("deflate ok", zlib.compress(good), {"Content-Encoding": "deflate"}, 200, ""),
    ]
    for case, body, headers, status, says in cases:
        got, reply = _post(port, infer, body, {"Content-Type": "application/json", **headers})
        assert got == status, (case, reply)
        if says:
            assert says in reply["error"], (case, reply)
    status, reply = _post(port, "/v1/models/iris-svc:predict", deep, {})
    assert status == 400 and "nested too deeply" in reply["error"]
    status, reply = _post(port, "/no/such/route", b"", {})
    assert status == 404 and "POST /v2/models/{service}" in reply["error"]
