"""The model copies containers read (docker and swarm runtimes): one per service version,
removed when the controller says the version has no instance left, and swept at start."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from homes import instance_spec

from opsbot.core.images import USER_ID
from opsbot.core.runtime import InstanceSpec
from opsbot.core.runtimes.docker import StagedModels


def _spec(model: Path, uid: str, idx: int) -> InstanceSpec:
    return instance_spec(model, service_uid=uid, idx=idx)


def _staged(tmp_path: Path) -> tuple[StagedModels, Path]:
    model = tmp_path / "home" / "models" / "alice" / "iris" / "1.0.0"
    (model / "sub").mkdir(parents=True)
    (model / "model.joblib").write_bytes(b"w")
    (model / "sub" / "extra.txt").write_text("x")
    return StagedModels(tmp_path / "home", str(tmp_path / "run")), model


def _names(root: Path) -> set[str]:
    return {p.name for p in root.iterdir()}


def test_release_removes_only_the_versions_not_kept(tmp_path: Path) -> None:
    staged, model = _staged(tmp_path)
    a0 = staged.stage(_spec(model, "aaaa", 0)).path
    a1 = staged.stage(_spec(model, "aaaa", 1)).path
    b0 = staged.stage(_spec(model, "bbbb", 0)).path
    # A second instance of a version shares its copy.
    assert staged.stage(replace(_spec(model, "aaaa", 0), n=1)).path == a0
    # The copy is read-only, and the container's user's when the daemon is root: removing it
    # must not depend on the daemon owning or being able to write it.
    assert a1.stat().st_mode & 0o777 in (0o500, 0o555)
    if os.geteuid() == 0:
        assert (a1 / "sub" / "extra.txt").stat().st_uid == USER_ID
    # Someone else's files in the run directory (a process instance's, a registry check's).
    (staged.root / "aaaa_1_0").mkdir()
    (staged.root / "check-0123").mkdir()

    staged.release("aaaa", {0})
    assert a0.is_dir() and b0.is_dir()
    assert not a1.parent.exists()
    assert _names(staged.root) == {"container-aaaa-0", "container-bbbb-0", "aaaa_1_0", "check-0123"}

    staged.release("aaaa", ())
    assert _names(staged.root) == {"container-bbbb-0", "aaaa_1_0", "check-0123"}
    # Staged again when the version starts again.
    assert (staged.stage(_spec(model, "aaaa", 0)).path / "model.joblib").read_bytes() == b"w"


def test_a_uid_that_begins_another_s_is_not_taken_for_it(tmp_path: Path) -> None:
    staged, model = _staged(tmp_path)
    staged.stage(_spec(model, "aa", 0))
    staged.stage(_spec(model, "aa-1", 0))
    staged.release("aa", ())
    assert _names(staged.root) == {"container-aa-1-0"}


def test_the_sweep_keeps_only_the_versions_named(tmp_path: Path) -> None:
    staged, model = _staged(tmp_path)
    for uid, idx in [("aaaa", 0), ("aaaa", 1), ("bbbb", 0), ("gone", 0)]:
        staged.stage(_spec(model, uid, idx))
    (staged.root / "check-0123").mkdir()
    staged.sweep({"aaaa": {1}, "bbbb": [0], "other": [3]})
    assert _names(staged.root) == {"container-aaaa-1", "container-bbbb-0", "check-0123"}


def test_release_and_sweep_without_a_run_directory_do_nothing(tmp_path: Path) -> None:
    staged, _model = _staged(tmp_path)
    assert not staged.root.exists()
    staged.release("aaaa", ())
    staged.sweep({})
    assert not staged.root.exists()


def test_a_copy_the_sweep_keeps_is_released_later(tmp_path: Path) -> None:
    staged, model = _staged(tmp_path)
    staged.stage(_spec(model, "aaaa", 0))
    staged.stage(_spec(model, "aaaa", 1))
    # A restarted daemon: what it knows of the copies comes from its sweep.
    again = StagedModels(staged.home, str(staged.root))
    again.sweep({"aaaa": {0, 1}})
    assert _names(again.root) == {"container-aaaa-0", "container-aaaa-1"}
    again.release("aaaa", {1})
    assert _names(again.root) == {"container-aaaa-1"}
    again.release("aaaa", ())
    assert _names(again.root) == set()
