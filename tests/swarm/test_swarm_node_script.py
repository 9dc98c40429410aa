"""``scripts/swarm-node.sh`` on its own, with a node of its own (a name and network unique to the
run, beside the worker the other Swarm tests use): ``up`` joins it, ``up`` again changes nothing,
an interrupted node (engine and containerd killed with SIGKILL, pid files, namespace and a stale
node in the manager's list left behind) is cleaned up and rebuilt by the next ``up``, and
``down``, twice, leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from swarm_fixtures import (  # noqa: F401 - the fixtures
    NODE_SCRIPT,
    Cluster,
    engine_fixture,
    image_fixture,
    swarm_fixture,
    wait_for,
)

pytestmark = pytest.mark.slow

NAME = f"onode-{secrets.token_hex(3)}"
#: 10.231.N.0/30 for this node: not the shared worker's (N = 0).
NET = str(100 + secrets.randbelow(150))
RUN = Path("/run/opsbot-node") / NAME
DATA = Path("/var/lib/opsbot-node") / NAME
VETH = "obn" + hashlib.sha256(NAME.encode()).hexdigest()[:8]


def script(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["bash", str(NODE_SCRIPT), *args, NAME],
        env={**os.environ, "OPSBOT_NODE_NET": NET},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"swarm-node.sh {' '.join(args)}: {done.stderr[-2000:]}"
    return done


def swarm_nodes(engine: Any) -> list[dict[str, Any]]:
    """The manager's nodes of this name (ready or not)."""
    return [n for n in engine.api.nodes() if n["Description"].get("Hostname") == NAME]


def engine_answers() -> bool:
    probe = ["docker", "-H", f"unix://{RUN / 'docker.sock'}", "info"]
    return subprocess.run(probe, capture_output=True, check=False).returncode == 0


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def leftovers(engine: Any) -> list[str]:
    found = []
    if Path(f"/run/netns/{NAME}").exists():
        found.append("network namespace")
    if subprocess.run(["ip", "link", "show", VETH], capture_output=True).returncode == 0:
        found.append("veth")
    if swarm_nodes(engine):
        found.append("swarm node")
    if RUN.exists() or DATA.exists():
        found.append("directories")
    mounts = Path("/proc/self/mounts").read_text()
    if str(RUN) in mounts or str(DATA) in mounts:
        found.append("mounts")
    for proc in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(RUN).encode() in proc.read_bytes():
                found.append(f"process {proc.parent.name}")
        except OSError:
            continue  # gone meanwhile
    return found


def test_up_is_idempotent_recovers_from_an_interrupted_run_and_down_leaves_nothing(
    engine: Any, swarm: Cluster
) -> None:
    try:
        script("up", "--no-images")
        (first,) = swarm_nodes(engine)
        assert first["Status"]["State"] == "ready"
        assert first["Status"]["Addr"] == f"10.231.{NET}.2"
        assert first["Spec"]["Role"] == "worker"

        again = script("up", "--no-images")
        assert "up already" in again.stderr
        assert [n["ID"] for n in swarm_nodes(engine)] == [first["ID"]]

        # interrupted: the engine and its containerd die hard, everything else stays behind
        pids = [int((RUN / f"{p}.pid").read_text()) for p in ("docker", "containerd")]
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        wait_for("the killed engine to be gone", lambda: not any(alive(p) for p in pids), 30)
        assert not engine_answers()
        script("up", "--no-images")
        (rebuilt,) = swarm_nodes(engine)  # the stale node is gone, the new one joined
        assert rebuilt["ID"] != first["ID"] and rebuilt["Status"]["State"] == "ready"
        assert engine_answers()
    finally:
        script("down", "--purge")
    assert leftovers(engine) == []
    script("down", "--purge")  # again: nothing to do, no error
    assert leftovers(engine) == []
