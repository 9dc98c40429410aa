"""Fixtures shared by every test.

Every test gets its own data directory (``home`` sets OPSBOT_HOME to it). Checking a model
version starts a child process, so the example models are trained and registered once per
session into a template home, and ``examples_home`` hands each test its own copy of it.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from homes import clone_home

from opsbot.core.app import DB_NAME, Core
from opsbot.core.examples import build_all
from opsbot.core.identity import local_user_name
from opsbot.core.registry import NORMAL

#: The ExeML model of the template home: iris 1.0.0's files registered with origin "exeml".
EXEML_MODEL = "flowers"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty data directory of this test's own, selected through $OPSBOT_HOME."""
    path = tmp_path / "home"
    path.mkdir()
    monkeypatch.setenv("OPSBOT_HOME", str(path))
    return path


@pytest.fixture(scope="session")
def me() -> str:
    """The local account the CLI acts as (the user running the tests)."""
    return local_user_name()


@pytest.fixture(scope="session")
def example_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    """The example models' files, trained once and not registered: (name, version) -> dir.

    Registering copies a directory, so tests may share these read-only.
    """
    root = tmp_path_factory.mktemp("example-files")
    return {(ex.name, ex.version): path for ex, path in build_all(root)}


@pytest.fixture(scope="session")
def template(
    tmp_path_factory: pytest.TempPathFactory,
    example_dirs: dict[tuple[str, str], Path],
    me: str,
) -> Path:
    """A data directory holding the examples and one ExeML model, registered once."""
    home = tmp_path_factory.mktemp("template") / "home"
    core = Core(home)
    actor = core.user(me)
    made = core.create_examples(actor)
    exeml = core.create_model(
        actor, EXEML_MODEL, "1.0.0", example_dirs[("iris", "1.0.0")], "sklearn", origin="exeml"
    )
    for mv in [*made, exeml]:
        assert mv.status == NORMAL, f"{mv.name} {mv.version}: {mv.reason}"
    core.store.close()
    # Fold the WAL into the database file so a plain copy of the folder is complete.
    conn = sqlite3.connect(home / DB_NAME)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return home


@pytest.fixture
def examples_home(home: Path, template: Path) -> Path:
    """``home`` holding a copy of the template: iris 1.0.0 and 2.0.0, iris-onnx 1.0.0 (all
    Normal, published, owned by ``me``) and the ExeML model ``flowers`` 1.0.0."""
    return clone_home(template, home)
