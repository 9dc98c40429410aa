"""The real control API app served in this process for a home, as the daemon would serve it.

``serve_control_api(home)`` builds the daemon's objects (core, store, runtime; no controller
pass, no gateway, no scheduler running) and serves ``make_app`` on ``HOME/opsbot.sock`` from a
thread: the client and the CLI (pointed at the home) both reach the real
handlers, middlewares and peer-credential identity there, with no daemon process.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from opsbot.client import ControlClient, InProcessTransport
from opsbot.core.hardware import GIB, FakeProbe, Node
from opsbot.core.identity import local_user_name
from opsbot.core.sandbox import SOCKET_NAME
from opsbot.core.services import get_service, transition
from opsbot.core.status import Status
from opsbot.daemon.api import make_app
from opsbot.daemon.server import Daemon

#: Room for any test's services: admission counts these, not the test machine's cores.
ROOMY = FakeProbe([Node("roomy", 64, 256 * GIB, "x86_64")])


@contextmanager
def serve_control_api(home: Path) -> Iterator[tuple[Daemon, ControlClient]]:
    daemon = Daemon(home, gateway_port=0, examples=False, say=lambda _: None)
    daemon.core.use_probe(ROOMY)
    try:
        with InProcessTransport(make_app(daemon), socket=daemon.home / SOCKET_NAME) as transport:
            yield daemon, ControlClient(transport, timeout=30)
    finally:
        daemon.release_gateway_socket()
        daemon.controller.close()
        daemon.core.store.close()


def settle(daemon: Daemon, name: str, to: Status, due_in_s: float | None = None) -> None:
    """Record what the controller would once the instances answer (or stop): no controller
    runs here, so a test moves the service on itself."""
    core = daemon.core
    service = get_service(core.store.db, local_user_name(), name)
    due = core.clock.now() + due_in_s if due_in_s is not None else None
    with core.store.write() as db:
        assert transition(
            db, core.clock.now(), service, to, actor="controller", message="test", due_time=due
        )
