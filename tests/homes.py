"""Helpers on opsbot homes for tests anywhere under tests/.

A module of its own, not the top conftest: test folders have conftest.py files of their own, and a
bare ``from conftest import ...`` would find whichever was imported last.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
import urllib.request
from pathlib import Path
from typing import Any

from opsbot.core.flavors import load_flavors
from opsbot.core.instance_auth import INSTANCE_HEADER, daemon_secret, instance_secret
from opsbot.core.runtime import InstanceSpec, Started
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


def python_model_spec(path: Path, uid: str, owner: str = "alice", **env: str) -> InstanceSpec:
    """One instance of a python-format model (``model:Model`` in ``path``) on cpu.2u8g."""
    flavor = next(f for f in load_flavors() if f.id == "cpu.2u8g")
    return InstanceSpec(
        service_uid=uid,
        owner=owner,
        idx=0,
        n=1,
        model_name=path.name,
        version="1",
        path=path,
        format="python",
        entry="model:Model",
        flavor=flavor,
        env=env,
    )


class RlimitOnly(CgroupLimiter):
    """Limits by rlimits alone, as on a machine whose cgroups the daemon cannot write (and so
    that tests leave no cgroup behind)."""

    def _detect(self) -> str:
        return "rlimit"


def ask_instance(home: Path, spec: InstanceSpec, started: Started) -> dict[str, Any]:
    """The first prediction of a python-format test model started for ``spec`` (from a runtime
    on ``home``), asked with its instance secret until it answers (60 s at most)."""
    secret = instance_secret(daemon_secret(home), spec.service_uid, spec.idx)
    ask = urllib.request.Request(
        f"http://{started.host}:{started.port}/predict",
        data=json.dumps({"instances": [1]}).encode(),
        headers={"Content-Type": "application/json", INSTANCE_HEADER: secret},
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(ask, timeout=30) as resp:
                answer: dict[str, Any] = json.loads(resp.read())["predictions"][0]
                return answer
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
