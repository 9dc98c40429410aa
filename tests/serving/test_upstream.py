"""The gateway's upstream clients against a scripted HTTP server on a real loopback socket."""

from __future__ import annotations

import asyncio
import os
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import pytest_asyncio

from opsbot.core.address import unix_address
from opsbot.serving.upstream import (
    AiohttpClient,
    BrokenReply,
    ConnectFailed,
    Disconnected,
    RawClient,
    Reply,
    UpstreamClient,
    _answer_key,
    header_lines,
    remember,
)

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 17\r\n\r\n"
OK_BODY = b'{"predictions":1}'

# An answer: the pieces to write (bytes, or seconds to wait) and whether to close afterwards.
Answer = tuple[list[bytes | float], bool]


class Scripted:
    """Reads each request on each connection and writes the next scripted answer."""

    def __init__(self, answers: list[Answer]) -> None:
        self.answers = list(answers)
        self.requests: list[tuple[bytes, bytes]] = []
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self, unix: str | None = None) -> None:
        """Listen on a loopback port, or on the unix socket ``unix`` (a process runtime's
        instance)."""
        if unix is not None:
            self._server = await asyncio.start_unix_server(self._serve, unix)
            return
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while self.answers:
                head = await reader.readuntil(b"\r\n\r\n")
                found = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
                body = await reader.readexactly(int(found[1])) if found else b""
                self.requests.append((head, body))
                pieces, close = self.answers.pop(0)
                for piece in pieces:
                    if isinstance(piece, float):
                        await asyncio.sleep(piece)
                    else:
                        writer.write(piece)
                        await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest_asyncio.fixture
async def scripted() -> AsyncIterator[Callable[[list[Answer]], Awaitable[Scripted]]]:
    made: list[Scripted] = []

    async def start(answers: list[Answer], unix: str | None = None) -> Scripted:
        server = Scripted(answers)
        await server.start(unix)
        made.append(server)
        return server

    yield start
    for server in made:
        await server.close()


@pytest_asyncio.fixture(params=["raw", "aiohttp"])
async def client(request: pytest.FixtureRequest) -> AsyncIterator[UpstreamClient]:
    made: UpstreamClient = RawClient() if request.param == "raw" else AiohttpClient()
    yield made
    await made.close()


@pytest_asyncio.fixture
async def raw() -> AsyncIterator[RawClient]:
    made = RawClient()
    yield made
    await made.close()


@pytest.fixture
def dead_port() -> Iterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    yield int(sock.getsockname()[1])
    sock.close()


async def _post(
    client: UpstreamClient, port: int, body: bytes = b"{}", timeout: float = 5.0
) -> Reply:
    return await client.post(
        "127.0.0.1",
        port,
        "/predict",
        header_lines([("Content-Type", "application/json"), ("X-Request-Id", "r1")]),
        body,
        timeout,
    )


@pytest.mark.asyncio
async def test_an_instance_on_a_unix_socket(
    client: UpstreamClient, scripted: Any, tmp_path: Any
) -> None:
    """The address of a process-runtime instance: host the socket's path, port 0. Kept alive
    like TCP, Host: localhost (the socket has no host name); a socket gone is ConnectFailed."""
    path = str(tmp_path / "instance.sock")
    server = await scripted([([OK + OK_BODY], False), ([OK, OK_BODY], False)], unix=path)
    host, port = unix_address(path)
    for _ in range(2):
        reply = await client.post(host, port, "/predict", b"", b'{"instances": [1]}', 5.0)
        assert (reply.status, reply.body) == (200, OK_BODY)
    assert server.connections == 1
    head, body = server.requests[0]
    assert head.startswith(b"POST /predict HTTP/1.1\r\n")
    assert re.search(rb"(?i)\r\nHost: localhost\r\n", head), head
    assert body == b'{"instances": [1]}'
    client.retain(set())  # no longer routed: its connections (and aiohttp's session) go
    await server.close()
    os.unlink(path)
    with pytest.raises(ConnectFailed, match=f"unix:{re.escape(path)}"):
        await client.post(host, port, "/predict", b"", b"{}", 5.0)


@pytest.mark.asyncio
async def test_content_length_answer_and_keep_alive(client: UpstreamClient, scripted: Any) -> None:
    server = await scripted([([OK + OK_BODY], False), ([OK, OK_BODY], False)])
    for _ in range(2):
        reply = await _post(client, server.port, b'{"instances": [1]}')
        assert (reply.status, reply.body) == (200, OK_BODY)
        assert reply.headers == {"Content-Type": "application/json"}
    assert server.connections == 1
    head, body = server.requests[0]
    assert head.startswith(b"POST /predict HTTP/1.1\r\n")
    assert f"\r\nHost: 127.0.0.1:{server.port}\r\n".encode() in head
    assert b"\r\nX-Request-Id: r1\r\n" in head
    assert body == b'{"instances": [1]}'


def _dated(length: int, date: str, *extra: bytes) -> bytes:
    lines = [b"HTTP/1.1 200 OK", b"Content-Type: application/json", *extra]
    lines += [b"Content-Length: %d" % length, f"Date: {date}".encode(), b"Server: test"]
    return b"\r\n".join(lines) + b"\r\n\r\n"


@pytest.mark.asyncio
async def test_answer_heads_alike_but_length_and_date_each_end_at_their_length(
    raw: RawClient, scripted: Any
) -> None:
    # The second and third heads are the first's but for length and date: read as their own.
    bodies = [b'{"predictions":[1]}', b'{"predictions":[1,2,3]}', b"{}"]
    dates = ["Sun, 29 Nov 2026 15:00:00 GMT", "Sun, 29 Nov 2026 15:00:01 GMT"] * 2
    answers = [([_dated(len(b), d) + b], False) for b, d in zip(bodies, dates, strict=False)]
    server = await scripted(answers)
    for body in bodies:
        reply = await _post(raw, server.port)
        assert (reply.status, reply.body) == (200, body)
        assert reply.headers == {"Content-Type": "application/json"}
    assert server.connections == 1


@pytest.mark.asyncio
async def test_a_head_with_two_lengths_is_refused_every_time(raw: RawClient, scripted: Any) -> None:
    # Agreeing or not, as aiohttp's client refuses them; never taken from the cache of heads
    # either (the second is refused though its head is the first's but for its first length).
    date = "Sun, 29 Nov 2026 15:00:00 GMT"
    agreeing = _dated(17, date, b"content-length: 17") + OK_BODY
    disagreeing = _dated(5, date, b"content-length: 17") + OK_BODY
    server = await scripted([([agreeing], False), ([disagreeing], False)])
    for _ in range(2):
        with pytest.raises(BrokenReply, match="two Content-Length"):
            await _post(raw, server.port)


def test_a_full_cache_of_heads_makes_room_for_the_next() -> None:
    kept: dict[bytes, int] = {}
    for n in range(5):
        remember(kept, b"head %d" % n, n, most=3)
        assert kept[b"head %d" % n] == n and len(kept) <= 3
    remember(kept, b"x" * 2049, 9, most=3)  # too large to keep
    assert b"x" * 2049 not in kept


def test_an_answer_head_is_known_again_by_all_but_its_length_and_date() -> None:
    key, length = _answer_key(_dated(17, "Sun, 29 Nov 2026 15:00:00 GMT")[:-2])
    other, _ = _answer_key(_dated(3, "Mon, 30 Nov 2026 10:00:00 GMT")[:-2])
    assert length == 17 and key == other
    assert key == b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nServer: test\r\n"


@pytest.mark.asyncio
async def test_chunked_answer_in_pieces(client: UpstreamClient, scripted: Any) -> None:
    head = (
        b"HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: application/json\r\nContent-Encoding: identity\r\nX-Other: 1\r\n\r\n"
    )
    chunks = [head, b"5;ext=1\r\nhel", 0.01, b"lo\r\n", b"6\r\n world\r\n0\r\n", b"\r\n"]
    server = await scripted([(chunks, False), ([OK + OK_BODY], False)])
    reply = await _post(client, server.port)
    assert (reply.status, reply.body) == (400, b"hello world")
    assert reply.headers == {"Content-Type": "application/json", "Content-Encoding": "identity"}
    assert (await _post(client, server.port)).body == OK_BODY
    assert server.connections == 1


@pytest.mark.asyncio
async def test_chunked_answer_with_trailers(raw: RawClient, scripted: Any) -> None:
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n"
    server = await scripted([([answer], False), ([OK + OK_BODY], False)])
    assert (await _post(raw, server.port)).body == b"abc"
    assert (await _post(raw, server.port)).body == OK_BODY
    assert server.connections == 1


@pytest.mark.asyncio
async def test_answer_ended_by_close(client: UpstreamClient, scripted: Any) -> None:
    answer = [b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall ", 0.01, b"of it"]
    server = await scripted([(answer, True), ([OK + OK_BODY], False)])
    reply = await _post(client, server.port)
    assert (reply.status, reply.body) == (200, b"all of it")
    assert (await _post(client, server.port)).body == OK_BODY
    assert server.connections == 2


@pytest.mark.asyncio
async def test_connection_close_is_not_reused(raw: RawClient, scripted: Any) -> None:
    closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
    server = await scripted([([closing], False), ([OK + OK_BODY], False)])
    assert (await _post(raw, server.port)).body == b"ok"
    assert (await _post(raw, server.port)).body == OK_BODY
    assert server.connections == 2


@pytest.mark.asyncio
async def test_interim_answer_is_skipped(client: UpstreamClient, scripted: Any) -> None:
    server = await scripted([([b"HTTP/1.1 100 Continue\r\n\r\n", 0.01, OK + OK_BODY], False)])
    reply = await _post(client, server.port)
    assert (reply.status, reply.body) == (200, OK_BODY)


@pytest.mark.asyncio
async def test_no_content_answer(raw: RawClient, scripted: Any) -> None:
    server = await scripted(
        [([b"HTTP/1.1 204 No Content\r\n\r\n"], False), ([OK + OK_BODY], False)]
    )
    assert (await _post(raw, server.port)).status == 204
    assert (await _post(raw, server.port)).body == OK_BODY
    assert server.connections == 1


@pytest.mark.asyncio
async def test_large_body_goes_whole(client: UpstreamClient, scripted: Any) -> None:
    server = await scripted([([OK + OK_BODY], False)])
    body = b"x" * 3_000_000
    assert (await _post(client, server.port, body)).status == 200
    assert server.requests[0][1] == body


@pytest.mark.asyncio
async def test_idle_connection_closed_by_the_instance_is_replaced(
    raw: RawClient, scripted: Any
) -> None:
    # The second request arrives on the kept connection and is dropped unanswered, as when an
    # instance closes an idle connection just as the gateway sends on it.
    server = await scripted([([OK + OK_BODY], False), ([], True), ([OK + OK_BODY], False)])
    assert (await _post(raw, server.port)).status == 200
    assert (await _post(raw, server.port)).status == 200
    assert server.connections == 2


@pytest.mark.asyncio
async def test_idle_connections_expire(scripted: Any) -> None:
    client = RawClient(idle_s=0.0)
    server = await scripted([([OK + OK_BODY], False), ([OK + OK_BODY], False)])
    try:
        await _post(client, server.port)
        await asyncio.sleep(0.01)
        await _post(client, server.port)
    finally:
        await client.close()
    assert server.connections == 2


@pytest.mark.asyncio
async def test_nothing_listening_is_connect_failed(client: UpstreamClient, dead_port: int) -> None:
    with pytest.raises(ConnectFailed, match=str(dead_port)):
        await _post(client, dead_port)


@pytest.mark.asyncio
async def test_closed_before_answering_is_disconnected(
    client: UpstreamClient, scripted: Any
) -> None:
    server = await scripted([([], True)])
    with pytest.raises(Disconnected):
        await _post(client, server.port)


@pytest.mark.asyncio
async def test_answer_broken_off_is_broken_reply(client: UpstreamClient, scripted: Any) -> None:
    server = await scripted([([OK, b'{"pre'], True)])
    with pytest.raises(BrokenReply):
        await _post(client, server.port)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "answer",
    [
        b"SMTP ready\r\n\r\n",
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
    ids=["not-http", "bad-status", "bad-length", "bad-chunk"],
)
async def test_garbage_is_broken_reply(raw: RawClient, scripted: Any, answer: bytes) -> None:
    server = await scripted([([answer], False)])
    with pytest.raises(BrokenReply):
        await _post(raw, server.port)


@pytest.mark.asyncio
async def test_slow_answer_times_out_and_its_connection_is_dropped(
    client: UpstreamClient, scripted: Any
) -> None:
    server = await scripted([([1.0, OK + OK_BODY], False), ([OK + OK_BODY], False)])
    with pytest.raises(TimeoutError):
        await _post(client, server.port, timeout=0.1)
    assert (await _post(client, server.port)).body == OK_BODY
    assert server.connections == 2


@pytest.mark.asyncio
async def test_header_values_cannot_smuggle_lines(raw: RawClient, scripted: Any) -> None:
    server = await scripted([([OK + OK_BODY], False)])
    fields = header_lines(
        [("X-Request-Id", "r1\r\nX-Evil: 1"), ("Accept", "application/json; q=ü")]
    )
    await raw.post("127.0.0.1", server.port, "/predict", fields, b"{}", 5.0)
    head = server.requests[0][0]
    assert b"X-Evil" not in head
    assert "Accept: application/json; q=ü\r\n".encode() in head


@pytest.mark.asyncio
async def test_retain_drops_the_pools_of_other_instances(raw: RawClient, scripted: Any) -> None:
    server = await scripted([([OK + OK_BODY], False)] * 3)
    await _post(raw, server.port)
    raw.retain({("127.0.0.1", server.port)})
    await _post(raw, server.port)
    assert server.connections == 1
    raw.retain(set())
    await _post(raw, server.port)
    assert server.connections == 2


@pytest.mark.asyncio
async def test_a_short_deadline_after_a_long_one_still_times_out(
    raw: RawClient, scripted: Any
) -> None:
    # One timer per connection: the first exchange set it 30 s out; the second, on the same
    # connection, must not wait that long for an answer due in 0.1 s.
    server = await scripted([([OK + OK_BODY], False), ([2.0, OK + OK_BODY], False)])
    assert (await _post(raw, server.port, timeout=30.0)).status == 200
    with pytest.raises(TimeoutError):
        await _post(raw, server.port, timeout=0.1)
    assert server.connections == 1


def _started(
    raw: RawClient, port: int, timeout: float = 5.0
) -> tuple[bool, asyncio.Future[Reply | BaseException]]:
    """RawClient.start with a future for what ``done`` gets."""
    outcome: asyncio.Future[Reply | BaseException] = asyncio.get_running_loop().create_future()
    sent = raw.start(
        "127.0.0.1",
        port,
        "/predict",
        header_lines([("Content-Type", "application/json")]),
        b"{}",
        timeout,
        outcome.set_result,
    )
    return sent, outcome


@pytest.mark.asyncio
async def test_start_sends_only_over_an_idle_connection(raw: RawClient, scripted: Any) -> None:
    server = await scripted([([OK + OK_BODY], False), ([OK, OK_BODY], False)])
    sent, _ = _started(raw, server.port)
    assert not sent  # no connection yet: nothing sent, the caller awaits post instead
    assert (await _post(raw, server.port)).status == 200
    sent, outcome = _started(raw, server.port)
    assert sent
    reply = await asyncio.wait_for(outcome, 10)
    assert isinstance(reply, Reply) and (reply.status, reply.body) == (200, OK_BODY)
    assert server.connections == 1 and len(server.requests) == 2


@pytest.mark.asyncio
async def test_start_sends_again_when_the_idle_connection_was_closed(
    raw: RawClient, scripted: Any
) -> None:
    # The kept connection is dropped unanswered, as when the instance closes it as we send.
    server = await scripted([([OK + OK_BODY], False), ([], True), ([OK + OK_BODY], False)])
    assert (await _post(raw, server.port)).status == 200
    sent, outcome = _started(raw, server.port)
    assert sent
    reply = await asyncio.wait_for(outcome, 10)
    assert isinstance(reply, Reply) and reply.status == 200
    assert server.connections == 2


@pytest.mark.asyncio
async def test_start_reports_a_timeout_and_drops_the_connection(
    raw: RawClient, scripted: Any
) -> None:
    server = await scripted(
        [([OK + OK_BODY], False), ([2.0, OK + OK_BODY], False), ([OK + OK_BODY], False)]
    )
    assert (await _post(raw, server.port)).status == 200
    sent, outcome = _started(raw, server.port, timeout=0.1)
    assert sent
    assert isinstance(await asyncio.wait_for(outcome, 10), TimeoutError)
    assert (await _post(raw, server.port)).status == 200
    assert server.connections == 2
