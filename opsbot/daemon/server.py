"""The daemon, ``opsbot up``: store, controller, gateway process and the control API.

One per OPSBOT_HOME (a lock file says so). It leaves model instances running when it stops or
dies; the next start adopts them by the identity they were started with. The gateway runs in
its own process (so inference load cannot starve the control plane) and is adopted the same way
after a ``kill -9``; a clean stop (SIGTERM) stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import grp
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

from aiohttp import web

from opsbot.core import usage
from opsbot.core.app import Core
from opsbot.core.controller import Controller, instance_rows
from opsbot.core.errors import OpsbotError, storage_error
from opsbot.core.identity import local_user_name
from opsbot.core.instance_auth import daemon_secret
from opsbot.core.keys import hash_key, key_prefix, metrics_token, new_key
from opsbot.core.logcap import tail_lines
from opsbot.core.notify import Dispatcher
from opsbot.core.runtime import Runtime
from opsbot.core.runtimes.process import ProcessRuntime, child_pythonpath
from opsbot.core.sandbox import SOCKET_NAME
from opsbot.core.scheduler import AutoStopScheduler, SyncOnEvents
from opsbot.core.services import Service
from opsbot.core.spec import DEFAULT_FLAVOR
from opsbot.core.store import table
from opsbot.daemon.api import make_app
from opsbot.serving.gateway import INTERNAL_HEADER
from opsbot.serving.workers import listen
from opsbot.slack.app import start_slack

log = logging.getLogger("opsbot.daemon")

LOCK_NAME = "daemon.lock"
GATEWAY_PID = "gateway.pid"


def socket_path(home: Path) -> Path:
    return Path(home) / SOCKET_NAME


class AlreadyRunning(OpsbotError):
    title = "Daemon already running"
    status = 409


def make_runtime(name: str, home: Path) -> Runtime:
    if name == "process":
        return ProcessRuntime(home)
    if name == "docker":
        # imported here: docker-py is only needed by those who run containers
        from opsbot.core.runtimes.docker import DockerRuntime

        return DockerRuntime(home)
    if name == "swarm":
        from opsbot.core.runtimes.swarm import SwarmRuntime

        return SwarmRuntime(home)
    raise OpsbotError(
        f"runtime {name!r} is not available in this build; use --runtime process, docker or swarm",
        field="runtime",
    )


def store_token(core: Core, user: str, token: str) -> str:
    """Let ``token`` act as ``user`` on the TCP listener (the store keeps its hash only)."""
    with core.store.write() as db:
        table(db, "user_tokens").insert(
            {
                "user": user,
                "token_hash": hash_key(token),
                "prefix": key_prefix(token),
                "created_at": time.time(),
            }
        )
    return token


class PortBusy(OpsbotError):
    title = "Port busy"
    status = 409


def _listening_inodes(port: int) -> set[str]:
    """Socket inodes listening on ``port`` (any address), from /proc/net/tcp and tcp6."""
    inodes = set()
    for table_path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table_path).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            # local address "ADDR:PORT" in hex; state 0A is LISTEN
            if len(cols) > 9 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(cols[9])
    return inodes


def port_holder(port: int) -> str | None:
    """ "pid N (command)" of the process listening on ``port``, when this account can see it."""
    inodes = {f"socket:[{inode}]" for inode in _listening_inodes(port)}
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fds = list((proc / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) in inodes:
                    command = " ".join(_cmdline(int(proc.name)))[:240] or "?"
                    return f"pid {proc.name} ({command})"
            except OSError:
                continue
    return None


def check_port_free(host: str, port: int, what: str, setting: str, field: str) -> None:
    """Raise PortBusy naming ``port`` and, if known, the process holding it."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            holder = port_holder(port) or "another program"
            raise PortBusy(
                f"{what} port {port} on {host} is taken by {holder}; stop it, or choose "
                f"another port ({setting})",
                field=field,
            ) from None


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _listening_on(argv: list[str]) -> tuple[str, int] | None:
    """The ``--host`` and ``--port`` a gateway process was started with (the address it serves
    on), when its command line says both."""
    try:
        host = argv[argv.index("--host") + 1]
        port = int(argv[argv.index("--port") + 1])
    except (ValueError, IndexError):
        return None
    return host, port


class Daemon:
    def __init__(
        self,
        home: Path,
        *,
        runtime: str | None = None,
        gateway_port: int | None = None,
        api_listen: str | None = None,
        examples: bool = True,
        say: Callable[[str], None] = print,
    ):
        self.home = Path(home).resolve()
        self.home.mkdir(parents=True, exist_ok=True)
        self.core = Core(self.home)
        self.core.secure_home()  # before anything is written: an existing home is tightened
        config = self.core.config
        self.runtime = make_runtime(runtime or config.runtime, self.home)
        probe = getattr(self.runtime, "probe", None)
        if probe is not None:  # the swarm: admission and flavors count its nodes
            self.core.use_probe(probe())
        self.controller = Controller(
            self.core.store,
            self.runtime,
            {f.id: f for f in self.core.flavors},
            self.core.probe,
            self.core.clock,
            deploy_timeout_s=config.deploy_timeout_s,
            routed=self.gateway_routes,
        )
        self.dispatcher = Dispatcher(self.core.store)
        self.controller.on_event = self.dispatcher.wake
        self.scheduler = AutoStopScheduler.for_core(self.core, on_change=self.changed)
        self.dispatcher.subscribe(SyncOnEvents(self.scheduler))
        port = config.gateway_port if gateway_port is None else gateway_port
        #: The gateway's listening socket, bound here and handed to the gateway process: a
        #: port chosen as free (port 0) is held from that moment, never another program's by
        #: the time the gateway starts.
        self._gateway_sock: socket.socket | None = None
        #: Whether this start chose the port (configured as 0) rather than being told one.
        self._port_chosen = not port
        if not port:
            self._gateway_sock = listen(config.gateway_host, 0)
            port = self._gateway_sock.getsockname()[1]
        self.gateway_port = port
        self.gateway_url = f"http://{config.gateway_host}:{self.gateway_port}"
        self.api_listen = api_listen or config.api_listen
        self.examples = examples
        self.say = say
        self.internal_token = daemon_secret(self.home)
        metrics_token(self.home)  # made on first start: `opsbot token metrics` prints it
        self._stop = threading.Event()
        self._lock_file: IO[str] | None = None
        self._gateway: subprocess.Popen[bytes] | None = None
        self._gateway_pid: int | None = None
        #: Why the store could not record the controller's last pass; None while it can.
        self.store_failure: OpsbotError | None = None

    # -- identity for the TCP listener -------------------------------------------------------

    def user_for_token(self, token: str) -> str | None:
        row = self.core.store.db.execute(
            "SELECT user FROM user_tokens WHERE token_hash = ?", (hash_key(token),)
        ).fetchone()
        return str(row[0]) if row else None

    def create_token(self, user: str) -> str:
        return store_token(self.core, user, new_key())

    # -- logs --------------------------------------------------------------------------------

    def instances(self, service: Service, with_stats: bool = False) -> list[dict[str, Any]]:
        """The service's instances as the core lists them; ``with_stats``: with CPU and memory
        (``stats``) when the runtime can tell (the engine's figures on docker)."""
        listed = self.core.instances(service)
        handles = {
            (r.idx, r.n): r.handle for r in instance_rows(self.core.store, service.id) if r.handle
        }
        # Which node each instance runs on: the runtime's answer (Swarm), else this machine.
        node_name = getattr(self.runtime, "node_name", None)
        for inst in listed:
            handle = handles.get((inst["version_index"], inst["n"]))
            inst["node"] = (
                (node_name(handle) if handle else "") if node_name else socket.gethostname()
            )
        stats = getattr(self.runtime, "stats", None)
        if stats is None or not with_stats:
            return listed
        wanted = [(i, handles.get((i["version_index"], i["n"]))) for i in listed]
        with ThreadPoolExecutor(max_workers=8) as pool:
            found = list(pool.map(lambda p: stats(p[1]) if p[1] else None, wanted))
        for (inst, _), seen in zip(wanted, found, strict=True):
            inst["stats"] = seen
        return listed

    def gateway_stats(self) -> dict[str, Any] | None:
        """The gateway's ``/stats`` document; None while it does not answer."""
        try:
            ask = urllib.request.Request(
                f"{self.gateway_url}/stats", headers={INTERNAL_HEADER: self.internal_token}
            )
            with urllib.request.urlopen(ask, timeout=2) as resp:
                doc: dict[str, Any] = json.loads(resp.read())
                return doc
        except (OSError, ValueError):
            return None

    def gateway_routes(self) -> list[str] | None:
        """The upstream addresses the gateway routes to, once it has read the store afresh
        (``POST /-/routes``); None while it does not answer."""
        request = urllib.request.Request(
            f"{self.gateway_url}/-/routes",
            method="POST",
            headers={INTERNAL_HEADER: self.internal_token},
        )
        try:
            with urllib.request.urlopen(request, timeout=2) as resp:
                routed = json.loads(resp.read())["routed"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return [str(a) for a in routed]

    def wait_for_routes(self) -> bool:
        """Whether the gateway (every worker) now routes by what the store holds: ``POST
        /-/routes`` makes it read the store afresh before it answers."""
        return self.gateway_routes() is not None

    def version_numbers(
        self, service: Service, instances: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """Per version: traffic from the gateway, CPU and memory from ``instances``' stats."""
        slots = usage.version_slots(self.core.store.db, service)
        return usage.version_numbers(service, slots, instances, self.gateway_stats())

    def _runtime_reconnected(self) -> None:
        """The runtime lost sight of its instances for a while (an engine restart): re-list and
        adopt between two controller passes, then reconcile at once."""
        with self.controller._lock:
            adopted, removed = self.controller.adopt()
        self.say(f"runtime back: adopted {adopted} instance(s), removed {removed} stray(s)")
        self.controller.wake()

    def instance_logs(self, service: Service, tail: int) -> list[str]:
        lines: list[str] = []
        for row in instance_rows(self.core.store, service.id):
            if row.handle:
                lines += [f"[{row.idx}/{row.n}] {ln}" for ln in self.runtime.logs(row.handle, tail)]
        return lines

    # -- the gateway process -----------------------------------------------------------------

    def _gateway_alive(self) -> bool:
        if self._gateway is not None:
            return self._gateway.poll() is None
        if self._gateway_pid is None:
            return False
        cmd = _cmdline(self._gateway_pid)
        return "opsbot.serving.gateway" in cmd and str(self.home) in cmd

    def ensure_gateway(self) -> None:
        pid_file = self.home / GATEWAY_PID
        if self._gateway is None and self._gateway_pid is None and pid_file.exists():
            with contextlib.suppress(ValueError):
                self._gateway_pid = int(pid_file.read_text().strip())
            pid = self._gateway_pid
            if pid is not None and self._gateway_alive():
                self.release_gateway_socket()
                self._serve_at(_listening_on(_cmdline(pid)))
                self.say(f"adopted the gateway (pid {pid}) at {self.gateway_url}")
                return
            self._gateway_pid = None
        if self._gateway_alive():
            return
        config = self.core.config
        sock = self._gateway_sock
        if sock is None:
            # Another program (another daemon's gateway) on the port would answer our
            # services' URLs while ours crash-looped: refuse to start instead.
            where = (config.gateway_host, self.gateway_port)
            try:
                sock = listen(*where)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                check_port_free(
                    *where,
                    "the gateway",
                    "--gateway-port, or gateway_port in config.toml",
                    "gateway_port",
                )
                raise
        log_path = self.home / "logs" / "gateway.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        argv = [
            sys.executable,
            "-m",
            "opsbot.serving.gateway",
            "--home",
            str(self.home),
            "--host",
            config.gateway_host,
            "--port",
            str(self.gateway_port),
            "--max-body-mb",
            str(config.gateway_max_body_mb),
            "--timeout-s",
            str(config.gateway_timeout_s),
            *(["--workers", str(config.gateway_workers)] if config.gateway_workers else []),
            "--listen-fd",
            str(sock.fileno()),
        ]
        try:
            with open(log_path, "ab") as out:
                self._gateway = subprocess.Popen(
                    argv,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    env={**os.environ, "PYTHONPATH": child_pythonpath()},
                    pass_fds=(sock.fileno(),),
                )
        finally:
            # The gateway holds it now; a gateway started again later binds the same port.
            self._gateway_sock = None
            sock.close()
        self._gateway_pid = self._gateway.pid
        pid_file.write_text(str(self._gateway.pid))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self._gateway.poll() is not None:
                raise OpsbotError(
                    f"the gateway exited at start: {' '.join(tail_lines(log_path, 5))}; is port "
                    f"{self.gateway_port} taken? Set gateway_port in config.toml"
                )
            try:
                with urllib.request.urlopen(f"{self.gateway_url}/healthz", timeout=1):
                    self.say(f"gateway listening on {self.gateway_url}")
                    return
            except OSError:
                time.sleep(0.1)
        raise OpsbotError(f"the gateway did not answer on {self.gateway_url} within 20 s")

    def _serve_at(self, where: tuple[str, int] | None) -> None:
        """Point this daemon at the address an adopted gateway listens on: its own, not the one
        this start chose (a port chosen as free differs on every start) or a changed config's."""
        if where is None:
            return
        host, port = where
        configured = (self.core.config.gateway_host, self.gateway_port)
        if where != configured and not self._port_chosen:
            self.say(
                f"the running gateway listens on {host}:{port}, not on the configured "
                f"{configured[0]}:{configured[1]}: it keeps serving there until it is "
                "restarted (opsbot down, then opsbot up)"
            )
        self.gateway_port = port
        self.gateway_url = f"http://{host}:{port}"

    def release_gateway_socket(self) -> None:
        """Close the gateway's listening socket, if this daemon still holds it (one that never
        starts the gateway, or adopted a running one)."""
        if self._gateway_sock is not None:
            self._gateway_sock.close()
            self._gateway_sock = None

    def stop_gateway(self) -> None:
        pid = self._gateway_pid
        if pid is None or not self._gateway_alive():
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if self._gateway is not None:
            try:
                self._gateway.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._gateway.kill()
                self._gateway.wait()
        else:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self._gateway_alive():
                time.sleep(0.05)
        with contextlib.suppress(FileNotFoundError):
            (self.home / GATEWAY_PID).unlink()

    # -- life cycle --------------------------------------------------------------------------

    def _take_lock(self) -> None:
        f = open(self.home / LOCK_NAME, "a+")  # noqa: SIM115 - held for the daemon's life
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "?"
            f.close()
            raise AlreadyRunning(
                f"an opsbot daemon (pid {holder}) already runs for {self.home}; "
                "stop it first or use another --home"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._lock_file = f

    def purge_events(self) -> None:
        days = self.core.config.event_retention_days
        with self.core.store.write() as db:
            db.execute("DELETE FROM events WHERE time < ?", (time.time() - days * 86400,))

    def _controller_loop(self) -> None:
        self.controller.run(self._stop, interval=1.0, on_pass=self._controller_pass)

    def _controller_pass(self, failures: list[Exception]) -> None:
        """Remember whether the store could record what the controller saw (a full disk, a
        read-only home): until it can, the control API reports no status it could not record."""
        self.store_failure = next(
            (known for known in map(storage_error, failures) if known is not None), None
        )

    def _dispatch_loop(self) -> None:
        self.dispatcher.run(self._stop)

    def changed(self) -> None:
        """Something was written on a user's request: reconcile and tell subscribers now."""
        self.controller.wake()
        self.dispatcher.wake()

    def _watch_gateway(self) -> None:
        while not self._stop.wait(2.0):
            if not self._gateway_alive():
                self.say("the gateway stopped; starting it again")
                self._gateway = None
                self._gateway_pid = None
                try:
                    self.ensure_gateway()
                except OpsbotError as exc:
                    self.say(f"cannot restart the gateway: {exc}")

    def _make_examples(self) -> None:
        me = self.core.user(local_user_name())
        try:
            made = self.core.create_examples(me, on_progress=lambda m: self.say(f"example: {m}"))
        except OpsbotError as exc:
            self.say(f"example models not created: {exc}")
            return
        if made:
            self.say(f"example models ready for {me.name}: iris 1.0.0, iris 2.0.0, iris-onnx")

    async def serve(self) -> None:
        self._take_lock()
        adopted, removed = await asyncio.to_thread(self.controller.adopt)
        self.say(
            f"opsbot daemon for {self.home} (runtime {self.runtime.name}); "
            f"adopted {adopted} instance(s), removed {removed} stray(s)"
        )
        for warning in await asyncio.to_thread(self.core.pools.stray_labels):
            self.say(f"warning: {warning}")
        await asyncio.to_thread(self.ensure_gateway)
        await asyncio.to_thread(self.scheduler.start)
        # Slack in-process, when configured (SLACK_BOT_TOKEN and a signing secret or app token)
        stop_slack = start_slack(
            self.core,
            on_change=self.changed,
            gateway_url=self.gateway_url,
            dispatcher=self.dispatcher,
            numbers=lambda s: self.version_numbers(s, self.instances(s, with_stats=True)),
        )
        if stop_slack is not None:
            self.say("Slack bot started")
        self.scheduler.scheduler.add_job(
            self.purge_events, "interval", hours=1, id="retention", replace_existing=True
        )
        threads = [
            threading.Thread(target=self._controller_loop, name="controller", daemon=True),
            threading.Thread(target=self._watch_gateway, name="gateway-watch", daemon=True),
            threading.Thread(target=self._dispatch_loop, name="events", daemon=True),
        ]
        watch = getattr(self.runtime, "watch", None)
        if watch is not None:  # the runtime's event watcher (docker): wakes and repairs
            threads.append(
                threading.Thread(
                    target=watch,
                    args=(self._stop, self.controller.wake, self._runtime_reconnected),
                    name="runtime-events",
                    daemon=True,
                )
            )
        if self.examples:
            threads.append(threading.Thread(target=self._make_examples, name="examples"))
        for t in threads:
            t.start()
        warm = getattr(self.runtime, "warm", None)
        if warm is not None:  # the process runtime's preloader, ready before the first deploy
            default = next((f for f in self.core.flavors if f.id == DEFAULT_FLAVOR), None)
            if default is not None:
                threading.Thread(target=warm, args=(default,), name="preload", daemon=True).start()

        runner = web.AppRunner(make_app(self), handle_signals=False, access_log=None)
        await runner.setup()
        sock_path = socket_path(self.home)
        with contextlib.suppress(FileNotFoundError):
            sock_path.unlink()  # stale: we hold the lock, so no daemon serves it
        await web.UnixSite(runner, str(sock_path)).start()
        os.chmod(sock_path, 0o660)
        group = self.core.config.socket_group
        if group:
            os.chown(sock_path, -1, grp.getgrnam(group).gr_gid)
        self.say(f"control API on {sock_path}")
        if self.api_listen:
            host, _, port = self.api_listen.rpartition(":")
            check_port_free(
                host or "127.0.0.1", int(port), "the control API", "--listen", "api_listen"
            )
            await web.TCPSite(runner, host or "127.0.0.1", int(port)).start()
            self.say(f"control API (tokens) on {self.api_listen}")

        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        await stopping.wait()
        self.say("stopping: control API, controller, gateway (model instances keep running)")
        self._stop.set()
        self.controller.wake()
        await runner.cleanup()
        with contextlib.suppress(FileNotFoundError):
            sock_path.unlink()
        for t in threads:
            await asyncio.to_thread(t.join, 15)
        await asyncio.to_thread(self.stop_gateway)
        self.scheduler.shutdown()
        if stop_slack is not None:
            await asyncio.to_thread(stop_slack)
        self.controller.close()
        close_runtime = getattr(self.runtime, "close", None)
        if close_runtime is not None:  # the process runtime's preloaders
            close_runtime()
        if self._lock_file:
            self._lock_file.close()
        self.say("stopped")

    def run(self) -> None:
        asyncio.run(self.serve())
