"""The test suite's wall time, serially beside in parallel, in one run.

    python bench/suite.py [--workers 0,4,3,2] [PATHS ...]

Runs ``python -m pytest -q -p no:cacheprovider -n N PATHS`` once per worker count, one after
another (``-n 0`` is the serial baseline: everything in the pytest process), and prints for each
the wall time, the outcome line pytest printed, the load average before and after, and the ratio
of the serial wall time to it. The machines are shared and noisy: compare figures of one run only.
PATHS defaults to the whole suite (``tests``); give a subset to measure in minutes instead.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load() -> str:
    one, five, _fifteen = os.getloadavg()
    return f"{one:.1f}/{five:.1f}"


def run(workers: int, paths: list[str]) -> tuple[float, str, int]:
    """Seconds of wall time, pytest's last line and its exit status."""
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", str(workers)]
    start = time.monotonic()
    done = subprocess.run([*argv, *paths], cwd=ROOT, capture_output=True, text=True, check=False)
    wall = time.monotonic() - start
    lines = done.stdout.strip().splitlines()
    return wall, lines[-1] if lines else done.stderr.strip()[-200:], done.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workers",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[0, 4, 3, 2],
        help="worker counts, comma-separated, the first 0 (default 0,4,3,2)",
    )
    parser.add_argument("paths", nargs="*", default=["tests"])
    args = parser.parse_args()
    if args.workers[0] != 0:
        parser.error("--workers: the first count is the baseline and must be 0 (serial)")
    serial = 0.0
    print(f"{'workers':>7} {'wall s':>8} {'serial/x':>8} {'load before':>11} {'after':>9}  pytest")
    for n in args.workers:
        before = load()
        wall, last, rc = run(n, args.paths)
        serial = serial or wall
        flag = "" if rc == 0 else f"  (exit {rc})"
        print(f"{n:>7} {wall:>8.0f} {serial / wall:>7.2f}x {before:>11} {load():>9}  {last}{flag}")


if __name__ == "__main__":
    main()
