"""How much one live update of the services table costs with 1,000 services.

A live update applies one event to the table (the service's cells that changed, by row key) and
waits for the screen to be repainted. Half the events hit a row on screen (around the cursor),
half a row off screen. The baseline, measured in the same run, is a full rebuild of the table
(clear and refill every row, then repaint), which is what a table without row keys would do.

Each figure is taken two ways: wall time (what a person waits; it includes Textual's frame
pacing, up to one 60 Hz frame, also measured alone as "a repaint with nothing changed") and the
CPU time the process spent (what the update really costs). Also measured: the once-a-second
countdown tick, which rewrites the Auto stop cells of the rows on screen only, against the tick it
replaced (every row recomputed), in the same run.

    python bench/tui.py [--services 1000] [--rounds 60] [--size 200x50]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from textual.app import App, ComposeResult

from opsbot.core.status import Status
from opsbot.tui.table import ServicesTable
from opsbot.tui.view import Row

NOW = 1_750_000_000.0
TARGET_MS = 100.0
TICK_TARGET_MS = 10.0


def make_service(i: int) -> Row:
    return Row.model_validate(
        {
            "id": f"uid{i:05d}",
            "name": f"svc-{i:04d}",
            "owner": f"user{i % 17}",
            "status": "running",
            "progress": 100,
            "reason": "",
            "url": f"http://gw/v1/infers/uid{i:05d}",
            "auto_stop": "1h",
            "remaining_s": 3600.0 - i,
            "fetched_at": NOW,
            "traffic_limit": 100,
            "created_at": NOW,
            "updated_at": NOW,
            "instances_ready": 1 + i % 3,
            "instances_desired": 1 + i % 3,
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
    )


class BenchApp(App[None]):
    def compose(self) -> ComposeResult:
        yield ServicesTable()


@dataclass
class Sample:
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def add(self, wall_s: float, cpu_s: float) -> None:
        self.wall.append(wall_s * 1000)
        self.cpu.append(cpu_s * 1000)


async def timed(
    sample: Sample, step: Callable[[], None], settle: Callable[[], Awaitable[None]]
) -> None:
    wall, cpu = time.perf_counter(), time.process_time()
    step()
    await settle()
    sample.add(time.perf_counter() - wall, time.process_time() - cpu)


async def measure(services: int, rounds: int, size: tuple[int, int]) -> dict[str, Sample]:
    kinds = ("idle", "on screen", "off screen", "rebuild", "tick", "tick (every row)")
    samples = {k: Sample() for k in kinds}
    app = BenchApp()
    async with app.run_test(size=size) as pilot:
        table = app.query_one(ServicesTable)
        table.now = NOW
        rows = [make_service(i) for i in range(services)]
        table.replace_all(rows)
        middle = services // 2
        table.move_cursor(row=middle)
        await pilot.pause()
        statuses = ("deploying", "running", "concerning", "running")

        async def settle_twice() -> None:
            await pilot.pause()
            await pilot.pause()

        for r in range(rounds):
            on_screen = r % 2 == 0
            index = middle + (r % 7) - 3 if on_screen else (r * 37) % (services // 3)
            svc = rows[index].model_copy(
                update={
                    "status": Status(statuses[r % len(statuses)]),
                    "progress": r % 100,
                    "instances_ready": r % 3,
                }
            )
            await timed(samples["idle"], lambda: None, pilot.pause)
            kind = "on screen" if on_screen else "off screen"
            await timed(samples[kind], lambda svc=svc: table.upsert(svc), pilot.pause)
            # Two pauses: the rows a rebuild adds are measured on the idle after the repaint.
            await timed(samples["rebuild"], table.rebuild, settle_twice)
            if r % 5 == 0:
                table.now += 1.0
                await timed(samples["tick"], table.tick, pilot.pause)
                table.now += 1.0
                await timed(samples["tick (every row)"], table.refresh_cells, pilot.pause)
        assert table.row_count == services
    return samples


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--size", default="200x50", help="terminal COLUMNSxROWS")
    args = parser.parse_args()
    width, height = (int(n) for n in args.size.split("x"))
    samples = asyncio.run(measure(args.services, args.rounds, (width, height)))
    live = Sample(
        samples["on screen"].wall + samples["off screen"].wall,
        samples["on screen"].cpu + samples["off screen"].cpu,
    )
    samples["live (all)"] = live
    print(
        f"services: {args.services}, rounds: {args.rounds}, terminal {args.size} "
        "(ms, repaint included)"
    )
    print(f"{'':22}{'wall p50':>10}{'wall p99':>10}{'cpu p50':>10}{'cpu p99':>10}")
    for name in (
        "live (all)",
        "on screen",
        "off screen",
        "idle",
        "tick",
        "tick (every row)",
        "rebuild",
    ):
        s = samples[name]
        print(
            f"{name:22}{statistics.median(s.wall):10.2f}{p99(s.wall):10.2f}"
            f"{statistics.median(s.cpu):10.2f}{p99(s.cpu):10.2f}"
        )
    rebuild = samples["rebuild"]
    ratio_wall = statistics.median(rebuild.wall) / statistics.median(live.wall)
    ratio_cpu = statistics.median(rebuild.cpu) / max(statistics.median(live.cpu), 1e-6)
    print(f"ratio rebuild / live update (medians): wall {ratio_wall:.1f}x, cpu {ratio_cpu:.1f}x")
    tick, every = samples["tick"], samples["tick (every row)"]
    ratio_tick = statistics.median(every.cpu) / max(statistics.median(tick.cpu), 1e-6)
    print(f"ratio tick of every row / tick of the rows on screen (cpu medians): {ratio_tick:.1f}x")
    verdict = "OK" if p99(live.wall) < TARGET_MS else "TOO SLOW"
    print(f"target: a live update under {TARGET_MS:.0f} ms at p99 (wall) -> {verdict}")
    verdict = "OK" if p99(tick.cpu) < TICK_TARGET_MS else "TOO SLOW"
    print(f"target: a countdown tick under {TICK_TARGET_MS:.0f} ms CPU at p99 -> {verdict}")


if __name__ == "__main__":
    main()
