"""The import-linter contract in pyproject.toml keeps the core free of every front: it holds on
the code, and it would catch a core module that imports one (directly or through another)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).with_name("lint-imports")


def lint(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT), "--no-cache"],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def test_the_core_imports_no_front() -> None:
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "the core is free of every front KEPT" in result.stdout


def test_the_contract_catches_a_core_module_that_reaches_a_front(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "opsbot", tmp_path / "opsbot", ignore=shutil.ignore_patterns("*.pyc"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    form = tmp_path / "opsbot" / "core" / "form.py"
    # The dashboard's wording, reached from the core: the kind of shortcut the contract forbids.
    form.write_text(form.read_text() + "\nfrom opsbot.tui import wording  # noqa: E402\n")
    result = lint(tmp_path)
    assert result.returncode != 0
    assert "the core is free of every front BROKEN" in result.stdout
    assert "opsbot.core.form -> opsbot.tui.wording" in result.stdout
