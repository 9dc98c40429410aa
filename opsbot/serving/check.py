"""Check a model version: load it once and predict its sample. Run in a child process.

Prints one JSON object: ``{"ok": true, "output": [...], "framework": {...}}`` or
``{"ok": false, "reason": "..."}``. A child keeps user code and its imports out of the caller.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from opsbot.serving.loaders import LoadError, PredictError, framework_versions, load_model


def check(path: Path, fmt: str, entry: str | None) -> dict[str, Any]:
    try:
        model = load_model(path, fmt, entry)
        sample = model.sample()
        if sample is None:
            return {
                "ok": False,
                "reason": 'no sample input: add sample.json with {"instances": [...]} '
                "or a `sample` list on the class",
            }
        output = model.predict(sample)
    except (LoadError, PredictError) as exc:
        return {"ok": False, "reason": str(exc)}
    return {"ok": True, "output": output[:5], "framework": framework_versions()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m opsbot.serving.check")
    parser.add_argument("--path", required=True, type=Path)
    parser.add_argument("--format", required=True)
    parser.add_argument("--entry")
    args = parser.parse_args(argv)
    result = check(args.path, args.format, args.entry)
    sys.stdout.write(json.dumps(result, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
