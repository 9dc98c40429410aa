"""The daemon's real control API for the dashboard's Pilot tests.

:class:`LiveApi` serves :func:`opsbot.daemon.api.make_app` (every route, middleware and error
document the daemon has) on a unix socket, over a real :class:`~opsbot.core.app.Core` on a copy
of the template home, with the core tests' :class:`~opsbot.core.runtime.FakeRuntime` behind a
real controller and a clock that moves only when told. The dashboard's own
:class:`~opsbot.client.ControlClient` talks to it: nothing of the API is restated here.

States the real core reaches only slowly are driven through the fakes, never through the API:
:meth:`LiveApi.settle` runs the controller's pass (Deploying -> Running), :meth:`LiveApi.unhealthy`
makes instances fail their health check (Concerning, Abnormal), :attr:`LiveApi.clock` moves
deadlines, :attr:`TestDaemon.gateway_document` is what the gateway's ``/stats`` answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from aiohttp import web

from opsbot.client import ControlClient
from opsbot.core.app import Core
from opsbot.core.clock import FakeClock
from opsbot.core.config import load_config
from opsbot.core.controller import Controller
from opsbot.core.hardware import GIB, FakeProbe, Node
from opsbot.core.identity import User
from opsbot.core.notify import Dispatcher
from opsbot.core.runtime import FakeRuntime
from opsbot.core.sandbox import SOCKET_NAME
from opsbot.core.services import Service
from opsbot.core.status import Status
from opsbot.daemon.api import make_app
from opsbot.daemon.server import Daemon

#: Where the fake clock starts: every countdown of these tests is counted from here.
NOW = 1_800_000_000.0


class LoggingRuntime(FakeRuntime):
    """The core tests' fake runtime, with log lines the tests write per instance."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: dict[str, list[str]] = {}
        #: CPU % and memory bytes per instance handle, for the runtimes that can tell.
        self.measured: dict[str, dict[str, float]] = {}

    def logs(self, handle: str, tail: int = 100) -> list[str]:
        return self.lines.get(handle, [])[-tail:]

    def stats(self, handle: str) -> dict[str, float] | None:
        """What the engine measures of one instance (as the docker runtime answers)."""
        return self.measured.get(handle)


class TestDaemon(Daemon):
    """The daemon's own methods (instances, numbers, logs, wake-ups) over the fakes: a core on
    ``home`` with a fixed clock and one big CPU node, the fake runtime, no gateway process."""

    __test__ = False  # not a test class, whatever its name

    def __init__(self, home: Path, clock: FakeClock) -> None:
        # Not Daemon.__init__: that one starts nothing either, but makes the real runtime.
        self.home = home
        # One big CPU node for the public pool, one for dedicated pools that name it.
        nodes = [Node("big", 4096, 65536 * GIB, "x86_64"), Node("pooled", 64, 256 * GIB, "x86_64")]
        self.core = Core(home, probe=FakeProbe(nodes), clock=clock)
        self.runtime = LoggingRuntime()
        #: Services (by uid) whose instances fail their health check.
        self.failing: set[str] = set()
        self.controller = Controller(
            self.core.store,
            self.runtime,
            {f.id: f for f in self.core.flavors},
            self.core.probe,
            clock,
            deploy_timeout_s=600,
            route_settle_s=0,
            ready=lambda host, port: self._healthy(port),
        )
        self.dispatcher = Dispatcher(self.core.store)
        self.controller.on_event = self.dispatcher.wake
        # No gateway runs: nothing listens on port 9 (discard), so calls to it fail at once.
        self.gateway_port = 9
        self.gateway_url = "http://127.0.0.1:9"
        self.api_listen = None
        self.examples = False
        self.say = lambda _line: None
        self.internal_token = "test-daemon-token"
        self._stop = threading.Event()
        self._gateway = None
        self._gateway_pid = None
        self.store_failure = None
        #: What the gateway's ``/stats`` answers (None: it does not answer).
        self.gateway_document: dict[str, Any] | None = None

    def _healthy(self, port: int) -> bool:
        found = [i for i in list(self.runtime.instances.values()) if i.port == port]
        return bool(found) and found[0].spec.service_uid not in self.failing

    def gateway_stats(self) -> dict[str, Any] | None:
        return self.gateway_document

    def gateway_routes(self) -> list[str] | None:
        return []  # the gateway read the store afresh (it routes by the store alone)


class LiveApi:
    """The control API app served on a unix socket from a thread of its own."""

    def __init__(self, home: Path, socket_dir: Path | None = None) -> None:
        """``socket_dir``: where the socket goes (default: a short new folder under /tmp)."""
        self.clock = FakeClock(NOW)
        self.daemon = TestDaemon(home, self.clock)
        self.core = self.daemon.core
        # A short folder of its own for the socket: a unix socket path holds 107 bytes at most.
        self._own_dir = socket_dir is None
        self.socket_dir = socket_dir or Path(tempfile.mkdtemp(prefix="ob-", dir="/tmp"))
        self.client = ControlClient.for_home(self.socket_dir, timeout=20)
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        #: The bodies the gateway stand-in was sent, by service uid.
        self.predictions: dict[str, list[bytes]] = {}
        # Daemon threads: a process that only ends (a dashboard hung up on) is not held.
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="control-api", daemon=True
        )
        self._thread.start()
        self._workers = [
            threading.Thread(
                target=self.daemon.dispatcher.run, args=(self.daemon._stop,), daemon=True
            ),
        ]
        for t in self._workers:
            t.start()
        self._gateway_runner = self._on_loop(self._start_gateway())
        self.serve()

    # -- serving -------------------------------------------------------------------------------

    def _on_loop(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    async def _start_gateway(self) -> web.AppRunner:
        """A stand-in for the gateway process on a free port: the daemon's predict route calls
        it as it calls the real one, and it answers as a sklearn model server would."""

        async def infer(request: web.Request) -> web.Response:
            uid = request.match_info["uid"]
            self.predictions.setdefault(uid, []).append(await request.read())
            row = self.core.store.db.execute(
                "SELECT owner, name FROM services WHERE uid = ?", (uid,)
            ).fetchone()
            version = self.service(row[0], row[1]).spec.models[0].version if row else ""
            return web.json_response({"predictions": [0]}, headers={"X-Model-Version": version})

        app = web.Application()
        app.router.add_post("/v1/infers/{uid}", infer)
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        self.daemon.gateway_port = port
        self.daemon.gateway_url = f"http://127.0.0.1:{port}"
        return runner

    def serve(self) -> None:
        """Answer on the socket (again, after :meth:`go_away`)."""

        async def start() -> web.AppRunner:
            runner = web.AppRunner(make_app(self.daemon), handle_signals=False, access_log=None)
            await runner.setup()
            await web.UnixSite(runner, str(self.socket_dir / SOCKET_NAME)).start()
            return runner

        self._runner = self._on_loop(start())

    def go_away(self) -> None:
        """Stop answering, as a daemon stopping does: its event streams end, the socket goes."""
        runner, self._runner = self._runner, None
        if runner is not None:
            self._on_loop(runner.cleanup())
        with contextlib.suppress(FileNotFoundError):
            (self.socket_dir / SOCKET_NAME).unlink()

    def close(self) -> None:
        self.go_away()
        self._on_loop(self._gateway_runner.cleanup())
        self.daemon._stop.set()
        self.daemon.dispatcher.wake()
        for t in self._workers:
            t.join(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        self.daemon.controller.close()
        self.core.store.close()
        if self._own_dir:
            shutil.rmtree(self.socket_dir, ignore_errors=True)

    # -- users and services --------------------------------------------------------------------

    def user(self, name: str) -> User:
        return self.core.user(name)

    def deploy(self, owner: str, name: str, **spec: Any) -> Service:
        """Create a service as ``owner`` (the core's own call), iris 1.0.0 unless told."""
        data: dict[str, Any] = {
            "name": name,
            "models": [{"model": "iris", "version": "1.0.0"}],
            **spec,
        }
        self.core.create_service(self.user(owner), data)
        self.daemon.changed()
        return self.service(owner, name)

    def service(self, owner: str, name: str) -> Service:
        return self.core.service(self.user(owner), name, owner)

    def theirs(self, owner: str, name: str, examples_owner: str) -> Service:
        """A Running service of another user, on the examples they subscribed to."""
        ref = f"{examples_owner}/iris"
        self.core.subscribe(self.user(owner), ref)
        models = [{"source": "subscribed", "model": ref, "version": "1.0.0"}]
        return self.running(owner, name, models=models)

    def handles(self, owner: str, name: str) -> list[str]:
        """The fake runtime's handles of the service's instances."""
        uid = self.service(owner, name).uid
        return [h for h, i in self.daemon.runtime.instances.items() if i.spec.service_uid == uid]

    def redeploying(self, owner: str, name: str) -> None:
        """Stop and start the service, so it is Deploying again (its instances not answering)."""
        actor = self.user(owner)
        self.core.stop_service(actor, name, owner)
        self.settle()
        self.daemon.failing.add(self.service(owner, name).uid)
        self.core.start_service(actor, name, owner)
        self.settle()
        assert self.service(owner, name).status == Status.DEPLOYING

    def version_status(self, name: str, version: str, status: str) -> None:
        """Put a model version in ``status`` (Building, Failed), as the registry's check does."""
        with self.core.store.write() as db:
            db.execute(
                "UPDATE model_versions SET status = ? WHERE version = ? AND model_id IN "
                "(SELECT id FROM models WHERE name = ?)",
                (status, version, name),
            )

    def settle(self) -> None:
        """One controller pass, so the instances start and answer their health checks."""
        self.daemon.controller.reconcile_all()
        self.daemon.dispatcher.wake()

    def running(self, owner: str, name: str, **spec: Any) -> Service:
        """A service deployed and Running (its instances healthy in the fake runtime)."""
        self.deploy(owner, name, **spec)
        self.settle()
        service = self.service(owner, name)
        assert service.status == Status.RUNNING, (service.status, service.reason)
        return service

    def stopped(self, owner: str, name: str, **spec: Any) -> Service:
        self.running(owner, name, **spec)
        self.core.stop_service(self.user(owner), name, owner)
        self.settle()
        return self.service(owner, name)

    def deploying(self, owner: str, name: str, **spec: Any) -> Service:
        """A service whose instances started but do not answer their health check yet."""
        uid = self.deploy(owner, name, **spec).uid
        self.daemon.failing.add(uid)
        self.settle()
        service = self.service(owner, name)
        assert service.status == Status.DEPLOYING, (service.status, service.reason)
        return service

    def healthy(self, owner: str, name: str, ok: bool = True) -> None:
        """The service's instances answer their health check (or, ``ok=False``, stop to)."""
        uid = self.service(owner, name).uid
        if ok:
            self.daemon.failing.discard(uid)
        else:
            self.daemon.failing.add(uid)
        self.settle()

    def log(self, owner: str, name: str, *lines: str) -> None:
        """Instances of the service write ``lines``."""
        uid = self.service(owner, name).uid
        for handle, inst in self.daemon.runtime.instances.items():
            if inst.spec.service_uid == uid:
                self.daemon.runtime.lines.setdefault(handle, []).extend(lines)


def configure(home: Path, text: str) -> None:
    """Add ``text`` to the home's config.toml (before the core reads it); it must load."""
    path = home / "config.toml"
    path.write_text(text + (path.read_text() if path.exists() else ""))
    load_config(home)


def set_admins(home: Path, *names: str) -> None:
    """Make ``names`` admins in the home's config.toml (before the core reads it)."""
    configure(home, f"admins = {list(names)!r}\n".replace("'", '"'))
    assert set(names) <= set(load_config(home).admins)


@contextlib.contextmanager
def live_api(home: Path) -> Iterator[LiveApi]:
    api = LiveApi(home)
    try:
        yield api
    finally:
        api.close()


async def settle(pilot: Any, rounds: int = 3) -> None:
    """Let the app's workers finish and what they hand back reach the screen. A worker hands
    its result over before it ends (``call_from_thread``), and that may start another: hence
    the rounds."""
    for _ in range(rounds):
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()  # the messages they posted, handled


async def until(
    pilot: Any, what: str, ok: Callable[[], bool], timeout: float = 10, poll: float = 0.02
) -> float:
    """Let the app run until ``ok()``; fail naming ``what`` after ``timeout`` seconds.
    Returns the seconds it took."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not ok():
        if loop.time() - start > timeout:
            raise AssertionError(f"waited {timeout:g} s for {what}")
        await pilot.pause(poll)
    return loop.time() - start


async def drawn(pilot: Any, *texts: str, timeout: float = 10) -> str:
    """Let the app run until its screen shows every one of ``texts``; returns the screen's text.

    A widget draws a moment after its data arrives (the footer composes its keys once the
    screen's bindings are known), so a screenshot taken on the data alone can miss it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        shown = screen_text(pilot.app.export_screenshot())
        missing = [t for t in texts if t not in shown]
        if not missing:
            return shown
        if loop.time() > deadline:
            raise AssertionError(f"waited {timeout:g} s for {missing} on the screen:\n{shown}")
        await pilot.pause(0.05)


_SVG_TEXT = re.compile(r'<text[^>]*clip-path="url\(#terminal-\d+-line-(\d+)\)">([^<]*)</text>')


def screen_text(svg: str) -> str:
    """The visible text of an exported SVG screenshot, one line per terminal row."""
    rows: dict[int, list[str]] = {}
    for match in _SVG_TEXT.finditer(svg):
        rows.setdefault(int(match.group(1)), []).append(
            html.unescape(match.group(2)).replace("\xa0", " ")
        )
    return "\n".join("".join(rows[k]) for k in sorted(rows))


def stats_document(service: Service, calls: int = 5, failures: int = 1) -> dict[str, Any]:
    """What the gateway's ``/stats`` answers for one service with one version."""
    return {
        "loaded_at": NOW,
        "reloads": 1,
        "services": [
            {
                "id": service.uid,
                "name": service.name,
                "owner": service.owner,
                "versions": [
                    {
                        "idx": i,
                        "version": m.version,
                        "calls": calls,
                        "failures": failures,
                        "latency_ms": {"p50": 2.0, "p99": 9.5, "mean": 3.0},
                        "calls_per_s": [0, 1, 2, 3] * 15,
                        "failures_per_s": [0] * 60,
                        "instances": [{"address": "127.0.0.1:1", "ejected": False}],
                    }
                    for i, m in enumerate(service.spec.models)
                ],
            }
        ],
    }
