"""Fixtures shared by every test, and how the suite runs in parallel.

Every test gets its own data directory (``home`` sets OPSBOT_HOME to it). Checking a model
version starts a child process, so the example models are trained and registered once per
run into a template home (once for all xdist workers: the first to ask builds it under a file
lock), and ``examples_home`` hands each test its own copy of it.

The suite runs under pytest-xdist with ``--dist loadgroup`` (pyproject's addopts). Tests run on
any worker, except:

- the Docker and the Swarm tests, which share one engine and the second swarm node: all of them
  run on one worker, one at a time (the group ``ENGINE_GROUP``);
- tests that use a module-scoped fixture (a real daemon most often): those of one module run on
  one worker, so the fixture is set up once, as in a serial run.

``pytest -n0`` runs everything serially in this process (for debugging).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from filelock import FileLock
from homes import clone_home

from opsbot.core.app import DB_NAME, Core
from opsbot.core.examples import build_all
from opsbot.core.identity import local_user_name
from opsbot.core.registry import NORMAL
from opsbot.core.sandbox import remove_tree, run_root_path

#: The ExeML model of the template home: iris 1.0.0's files registered with origin "exeml".
EXEML_MODEL = "flowers"

TESTS = Path(__file__).resolve().parent
#: The folders whose tests share the Docker engine and the second swarm node.
ENGINE_DIRS = ("docker", "swarm")
#: The xdist group of every test in ENGINE_DIRS.
ENGINE_GROUP = "engine"


def _group(item: pytest.Item) -> str | None:
    """The xdist group an item must run in, or None when it may run on any worker."""
    if item.path.relative_to(TESTS).parts[0] in ENGINE_DIRS:
        return ENGINE_GROUP
    fixtures = getattr(item, "_fixtureinfo", None)
    if fixtures is not None:
        for defs in fixtures.name2fixturedefs.values():
            if any(d.scope == "module" for d in defs):
                return f"module:{item.path.relative_to(TESTS)}"
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each item with its xdist group before xdist's own hook (on each worker) turns the
    marks into the ``@group`` suffix of the node id the controller schedules by."""
    for item in items:
        group = _group(item)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))


class GroupCheck:
    """On the xdist controller: refuse to run when a worker's engine tests come without their
    group, which is how xdist's grouping fails when it fails (silently, with a pytest whose node
    ids it cannot extend: pytest-xdist issue 1386)."""

    def pytest_xdist_node_collection_finished(self, node: object, ids: list[str]) -> None:
        loose = [
            i
            for i in ids
            if Path(i.split("::")[0]).parent.name in ENGINE_DIRS
            and not i.endswith(f"@{ENGINE_GROUP}")
        ]
        if loose:
            pytest.exit(
                f"{len(loose)} Docker/Swarm tests are not bound to the xdist group "
                f"{ENGINE_GROUP!r} (first: {loose[0]}); they would run at the same time on one "
                "engine. Use the pytest and pytest-xdist versions pyproject.toml pins, or -n0.",
                returncode=4,
            )


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("dist", "no") == "loadgroup" and not os.environ.get("PYTEST_XDIST_WORKER"):
        config.pluginmanager.register(GroupCheck(), "opsbot-group-check")


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Remove the run directories (``sandbox.run_root``) of this run's homes. They live under
    the system's temporary directory, named by a digest of their home's path, so pytest's
    rotation of its own folders leaves them behind. Done once, by the xdist controller (or the
    lone process), after every worker: its base temp holds every worker's homes. Another run's
    directories are left alone: their homes are not under this one's base temp."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None or factory._basetemp is None:  # no test asked for a temporary path
        return
    sample = run_root_path(Path("/"))  # opsbot-run-UID-HASH: the HASH is the home's
    ours = {p.name for p in sample.parent.glob(sample.name.rsplit("-", 1)[0] + "-*")}
    if not ours:
        return
    for top, _dirs, _files in os.walk(factory.getbasetemp()):
        root = run_root_path(Path(top))
        if root.name in ours:
            ours.discard(root.name)
            remove_tree(root)


def _once_per_run(
    factory: pytest.TempPathFactory, name: str, build: Callable[[Path], object]
) -> tuple[Path, object]:
    """Build ``name`` once per test run, whichever xdist worker asks first, and hand every
    worker the folder and ``build``'s JSON-able answer.

    Each worker's base temp is a folder of the run's own (``pytest-N/popen-gwK``); their parent
    is shared by the workers of one run and by no other run.
    """
    base = factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    target = root / name
    done = root / f"{name}.json"
    with FileLock(root / f"{name}.lock"):
        if not done.exists():
            shutil.rmtree(target, ignore_errors=True)  # what a failed build left
            target.mkdir()
            answer = build(target)
            done.write_text(json.dumps(answer))
    return target, json.loads(done.read_text())


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
    """The example models' files, trained once per run and not registered: (name, version) ->
    dir.

    Registering copies a directory, so tests may share these read-only.
    """

    def build(root: Path) -> list[tuple[str, str, str]]:
        return [(ex.name, ex.version, str(path)) for ex, path in build_all(root)]

    _, built = _once_per_run(tmp_path_factory, "example-files", build)
    assert isinstance(built, list)
    return {(name, version): Path(path) for name, version, path in built}


@pytest.fixture(scope="session")
def template(
    tmp_path_factory: pytest.TempPathFactory,
    example_dirs: dict[tuple[str, str], Path],
    me: str,
) -> Path:
    """A data directory holding the examples and one ExeML model, registered once per run."""
    root, _ = _once_per_run(
        tmp_path_factory, "template", lambda root: _register(root, example_dirs, me)
    )
    return root / "home"


def _register(root: Path, example_dirs: dict[tuple[str, str], Path], me: str) -> None:
    home = root / "home"
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


@pytest.fixture
def examples_home(home: Path, template: Path) -> Path:
    """``home`` holding a copy of the template: iris 1.0.0 and 2.0.0, iris-onnx 1.0.0 (all
    Normal, published, owned by ``me``) and the ExeML model ``flowers`` 1.0.0."""
    return clone_home(template, home)
