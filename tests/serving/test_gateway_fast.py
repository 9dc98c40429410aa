"""The gateway's fast front over raw loopback sockets: what it takes itself, what it hands to
aiohttp, and that a connection keeps its order and its answers either way."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio

from opsbot.core.store import DB_NAME
from opsbot.serving.gateway import GatewayOptions, make_app
from opsbot.serving.gateway.fast import hot_route
from opsbot.serving.gateway.http import Serving, start_serving
from opsbot.serving.gateway.options import PREDICT, V2_INFER
from opsbot.serving.upstream import without_length
from serving.test_gateway import KEY, FakeInstance, Home

BODY = b'{"instances": [[5.1, 3.5, 1.4, 0.2]]}'
Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def _post(uid: str, body: bytes = BODY, *extra: str, version: str = "1.1") -> bytes:
    head = [
        f"POST /v1/infers/{uid} HTTP/{version}",
        "Host: gw",
        f"X-Auth-Token: {KEY}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        *extra,
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def _answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 answer with a Content-Length: status, headers (lower-case names), body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in lines[1:] if line)
    }
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 10)
    return status, headers, body


@pytest_asyncio.fixture
async def fast(store_home: Home) -> AsyncIterator[Callable[..., Awaitable[Serving]]]:
    """Starts the gateway in process behind the fast front."""
    started: list[Serving] = []

    async def start(**options: Any) -> Serving:
        opts = GatewayOptions(front="fast", **options)
        serving = await start_serving(
            make_app(store_home.path / DB_NAME, opts), opts, "127.0.0.1", 0
        )
        started.append(serving)
        return serving

    yield start
    for serving in started:
        await serving.close()


@pytest_asyncio.fixture
async def routed(
    store_home: Home, instance: Any, fast: Any
) -> AsyncIterator[tuple[str, FakeInstance, Serving]]:
    """One service with one instance, behind a fast front: (service id, instance, server)."""
    up = await instance("v1")
    uid = store_home.add_service([("1.0.0", 100, [up.port])])
    serving = await fast()
    yield uid, up, serving


async def _connect(serving: Serving) -> Connection:
    return await asyncio.open_connection(serving.host, serving.port)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (b"/v1/infers/abc", (PREDICT, "abc", None)),
        (b"/v1/models/alice.iris:predict", (PREDICT, "alice.iris", None)),
        (b"/v2/models/iris/infer", (V2_INFER, "iris", None)),
        (b"/v2/models/iris/versions/2.0.0/infer", (V2_INFER, "iris", "2.0.0")),
        # Everything else is aiohttp's router's to answer.
        (b"/v1/infers/", None),
        (b"/v1/infers/a/b", None),
        (b"/v1/infers/..", None),
        (b"/v1/infers/{x}", None),
        (b"/v1/models/:predict", None),
        (b"/v2/models/iris/versions/infer", None),
        (b"/v2/models/iris/ready", None),
        (b"/v1/infers/\xff", None),
        (b"/metrics", None),
    ],
)
def test_hot_routes_are_the_inference_paths_only(
    path: bytes, expected: tuple[int, str, str | None] | None
) -> None:
    assert hot_route(path) == expected


@pytest.mark.asyncio
async def test_pipelined_calls_are_answered_in_order(
    routed: tuple[str, FakeInstance, Serving],
) -> None:
    uid, up, serving = routed
    reader, writer = await _connect(serving)
    bodies = [b'{"instances": [[%d]]}' % n for n in range(3)]
    writer.write(b"".join(_post(uid, body) for body in bodies))
    answers = [await _answer(reader) for _ in bodies]
    writer.close()
    assert [status for status, _, _ in answers] == [200, 200, 200]
    assert all(headers["x-model-version"] == "1.0.0" for _, headers, _ in answers)
    assert [body for _, body, _ in up.calls] == bodies


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"POST /a HTTP/1.1\r\nContent-Length: 12\r\nHost: gw\r\n\r\n", 12),
        (b"POST /a HTTP/1.1\r\nHost: gw\r\nContent-Length: 0\r\n\r\n", 0),
        # Any other spelling is parsed whole, every time.
        (b"POST /a HTTP/1.1\r\ncontent-length: 12\r\n\r\n", -1),
        (b"POST /a HTTP/1.1\r\nContent-Length:12\r\n\r\n", -1),
        (b"POST /a HTTP/1.1\r\nContent-Length: +12\r\n\r\n", -1),
        (b"POST /a HTTP/1.1\r\nContent-Length: 1 2\r\n\r\n", -1),
        (b"POST /a HTTP/1.1\r\nContent-Length: \r\n\r\n", -1),
        (b"POST /a HTTP/1.1\r\nX-Content-Length: 12\r\n\r\n", -1),
        (b"POST /a HTTP/1.1\r\nContent-Length: %s\r\n\r\n" % (b"9" * 5000), -1),
    ],
)
def test_a_head_is_known_again_by_all_but_its_length(head: bytes, expected: int) -> None:
    key, length = without_length(head)
    assert length == expected
    if expected < 0:
        assert key is head
    else:
        assert b"Content-Length" not in key
        assert key == head.replace(b"Content-Length: %d\r\n" % expected, b"")


@pytest.mark.asyncio
async def test_heads_alike_but_their_length_each_read_their_own_body(
    store_home: Home, instance: Any, fast: Any
) -> None:
    # The heads are one another's but for their length: parsed once, each body read whole.
    up = await instance("v1")
    uid = store_home.add_service([("1.0.0", 100, [up.port])])
    serving = await fast(max_body_mb=0.001)
    reader, writer = await _connect(serving)
    bodies = [b'{"instances": [[1]]}', b'{"instances": [[1, 2, 3]]}', b"{}"]
    writer.write(b"".join(_post(uid, body) for body in bodies))
    answers = [await _answer(reader) for _ in bodies]
    # Then over the cap: aiohttp's 413, though the head is known but for its length.
    writer.write(_post(uid, b"x" * 2000))
    too_large = await _answer(reader)
    writer.close()
    assert [status for status, _, _ in answers] == [200, 200, 200]
    assert [body for _, body, _ in up.calls] == bodies
    assert too_large[0] == 413


@pytest.mark.asyncio
async def test_a_call_sent_in_pieces_is_put_together(
    routed: tuple[str, FakeInstance, Serving],
) -> None:
    uid, up, serving = routed
    reader, writer = await _connect(serving)
    call = _post(uid)
    for start in range(0, len(call), 7):
        writer.write(call[start : start + 7])
        await writer.drain()
    status, headers, body = await _answer(reader)
    writer.close()
    assert status == 200 and json.loads(body) == {"predictions": ["v1"]}
    assert headers["content-type"].startswith("application/json")
    assert [body for _, body, _ in up.calls] == [BODY]


@pytest.mark.asyncio
async def test_other_requests_are_handed_to_aiohttp_on_the_same_connection(
    routed: tuple[str, FakeInstance, Serving],
) -> None:
    uid, up, serving = routed
    reader, writer = await _connect(serving)
    writer.write(_post(uid))
    assert (await _answer(reader))[0] == 200
    # A route the fast front does not take: aiohttp answers it, and the connection stays open.
    writer.write(b"GET /v2/health/live HTTP/1.1\r\nHost: gw\r\n\r\n")
    status, _, body = await _answer(reader)
    assert status == 200 and json.loads(body) == {"live": True}
    writer.write(_post(uid))
    status, headers, _ = await _answer(reader)
    writer.close()
    assert status == 200 and headers["x-model-version"] == "1.0.0"
    assert len(up.calls) == 2


@pytest.mark.asyncio
async def test_a_chunked_body_goes_through_aiohttp_whole(
    routed: tuple[str, FakeInstance, Serving],
) -> None:
    uid, up, serving = routed
    reader, writer = await _connect(serving)
    head = _post(uid, b"").replace(b"Content-Length: 0", b"Transfer-Encoding: chunked")
    half = len(BODY) // 2
    chunks = [BODY[:half], BODY[half:]]
    writer.write(head + b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n")
    status, _, _ = await _answer(reader)
    writer.close()
    assert status == 200
    assert [body for _, body, _ in up.calls] == [BODY]


@pytest.mark.asyncio
async def test_a_refusal_on_the_head_keeps_the_connection_when_the_body_is_here(
    routed: tuple[str, FakeInstance, Serving],
) -> None:
    uid, up, serving = routed
    reader, writer = await _connect(serving)
    wrong = _post(uid).replace(KEY.encode(), b"ob_wrong-key-0")
    writer.write(wrong + _post(uid))
    first = await _answer(reader)
    second = await _answer(reader)
    writer.close()
    assert first[0] == 401 and json.loads(first[2])["reason"] == "unauthorized"
    assert second[0] == 200
    assert len(up.calls) == 1


@pytest.mark.asyncio
async def test_connection_close_and_http_1_0_close_after_the_answer(
    routed: tuple[str, FakeInstance, Serving],
) -> None:
    uid, _, serving = routed
    for call in (_post(uid, BODY, "Connection: close"), _post(uid, version="1.0")):
        reader, writer = await _connect(serving)
        writer.write(call)
        status, headers, _ = await _answer(reader)
        assert status == 200 and headers["connection"] == "close"
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the gateway
        writer.close()


@pytest.mark.asyncio
async def test_stopping_finishes_the_calls_in_flight(
    store_home: Home, instance: Any, fast: Any
) -> None:
    up = await instance("v1")
    up.hold = asyncio.Event()
    uid = store_home.add_service([("1.0.0", 100, [up.port])])
    serving = await fast()
    reader, writer = await _connect(serving)
    writer.write(_post(uid))
    while not up.calls:  # the call reached the instance, which holds it
        await asyncio.sleep(0.01)
    closing = asyncio.create_task(serving.close())
    await asyncio.sleep(0)  # its first step closes the listening socket
    idle_reader, idle_writer = None, None
    with pytest.raises(OSError):  # no longer listening
        idle_reader, idle_writer = await _connect(serving)
    assert not closing.done()
    up.hold.set()
    status, _, body = await _answer(reader)
    await asyncio.wait_for(closing, 10)
    writer.close()
    assert status == 200 and json.loads(body) == {"predictions": ["v1"]}
    assert idle_reader is None and idle_writer is None


@pytest.mark.asyncio
async def test_a_caller_that_half_closes_gets_its_answer_then_the_close(
    routed: tuple[str, FakeInstance, Serving],
) -> None:
    uid, up, serving = routed
    up.hold = asyncio.Event()
    reader, writer = await _connect(serving)
    writer.write(_post(uid))
    writer.write_eof()
    await writer.drain()
    while not up.calls:  # the instance holds the call: the gateway has read the end by then
        await asyncio.sleep(0.01)
    up.hold.set()
    status, headers, body = await _answer(reader)
    assert status == 200 and headers["connection"] == "close"
    assert json.loads(body) == {"predictions": ["v1"]}
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()
    assert len(up.calls) == 1


@pytest.mark.asyncio
async def test_an_upgrade_request_is_handed_to_aiohttp(
    routed: tuple[str, FakeInstance, Serving],
) -> None:
    uid, up, serving = routed
    reader, writer = await _connect(serving)
    # httptools stops at an upgrade (its own exception, not a parse error): aiohttp answers it.
    writer.write(_post(uid, BODY, "Connection: Upgrade", "Upgrade: websocket"))
    status, _, body = await _answer(reader)
    writer.close()
    assert status == 200 and json.loads(body) == {"predictions": ["v1"]}
    assert [body for _, body, _ in up.calls] == [BODY]


@pytest.mark.asyncio
async def test_the_keep_alive_timeout_counts_from_the_last_answer(
    store_home: Home, instance: Any, fast: Any
) -> None:
    # One read timer per connection, set by the first answer and moved by the second when it
    # fires: the connection must stay open a whole read timeout after the last answer.
    up = await instance("v1")
    uid = store_home.add_service([("1.0.0", 100, [up.port])])
    serving = await fast(read_timeout_s=0.4)
    reader, writer = await _connect(serving)
    writer.write(_post(uid))
    assert (await _answer(reader))[0] == 200
    await asyncio.sleep(0.25)  # part of the timeout passes before the next call
    writer.write(_post(uid))
    assert (await _answer(reader))[0] == 200
    answered = asyncio.get_running_loop().time()
    assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the gateway
    writer.close()
    assert asyncio.get_running_loop().time() - answered >= 0.35


@pytest.mark.asyncio
async def test_many_pipelined_calls_answered_at_once_are_answered_in_order(
    store_home: Home, instance: Any, fast: Any
) -> None:
    # Over its traffic limit a call is answered (429) as its body arrives, inside the loop that
    # takes the buffered requests: thousands in one buffer must not nest one call per answer.
    up = await instance("v1")
    uid = store_home.add_service([("1.0.0", 100, [up.port])], traffic_limit=1)
    serving = await fast()
    reader, writer = await _connect(serving)
    count = 3000
    writer.write(_post(uid) * count)
    statuses = [(await _answer(reader))[0] for _ in range(count)]
    writer.close()
    assert statuses[0] == 200 and set(statuses[1:]) == {429}
