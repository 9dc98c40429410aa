"""Fixtures of the Swarm tests: the Docker tests' engine and image, the engine made a swarm
manager (idempotent: ``docker swarm init --advertise-addr 127.0.0.1`` unless it is in one) with
a second node joined as a worker (``scripts/swarm-node.sh up``: an engine in its own network
namespace), and clean-up of every Swarm service a test home made.

Every Swarm test runs on these two nodes. The worker is started here unless it runs already
(CI starts it first), and removed at the end of the session when it was started here. Pool
labels a test puts on a node use values unique to the run (``POOL_PREFIX``), and labels an
interrupted run left with that prefix are removed before the first test.

Like the Docker tests, a test skips only when no Docker engine answers (and fails instead under
``OPSBOT_REQUIRE_DOCKER=1``, which CI sets). Test modules import the fixtures they use.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

# The Docker tests' helpers live beside them (their folder has no package, its name would
# shadow docker-py): the engine-or-skip rule and the image fixture are theirs.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "docker"))

from docker_fixtures import (  # noqa: F401 - wait_for: the swarm tests take it from here
    engine_fixture,
    engine_or_skip,
    image_fixture,
    wait_for,
)

from opsbot.core.config import Config
from opsbot.core.runtimes.swarm import SwarmRuntime, remove_all

__all__ = ["engine_fixture", "engine_or_skip", "image_fixture", "swarm_fixture"]

SWARM_ADDR = "127.0.0.1"
NODE_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "swarm-node.sh"
WORKER = os.environ.get("OPSBOT_NODE_NAME", "opsbot-node2")
WORKER_SOCKET = f"unix:///run/opsbot-node/{WORKER}/docker.sock"
#: Pool label values the tests use start so, and end with a token unique to the run.
POOL_PREFIX = "opsbot-test-"


@dataclass(frozen=True)
class Cluster:
    """The two nodes the Swarm tests run on: this engine (the manager) and the worker."""

    manager: str  # node ids
    worker: str
    worker_addr: str
    worker_client: Any  # a docker-py client of the worker's own engine
    manager_client: Any = None  # the manager's (this engine's) docker-py client

    def state(self) -> str:
        """What Swarm and both engines say of the opsbot tasks (for a failure's message)."""
        return swarm_state(self.manager_client, self.worker_client)

    def node_script(self, *args: str) -> None:
        """Run ``scripts/swarm-node.sh`` on the worker (stop, start...), failing with its words."""
        node_script(*args)


def node_script(*args: str, timeout: float = 300) -> str:
    done = subprocess.run(
        ["bash", str(NODE_SCRIPT), *args],
        env={**os.environ, "OPSBOT_NODE_NAME": WORKER},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"swarm-node.sh {' '.join(args)} failed: {done.stderr[-2000:]}")
    return done.stderr


def pool_name() -> str:
    """A dedicated pool's name unique to this run (its label value): an interrupted run's
    label can never capture another run's services."""
    return f"{POOL_PREFIX}{secrets.token_hex(4)}"


@contextlib.contextmanager
def node_labels(client: Any, node_id: str, labels: dict[str, str]) -> Iterator[None]:
    """Add labels to a swarm node for the block; removed again however it ends."""
    node = client.nodes.get(node_id)
    before = dict(node.attrs["Spec"].get("Labels") or {})
    node.update({**node.attrs["Spec"], "Labels": {**before, **labels}})
    try:
        yield
    finally:
        node.reload()
        kept = {
            k: v for k, v in (node.attrs["Spec"].get("Labels") or {}).items() if k not in labels
        }
        node.update({**node.attrs["Spec"], "Labels": kept})


@contextlib.contextmanager
def node_availability(client: Any, node_id: str, availability: str) -> Iterator[None]:
    """Drain (or pause) a swarm node for the block; active again however it ends."""
    node = client.nodes.get(node_id)
    node.update({**node.attrs["Spec"], "Availability": availability})
    try:
        yield
    finally:
        node.reload()
        node.update({**node.attrs["Spec"], "Availability": "active"})


def remove_stale_test_labels(client: Any) -> None:
    """Labels with the tests' prefix that an interrupted run left on any node."""
    for node in client.nodes.list():
        labels = dict(node.attrs["Spec"].get("Labels") or {})
        kept = {k: v for k, v in labels.items() if not v.startswith(POOL_PREFIX)}
        if kept != labels:
            node.update({**node.attrs["Spec"], "Labels": kept})


def ensure_swarm(client: Any) -> str:
    """Make the engine a swarm manager unless it is in a swarm; return the node id."""
    swarm = client.info().get("Swarm") or {}
    if swarm.get("LocalNodeState") == "inactive":
        # listening on every address: the worker reaches it over its veth
        client.swarm.init(advertise_addr=SWARM_ADDR, listen_addr="0.0.0.0:2377")
        swarm = client.info().get("Swarm") or {}
    if swarm.get("LocalNodeState") != "active" or not swarm.get("ControlAvailable"):
        pytest.fail(f"the test engine is in a swarm but not a manager of it: {swarm}")
    return str(swarm["NodeID"])


def _worker(client: Any) -> dict[str, Any] | None:
    """The manager's ready node of the worker's name, if any."""
    for node in client.api.nodes(filters={"name": WORKER}):
        if node["Description"].get("Hostname") == WORKER and node["Status"]["State"] == "ready":
            found: dict[str, Any] = node
            return found
    return None


@pytest.fixture(scope="session", name="swarm")
def swarm_fixture(engine: Any, image: str) -> Iterator[Cluster]:
    """The engine as a swarm manager with the worker joined and the serving image on it."""
    manager = ensure_swarm(engine)
    remove_stale_test_labels(engine)
    started_here = _worker(engine) is None
    if started_here:
        try:
            node_script("up")
        except AssertionError as exc:
            if os.environ.get("OPSBOT_REQUIRE_DOCKER") == "1":
                raise
            pytest.skip(f"no second Swarm node, so no Swarm test can run: {exc}")
    else:
        node_script("load", image)  # CI started it before building this image, maybe
    worker = _worker(engine)
    assert worker is not None, f"{WORKER} is not a ready node of the swarm"
    if worker["Spec"].get("Availability") != "active":  # an interrupted run drained it
        node = engine.nodes.get(worker["ID"])
        node.update({**node.attrs["Spec"], "Availability": "active"})
    client = docker.DockerClient(base_url=WORKER_SOCKET, timeout=30)
    try:
        yield Cluster(manager, worker["ID"], worker["Status"]["Addr"], client, engine)
    finally:
        client.close()
        remove_stale_test_labels(engine)
        if started_here:
            node_script("down")


def swarm_runtime(
    home: Path, client: Any, image: str, config: Config | None = None
) -> SwarmRuntime:
    home.mkdir(parents=True, exist_ok=True)
    return SwarmRuntime(home, client=client, image=image, config=config or Config())


def cleanup(home: Path, client: Any, image: str) -> int:
    """Remove every Swarm service made for ``home``; returns how many there were."""
    return remove_all(swarm_runtime(home, client, image))


def swarm_state(manager: Any, worker: Any) -> str:
    """What Swarm says of every opsbot task (node, state, error) and, for each task's
    container, its health checks' last output and its log's tail from the engine it runs on."""
    lines: list[str] = []
    names = {n["ID"]: n["Description"].get("Hostname", n["ID"]) for n in manager.api.nodes()}
    engines = {"manager": manager, "worker": worker}
    for svc in manager.api.services(filters={"label": "opsbot.home"}):
        lines.append(f"service {svc['Spec']['Name']}")
        for task in manager.api.tasks(filters={"service": svc["ID"]}):
            status = task.get("Status", {})
            cid = (status.get("ContainerStatus") or {}).get("ContainerID", "")
            lines.append(
                f"  task slot {task.get('Slot')} on {names.get(task.get('NodeID', ''), '?')}: "
                f"desired {task.get('DesiredState')}, {status.get('State')} "
                f"{status.get('Err') or status.get('Message', '')} container {cid[:12]}"
            )
            for where, client in engines.items():
                if not cid:
                    break
                try:
                    info = client.api.inspect_container(cid)
                except Exception:  # not on this engine
                    continue
                health = (info.get("State", {}).get("Health") or {}).get("Log") or []
                if health:
                    lines.append(f"    health ({where}): {health[-1].get('Output', '')[-300:]!r}")
                logs = client.api.logs(cid, tail=8).decode(errors="replace")
                lines.extend(f"    log ({where}): {line}" for line in logs.splitlines())
    return "\n".join(lines) or "no opsbot services"


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
