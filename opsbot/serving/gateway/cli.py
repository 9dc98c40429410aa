"""``python -m opsbot.serving.gateway``: the gateway's command line, one process or N workers."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import socket
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, Final

import uvloop

from opsbot.core.keys import METRICS_TOKEN_FILE, hash_key, metrics_token
from opsbot.core.store import DB_NAME
from opsbot.serving.gateway.http import serve
from opsbot.serving.gateway.options import INTERNAL_SECRET, GatewayOptions
from opsbot.serving.workers import SharedBuckets, Siblings, default_workers, listen, supervise

log = logging.getLogger("opsbot.serving.gateway")


def run_loop(main: Coroutine[Any, Any, None], loop: str = "uvloop") -> None:
    """Run ``main`` to its end on a new event loop of the kind named."""
    if loop == "uvloop":
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main)
    else:
        asyncio.run(main)


def give_back_large_buffers() -> None:
    """Have glibc serve every allocation of 1 MiB or more straight from mmap.

    Request bodies are such allocations. By default glibc raises its mmap threshold each time a
    large block is freed, so later bodies come from the heap, which fragments and is rarely
    returned: after a burst of large calls the process would stay at its peak. A fixed
    threshold keeps it where it is, and a freed body goes back to the system at once.
    """
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 1 << 20)


_M_MMAP_THRESHOLD: Final = -3


def main(argv: list[str] | None = None) -> int:
    """``python -m opsbot.serving.gateway``: run the gateway for one $OPSBOT_HOME."""
    from opsbot.core.config import default_home, load_config
    from opsbot.core.errors import OpsbotError

    defaults = GatewayOptions()
    parser = argparse.ArgumentParser(
        prog="python -m opsbot.serving.gateway", description="The opsbot inference gateway."
    )
    parser.add_argument(
        "--home", type=Path, default=None, help="OPSBOT_HOME (default: $OPSBOT_HOME)"
    )
    parser.add_argument("--host", default=None, help="address to listen on (config: gateway_host)")
    parser.add_argument("--port", type=int, default=None, help="port (config: gateway_port)")
    parser.add_argument("--max-body-mb", type=float, default=defaults.max_body_mb)
    parser.add_argument("--timeout-s", type=float, default=defaults.timeout_s)
    parser.add_argument("--attempts", type=int, default=defaults.attempts)
    parser.add_argument(
        "--max-buffered-mb",
        type=float,
        default=defaults.max_buffered_mb,
        help="request bytes held at once across all calls; beyond them 503 (default: %(default)s)",
    )
    parser.add_argument(
        "--read-timeout-s",
        type=float,
        default=defaults.read_timeout_s,
        help="time for a request's head, and for its body, to arrive (default: %(default)s)",
    )
    parser.add_argument(
        "--upstream-client",
        choices=["raw", "aiohttp"],
        default=defaults.client,
        help="HTTP client for the hop to instances (default: raw, the lean asyncio one)",
    )
    parser.add_argument(
        "--front",
        choices=["fast", "aiohttp"],
        default=defaults.front,
        help="HTTP server side: fast (inference calls below aiohttp, the rest through it) or "
        "aiohttp (all through aiohttp's server) (default: %(default)s)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes on the one port (config: gateway_workers; default: one per core)",
    )
    parser.add_argument(
        "--loop",
        choices=["uvloop", "asyncio"],
        default="uvloop",
        help="event loop: uvloop (libuv; less CPU per call) or the standard library's",
    )
    parser.add_argument(
        "--listen-fd",
        type=int,
        default=None,
        help="serve on this inherited listening socket (the daemon binds it, so the port it "
        "chose is never another's by the time the gateway starts); --host and --port then only "
        "name it",
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    home: Path = args.home if args.home is not None else default_home()
    host, port = args.host, args.port
    if host is None or port is None:
        try:
            config = load_config(home)
        except OpsbotError as exc:
            print(f"opsbot gateway: {exc}", file=sys.stderr)
            return 2
        host = host if host is not None else config.gateway_host
        port = port if port is not None else config.gateway_port
    workers = args.workers if args.workers is not None else default_workers()
    if workers < 1:
        parser.error("--workers must be at least 1")
    positive = (args.max_body_mb, args.timeout_s, args.max_buffered_mb, args.read_timeout_s)
    if min(positive) <= 0 or args.attempts < 1:
        parser.error(
            "--max-body-mb, --timeout-s, --max-buffered-mb and --read-timeout-s must be "
            "positive, --attempts at least 1"
        )
    secret = home / INTERNAL_SECRET
    options = GatewayOptions(
        max_body_mb=args.max_body_mb,
        timeout_s=args.timeout_s,
        attempts=args.attempts,
        client=args.upstream_client,
        front=args.front,
        max_buffered_mb=args.max_buffered_mb,
        read_timeout_s=args.read_timeout_s,
        internal_token_hash=(hash_key(secret.read_text().strip()) if secret.exists() else None),
        instance_key=secret.read_text().strip() if secret.exists() else None,
        metrics_token_file=str(home / METRICS_TOKEN_FILE),
    )
    if home.is_dir():  # the daemon makes it first; a gateway started alone makes it here
        metrics_token(home)
    give_back_large_buffers()
    inherited: socket.socket | None = None
    if args.listen_fd is not None:
        try:
            inherited = socket.socket(fileno=args.listen_fd)
            inherited.setblocking(False)
        except OSError as exc:
            print(f"opsbot gateway: --listen-fd {args.listen_fd}: {exc}", file=sys.stderr)
            return 1
    if workers == 1:
        try:
            run_loop(serve(home / DB_NAME, host, port, options, sock=inherited), args.loop)
        except OSError as exc:
            print(f"opsbot gateway: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
            return 1
        return 0
    try:
        sock = inherited if inherited is not None else listen(host, port)
    except OSError as exc:
        print(f"opsbot gateway: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return 1
    shared, siblings = SharedBuckets(), Siblings(workers)

    def work(index: int) -> None:
        run_loop(
            serve(
                home / DB_NAME,
                host,
                port,
                options,
                sock=sock,
                shared=shared,
                siblings=siblings,
                index=index,
            ),
            args.loop,
        )

    log.info("gateway: %d workers on %s:%d", workers, host, sock.getsockname()[1])
    return supervise(workers, work)
