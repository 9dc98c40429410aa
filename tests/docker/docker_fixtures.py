"""Fixtures and helpers of the Docker tests: a real engine (or a skip that says why) and the
serving image. Test modules import the fixtures they use (this folder has no conftest.py, so the
top-level ``conftest`` stays the one other test modules import helpers from).

A test may skip only when no Docker engine answers. CI sets ``OPSBOT_REQUIRE_DOCKER=1``, which
turns that skip into a failure, since CI starts an engine.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import docker.errors
import pytest

from opsbot.core.images import ensure_image
from opsbot.core.runtimes.docker import DockerRuntime, EngineUnavailable, connect, remove_all

T = TypeVar("T")


def engine_or_skip(base_url: str | None = None) -> Any:
    try:
        return connect(base_url, timeout=20)
    except EngineUnavailable as exc:
        if os.environ.get("OPSBOT_REQUIRE_DOCKER") == "1":
            pytest.fail(f"OPSBOT_REQUIRE_DOCKER=1 but {exc}")
        pytest.skip(f"no Docker engine reachable, so no container test can run: {exc}")


def wait_for(
    what: str,
    check: Callable[[], T],
    timeout: float,
    step: float = 0.3,
    explain: Callable[[], str] | None = None,
) -> T:
    """Poll ``check`` until it is truthy; on timeout fail with ``explain()``'s account of the
    state (what Swarm and the engines say), so that a failure on CI can be read there."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            why = ""
            if explain is not None:
                try:
                    why = "\n" + explain()
                except Exception as exc:  # the account must not hide the timeout
                    why = f"\n(no account of the state: {exc!r})"
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{why}")
        time.sleep(step)


@pytest.fixture(scope="session", name="engine")
def engine_fixture() -> Any:
    """A docker-py client of the engine the tests use (DOCKER_HOST or the local socket)."""
    return engine_or_skip()


@pytest.fixture(scope="session", name="image")
def image_fixture(engine: Any) -> str:
    """The serving image's tag, built (or taken from the cache) once per session."""
    return ensure_image(engine).tag


def cleanup(home: Path, client: Any, image: str) -> int:
    """Remove every container the runtime started for ``home``; returns how many were left."""
    return remove_all(DockerRuntime(home, client=client, image=image))


# A user's own server for a model of format image: it serves on 127.0.0.1:$OPSBOT_PORT.
SCORER = r"""
import json, os
from http.server import BaseHTTPRequestHandler, HTTPServer

OFFSET = float(open("/model/offset.txt").read())


class Handler(BaseHTTPRequestHandler):
    def send(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.send(200 if self.path == "/v2/health/ready" else 404, {})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.send(200, {"predictions": [sum(row) + OFFSET for row in body["instances"]]})


HTTPServer(("127.0.0.1", int(os.environ["OPSBOT_PORT"])), Handler).serve_forever()
"""


@pytest.fixture(name="scorer_image")
def scorer_image_fixture(engine: Any, image: str) -> Iterator[str]:
    """An image of a user's own that serves a model (made here by committing a container of
    the serving image with a stdlib HTTP server in it: no registry)."""
    import io
    import tarfile

    tag = "opsbot-test-scorer:1"
    container = engine.containers.create(image, ["true"])
    try:
        data = SCORER.encode()
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo("scorer.py")
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
        container.put_archive("/opt", buf.getvalue())
        container.commit(
            repository="opsbot-test-scorer", tag="1", changes=['CMD ["python3", "/opt/scorer.py"]']
        )
    finally:
        container.remove(force=True)
    yield tag
    with contextlib.suppress(docker.errors.ImageNotFound):
        engine.images.remove(tag, force=True)
