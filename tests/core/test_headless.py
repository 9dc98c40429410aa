"""opsbot.core is headless: importing every module of it loads neither textual nor slack_bolt."""

from __future__ import annotations

import json
import subprocess
import sys

FRONT_ENDS = ("textual", "slack_bolt")

PROBE = """
import importlib, json, pkgutil, sys
import opsbot.core
imported = []
for info in pkgutil.walk_packages(opsbot.core.__path__, "opsbot.core."):
    importlib.import_module(info.name)
    imported.append(info.name)
front = [m for m in sys.modules if m.split(".")[0] in {front_ends!r}]
print(json.dumps({{"imported": imported, "front_ends": front}}))
"""


def test_core_imports_no_front_end() -> None:
    code = PROBE.format(front_ends=list(FRONT_ENDS))
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # The walk really covered the core, so an empty list below means something.
    for module in ("spec", "app", "registry", "store", "pools", "flavors", "services"):
        assert f"opsbot.core.{module}" in result["imported"]
    assert result["front_ends"] == []


def test_the_probe_would_see_a_front_end() -> None:
    code = "import textual, json, sys; print(json.dumps(sorted(sys.modules)))"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert "textual" in json.loads(proc.stdout)
