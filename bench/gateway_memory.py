"""Gateway memory under heavy calls: resident memory while many large bodies arrive at once.

    python bench/gateway_memory.py [--calls 200] [--mib 10] [--rounds 3]

One run starts the echo upstream of bench/gateway.py (it reads each body and answers a fixed
prediction) and, in turn, three gateway processes (one worker each) on a store that routes one
service to it: the baseline with the buffered-bytes cap out of the way (``--max-buffered-mb
1000000``), the gateway as shipped (its default cap) and the same with ``--front aiohttp``.
Against each, it sends ``rounds`` bursts of ``calls`` parallel ``mib`` MiB calls and samples the
gateway's resident memory (VmRSS) every 20 ms; it prints the idle, peak and after-burst figures
of every round, the answers by status, and the shipped gateway's peak growth as a ratio of the
baseline's, measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from gateway import (  # noqa: E402
    KEY,
    SERVICE_UID,
    fill_store,
    free_port,
    running,
    wait_http,
    wait_port,
)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


@dataclass
class Round:
    peak: float
    after: float
    codes: Counter[int] = field(default_factory=Counter)


class Sampler:
    """The highest resident memory of a process since the last reset, sampled in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_mib(self.pid))

    def reset(self) -> None:
        self.peak = rss_mib(self.pid)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


async def burst(url: str, calls: int, body: bytes) -> Counter[int]:
    from aiohttp import ClientSession, ClientTimeout, TCPConnector

    codes: Counter[int] = Counter()
    headers = {"X-Auth-Token": KEY, "Content-Type": "application/json"}
    async with ClientSession(
        connector=TCPConnector(limit=0), timeout=ClientTimeout(total=120)
    ) as session:

        async def one() -> None:
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    codes[resp.status] += 1
            except Exception as exc:  # a dropped connection is a figure too
                codes[-1] += 1
                print(f"  call failed: {type(exc).__name__}: {exc}", file=sys.stderr)

        await asyncio.gather(*(one() for _ in range(calls)))
    return codes


def measure(
    work: Path, upstream: int, label: str, extra: list[str], args: argparse.Namespace
) -> tuple[float, list[Round]]:
    home = work / label
    home.mkdir()
    fill_store(home, upstream)
    port = free_port()
    cmd = [sys.executable, "-m", "opsbot.serving.gateway", "--home", str(home)]
    # One worker: the process sampled is the one holding the bodies (not a supervisor).
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    cmd += ["--log-level", "WARNING", *extra]
    # One body, made once: the client's memory is not what is measured.
    body = b'{"instances": [' + b"0," * ((args.mib * 2**20 - 20) // 2) + b"0]}"
    with running(cmd, work / f"{label}.log") as proc:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc, "the gateway")
        time.sleep(0.5)
        idle = rss_mib(proc.pid)
        sampler = Sampler(proc.pid)
        rounds = []
        url = f"http://127.0.0.1:{port}/v1/infers/{SERVICE_UID}"
        try:
            for _ in range(args.rounds):
                sampler.reset()
                codes = asyncio.run(burst(url, args.calls, body))
                time.sleep(1.0)
                rounds.append(Round(sampler.peak, rss_mib(proc.pid), codes))
        finally:
            sampler.close()
    return idle, rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200, help="parallel calls per burst")
    parser.add_argument("--mib", type=int, default=10, help="MiB per call body")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="opsbot-bench-mem-") as tmp:
        work = Path(tmp)
        port = free_port()
        echo = [sys.executable, str(BENCH / "gateway.py"), "--serve-echo", str(port)]
        with running(echo, work / "echo.log") as proc:
            wait_port(port, proc, "the echo upstream")
            results = {
                "baseline (no cap)": measure(
                    work, port, "baseline", ["--max-buffered-mb", "1000000"], args
                ),
                "gateway (default cap)": measure(work, port, "shipped", [], args),
                "aiohttp front, cap": measure(
                    work, port, "aiohttp-front", ["--front", "aiohttp"], args
                ),
            }
    print(
        f"{args.rounds} bursts of {args.calls} parallel {args.mib} MiB calls; "
        "gateway resident memory in MiB"
    )
    print(f"{'gateway':<24}{'round':>6}{'idle':>8}{'peak':>8}{'after':>8}  answers")
    growth = {}
    for label, (idle, rounds) in results.items():
        for i, r in enumerate(rounds, 1):
            answers = ", ".join(f"{n} x {code}" for code, n in sorted(r.codes.items()))
            print(f"{label:<24}{i:>6}{idle:>8.0f}{r.peak:>8.0f}{r.after:>8.0f}  {answers}")
        growth[label] = max(r.peak for r in rounds) - idle
    base, shipped = growth["baseline (no cap)"], growth["gateway (default cap)"]
    print(
        f"peak growth over idle: baseline {base:.0f} MiB, gateway {shipped:.0f} MiB "
        f"({shipped / base:.2f}x the baseline)"
    )


if __name__ == "__main__":
    main()
