"""Fixtures of the Swarm tests: the Docker tests' engine and image, the engine made a one-node
swarm (idempotent: ``docker swarm init --advertise-addr 127.0.0.1`` unless it is in one), and
clean-up of every Swarm service a test home made.

Like the Docker tests, a test skips only when no Docker engine answers (and fails instead under
``OPSBOT_REQUIRE_DOCKER=1``, which CI sets). Test modules import the fixtures they use.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

# The Docker tests' helpers live beside them (their folder has no package, its name would
# shadow docker-py): the engine-or-skip rule and the image fixture are theirs.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "docker"))

from docker_fixtures import engine_fixture, engine_or_skip, image_fixture

from opsbot.core.config import Config
from opsbot.core.runtimes.swarm import SwarmRuntime, remove_all

__all__ = ["engine_fixture", "engine_or_skip", "image_fixture", "swarm_fixture"]

SWARM_ADDR = "127.0.0.1"
T = TypeVar("T")


def ensure_swarm(client: Any) -> str:
    """Make the engine a one-node swarm manager unless it is in a swarm; return the node id."""
    swarm = client.info().get("Swarm") or {}
    if swarm.get("LocalNodeState") == "inactive":
        client.swarm.init(advertise_addr=SWARM_ADDR, listen_addr=f"{SWARM_ADDR}:2377")
        swarm = client.info().get("Swarm") or {}
    if swarm.get("LocalNodeState") != "active" or not swarm.get("ControlAvailable"):
        pytest.fail(f"the test engine is in a swarm but not a manager of it: {swarm}")
    return str(swarm["NodeID"])


@pytest.fixture(scope="session", name="swarm")
def swarm_fixture(engine: Any) -> str:
    """The engine as a swarm manager; the value is this node's id."""
    return ensure_swarm(engine)


def swarm_runtime(
    home: Path, client: Any, image: str, config: Config | None = None
) -> SwarmRuntime:
    home.mkdir(parents=True, exist_ok=True)
    return SwarmRuntime(home, client=client, image=image, config=config or Config())


def cleanup(home: Path, client: Any, image: str) -> int:
    """Remove every Swarm service made for ``home``; returns how many there were."""
    return remove_all(swarm_runtime(home, client, image))


def wait_for(what: str, check: Callable[[], T], timeout: float, step: float = 0.3) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(step)


def services_of(client: Any, home: Path) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = client.api.services(
        filters={"label": f"opsbot.home={home.resolve()}"}
    )
    return found


def live_tasks(client: Any, service_id: str) -> list[dict[str, Any]]:
    """Tasks Swarm means to run (desired state running), whatever their state now."""
    found: list[dict[str, Any]] = client.api.tasks(
        filters={"service": service_id, "desired-state": "running"}
    )
    return found


def replicas(service: dict[str, Any]) -> int:
    return int(service["Spec"]["Mode"]["Replicated"]["Replicas"])
