"""Fixtures and helpers of the Docker tests: a real engine (or a skip that says why) and the
serving image. Test modules import the fixtures they use (this folder has no conftest.py, so the
top-level ``conftest`` stays the one other test modules import helpers from).

A test may skip only when no Docker engine answers. CI sets ``OPSBOT_REQUIRE_DOCKER=1``, which
turns that skip into a failure, since CI starts an engine.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from opsbot.core.images import ensure_image
from opsbot.core.runtimes.docker import DockerRuntime, EngineUnavailable, connect, remove_all


def engine_or_skip(base_url: str | None = None) -> Any:
    try:
        return connect(base_url, timeout=20)
    except EngineUnavailable as exc:
        if os.environ.get("OPSBOT_REQUIRE_DOCKER") == "1":
            pytest.fail(f"OPSBOT_REQUIRE_DOCKER=1 but {exc}")
        pytest.skip(f"no Docker engine reachable, so no container test can run: {exc}")


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
