"""Helpers on opsbot homes for tests anywhere under tests/.

A module of its own, not the top conftest: test folders have conftest.py files of their own, and a
bare ``from conftest import ...`` would find whichever was imported last.
"""

from __future__ import annotations

import http.client
import json
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

from opsbot.core.address import connection, show
from opsbot.core.flavors import load_flavors
from opsbot.core.instance_auth import INSTANCE_HEADER, daemon_secret, instance_secret
from opsbot.core.runtime import InstanceSpec, Owned, Started
from opsbot.core.runtimes.process import CgroupLimiter
from opsbot.core.store import DB_NAME


def clone_home(template: Path, home: Path) -> Path:
    """Copy a template data directory, pointing its model paths at the copy."""
    shutil.copytree(template, home, dirs_exist_ok=True)
    conn = sqlite3.connect(home / DB_NAME)
    with conn:
        conn.execute(
            "UPDATE model_versions SET path = replace(path, ?, ?)",
            (str(template), str(home)),
        )
    conn.close()
    return home


def instance_spec(path: Path, *, flavor: str = "cpu.2u8g", **fields: Any) -> InstanceSpec:
    """One instance of the model in ``path``: by default alice's iris 1.0.0 (sklearn), slot 0 of
    service svc0001, on the flavor of that id; ``fields`` set any other InstanceSpec field."""
    chosen = next(f for f in load_flavors() if f.id == flavor)
    defaults: dict[str, Any] = {
        "service_uid": "svc0001",
        "owner": "alice",
        "idx": 0,
        "n": 0,
        "model_name": "iris",
        "version": "1.0.0",
        "format": "sklearn",
        "entry": None,
        "env": {},
    }
    return InstanceSpec(path=path, flavor=chosen, **{**defaults, **fields})


def python_model_spec(path: Path, uid: str, owner: str = "alice", **env: str) -> InstanceSpec:
    """One instance of a python-format model (``model:Model`` in ``path``) on cpu.2u8g."""
    return instance_spec(
        path,
        service_uid=uid,
        owner=owner,
        n=1,
        model_name=path.name,
        version="1",
        format="python",
        entry="model:Model",
        env=env,
    )


class RlimitOnly(CgroupLimiter):
    """Limits by rlimits alone, as on a machine whose cgroups the daemon cannot write (and so
    that tests leave no cgroup behind)."""

    def _detect(self) -> str:
        return "rlimit"


def call_instance(
    started: Started | Owned,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30,
) -> tuple[int, Any]:
    """One call to an instance at its address, whichever kind (a process runtime's unix socket,
    a container's port), as the daemon and the gateway make it: the status and the JSON answer
    (None when empty). Raises OSError when nothing answers."""
    conn = connection(started.host, started.port, timeout)
    try:
        data = None if body is None else json.dumps(body).encode()
        sent = {"Content-Type": "application/json", **(headers or {})}
        conn.request(method, path, body=data, headers=sent)
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, json.loads(raw) if raw else None
    finally:
        conn.close()


def wait_ready(started: Started | Owned, timeout: float = 60) -> None:
    """Until the instance answers ready (``timeout`` s at most)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if call_instance(started, "GET", "/v2/health/ready", timeout=1)[0] == 200:
                return
        except (OSError, http.client.HTTPException):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{show(started.host, started.port)} never became ready")
        time.sleep(0.05)


def ask_instance(home: Path, spec: InstanceSpec, started: Started) -> dict[str, Any]:
    """The first prediction of a python-format test model started for ``spec`` (from a runtime
    on ``home``), asked with its instance secret until it answers (60 s at most)."""
    secret = instance_secret(daemon_secret(home), spec.service_uid, spec.idx)
    wait_ready(started)
    status, answer = call_instance(
        started, "POST", "/predict", {"instances": [1]}, {INSTANCE_HEADER: secret}
    )
    assert status == 200, answer
    found: dict[str, Any] = answer["predictions"][0]
    return found
