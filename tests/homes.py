"""Helpers on opsbot homes for tests anywhere under tests/.

A module of its own, not the top conftest: test folders have conftest.py files of their own, and a
bare ``from conftest import ...`` would find whichever was imported last.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from opsbot.core.flavors import load_flavors
from opsbot.core.runtime import InstanceSpec
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
