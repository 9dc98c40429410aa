"""Helpers on opsbot homes for tests anywhere under tests/.

A module of its own, not the top conftest: test folders have conftest.py files of their own, and a
bare ``from conftest import ...`` would find whichever was imported last.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

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
