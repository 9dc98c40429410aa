"""Gateway overhead: the same load straight at one model instance and through the gateway.

    python bench/gateway.py [--upstream iris|echo] [--concurrency 1 16] [--duration 5]

One run starts one upstream (``iris``: the real model server with a scikit-learn iris model;
``echo``: a trivial aiohttp ``/predict`` that does nothing, the worst case for the gateway's
share), the gateway as its own process on a store that routes one service to that upstream (once
per variant, ``--gateways``: ``gateway`` is the default, the raw asyncio client on uvloop with
one worker; ``gw-asyncio`` the standard event loop; ``gw-aiohttp`` aiohttp's client; ``gw-2w``
two worker processes; ``gw-tcp`` the default over TCP), and, when installed, nginx and HAProxy as
reference proxies (native ones: what a data plane outside Python would cost). The upstream
serves, as the process runtime has it, on a unix socket this script binds and passes
(``--listen-fd``), which the gateways (but ``gw-tcp``), the relay, nginx (``server unix:PATH``)
and HAProxy (``unix@PATH``) reach it on; the same process also serves a TCP port passed alike,
which ``direct`` (the load generators speak TCP) and ``gw-tcp`` use. Then, at each
concurrency, it offers the same closed load (``wrk`` when installed, else a built-in asyncio
client) to each target in turn and prints throughput, latency and the CPU time the target's
processes spent per call (so calls per second per core: the gateway's own ceiling, which the
echo upstream shows best), with the figures as ratios against the direct ones measured in the
same run. Targets (issue 18): at concurrency 16 at least 0.92x of direct throughput and within
0.05x of nginx; at concurrency 1 at most 0.15 ms added to the median.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pwd
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from time import perf_counter, perf_counter_ns

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from opsbot.core.keys import hash_key, key_prefix  # noqa: E402
from opsbot.core.store import Store  # noqa: E402
from opsbot.serving.gateway import DB_NAME  # noqa: E402

KEY = "ob_bench-key"
SERVICE_UID = "benchservice0001"
MODEL_NAME = "iris"
BODY = json.dumps({"instances": [[5.1, 3.5, 1.4, 0.2]]}).encode()


@dataclass(frozen=True)
class Result:
    target: str
    concurrency: int
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float
    #: CPU time the target's processes (and their children: workers) spent per call.
    cpu_us: float | None = None


@dataclass(frozen=True)
class Target:
    name: str
    port: int
    path: str
    pid: int | None = None


#: Gateway variants: upstream client, event loop, worker processes, HTTP front.
VARIANTS: dict[str, tuple[str, str, int, str]] = {
    "gateway": ("raw", "uvloop", 1, "fast"),
    "gw-aiohttp-front": ("raw", "uvloop", 1, "aiohttp"),
    "gw-asyncio": ("raw", "asyncio", 1, "fast"),
    "gw-aiohttp": ("aiohttp", "uvloop", 1, "fast"),
    "gw-2w": ("raw", "uvloop", 2, "fast"),
    "gw-tcp": ("raw", "uvloop", 1, "fast"),
}
#: Variants routed to the upstream's TCP port instead of its unix socket.
OVER_TCP = {"gw-tcp", "gw-before"}
_TICK = os.sysconf("SC_CLK_TCK")


def tree_cpu_s(pid: int) -> float:
    """User and system CPU seconds of ``pid`` and its children so far."""
    total = 0.0
    pids = [pid]
    while pids:
        p = pids.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / _TICK
            pids += Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except (OSError, IndexError, ValueError):
            continue
    return total


# -- the echo upstream (run as this file with --serve-echo FD...) -----------------------------


def serve_echo(fds: list[int]) -> None:
    """A /predict that reads the body and answers a fixed prediction: no work at all, on each
    listening socket passed (as the model server's --listen-fd)."""
    from aiohttp import web

    reply = json.dumps({"predictions": [0]}).encode()

    async def predict(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=reply, content_type="application/json")

    async def ready(request: web.Request) -> web.Response:
        return web.Response(text="ready")

    app = web.Application(client_max_size=64 * 2**20)  # the model server's own cap
    app.router.add_post("/predict", predict)
    app.router.add_get("/v2/health/ready", ready)

    async def serve() -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        for fd in fds:
            await web.SockSite(runner, socket.socket(fileno=fd)).start()
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


# -- the floor of a Python proxy (run as this file with --serve-relay PORT UPSTREAM) ------------


def serve_relay(port: int, upstream: str) -> None:
    """The least a proxy written in Python on uvloop can do: each call's body forwarded to the
    upstream on one kept connection per caller, its answer's body sent back, from protocol
    callbacks only (no key, limit, route, metrics or error handling; Content-Length framing
    only). What it adds to a call is what any Python proxy adds before doing its own work.
    ``upstream``: a port on 127.0.0.1, or a unix socket's path."""
    import uvloop

    def framed(buf: bytearray) -> tuple[int, int] | None:
        """(head end, message end) of the first whole message in ``buf``, if there is one."""
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        found = re.search(rb"(?i)\r\ncontent-length: *(\d+)", bytes(buf[: end + 2]))
        total = end + 4 + (int(found[1]) if found else 0)
        return (end + 4, total) if len(buf) >= total else None

    unix = upstream if upstream.startswith("/") else None
    host = "localhost" if unix else f"127.0.0.1:{upstream}"
    head = f"POST /predict HTTP/1.1\r\nHost: {host}\r\n".encode()

    class Upstream(asyncio.Protocol):
        def __init__(self, caller: Caller) -> None:
            self.caller = caller
            self.buf = bytearray()

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.buf += data
            if (ends := framed(self.buf)) is not None:
                body = bytes(self.buf[ends[0] : ends[1]])
                del self.buf[: ends[1]]
                self.caller.transport.write(  # type: ignore[attr-defined]
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                )

    class Caller(asyncio.Protocol):
        def __init__(self) -> None:
            self.buf = bytearray()
            self.upstream: Upstream | None = None
            self.pending: list[bytes] = []

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            self.connecting = asyncio.ensure_future(self._connect())

        async def _connect(self) -> None:
            loop = asyncio.get_running_loop()
            if unix is not None:
                _, self.upstream = await loop.create_unix_connection(lambda: Upstream(self), unix)
            else:
                _, self.upstream = await loop.create_connection(
                    lambda: Upstream(self), "127.0.0.1", int(upstream)
                )
            for request in self.pending:
                self.upstream.transport.write(request)  # type: ignore[attr-defined]

        def data_received(self, data: bytes) -> None:
            self.buf += data
            if (ends := framed(self.buf)) is not None:
                body = bytes(self.buf[ends[0] : ends[1]])
                del self.buf[: ends[1]]
                request = head + b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                if self.upstream is None:
                    self.pending.append(request)
                else:
                    self.upstream.transport.write(request)  # type: ignore[attr-defined]

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Caller, "127.0.0.1", port)
        await server.serve_forever()

    uvloop.run(main())


# -- processes ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen[bytes], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with code {proc.returncode}; see its log")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} did not answer {url} within {timeout:g} s")
        time.sleep(0.05)


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with code {proc.returncode}; see its log")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} did not listen on port {port} within {timeout:g} s")
        time.sleep(0.05)


@contextmanager
def running(
    cmd: list[str],
    log: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    pass_fds: tuple[int, ...] = (),
) -> Iterator[subprocess.Popen[bytes]]:
    """``cmd`` running until the block ends. ``cwd``: where it runs; for ``python -m`` the
    tree whose code it runs, since Python puts the working directory ahead of PYTHONPATH.
    ``pass_fds``: descriptors it inherits (listening sockets)."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
            pass_fds=pass_fds,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def train_iris(folder: Path) -> None:
    """The example model: a logistic regression on the iris data scikit-learn ships."""
    import joblib
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    folder.mkdir(parents=True)
    joblib.dump(LogisticRegression(max_iter=500).fit(x, y), folder / "model.joblib")


def fill_store(home: Path, upstream: tuple[str, int]) -> None:
    """One running service, one version, one ready instance at ``upstream`` (host and port, or
    a unix socket as the process runtime writes it): what the controller would write."""
    store = Store(home / DB_NAME)
    now = time.time()
    with store.write() as db:
        conn = db.conn
        model_id = conn.execute(
            "INSERT INTO models (owner, name, created_at) VALUES ('bench', ?, ?)", (MODEL_NAME, now)
        ).lastrowid
        mv = conn.execute(
            "INSERT INTO model_versions (model_id, version, format, status, path, created_at, "
            "updated_at) VALUES (?, '1.0.0', 'sklearn', 'normal', '', ?, ?)",
            (model_id, now, now),
        ).lastrowid
        sid = conn.execute(
            "INSERT INTO services (uid, owner, name, status, spec, resource_pool, traffic_limit, "
            "created_at, updated_at) VALUES (?, 'bench', 'bench', 'running', '{}', 'public', "
            "1000000, ?, ?)",
            (SERVICE_UID, now, now),
        ).lastrowid
        conn.execute(
            "INSERT INTO service_versions (service_id, idx, model_version_id, traffic_ratio, "
            "flavor, instances) VALUES (?, 0, ?, 100, 'cpu', 1)",
            (sid, mv),
        )
        conn.execute(
            "INSERT INTO instances (service_id, idx, n, runtime, host, port, state, updated_at) "
            "VALUES (?, 0, 0, 'process', ?, ?, 'ready', ?)",
            (sid, *upstream, now),
        )
        conn.execute(
            "INSERT INTO api_keys (service_id, key_hash, prefix, created_at) VALUES (?, ?, ?, ?)",
            (sid, hash_key(KEY), key_prefix(KEY), now),
        )
    store.close()


# Its worker runs as this script's account (as root, nginx's would otherwise be nobody's): the
# upstream's socket is in this run's private directory, like an instance's in the daemon's.
NGINX_CONF = """
user {user};
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/nginx-body;
    proxy_temp_path {tmp}/nginx-proxy;
    fastcgi_temp_path {tmp}/nginx-fastcgi;
    uwsgi_temp_path {tmp}/nginx-uwsgi;
    scgi_temp_path {tmp}/nginx-scgi;
    upstream model {{ server unix:{upstream}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 12m;
        location / {{
            proxy_pass http://model/predict;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


# HAProxy, a second native reference: one thread, keep-alive to the upstream's socket.
HAPROXY_CONF = """
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    option http-keep-alive
    http-reuse always
frontend bench
    bind 127.0.0.1:{port}
    default_backend model
backend model
    http-request set-path /predict
    server instance unix@{upstream}
"""


# -- load generators ----------------------------------------------------------------------------


def _wrk_ms(value: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value)
    if match is None:
        raise ValueError(f"unexpected wrk latency {value!r}")
    number, unit = float(match[1]), match[2]
    return number * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def load_wrk(wrk: str, target: Target, concurrency: int, duration: float, script: Path) -> Result:
    cmd = [
        wrk,
        "-t1",
        f"-c{concurrency}",
        f"-d{max(1, round(duration))}s",
        "--latency",
        "-s",
        str(script),
        f"http://127.0.0.1:{target.port}{target.path}",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    percentiles = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.MULTILINE))
    requests = int(re.search(r"(\d+) requests in", out)[1])  # type: ignore[index]
    errors = 0
    if found := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(found[1])
    if found := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    ):
        errors += sum(int(n) for n in found.groups())
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    if errors:
        print(f"{target.name} at concurrency {concurrency}: wrk saw errors\n{out}", file=sys.stderr)
    return Result(
        target.name,
        concurrency,
        requests,
        errors,
        rps,
        _wrk_ms(percentiles["50"]),
        _wrk_ms(percentiles["99"]),
    )


async def _load_python(target: Target, concurrency: int, duration: float) -> Result:
    request = (
        f"POST {target.path} HTTP/1.1\r\nHost: 127.0.0.1:{target.port}\r\n"
        f"Content-Type: application/json\r\nX-Auth-Token: {KEY}\r\n"
        f"Content-Length: {len(BODY)}\r\n\r\n"
    ).encode() + BODY
    latencies: list[int] = []
    errors = 0
    stop = perf_counter_ns() + int(duration * 1e9)

    async def worker() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", target.port)
        try:
            while (started := perf_counter_ns()) < stop:
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
                if length is None:
                    raise RuntimeError(f"{target.name} answered without Content-Length")
                await reader.readexactly(int(length[1]))
                latencies.append(perf_counter_ns() - started)
                if head[9:12] != b"200":
                    errors += 1
        finally:
            writer.close()

    began = perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = perf_counter() - began
    latencies.sort()
    n = len(latencies)
    return Result(
        target.name,
        concurrency,
        n,
        errors,
        n / elapsed,
        latencies[n // 2] / 1e6,
        latencies[min(n - 1, int(n * 0.99))] / 1e6,
    )


def load_python(target: Target, concurrency: int, duration: float) -> Result:
    return asyncio.run(_load_python(target, concurrency, duration))


# -- the run ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", choices=["iris", "echo"], default="iris")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of load before each")
    parser.add_argument("--rounds", type=int, default=1, help="measurements per cell (median)")
    parser.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--no-nginx", action="store_true", help="skip the nginx reference")
    parser.add_argument(
        "--no-haproxy", action="store_true", help="skip the HAProxy reference (when installed)"
    )
    parser.add_argument(
        "--gateways",
        nargs="+",
        choices=sorted(VARIANTS),
        default=["gateway", "gw-aiohttp-front", "gw-2w"],
        help="gateway variants to measure, each its own gateway: gateway (fast front, raw "
        "client, uvloop, 1 worker), gw-aiohttp-front (all through aiohttp's server), gw-asyncio "
        "(the standard event loop), gw-aiohttp (aiohttp's client), gw-2w (2 workers), gw-tcp "
        "(the default gateway reaching the upstream over TCP instead of its unix socket)",
    )
    parser.add_argument(
        "--before",
        type=Path,
        metavar="TREE",
        help="also measure `gw-before`: the default gateway run from another checkout (say, "
        "`git worktree add /tmp/before main`), so a change is measured against its baseline in "
        "the same run",
    )
    parser.add_argument(
        "--relay",
        action="store_true",
        help="also measure `py-relay`: the floor of a Python proxy on uvloop (see serve_relay)",
    )
    parser.add_argument("--serve-echo", type=int, nargs="+", metavar="FD", help=argparse.SUPPRESS)
    parser.add_argument("--serve-relay", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_echo is not None:
        serve_echo(args.serve_echo)
        return 0
    if args.serve_relay is not None:
        serve_relay(int(args.serve_relay[0]), args.serve_relay[1])
        return 0

    wrk = shutil.which("wrk") if args.loadgen in ("auto", "wrk") else None
    if args.loadgen == "wrk" and wrk is None:
        parser.error("wrk is not installed")
    nginx = None if args.no_nginx else shutil.which("nginx")
    haproxy = None if args.no_haproxy else shutil.which("haproxy")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}

    with tempfile.TemporaryDirectory(prefix="opsbot-bench-") as tmp_name:
        tmp = Path(tmp_name)
        # The upstream's sockets, bound here and passed as the process runtime passes them.
        unix_path = str(tmp / "instance.sock")
        unix = socket.socket(socket.AF_UNIX)
        unix.bind(unix_path)
        tcp = socket.socket()
        tcp.bind(("127.0.0.1", 0))
        for sock in (unix, tcp):
            sock.listen(1024)
        upstream_port = int(tcp.getsockname()[1])
        fds = (unix.fileno(), tcp.fileno())
        if args.upstream == "iris":
            train_iris(tmp / "model")
            upstream_cmd = [
                sys.executable,
                "-m",
                "opsbot.serving.server",
                "--path",
                str(tmp / "model"),
                "--format",
                "sklearn",
                "--name",
                MODEL_NAME,
                "--version",
                "1.0.0",
                *(arg for fd in fds for arg in ("--listen-fd", str(fd))),
            ]
        else:
            upstream_cmd = [sys.executable, __file__, "--serve-echo", *map(str, fds)]
        fill_store(tmp / "home", (unix_path, 0))
        fill_store(tmp / "home-tcp", ("127.0.0.1", upstream_port))
        script = tmp / "post.lua"
        script.write_text(
            'wrk.method = "POST"\n'
            f"wrk.body = '{BODY.decode()}'\n"
            'wrk.headers["Content-Type"] = "application/json"\n'
            f'wrk.headers["X-Auth-Token"] = "{KEY}"\n'
        )
        with ExitStack() as stack:
            upstream = stack.enter_context(
                running(upstream_cmd, tmp / "upstream.log", env, pass_fds=fds)
            )
            unix.close()  # the upstream has its own: it alone keeps them open
            tcp.close()
            wait_http(f"http://127.0.0.1:{upstream_port}/v2/health/ready", upstream, "upstream")
            targets = [Target("direct", upstream_port, "/predict", upstream.pid)]
            runs = [(name, VARIANTS[name], env, ROOT) for name in args.gateways]
            if args.before is not None:
                before = args.before.resolve()
                before_env = {**env, "PYTHONPATH": str(before)}
                runs.insert(0, ("gw-before", VARIANTS["gateway"], before_env, before))
            for name, (client, loop, workers, front), gateway_env, tree in runs:
                port = free_port()
                cmd = [
                    sys.executable,
                    "-m",
                    "opsbot.serving.gateway",
                    "--home",
                    str(tmp / ("home-tcp" if name in OVER_TCP else "home")),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--upstream-client",
                    client,
                    "--loop",
                    loop,
                    "--workers",
                    str(workers),
                    "--front",
                    front,
                    "--log-level",
                    "WARNING",
                ]
                gateway = stack.enter_context(
                    running(cmd, tmp / f"{name}.log", gateway_env, cwd=tree)
                )
                wait_http(f"http://127.0.0.1:{port}/healthz", gateway, name)
                targets.append(Target(name, port, f"/v1/infers/{SERVICE_UID}", gateway.pid))
            if args.relay:
                relay_port = free_port()
                cmd = [
                    sys.executable,
                    __file__,
                    "--serve-relay",
                    str(relay_port),
                    unix_path,
                ]
                relay = stack.enter_context(running(cmd, tmp / "py-relay.log", env))
                wait_port(relay_port, relay, "py-relay")
                targets.append(Target("py-relay", relay_port, "/predict", relay.pid))
            if nginx is not None:
                nginx_port = free_port()
                conf = tmp / "nginx.conf"
                user = pwd.getpwuid(os.geteuid()).pw_name
                conf.write_text(
                    NGINX_CONF.format(tmp=tmp, upstream=unix_path, port=nginx_port, user=user)
                )
                cmd = [nginx, "-p", str(tmp), "-e", str(tmp / "nginx-error.log"), "-c", str(conf)]
                proxy = stack.enter_context(running(cmd, tmp / "nginx.log"))
                wait_port(nginx_port, proxy, "nginx")
                targets.append(Target("nginx", nginx_port, "/", proxy.pid))
            if haproxy is not None:
                haproxy_port = free_port()
                conf = tmp / "haproxy.cfg"
                conf.write_text(HAPROXY_CONF.format(upstream=unix_path, port=haproxy_port))
                cmd = [haproxy, "-db", "-f", str(conf)]
                proxy = stack.enter_context(running(cmd, tmp / "haproxy.log"))
                wait_port(haproxy_port, proxy, "haproxy")
                targets.append(Target("haproxy", haproxy_port, "/", proxy.pid))
            results = measure(args, targets, wrk, script)
        failed = sorted({r.target for r in results if r.errors})
        logs = {name: (tmp / f"{name}.log").read_text(errors="replace") for name in failed}
    report(args, results, "wrk" if wrk else "python asyncio client", nginx is not None)
    for name, log in logs.items():
        print(f"\nsome calls to {name} failed; the tail of its log:\n{log[-2000:]}")
    return 1 if logs else 0


def measure(
    args: argparse.Namespace, targets: list[Target], wrk: str | None, script: Path
) -> list[Result]:
    def once(target: Target, concurrency: int, duration: float) -> Result:
        cpu = tree_cpu_s(target.pid) if target.pid is not None else None
        if wrk is not None:
            result = load_wrk(wrk, target, concurrency, duration, script)
        else:
            result = load_python(target, concurrency, duration)
        if cpu is None or not result.requests or target.pid is None:
            return result
        used = tree_cpu_s(target.pid) - cpu
        return replace(result, cpu_us=used / result.requests * 1e6)

    results = []
    for concurrency in args.concurrency:
        rounds: dict[str, list[Result]] = {t.name: [] for t in targets}
        for _ in range(args.rounds):
            # Interleaved, so a drift of the machine touches every target alike.
            for target in targets:
                if args.warmup > 0:
                    once(target, concurrency, args.warmup)
                rounds[target.name].append(once(target, concurrency, args.duration))
        for target in targets:
            runs = rounds[target.name]
            results.append(
                Result(
                    target.name,
                    concurrency,
                    sum(r.requests for r in runs),
                    sum(r.errors for r in runs),
                    statistics.median(r.rps for r in runs),
                    statistics.median(r.p50_ms for r in runs),
                    statistics.median(r.p99_ms for r in runs),
                    statistics.median(r.cpu_us for r in runs if r.cpu_us is not None)
                    if any(r.cpu_us is not None for r in runs)
                    else None,
                )
            )
    return results


def report(args: argparse.Namespace, results: list[Result], loadgen: str, nginx: bool) -> None:
    upstream = "model server, sklearn iris" if args.upstream == "iris" else "echo (no work at all)"
    print(
        f"upstream: {upstream}; load: {loadgen}; {os.cpu_count()} CPUs; "
        f"{args.duration:g} s x {args.rounds} round(s) per cell"
        + ("" if nginx else "; nginx not installed")
    )
    print(
        f"{'conc':>4}  {'target':<10} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} "
        f"{'cpu us/call':>11} {'calls/s/core':>12}  vs direct"
    )
    direct = {r.concurrency: r for r in results if r.target == "direct"}
    for r in results:
        base = direct[r.concurrency]
        versus = (
            ""
            if r.target == "direct"
            else f"{r.rps / base.rps:5.2f}x req/s, p50 {r.p50_ms - base.p50_ms:+.3f} ms"
        )
        cpu = f"{r.cpu_us:11.0f} {1e6 / r.cpu_us:12.0f}" if r.cpu_us else f"{'':>11} {'':>12}"
        print(
            f"{r.concurrency:>4}  {r.target:<10} {r.rps:>9.0f} {r.p50_ms:>8.3f} {r.p99_ms:>8.3f} "
            f"{r.errors:>6} {cpu}  {versus}"
        )


if __name__ == "__main__":
    raise SystemExit(main())
