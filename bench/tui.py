"""How much one live update of the services table costs with 1,000 services.

A live update applies one event to the table (the service's cells that changed, by row key);
the baseline, measured in the same run, is a full rebuild of the table. Both are timed with the
screen repainted after them, in a headless Textual app at 200x50.

    python bench/tui.py [--services 1000] [--rounds 50]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from textual.app import App, ComposeResult

from opsbot.tui.table import ServicesTable

NOW = 1_750_000_000.0
TARGET_MS = 100.0


def make_service(i: int) -> dict[str, Any]:
    return {
        "id": f"uid{i:05d}",
        "name": f"svc-{i:04d}",
        "owner": f"user{i % 17}",
        "status": "running",
        "progress": 100,
        "reason": "",
        "url": f"http://gw/v1/infers/uid{i:05d}",
        "auto_stop": "1h",
        "remaining_s": 3600.0 - i,
        "_fetched_at": NOW,
        "models": [
            {
                "source": "mine",
                "model": "iris",
                "version": "1.0.0",
                "traffic_ratio": 100,
                "flavor": "cpu.2u8g",
                "instances": 1 + i % 3,
                "env": {},
            }
        ],
    }


class BenchApp(App[None]):
    def compose(self) -> ComposeResult:
        yield ServicesTable()


async def measure(
    services: int, rounds: int
) -> tuple[list[float], list[float], list[float], list[float]]:
    app = BenchApp()
    async with app.run_test(size=(200, 50)) as pilot:
        table = app.query_one(ServicesTable)
        table.now = NOW
        rows = [make_service(i) for i in range(services)]
        table.replace_all(rows)
        table.move_cursor(row=services // 2)
        await pilot.pause()
        live: list[float] = []
        full: list[float] = []
        apply: list[float] = []
        idle: list[float] = []
        statuses = ("deploying", "running", "concerning", "running")
        for r in range(rounds):
            svc = dict(rows[(r * 37) % services])
            svc["status"] = statuses[r % len(statuses)]
            svc["progress"] = r % 100
            started = time.perf_counter()
            await pilot.pause()
            idle.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            table.upsert(svc)
            apply.append((time.perf_counter() - started) * 1000)
            await pilot.pause()
            live.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            table.rebuild()
            await pilot.pause()
            full.append((time.perf_counter() - started) * 1000)
        assert table.row_count == services
    return live, full, apply, idle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    live, full, apply, idle = asyncio.run(measure(args.services, args.rounds))
    live_ms, full_ms = statistics.median(live), statistics.median(full)
    live_p99 = sorted(live)[max(0, int(len(live) * 0.99) - 1)]
    print(f"services: {args.services}, rounds: {args.rounds} (medians, repaint included)")
    print(f"live update (one event, by row key): {live_ms:8.2f} ms   (p99 {live_p99:.2f} ms)")
    print(f"  of which applying the event:       {statistics.median(apply):8.2f} ms")
    print(f"  a repaint with nothing changed:    {statistics.median(idle):8.2f} ms")
    print(f"full rebuild (baseline):             {full_ms:8.2f} ms")
    print(f"ratio rebuild / live update:         {full_ms / live_ms:8.1f}x")
    verdict = "OK" if live_p99 < TARGET_MS else "TOO SLOW"
    print(f"target: a live update under {TARGET_MS:.0f} ms -> {verdict}")


if __name__ == "__main__":
    main()
