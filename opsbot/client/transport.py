"""How the client reaches the control API: a transport sends one HTTP request and hands back
the status and body (or a stream's lines).

:class:`UnixSocketTransport` is the real one: the daemon's unix socket, where the daemon knows
the caller from the socket's peer credentials. :class:`InProcessTransport` serves a given
aiohttp application (the real control API app, ``opsbot.daemon.api.make_app``) from an event
loop in a thread of this process, on a unix socket, and talks to it the same way: tests run
every client call against the real handlers, middlewares and identity, with no daemon process.
"""

from __future__ import annotations

import asyncio
import http.client
import socket
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Protocol

from opsbot.client.errors import DaemonUnavailable

if TYPE_CHECKING:
    from aiohttp import web


@dataclass(frozen=True)
class Answer:
    """One HTTP answer: its status and body."""

    status: int
    body: bytes


class Transport(Protocol):
    """What the client needs of a way to the control API."""

    #: Where it connects, for messages ("the daemon on ... did not answer").
    where: str

    def send(
        self,
        method: str,
        target: str,
        body: bytes | None,
        headers: dict[str, str],
        timeout: float | None,
    ) -> Answer:
        """Send one request (``target``: path and query) and read the whole answer; raises
        DaemonUnavailable when nothing answers."""
        ...

    def lines(self, target: str) -> Iterator[tuple[int, bytes]]:
        """A GET whose answer is read line by line (server-sent events): the status first, with
        an empty line, then each line, until the server closes."""
        ...


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


class UnixSocketTransport:
    """HTTP over the daemon's unix socket."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.where = str(self.path)

    def send(
        self,
        method: str,
        target: str,
        body: bytes | None,
        headers: dict[str, str],
        timeout: float | None,
    ) -> Answer:
        conn = _UnixConnection(self.where, timeout)
        try:
            with self._connection_errors(timeout):
                conn.request(method, target, body=body, headers=headers)
                resp = conn.getresponse()
                return Answer(resp.status, resp.read())
        finally:
            conn.close()

    def lines(self, target: str) -> Iterator[tuple[int, bytes]]:
        conn = _UnixConnection(self.where, timeout=None)
        try:
            with self._connection_errors(None):
                conn.request("GET", target)
                resp = conn.getresponse()
            if resp.status >= 400:
                yield resp.status, resp.read()
                return
            yield resp.status, b""
            while line := resp.readline():
                yield resp.status, line
        finally:
            conn.close()

    @contextmanager
    def _connection_errors(self, timeout: float | None) -> Iterator[None]:
        try:
            yield
        except PermissionError:
            raise DaemonUnavailable(
                f"you may not use {self.where}; ask the admin to add you to its group"
            ) from None
        except TimeoutError:
            raise DaemonUnavailable(
                f"the daemon on {self.where} did not answer within {timeout:g} s"
            ) from None
        except (OSError, http.client.HTTPException):
            raise DaemonUnavailable(
                f"no opsbot daemon answers on {self.where}; start one with `opsbot up -d`"
            ) from None


class InProcessTransport(UnixSocketTransport):
    """The control API app served in this process (an event loop in a thread), reached over a
    unix socket like the daemon's: ``socket`` is where (default: a fresh temporary directory),
    so a CLI pointed at a home finds it at ``HOME/opsbot.sock``. Close it (or use ``with``)."""

    def __init__(self, app: web.Application, socket: Path | None = None):
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if socket is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="opsbot-")
            socket = Path(self._tmp.name) / "api.sock"
        super().__init__(socket)
        self._app = app
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, name="control-api", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._failed is not None:
            self.close()
            raise self._failed

    def _serve(self) -> None:
        from aiohttp import web

        runner = web.AppRunner(self._app, handle_signals=False, access_log=None)

        async def start() -> None:
            await runner.setup()
            await web.UnixSite(runner, self.where).start()

        try:
            self._loop.run_until_complete(start())
        except BaseException as exc:  # handed to the constructor, which raises it
            self._failed = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())
        self._loop.close()

    def close(self) -> None:
        """Stop serving (open streams end) and remove the socket."""
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)
        self.path.unlink(missing_ok=True)
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> InProcessTransport:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
