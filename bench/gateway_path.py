"""The gateway's own work per call, with no sockets: CPU microseconds of the hot path.

    python bench/gateway_path.py [--calls 20000] [--rounds 7] [--before TREE] [--varied]

One process builds a gateway routing one service to one instance, a fast-front connection
and a kept upstream connection whose transports only collect what is written, then feeds the
same call through them again and again: the request bytes into the front's ``data_received``,
the instance's answer into the upstream connection's, three passes of the event loop between
(what a call driven by tasks needs to finish). It prints the CPU time per call (best and median
of the rounds). ``--before TREE`` measures another checkout the same way in the same run (as a
subprocess on that tree), so a change to the hot path shows as a ratio against its baseline.
``--varied`` gives every call its own ``X-Request-Id``, so no two heads are alike (the gateway
parses a head it has seen before only once: this is the cost when it never has). What it
leaves out is what sockets cost (system calls, wake-ups, caches gone cold between
calls): ``bench/gateway.py`` measures those, end to end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
KEY = "ob_bench-key"
BODY = b'{"instances": [[5.1, 3.5, 1.4, 0.2]]}'
REQUEST = (
    b"POST /v1/infers/svc0001 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Length: %d\r\n"
    b"Content-Type: application/json\r\nX-Auth-Token: %s\r\n\r\n%s"
) % (len(BODY), KEY.encode(), BODY)
ANSWER_BODY = b'{"predictions": [0]}'
ANSWER = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n"
    b"Content-Length: %d\r\nDate: Sun, 29 Nov 2026 15:00:00 GMT\r\n"
    b"Server: Python/3.11 aiohttp/3.14.5\r\n\r\n%s"
) % (len(ANSWER_BODY), ANSWER_BODY)


class Collecting(asyncio.Transport):
    """A transport that keeps what is written to it."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def request(request_id: int | None) -> bytes:
    """The call, with its own X-Request-Id when ``request_id`` is given."""
    if request_id is None:
        return REQUEST
    return REQUEST.replace(b"\r\n\r\n", b"\r\nX-Request-Id: r%d\r\n\r\n" % request_id, 1)


async def measure(calls: int, rounds: int, varied: bool = False) -> list[float]:
    from opsbot.core.keys import hash_key
    from opsbot.core.routes import ServiceRoute, Upstream, VersionRoute
    from opsbot.core.status import Status
    from opsbot.serving import upstream
    from opsbot.serving.gateway.core import Gateway
    from opsbot.serving.gateway.fast import Connections, FastFront
    from opsbot.serving.gateway.options import GatewayOptions

    loop = asyncio.get_running_loop()
    gateway = Gateway(lambda: None, GatewayOptions())  # type: ignore[arg-type, return-value]
    client = upstream.RawClient()
    gateway._client = client  # what Gateway.start makes, without reading a store
    version = VersionRoute(0, "bench/iris", "1.0.0", 100, (Upstream("127.0.0.1", 9),))
    route = ServiceRoute(
        "svc0001", "bench", "bench", Status.RUNNING, 10**9, frozenset({hash_key(KEY)}), (version,)
    )
    gateway.apply({"svc0001": route})
    maker: Any = upstream._Connection
    try:
        kept = maker(loop)
    except TypeError:  # a tree from before the connection knew its loop
        kept = maker()
    to_instance = Collecting()
    kept.connection_made(to_instance)
    pool = client._pools[("127.0.0.1", 9)] = upstream._Pool("127.0.0.1", 9)
    if hasattr(kept, "pool"):  # a connection that puts itself back in its pool
        kept.pool, kept.client = pool, client
    front = FastFront(gateway, lambda: asyncio.Protocol(), Connections())
    to_caller = Collecting()
    front.connection_made(to_caller)

    requests = [request(n if varied else None) for n in range(calls)]
    turn = iter(())

    async def one() -> None:
        kept.idle_since = loop.time()
        if not pool.idle:
            pool.idle.append(kept)
        front.data_received(next(turn, REQUEST))
        await asyncio.sleep(0)
        kept.data_received(ANSWER)
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    for _ in range(2000):
        await one()
    if not to_caller.written[-1].startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"the call was not answered 200: {to_caller.written[-1][:200]!r}")
    per_call = []
    for _ in range(rounds):
        to_caller.written.clear()
        to_instance.written.clear()
        turn = iter(requests)
        started = time.process_time()
        for _ in range(calls):
            await one()
        per_call.append((time.process_time() - started) / calls * 1e6)
    return per_call


def run(tree: Path, calls: int, rounds: int, varied: bool) -> list[float]:
    """Measure in a subprocess on ``tree``: one line of per-call figures."""
    env = {**os.environ, "PYTHONPATH": str(tree.resolve())}
    cmd = [sys.executable, __file__, "--calls", str(calls), "--rounds", str(rounds), "--raw"]
    cmd += ["--varied"] if varied else []
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return [float(x) for x in out.split()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20000, help="calls per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--before", type=Path, metavar="TREE", help="a baseline checkout")
    parser.add_argument(
        "--varied", action="store_true", help="every call with its own X-Request-Id"
    )
    parser.add_argument("--raw", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.raw:
        import uvloop

        print(*uvloop.run(measure(args.calls, args.rounds, args.varied)))
        return 0
    trees = [("this tree", ROOT)]
    if args.before is not None:
        trees.insert(0, ("before", args.before))
    results = {name: run(tree, args.calls, args.rounds, args.varied) for name, tree in trees}
    heads = "each with its own head" if args.varied else "one head"
    print(
        f"hot path in process, {args.calls} calls x {args.rounds} rounds ({heads}),"
        " CPU us per call:"
    )
    for name, figures in results.items():
        line = f"  {name:<10} best {min(figures):6.1f}  median {statistics.median(figures):6.1f}"
        if name != "before" and "before" in results:
            base = statistics.median(results["before"])
            line += f"  ({statistics.median(figures) / base:.2f}x before's median)"
        print(line)
    return 0


if __name__ == "__main__":
    # Each tree is measured in a subprocess with only that tree on PYTHONPATH.
    raise SystemExit(main())
