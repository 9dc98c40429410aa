"""The gateway's fast front: inference calls parsed and answered below aiohttp's server.

Most of a call's CPU in the gateway went to aiohttp's server side (protocol, request object,
router, middleware, response, writer; see docs/benchmarks.md). :class:`FastFront` is a bare
asyncio protocol that takes the hot path itself: ``POST`` to an inference route (``/v1/infers/
{service}``, ``/v1/models/{service}:predict``, ``/v2/models/{service}[/versions/{v}]/infer``) with
one ``Content-Length`` and no body encoding, parsed by httptools (llhttp), run through the same
:class:`~opsbot.serving.gateway.core.Gateway` logic as aiohttp's path (key, version, caps,
limit, rules, split, metrics, drain) and answered with one write.

Everything else goes to aiohttp: at the first request head that is not such a call (another
route or method, a chunked or compressed body, ``Expect``, a percent-encoded path, a head too
large or that httptools refuses), the connection is handed to aiohttp's own protocol with the
bytes received so far, and stays there. So every other answer, error and edge case is
aiohttp's, as before, and the fast path only ever takes calls it parses exactly.

Timeouts match aiohttp's path: a connection whose next request head has not arrived whole
within the read timeout is closed; a body that has not arrived whole within it gets 408.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from email.utils import formatdate
from http import HTTPStatus
from time import perf_counter, time
from typing import Final, cast

import httptools
from aiohttp import web
from aiohttp.http_parser import SINGLETON_HEADERS
from multidict import CIMultiDict, CIMultiDictProxy

from opsbot.serving.gateway.core import Gateway, forwarded_lines
from opsbot.serving.gateway.options import PREDICT, V2_INFER
from opsbot.serving.gateway.routing import Service, Version
from opsbot.serving.upstream import Reply, bare_lf, header_lines, remember, without_length

log = logging.getLogger("opsbot.serving.gateway")

#: A head larger than this is aiohttp's to refuse.
MAX_HEAD_BYTES: Final = 16 * 1024
# Request headers that take a call off the fast path: aiohttp handles what they ask for.
_HANDED: Final = frozenset({b"transfer-encoding", b"expect", b"content-encoding", b"upgrade"})
_STATUS_LINES: Final = {
    s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus
}
_SKIPPED: Final = frozenset({"content-length", "connection", "date", "server"})
# Headers a request may carry once (RFC 9110), as aiohttp's parser holds them.
_SINGLETONS: Final = frozenset(name.encode() for name in SINGLETON_HEADERS)


class _Head:
    """What httptools reports of one request head."""

    __slots__ = ("complete", "extra", "headers", "lengths", "url")

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.lengths = 0
        self.complete = False
        self.extra = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.complete = True

    def on_body(self, body: bytes) -> None:
        self.extra = True  # bytes past the head the find below took as its end: not ours


def hot_route(path: bytes) -> tuple[int, str, str | None] | None:
    """The call kind, service and version label of an inference path; None for any other."""
    if path.startswith(b"/v1/infers/"):
        kind, segments = PREDICT, path[11:].split(b"/")
        if len(segments) != 1:
            return None
        named, label = segments[0], None
    elif path.startswith(b"/v1/models/") and path.endswith(b":predict"):
        kind, named, label = PREDICT, path[11:-8], None
        if b"/" in named:
            return None
    elif path.startswith(b"/v2/models/") and path.endswith(b"/infer"):
        segments = path[11:-6].split(b"/")
        if len(segments) == 1:
            kind, named, label = V2_INFER, segments[0], None
        elif len(segments) == 3 and segments[1] == b"versions":
            kind, named, label = V2_INFER, segments[0], segments[2]
        else:
            return None
    else:
        return None
    # Names as aiohttp's router would match them; anything unusual is the router's to answer.
    for part in (named, label):
        if part is not None and (not part or part[:1] == b"." or b"{" in part or b"}" in part):
            return None
    try:
        return kind, named.decode(), None if label is None else label.decode()
    except UnicodeDecodeError:
        return None


#: What a request head says that the fast path reads: the call's route, its headers (read
#: only), whether the connection is kept after it, the header lines forwarded to an instance.
Parsed = tuple[tuple[int, str, str | None], Mapping[str, str], bool, bytes]
# Heads parsed before are kept by their bytes less the Content-Length line (see without_length
# and remember): most callers send the same head call after call, and then it is parsed once.


def _parse(head: bytes) -> tuple[Parsed | None, int]:
    """What a whole request head says, and its body's length; None (and -1) when it is not a
    call the fast path takes: aiohttp's to answer."""
    if bare_lf(head):
        return None, -1  # aiohttp refuses a line not ended by CRLF; httptools may not
    seen = _Head()
    parser = httptools.HttpRequestParser(seen)
    try:
        parser.feed_data(head)
    except (httptools.HttpParserError, httptools.HttpParserUpgrade):
        return None, -1  # aiohttp answers what is wrong with it, or takes the upgrade
    if not seen.complete or seen.extra or parser.get_method() != b"POST":
        return None, -1
    try:
        path = httptools.parse_url(seen.url).path or b""  # less its query and fragment
    except httptools.HttpParserInvalidURLError:
        return None, -1
    found = hot_route(path) if b"%" not in path else None
    if found is None:
        return None, -1
    length = -1
    singles: set[bytes] = set()
    for name, value in seen.headers:
        lowered = name.lower()
        if lowered in _SINGLETONS:
            if lowered in singles:
                return None, -1  # aiohttp refuses a second Content-Type, Host, ...: 400
            singles.add(lowered)
        if lowered == b"content-length":
            if not value.isdigit():
                return None, -1
            length = int(value)
        elif lowered in _HANDED:
            return None, -1
    if length < 0 or (b"host" not in singles and parser.get_http_version() != "1.0"):
        return None, -1  # aiohttp answers an HTTP/1.1 request without Host 400
    headers = CIMultiDictProxy(
        CIMultiDict(
            (n.decode("utf-8", "surrogateescape"), v.decode("utf-8", "surrogateescape"))
            for n, v in seen.headers
        )
    )
    forwarded = forwarded_lines(headers, found[0], found[1])
    return (found, headers, parser.should_keep_alive(), forwarded), length


class _Call:
    """A fast-path call admitted on its head, waiting for the rest of its body."""

    __slots__ = (
        "end",
        "forwarded",
        "head_end",
        "headers",
        "keep_alive",
        "kind",
        "named",
        "pinned",
        "reserved",
        "service",
        "started",
    )

    def __init__(
        self,
        head_end: int,
        length: int,
        headers: Mapping[str, str],
        keep_alive: bool,
        route: tuple[int, str, str | None],
        admitted: tuple[Service, Version | None],
        reserved: int,
        started: float,
        forwarded: bytes,
    ):
        self.head_end = head_end
        self.forwarded = forwarded
        self.end = head_end + length
        self.headers = headers
        self.keep_alive = keep_alive
        self.kind, self.named = route[0], route[1]
        self.service, self.pinned = admitted
        self.reserved = reserved
        self.started = started


class Connections:
    """The fast front's open connections, and the calls in progress on them, so that a stopping
    gateway lets those calls finish and then closes every connection."""

    def __init__(self) -> None:
        self.open: set[FastFront] = set()
        self.stopping = False
        self._calls = 0
        self.heads: dict[bytes, Parsed] = {}  # see without_length
        self._none: asyncio.Event | None = None  # made once stopping: set when no call is left

    def started(self) -> None:
        self._calls += 1

    def finished(self) -> None:
        self._calls -= 1
        if not self._calls and self._none is not None:
            self._none.set()

    async def finish(self, timeout: float) -> None:
        """Close idle connections now, the others once their call is answered (or when
        ``timeout`` runs out)."""
        self.stopping = True
        for conn in list(self.open):
            conn.close_idle()
        if self._calls:
            self._none = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._none.wait(), timeout)
        for conn in list(self.open):
            conn.close_idle(force=True)


class FastFront(asyncio.Protocol):
    """One client connection, served on the fast path until a request needs aiohttp."""

    def __init__(
        self,
        gateway: Gateway,
        fallback: Callable[[], asyncio.BaseProtocol],
        connections: Connections,
    ):
        self._gateway = gateway
        self._fallback = fallback
        self._connections = connections
        self._read_timeout = gateway.options.read_timeout_s
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._call: _Call | None = None  # admitted on its head, its body still arriving
        self._forwarded: _Call | None = None  # being forwarded: later bytes wait in the buffer
        self._advancing = False
        # One timer per connection for the read timeout, moved only when it fires early: what
        # expires (head or body) and when.
        self._timer: asyncio.TimerHandle | None = None
        self._expiry: Callable[[], None] | None = None
        self._deadline = 0.0
        self._paused = False
        self._eof = False
        self.closed = False

    @property
    def busy(self) -> bool:
        return self._forwarded is not None or self._call is not None

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._connections.open.add(self)
        self._arm(self._head_expired)

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if self._forwarded is not None:
            if len(self._buf) > MAX_HEAD_BYTES and not self._paused:
                self._paused = True  # pipelined calls beyond one head wait in the kernel
                assert self._transport is not None
                self._transport.pause_reading()
            return
        self._advance()

    def eof_received(self) -> bool | None:
        # A caller that half-closes after its call still gets the answer, then the close.
        self._eof = True
        return True if self.busy else None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._connections.open.discard(self)
        self._stop_timer()
        call = self._call
        if call is not None:  # its body never came whole: nothing was forwarded
            self._call = None
            self._gateway.release(call.reserved)
            self._connections.finished()

    def close_idle(self, *, force: bool = False) -> None:
        """Close the connection if no call is in progress on it (or ``force``: even so)."""
        if (force or not self.busy) and self._transport is not None and not self.closed:
            self.closed = True
            self._transport.close()

    # -- requests ----------------------------------------------------------------------------

    def _advance(self) -> None:
        """Take what the buffer holds: a head, then the body it announces."""
        self._advancing = True
        try:
            self._take()
        finally:
            self._advancing = False

    def _take(self) -> None:
        while self._forwarded is None and not self.closed:
            call = self._call
            if call is None:
                end = self._buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(self._buf) > MAX_HEAD_BYTES or bare_lf(self._buf):
                        self._hand_off()  # aiohttp refuses it (413, 400)
                    return
                call = self._begin(end + 4)
                if call is None:
                    continue  # handed off (closed here), or answered on its head
            if len(self._buf) < call.end:
                if self._expiry is None:
                    self._arm(self._body_expired)
                return
            self._disarm()
            buf = self._buf
            body = bytes(memoryview(buf)[call.head_end : call.end])
            del buf[: call.end]
            self._call = None
            self._forwarded = call
            gateway = self._gateway
            try:
                answer = gateway.dispatch(
                    call.service,
                    call.kind,
                    body,
                    call.headers,
                    call.started,
                    call.named,
                    call.pinned,
                    self._answered,
                    call.forwarded,
                )
            except Exception:
                log.exception("a call failed in the gateway")
                answer = gateway.refuse(
                    call.service, 500, "internal", "the gateway failed on this call: see its log"
                )
            if answer is not None:
                self._answered(answer)

    def _begin(self, head_end: int) -> _Call | None:
        """Parse the head ending at ``head_end``: a call admitted and waiting for its body, or
        None when the connection was handed to aiohttp or the call answered already."""
        raw = bytes(memoryview(self._buf)[:head_end])
        key, length = without_length(raw)
        heads = self._connections.heads
        parsed = heads.get(key) if length >= 0 else None
        if parsed is None:
            parsed, length = _parse(raw)
            if parsed is None:
                self._hand_off()
                return None
            if key is not raw:
                remember(heads, key, parsed)
        gateway = self._gateway
        if length > gateway.options.max_body_bytes:
            self._hand_off()  # aiohttp answers 413, closing
            return None
        started = perf_counter()
        found, headers, keep_alive, forwarded = parsed
        named, label = found[1], found[2]
        self._disarm()
        admitted = gateway.admit(named, label, headers)
        if isinstance(admitted, web.Response):
            self._refused(admitted, head_end + length, keep_alive)
            return None
        reserved = gateway.reserve(admitted[0], headers, length)
        if isinstance(reserved, web.Response):
            self._refused(reserved, head_end + length, keep_alive)
            return None
        call = _Call(
            head_end, length, headers, keep_alive, found, admitted, reserved, started, forwarded
        )
        self._call = call
        self._connections.started()
        return call

    def _refused(self, answer: web.Response, end: int, keep_alive: bool) -> None:
        """Answer a call refused on its head. The connection stays open only when its body is
        here whole, to be skipped; otherwise it closes rather than read a refused body."""
        whole = len(self._buf) >= end and answer.keep_alive is not False
        if whole:
            del self._buf[:end]
        self._write(answer, keep_alive and whole)
        if keep_alive and whole:
            self._arm(self._head_expired)

    def _answered(self, answer: Reply | web.Response) -> None:
        """The forwarded call's answer: written, then on to the next request, if any."""
        call = self._forwarded
        if call is None:
            return
        self._forwarded = None
        if not self.closed:
            self._write(answer, call.keep_alive and not self._eof)
        # What is left to do after the write is off the path the caller waits on.
        self._gateway.release(call.reserved)
        self._connections.finished()
        if self.closed:
            return
        if self._connections.stopping:
            self.close_idle()
            return
        if self._paused:
            self._paused = False
            assert self._transport is not None
            self._transport.resume_reading()
        self._arm(self._head_expired)
        if self._buf and not self._advancing:  # else the loop in _advance goes on with it
            self._advance()

    def _write(self, answer: Reply | web.Response, keep_alive: bool) -> None:
        """Send ``answer`` in one write; close after it unless the connection is kept."""
        transport = self._transport
        assert transport is not None
        if type(answer) is Reply:
            status, fields, body = answer.status, answer.fields + answer.extra, answer.body
        else:
            response = cast(web.Response, answer)
            status = response.status
            fields = header_lines(
                (name, value)
                for name, value in response.headers.items()
                if name.lower() not in _SKIPPED
            )
            body = response.body if isinstance(response.body, bytes) else b""
            keep_alive = keep_alive and response.keep_alive is not False
        transport.write(
            b"".join(
                (
                    _STATUS_LINES.get(status) or b"HTTP/1.1 %d Unknown\r\n" % status,
                    _date_line(),
                    fields,
                    b"Content-Length: %d\r\n" % len(body),
                    b"\r\n" if keep_alive else b"Connection: close\r\n\r\n",
                    body,
                )
            )
        )
        if not keep_alive:
            self.closed = True
            transport.close()

    # -- handing over, timers ----------------------------------------------------------------

    def _hand_off(self) -> None:
        """Give the connection, and what it sent so far, to aiohttp's protocol for good."""
        transport = self._transport
        assert transport is not None
        self._stop_timer()
        self._connections.open.discard(self)
        self.closed = True
        protocol = self._fallback()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if self._buf:
            cast(asyncio.Protocol, protocol).data_received(bytes(self._buf))
            self._buf.clear()

    def _arm(self, expiry: Callable[[], None]) -> None:
        """Call ``expiry`` after the read timeout, unless disarmed or armed again before."""
        self._expiry = expiry
        self._deadline = deadline = self._loop.time() + self._read_timeout
        if self._timer is None:
            self._timer = self._loop.call_at(deadline, self._expire)

    def _disarm(self) -> None:
        self._expiry = None  # the timer stays: when it fires, nothing is due

    def _stop_timer(self) -> None:
        """For good: the connection closed, or is aiohttp's now."""
        self._expiry = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        expiry = self._expiry
        if expiry is None or self.closed:
            return
        if self._loop.time() < self._deadline:  # armed again since the timer was set
            self._timer = self._loop.call_at(self._deadline, self._expire)
            return
        self._expiry = None
        expiry()

    def _head_expired(self) -> None:
        """No whole request head within the read timeout: close, as aiohttp's keep-alive does."""
        if not self.busy and self._transport is not None:
            self.closed = True
            self._transport.close()

    def _body_expired(self) -> None:
        """The body of an admitted call did not arrive whole in time: 408, and close."""
        call = self._call
        if call is None or self.closed:
            return
        self._call = None
        self._gateway.release(call.reserved)
        self._write(self._gateway.body_timeout(call.service), False)
        self._connections.finished()


_date: tuple[int, bytes] = (0, b"")


def _date_line() -> bytes:
    """The Date header, made once a second."""
    global _date
    now = int(time())
    if _date[0] != now:
        _date = (now, b"Date: %s\r\n" % formatdate(now, usegmt=True).encode())
    return _date[1]
