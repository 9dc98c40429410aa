"""``opsbot up --runtime swarm`` on a real two-node swarm: a deploy to Running with predictions
through the gateway from instances on both nodes, scale changes with ``opsbot update``, and a
``kill -9`` of the daemon in the middle of a deploy, after which the restarted daemon converges
with exactly the desired tasks and leaves a Swarm service without opsbot labels alone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e.test_daemon import (  # clone_home too: a bare `conftest` may be another folder's
    IRIS,
    Daemon,
    call,
    clone_home,
    sklearn_predictions,
    start_daemon,
    stop_everything,
    wait_reconciled,
)
from swarm_fixtures import (  # noqa: F401 - the fixtures
    WORKER,
    Cluster,
    cleanup,
    engine_fixture,
    image_fixture,
    live_tasks,
    replicas,
    services_of,
    swarm_fixture,
    wait_for,
)

from opsbot.client.wire import ServiceDetail

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def swarm_daemon(template: Path, home: Path, client: Any, image: str) -> Iterator[Daemon]:
    clone_home(template, home)
    d = start_daemon(home, runtime="swarm")
    try:
        yield d
    finally:
        stop_everything(home, d.proc)
        cleanup(home, client, image)


def wait_running(d: Daemon, name: str, ready: int, timeout: float = 120) -> ServiceDetail | None:
    last: ServiceDetail | None = None

    def reached() -> bool:
        nonlocal last
        last = d.client.service(name)
        states = [i.state for i in last.instances]
        return last.status == "running" and states == ["ready"] * ready

    try:
        wait_for(f"{name} running with {ready} ready instance(s)", reached, timeout)
    except AssertionError as exc:
        log = (d.home / "daemon-test.log").read_text()
        raise AssertionError(f"{name}: {last}\n{log[-4000:]}") from exc
    return last


def version_services(client: Any, home: Path, uid: str) -> list[dict[str, Any]]:
    return [s for s in services_of(client, home) if s["Spec"]["Labels"]["opsbot.service"] == uid]


def exactly(client: Any, home: Path, uid: str, count: int) -> bool:
    """One Swarm service for the version, ``count`` replicas, ``count`` tasks in distinct slots."""
    found = version_services(client, home, uid)
    if len(found) != 1 or replicas(found[0]) != count:
        return False
    tasks = live_tasks(client, found[0]["ID"])
    running = [t for t in tasks if t["Status"]["State"] == "running"]
    return len(tasks) == len(running) == count and len({t["Slot"] for t in tasks}) == count


def test_deploy_on_swarm_predicts_and_follows_scale_changes(
    template: Path, tmp_path: Path, engine: Any, image: str, swarm: Cluster
) -> None:
    with swarm_daemon(template, tmp_path / "home", engine, image) as d:
        created = d.deploy(
            "--name", "iris-swarm", "--model", "iris", "--version", "1.0.0", "--instances", "2"
        )
        assert created["status"] == "running"
        status, headers, body = call(created["url"], {"instances": IRIS}, created["api_key"])
        assert status == 200, body
        assert body["predictions"] == sklearn_predictions(d.home, "1.0.0")
        assert headers["X-Model-Version"] == "1.0.0"
        uid = created["id"]
        # Swarm calls a task running once its health check passed (a few seconds after ready)
        wait_for("2 running tasks", lambda: exactly(engine, d.home, uid, 2), 30)
        (service,) = version_services(engine, d.home, uid)
        base = int(service["Spec"]["Labels"]["opsbot.port"])
        shown = d.client.service("iris-swarm")
        # the gateway's upstreams are the tasks' node address and slot ports: one on each node
        assert sorted(i.port or 0 for i in shown.instances) == [base + 1, base + 2]
        assert {i.host for i in shown.instances} == {"127.0.0.1", swarm.worker_addr}
        assert {i.node for i in shown.instances} == {socket.gethostname(), WORKER}
        assert WORKER in d.cli("show", "iris-swarm").stdout
        logs = d.cli("logs", "iris-swarm").stdout
        assert "ready" in logs

        d.cli("update", "iris-swarm", "--instances", "3")
        wait_running(d, "iris-swarm", 3)
        wait_for("3 tasks", lambda: exactly(engine, d.home, uid, 3), 30)
        d.cli("update", "iris-swarm", "--instances", "1")
        wait_running(d, "iris-swarm", 1)
        wait_for("1 task", lambda: exactly(engine, d.home, uid, 1), 30)
        assert call(created["url"], {"instances": IRIS[:2]}, created["api_key"])[0] == 200

        d.cli("delete", "iris-swarm")
        wait_for("the Swarm service to go", lambda: not version_services(engine, d.home, uid), 30)


def test_kill_9_mid_deploy_then_restart_converges_without_duplicates(
    template: Path, tmp_path: Path, engine: Any, image: str, swarm: Cluster
) -> None:
    home = tmp_path / "home"
    foreign = engine.services.create(
        image, command=["python3", "-c", "import time; time.sleep(3600)"], name="not-opsbot"
    )
    try:
        version = engine.api.inspect_service(foreign.id)["Version"]["Index"]
        with swarm_daemon(template, home, engine, image) as d:
            created = d.cli(
                "deploy", "--name", "durable", "--model", "iris", "--version", "2.0.0",
                "--instances", "3", "--json",
            )  # fmt: skip
            uid = created.stdout.split('"id": "')[1].split('"')[0]
            # kill it while it deploys: the Swarm service exists, not all instances are ready
            wait_for("the Swarm service", lambda: version_services(engine, home, uid), 30, 0.05)
            assert d.client.service("durable").status == "deploying"
            os.kill(d.proc.pid, signal.SIGKILL)
            d.proc.wait()
            d2 = start_daemon(home, runtime="swarm")
            d.proc = d2.proc
            wait_running(d2, "durable", 3)
            wait_for("3 running tasks", lambda: exactly(engine, home, uid, 3), 30)
            wait_reconciled(d2, 3)  # three more controller passes change nothing
            assert exactly(engine, home, uid, 3)
            shown = d2.client.service("durable")
            assert len({(i.host, i.port) for i in shown.instances}) == 3
            kinds = [e["kind"] for e in d2.client.request("GET", "/v1/services/durable/events")]
            assert kinds.count("created") == 1 and kinds.count("running") == 1
            key = created.stdout.split('"api_key": "')[1].split('"')[0]
            url = created.stdout.split('"url": "')[1].split('"')[0]
            assert call(url, {"instances": IRIS[:3]}, key)[0] == 200
        # the service without opsbot labels saw no change through all of it
        assert engine.api.inspect_service(foreign.id)["Version"]["Index"] == version
        assert replicas(engine.api.inspect_service(foreign.id)) == 1
    finally:
        foreign.remove()
