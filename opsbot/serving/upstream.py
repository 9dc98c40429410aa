"""The gateway's hop to model server instances: keep-alive HTTP/1.1 POSTs and their answers.

Two clients with one interface. :class:`RawClient` (the default) speaks HTTP/1.1 over asyncio
protocols: one keep-alive pool per instance, the request written in one go, the answer delimited
by Content-Length, chunked encoding or the connection's close. Under load the gateway process
spends about 70 µs of CPU per call with it and about 170 µs with aiohttp's ClientSession, whose
cookies, tracing, redirects and per-phase timers the hop does not need (bench/gateway.py shows
the throughput that follows). :class:`AiohttpClient` does the same through aiohttp, for
comparison and as a fallback for an instance whose HTTP the raw client does not understand.

Failures are told apart because the gateway treats them differently: :class:`ConnectFailed` (no
connection: the instance is down, try another), :class:`Disconnected` (the connection closed
before any byte of an answer: safe to try another), :class:`BrokenReply` (the answer started and
broke off, or was not HTTP: the call may have run, so it is not sent again), ``TimeoutError``.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Collection, Iterable
from functools import partial
from typing import Final, Literal, Protocol, TypeVar, cast

from aiohttp import (
    ClientConnectorError,
    ClientError,
    ClientOSError,
    ClientSession,
    ClientTimeout,
    DummyCookieJar,
    ServerDisconnectedError,
    TCPConnector,
    UnixConnector,
)
from yarl import URL

from opsbot.core.address import UNIX_HOST_HEADER, show, unix_path
from opsbot.serving import HEADER_LENGTH

#: Answer headers the gateway passes back to its caller.
RETURNED: Final = ("Content-Type", "Content-Encoding", HEADER_LENGTH)
# Their lines' beginnings, by lower-case name: a kept line is its name as above and the value.
_RETURNED_NAMES: Final = {name.lower().encode(): f"{name}: ".encode() for name in RETURNED}

MAX_HEAD_BYTES: Final = 64 * 1024
# Bytes no answer head may hold (a field value may hold tabs; CR and LF only end its lines).
_CONTROL: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_HEX: Final = re.compile(rb"[0-9A-Fa-f]*")
# A field name (RFC 9110 token), or the start of one.
_TOKEN: Final = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]*")
MAX_REPLY_BYTES: Final = 256 * 1024 * 1024
# Bodies above this are written after the head instead of copied into one buffer with it.
_JOIN_LIMIT: Final = 64 * 1024

ClientKind = Literal["raw", "aiohttp"]


class UpstreamFailure(Exception):
    """A call to an instance that got no usable answer."""


class ConnectFailed(UpstreamFailure):
    """No connection could be made: the instance is not listening or not reachable."""


class Disconnected(UpstreamFailure):
    """The connection closed before any byte of an answer came back."""


class BrokenReply(UpstreamFailure):
    """The answer broke off or was not valid HTTP/1.1."""


def header_lines(pairs: Iterable[tuple[str, str]]) -> bytes:
    """Header lines as an instance gets them, each ended by CRLF. A value holding CR or LF is
    left out: it would end its line early and smuggle a header or a request to the instance."""
    # aiohttp's server decodes header bytes as UTF-8 with surrogateescape: this restores them.
    return "".join(
        [f"{name}: {value}\r\n" for name, value in pairs if "\r" not in value and "\n" not in value]
    ).encode("utf-8", "surrogateescape")


def _pairs(lines: bytes, encoding: str = "latin-1") -> dict[str, str]:
    """Header lines as a dict: an instance's answer's as its bytes (latin-1), or with
    ``encoding`` "utf-8" the lines :func:`header_lines` made, as the strings they came from."""
    found = {}
    for line in lines.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if sep:
            found[name.decode(encoding, "surrogateescape")] = value.strip().decode(
                encoding, "surrogateescape"
            )
    return found


class Reply:
    """An instance's answer: its status, the header lines the caller gets back, its body.

    The lines are kept as bytes, as they go on the wire: the gateway's fast front writes them
    as they are; :attr:`headers` reads them for aiohttp's responses.
    """

    __slots__ = ("body", "extra", "fields", "status")

    def __init__(self, status: int, fields: bytes, body: bytes, extra: bytes = b""):
        self.status = status
        self.fields = fields
        """The headers named in RETURNED that the instance sent, as CRLF-ended lines."""
        self.body = body
        self.extra = extra
        """Lines the gateway adds (X-Model-Version), made by :func:`header_lines`."""

    @property
    def headers(self) -> dict[str, str]:
        return _pairs(self.fields + self.extra)


class UpstreamClient(Protocol):
    async def post(
        self,
        host: str,
        port: int,
        path: str,
        fields: bytes,
        body: bytes,
        timeout: float,
        *,
        method: str = "POST",
    ) -> Reply:
        """POST ``body`` (or another method) to the instance, with the header lines ``fields``
        (made by :func:`header_lines`) besides Host and Content-Length; raises UpstreamFailure
        subclasses or TimeoutError."""
        ...

    def start(
        self,
        host: str,
        port: int,
        path: str,
        fields: bytes,
        body: bytes,
        timeout: float,
        done: Callable[[Reply | BaseException], None],
        *,
        method: str = "POST",
    ) -> bool:
        """The same without a coroutine, when it can be sent at once (over an idle keep-alive
        connection): True, and ``done`` is called later with the reply or the failure; else
        False, nothing sent, and the caller awaits :meth:`post`."""
        ...

    def retain(self, addresses: Collection[tuple[str, int]]) -> None:
        """Drop what is kept for instances other than these (host, port) pairs."""
        ...

    async def close(self) -> None: ...


def make_client(kind: ClientKind) -> UpstreamClient:
    return RawClient() if kind == "raw" else AiohttpClient()


# --------------------------------------------------------------------------------------------
# The raw client


_LENGTH: Final = 0  # the body is Content-Length bytes (zero for 1xx, 204 and 304)
_CHUNKED: Final = 1
_UNTIL_CLOSE: Final = 2


#: How an exchange ended: its answer is in (None), or why not.
Outcome = BaseException | None


class _Connection(asyncio.Protocol):
    """One keep-alive connection to an instance, and the parse of the answer now awaited.

    An exchange ends by a callback made from the protocol's own callbacks, so a call relayed
    over an idle connection needs no task, future or timer of its own: one timer per connection
    checks the deadline, and moves only when it fires before it. The connection knows its pool
    and its client: a whole answer puts it back among the idle ones, and an idle connection the
    instance closed as the request went out has the request sent again on a new one.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        client: RawClient | None = None,
        pool: _Pool | None = None,
    ) -> None:
        self.loop = loop
        self.client = client
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.done: Callable[[Reply | BaseException], None] | None = None
        self.deadline = 0.0
        self.head = b""
        self.sent = b""
        self.again = False
        self._timer: asyncio.TimerHandle | None = None
        self._reset()

    def _reset(self) -> None:
        self.buf = bytearray()
        self.head_end = -1
        self.status = 0
        self.fields: list[bytes] = []
        self.keep_alive = True
        self.mode = _LENGTH
        self.need = 0
        self.pos = 0
        self.in_trailers = False
        self.chunks: list[bytes] = []
        self.size = 0
        self.body = b""

    def send(
        self,
        head: bytes,
        body: bytes,
        deadline: float,
        done: Callable[[Reply | BaseException], None],
        *,
        again: bool,
    ) -> None:
        """Write a request; ``done`` is called once, with the reply or the failure (a
        TimeoutError when the answer is not in by ``deadline``, in loop time). ``again``: a
        connection closed by the instance before any answer (an idle one it closed as we sent)
        has the request sent once more on a new connection."""
        self._reset()
        self.done = done
        self.deadline = deadline
        self.head, self.sent, self.again = head, body, again
        timer = self._timer
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self._timer = self.loop.call_at(deadline, self._expire)
        transport = self.transport
        assert transport is not None
        if len(body) <= _JOIN_LIMIT:
            transport.write(head + body)
        else:
            transport.write(head)
            transport.write(body)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _settle(self, outcome: Outcome) -> None:
        """The exchange is over: its reply (``outcome`` None) or its failure to ``done``."""
        done = self.done
        if done is None:
            return
        self.done = None
        head, body = self.head, self.sent
        self.head = self.sent = b""
        if outcome is None:
            reply = Reply(self.status, b"".join(self.fields), self.body)
            pool = self.pool
            if pool is not None:
                pool.keep(self)
            else:
                self.close()
            done(reply)
        elif (
            self.again
            and isinstance(outcome, Disconnected)
            and (client := self.client) is not None
            and (pool := self.pool) is not None
        ):
            client.resend(pool, head, body, self.deadline, done)
        else:
            done(outcome)

    def _expire(self) -> None:
        self._timer = None
        if self.done is None or self.closed:
            return
        if self.loop.time() < self.deadline:  # set for an earlier exchange's deadline
            self._timer = self.loop.call_at(self.deadline, self._expire)
            return
        # The instance may still be working on it: the connection's state is unknown.
        self.abort()
        self._settle(TimeoutError())

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.done is None:
            # Bytes nobody asked for: the connection can no longer be trusted.
            self.abort()
            return
        self.buf += data
        try:
            complete = self._parse()
        except BrokenReply as exc:
            self.abort()
            self._settle(exc)
            return
        if complete:
            self._settle(None)

    def eof_received(self) -> bool | None:
        return None  # close the transport: connection_lost settles the exchange

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.done is None:
            return
        if self.head_end >= 0 and self.mode == _UNTIL_CLOSE:
            self.body = bytes(memoryview(self.buf)[self.head_end :])
            self.keep_alive = False
            self._settle(None)
        elif not self.buf:
            self._settle(Disconnected(_lost("before answering", exc)))
        else:
            self._settle(BrokenReply(_lost("in the middle of its answer", exc)))

    # -- parsing -----------------------------------------------------------------------------

    def _parse(self) -> bool:
        """Parse what has come so far; True once the whole answer is in."""
        buf = self.buf
        if self.head_end < 0 and not self._parse_head():
            return False
        if self.mode == _LENGTH:
            if len(buf) < self.need:
                return False
            if len(buf) > self.need:
                # More than its length said (nothing was asked for after it): which bytes are
                # the answer is in doubt, as aiohttp's client also holds.
                raise BrokenReply("the instance sent more than its Content-Length")
            self.body = bytes(memoryview(buf)[self.head_end : self.need])
            return True
        if self.mode == _CHUNKED:
            return self._parse_chunks()
        if len(buf) - self.head_end > MAX_REPLY_BYTES:
            raise BrokenReply(f"the instance's answer is over {MAX_REPLY_BYTES} bytes")
        return False

    def _parse_head(self) -> bool:
        buf = self.buf
        pool = self.pool
        end = buf.find(b"\r\n\r\n")
        if end >= 0 and pool is not None:
            # An answer head like one before but for its length and date: read only the length.
            key, told = _answer_key(bytes(memoryview(buf)[: end + 2]))
            known = pool.answers.get(key) if told >= 0 else None
            if known is not None:
                if told > MAX_REPLY_BYTES:
                    raise BrokenReply(f"the instance's answer is over {MAX_REPLY_BYTES} bytes")
                self.status, self.keep_alive, fields = known
                self.fields.append(fields)
                self.head_end = end + 4
                self.mode, self.need = _LENGTH, end + 4 + told
                return True
        while True:
            end = buf.find(b"\r\n\r\n")
            head = bytes(buf[:end] if end >= 0 else buf)
            if bare_lf(head):
                # Lines split at CRLF would misread it: refused now, not waited on until the
                # timeout for a CRLF CRLF that may never come.
                raise BrokenReply("the instance's answer head has a line not ended by CRLF")
            if end < 0:
                if len(buf) > MAX_HEAD_BYTES:
                    raise BrokenReply(f"the instance's answer head is over {MAX_HEAD_BYTES} bytes")
                return False
            lines = head.split(b"\r\n")
            if _CONTROL.search(head.replace(b"\r\n", b"")):
                raise BrokenReply("the instance's answer head has a control character")
            status_line = lines[0]
            # "HTTP/1.x NNN" and the reason after a space, if any: three digits, no more.
            code = status_line[9:12]
            if (
                not status_line.startswith(b"HTTP/1.")
                or status_line[8:9] != b" "
                or len(code) != 3
                or not code.isdigit()
                or status_line[12:13] not in (b"", b" ")
                or code < b"100"
            ):
                raise BrokenReply(f"bad status line {status_line[:40]!r}")
            status = int(code)
            if 100 <= status < 200 and status != 101:
                del buf[: end + 4]  # an interim answer (100 Continue): the real one follows
                continue
            break
        self.head_end = end + 4
        self.status = status
        keep_alive = status_line[7:8] == b"1"  # HTTP/1.1 keeps the connection unless told
        length: int | None = None
        lengths = 0
        chunked = False
        encoded = False  # a Transfer-Encoding line, whatever coding it names
        for line in lines[1:]:
            name, sep, raw_value = line.partition(b":")
            if not sep:
                raise BrokenReply(f"bad header line {line[:40]!r}")
            key = name.strip().lower()
            value = raw_value.strip()
            if key == b"content-length":
                if not value.isdigit():  # no sign, no spaces inside, no list
                    raise BrokenReply(f"bad Content-Length {value[:40]!r}")
                if length is not None:  # even agreeing: aiohttp's client refuses it too
                    raise BrokenReply("the instance's answer has two Content-Length lines")
                length = int(value)
                lengths += 1
            elif key == b"transfer-encoding":
                encoded = True
                chunked = b"chunked" in value.lower()
            elif key == b"connection":
                tokens = value.lower()
                if b"close" in tokens:
                    keep_alive = False
                elif b"keep-alive" in tokens:
                    keep_alive = True
            elif key in _RETURNED_NAMES and b"\r" not in value and b"\n" not in value:
                # Passed back as they came; never a line the instance could end early.
                self.fields.append(_RETURNED_NAMES[key] + value + b"\r\n")
        if encoded and length is not None:
            # Which one ends the answer is where a proxy and its peer can disagree: refused.
            raise BrokenReply("the instance's answer has both Transfer-Encoding and Content-Length")
        if status in (101, 204, 304):
            self.mode, self.need = _LENGTH, self.head_end
            keep_alive = keep_alive and status != 101
        elif chunked:
            self.mode, self.pos = _CHUNKED, self.head_end
        elif length is not None:
            if length > MAX_REPLY_BYTES:
                raise BrokenReply(f"the instance's answer is over {MAX_REPLY_BYTES} bytes")
            self.mode, self.need = _LENGTH, self.head_end + length
            if lengths == 1 and pool is not None:
                # Kept only when nothing but one Content-Length line says how it ends.
                key, said = _answer_key(bytes(memoryview(buf)[: end + 2]))
                if said == length:
                    remember(pool.answers, key, (status, keep_alive, b"".join(self.fields)))
        else:
            self.mode = _UNTIL_CLOSE
            keep_alive = False
        self.keep_alive = keep_alive
        return True

    def _parse_chunks(self) -> bool:
        buf = self.buf
        pos = self.pos  # everything before it is parsed; it only moves past whole pieces
        while True:
            eol = buf.find(b"\r\n", pos)
            # The line so far (whole once eol is found), checked as it comes: what cannot become
            # a valid line is refused now rather than waited on.
            line = bytes(buf[pos:eol] if eol >= 0 else buf[pos:])
            if self.in_trailers:
                # A trailer field: a name (a token), ':' and its value; an empty line ends them.
                name, colon, _ = line.partition(b":")
                if not _TOKEN.fullmatch(name) or (eol >= 0 and line and not (colon and name)):
                    raise BrokenReply(f"bad trailer line {line[:40]!r}")
            else:
                # Hex digits, then maybe ";" and extensions (int() would also take a sign,
                # spaces, "0x" and underscores).
                digits = line.split(b";", 1)[0]
                if not _HEX.fullmatch(digits) or (eol >= 0 and not digits):
                    raise BrokenReply(f"bad chunk size {digits[:20]!r}")
            if eol < 0:
                if len(buf) - pos > MAX_HEAD_BYTES:
                    raise BrokenReply("a chunk size or trailer line is too long")
                break
            if self.in_trailers:
                # Trailer lines, each ended by CRLF, then an empty line: the answer's end.
                if eol == pos:
                    if len(buf) > eol + 2:
                        raise BrokenReply("the instance sent more than its chunked answer")
                    self.body = b"".join(self.chunks)
                    return True
                pos = eol + 2
                continue
            size = int(digits, 16)
            if self.size + size > MAX_REPLY_BYTES:  # refused now, not waited on
                raise BrokenReply(f"the instance's answer is over {MAX_REPLY_BYTES} bytes")
            if size == 0:
                self.in_trailers = True
                pos = eol + 2
                continue
            start = eol + 2
            end = start + size
            if len(buf) < end + 2:
                break
            if buf[end : end + 2] != b"\r\n":
                raise BrokenReply("a chunk does not end with CRLF")
            self.size += size
            self.chunks.append(bytes(memoryview(buf)[start:end]))
            pos = end + 2
        self.pos = pos
        return False


def bare_lf(data: bytes | bytearray) -> bool:
    """Whether a line of ``data`` ends in LF alone (the lines of an HTTP head end in CRLF)."""
    return data.count(b"\n") != data.count(b"\r\n")


def without_length(head: bytes) -> tuple[bytes, int]:
    """``head`` (its lines, each ended by CRLF) without its Content-Length line, and the
    length that line gives, when it is written the usual way (``Content-Length: <digits>``);
    else ``head`` itself and -1.

    Two heads that differ only in that line's digits say the same thing but the length, so
    what a parse made of one holds for the other (the gateway's front and its hop to instances
    parse a head seen before only once).
    """
    start = head.find(b"\r\nContent-Length: ")
    if start < 0:
        return head, -1
    end = head.find(b"\r\n", start + 18)
    value = head[start + 18 : end]
    # More digits than any length taken here: the parse refuses it (and int() would too).
    if end < 0 or not value.isdigit() or len(value) > 15:
        return head, -1
    return head[:start] + head[end:], int(value)


_V = TypeVar("_V")


def remember(kept: dict[bytes, _V], head: bytes, parsed: _V, most: int = 512) -> None:
    """Keep what a head was parsed to, in a cache of at most ``most`` heads of up to 2 kB.
    A full cache is emptied: heads that come again are soon back, and a caller that makes
    every head new (an id per call) cannot keep the others out for good."""
    if len(head) > 2048:
        return
    if len(kept) >= most:
        kept.clear()
    kept[head] = parsed


def _answer_key(head: bytes) -> tuple[bytes, int]:
    """An answer head without its length (as :func:`without_length`) and its Date line, which
    changes every second and says nothing the parse reads."""
    key, length = without_length(head)
    start = key.find(b"\r\nDate: ")
    if start >= 0:
        key = key[:start] + key[key.find(b"\r\n", start + 2) :]
    return key, length


def _lost(when: str, exc: Exception | None) -> str:
    reason = f": {exc}" if exc is not None else ""
    return f"the instance closed the connection {when}{reason}"


def resolve(future: asyncio.Future[_V], outcome: _V) -> None:
    """Settle ``future`` with ``outcome`` unless it is settled (or cancelled) already: a
    callback's outcome handed to whoever awaits it."""
    if not future.done():
        future.set_result(outcome)


class _Pool:
    """The idle keep-alive connections to one instance, newest last."""

    __slots__ = (
        "answers",
        "heads",
        "host",
        "host_header",
        "idle",
        "max_idle",
        "port",
        "retired",
        "unix",
    )

    def __init__(self, host: str, port: int, max_idle: int = 256):
        self.host = host
        self.port = port
        self.max_idle = max_idle
        #: The instance's unix socket, when it is reached on one (else TCP host:port).
        self.unix = unix_path(host)
        if self.unix is not None:
            self.host_header = f"Host: {UNIX_HOST_HEADER}\r\n"
        else:
            shown = f"[{host}]" if ":" in host else host
            self.host_header = f"Host: {shown}:{port}\r\n"
        # The request line and Host header, by method and path: made once per route.
        self.heads: dict[tuple[str, str], bytes] = {}
        # Answer heads parsed before, by their bytes less length and date (see _answer_key):
        # status, keep-alive and the lines passed back.
        self.answers: dict[bytes, tuple[int, bool, bytes]] = {}
        self.idle: list[_Connection] = []
        self.retired = False

    def head(self, method: str, path: str) -> bytes:
        found = self.heads.get((method, path))
        if found is None:
            line = f"{method} {path} HTTP/1.1\r\n{self.host_header}"
            found = self.heads[(method, path)] = line.encode("utf-8", "surrogateescape")
        return found

    def keep(self, conn: _Connection) -> None:
        """After a whole answer: back to the idle ones, when it may serve another."""
        if (
            conn.keep_alive
            and not conn.closed
            and not self.retired
            and len(self.idle) < self.max_idle
        ):
            conn.buf = bytearray()
            conn.chunks = []
            conn.idle_since = conn.loop.time()
            self.idle.append(conn)
        else:
            conn.close()

    def retire(self) -> None:
        self.retired = True
        for conn in self.idle:
            conn.close()
        self.idle.clear()


class RawClient:
    """HTTP/1.1 over asyncio protocols with one keep-alive pool per instance."""

    def __init__(self, *, idle_s: float = 30.0, max_idle: int = 256):
        # Idle connections are dropped before the instance's own keep-alive timeout
        # (75 s for aiohttp servers), so a send rarely races the instance closing.
        self.idle_s = idle_s
        self.max_idle = max_idle
        self._pools: dict[tuple[str, int], _Pool] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        # Exchanges sent again on a new connection (see start): held until they finish.
        self._tasks: set[asyncio.Task[None]] = set()

    def start(
        self,
        host: str,
        port: int,
        path: str,
        fields: bytes,
        body: bytes,
        timeout: float,
        done: Callable[[Reply | BaseException], None],
        *,
        method: str = "POST",
    ) -> bool:
        """Send over an idle connection, if there is one (else False: nothing was sent);
        ``done`` is then called once, from the loop's callbacks, with the reply or the
        failure (an UpstreamFailure subclass or TimeoutError)."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        now = loop.time()
        pool = self._pools.get((host, port)) or self._pool(host, port)
        conn = self._take(pool, now)
        if conn is None:
            return False
        head = pool.head(method, path) + fields + b"Content-Length: %d\r\n\r\n" % len(body)
        conn.send(head, body, now + timeout, done, again=True)
        return True

    async def post(
        self,
        host: str,
        port: int,
        path: str,
        fields: bytes,
        body: bytes,
        timeout: float,
        *,
        method: str = "POST",
    ) -> Reply:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        now = loop.time()
        deadline = now + timeout
        pool = self._pool(host, port)
        head = pool.head(method, path) + fields + b"Content-Length: %d\r\n\r\n" % len(body)
        conn = self._take(pool, now)
        if conn is not None:
            try:
                return await self._exchange(loop, pool, conn, head, body, deadline)
            except Disconnected:
                pass  # the instance closed an idle connection as we sent: once more, on a new one
        conn = await self._connect(loop, pool, deadline)
        return await self._exchange(loop, pool, conn, head, body, deadline)

    def _pool(self, host: str, port: int) -> _Pool:
        pool = self._pools.get((host, port))
        if pool is None:
            pool = self._pools[(host, port)] = _Pool(host, port, self.max_idle)
        return pool

    def _take(self, pool: _Pool, now: float) -> _Connection | None:
        idle = pool.idle
        while idle:
            conn = idle.pop()
            if conn.closed:
                continue
            if now - conn.idle_since > self.idle_s:
                conn.close()
                continue
            return conn
        return None

    async def _connect(
        self, loop: asyncio.AbstractEventLoop, pool: _Pool, deadline: float
    ) -> _Connection:
        try:
            async with asyncio.timeout_at(deadline):
                if pool.unix is not None:
                    _, conn = await loop.create_unix_connection(
                        lambda: _Connection(loop, self, pool), pool.unix
                    )
                else:
                    _, conn = await loop.create_connection(
                        lambda: _Connection(loop, self, pool), pool.host, pool.port
                    )
        except TimeoutError:
            raise
        except OSError as exc:
            where = show(pool.host, pool.port)
            raise ConnectFailed(f"cannot connect to {where}: {exc}") from exc
        return conn

    def resend(
        self,
        pool: _Pool,
        head: bytes,
        body: bytes,
        deadline: float,
        done: Callable[[Reply | BaseException], None],
    ) -> None:
        """Send a request again on a new connection (its kept one closed before any answer)."""
        task = asyncio.get_running_loop().create_task(
            self._resend(pool, head, body, deadline, done)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resend(
        self,
        pool: _Pool,
        head: bytes,
        body: bytes,
        deadline: float,
        done: Callable[[Reply | BaseException], None],
    ) -> None:
        try:
            conn = await self._connect(asyncio.get_running_loop(), pool, deadline)
        except (TimeoutError, UpstreamFailure) as exc:
            done(exc)
            return
        except BaseException as exc:  # cancelled as the gateway stops: the call ends too
            done(exc)
            raise
        conn.send(head, body, deadline, done, again=False)

    async def _exchange(
        self,
        loop: asyncio.AbstractEventLoop,
        pool: _Pool,
        conn: _Connection,
        head: bytes,
        body: bytes,
        deadline: float,
    ) -> Reply:
        future: asyncio.Future[Reply | BaseException] = loop.create_future()
        conn.send(head, body, deadline, partial(resolve, future), again=False)
        try:
            outcome = await future
        except BaseException:
            # Cancelled mid-exchange: the connection's state is unknown.
            conn.abort()
            raise
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def retain(self, addresses: Collection[tuple[str, int]]) -> None:
        for address in [a for a in self._pools if a not in addresses]:
            self._pools.pop(address).retire()

    async def close(self) -> None:
        for pool in self._pools.values():
            pool.retire()
        self._pools.clear()


# --------------------------------------------------------------------------------------------
# The aiohttp client


class AiohttpClient:
    """The same hop through aiohttp's ClientSession: one keep-alive connector for every TCP
    instance, and one per unix socket (aiohttp's UnixConnector serves one path)."""

    def __init__(self) -> None:
        # By unix socket path; "" for TCP.
        self._sessions: dict[str, ClientSession] = {}
        self._urls: dict[tuple[str, int, str], URL] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def _session(self, unix: str | None) -> ClientSession:
        session = self._sessions.get(unix or "")
        if session is None:
            connector: TCPConnector | UnixConnector
            if unix is not None:
                connector = UnixConnector(path=unix, limit=0, keepalive_timeout=30.0)
            else:
                connector = TCPConnector(limit=0, keepalive_timeout=30.0, ttl_dns_cache=None)
            session = self._sessions[unix or ""] = ClientSession(
                connector=connector,
                cookie_jar=DummyCookieJar(),
                auto_decompress=False,
                # Bodies pass through untouched: ask for an encoding only when the caller did.
                skip_auto_headers=("Accept-Encoding", "User-Agent"),
                timeout=ClientTimeout(total=None),
            )
        return session

    async def post(
        self,
        host: str,
        port: int,
        path: str,
        fields: bytes,
        body: bytes,
        timeout: float,
        *,
        method: str = "POST",
    ) -> Reply:
        unix = unix_path(host)
        session = self._session(unix)
        url = self._urls.get((host, port, path))
        if url is None:
            url = self._urls[(host, port, path)] = (
                URL.build(scheme="http", host=UNIX_HOST_HEADER, path=path, encoded=True)
                if unix is not None
                else URL.build(scheme="http", host=host, port=port, path=path, encoded=True)
            )
        try:
            async with session.request(
                method,
                url,
                data=body,
                headers=_pairs(fields, "utf-8"),
                timeout=ClientTimeout(total=timeout),
            ) as resp:
                payload = await resp.read()
                returned = header_lines(
                    (name, value)
                    for name in RETURNED
                    if (value := resp.headers.get(name)) is not None
                )
                return Reply(resp.status, returned, payload)
        except TimeoutError:
            raise
        except ClientConnectorError as exc:
            where = show(host, port)
            raise ConnectFailed(f"cannot connect to {where}: {exc.os_error}") from exc
        except (ServerDisconnectedError, ClientOSError) as exc:
            raise Disconnected(f"the instance closed the connection: {exc}") from exc
        except ClientError as exc:
            raise BrokenReply(f"{type(exc).__name__}: {exc}") from exc

    def start(
        self,
        host: str,
        port: int,
        path: str,
        fields: bytes,
        body: bytes,
        timeout: float,
        done: Callable[[Reply | BaseException], None],
        *,
        method: str = "POST",
    ) -> bool:
        return False  # aiohttp's client is only ever awaited

    def retain(self, addresses: Collection[tuple[str, int]]) -> None:
        # The connectors close idle connections themselves; the URL cache is trimmed, and the
        # session of a unix socket no longer routed is closed.
        self._urls = {k: url for k, url in self._urls.items() if (k[0], k[1]) in addresses}
        kept = {path for host, _ in addresses if (path := unix_path(host)) is not None}
        for key in [k for k in self._sessions if k and k not in kept]:
            task = asyncio.get_running_loop().create_task(self._sessions.pop(key).close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.close()
        if self._closing:
            await asyncio.gather(*self._closing)
