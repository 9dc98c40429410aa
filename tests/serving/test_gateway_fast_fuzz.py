"""The fast front against aiohttp's own server, byte for byte: hypothesis writes requests near
the inference calls (odd spellings of Content-Length and Transfer-Encoding, duplicated headers,
bare LF line ends, unusual paths and versions, bodies short or long of what the head says), the
caller half-closing once answered. Both fronts must answer with
the same statuses in the same order and pass the same bodies to the instance: where they part,
the hand-written parse below aiohttp reads a request differently from it (the root of request
smuggling), or answers what aiohttp would refuse.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import httptools
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opsbot.core.store import DB_NAME
from opsbot.serving.gateway import GatewayOptions, make_app
from opsbot.serving.gateway.http import Serving, start_serving
from serving.test_gateway import KEY, FakeInstance, Home

BODY = b'{"instances": [[5.1, 3.5, 1.4, 0.2]]}'
T = TypeVar("T")


@dataclass
class Fronts:
    """One service on one fake instance, behind two gateways on the same store: one with the
    fast front, one with aiohttp's server alone."""

    loop: asyncio.AbstractEventLoop
    instance: FakeInstance
    uid: str
    ports: dict[str, int]

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)


@pytest.fixture(scope="module")
def fronts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fronts]:
    home = Home(tmp_path_factory.mktemp("fuzz"))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fuzz-loop", daemon=True)
    thread.start()
    instance = FakeInstance("v1")
    started: list[Serving] = []

    async def serve(front: str) -> Serving:
        # A short read timeout, so a request whose body never comes whole ends quickly; a
        # small body cap, so the 413 path is reached.
        options = GatewayOptions(front=front, read_timeout_s=0.3, max_body_mb=0.0002)  # type: ignore[arg-type]
        serving = await start_serving(
            make_app(home.path / DB_NAME, options), options, "127.0.0.1", 0
        )
        started.append(serving)
        return serving

    made = Fronts(loop, instance, "", {})
    try:
        made.run(instance.start())
        made.uid = home.add_service([("1.0.0", 100, [instance.port])], name="iris")
        made.ports = {front: made.run(serve(front)).port for front in ("fast", "aiohttp")}
        yield made
    finally:
        for serving in started:
            made.run(serving.close())
        made.run(instance.close())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        home.store.close()


class _Answers:
    """httptools' callbacks: the status of each whole answer in the stream."""

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.parser = httptools.HttpResponseParser(self)

    def on_message_complete(self) -> None:
        self.statuses.append(self.parser.get_status_code())


def exchange(port: int, raw: bytes) -> list[int | str]:
    """Send ``raw``, half-close once its first final answer is whole, and read until the gateway
    closes: the statuses of the whole answers, then how the stream ended ("closed", "broken"
    when what came back is no HTTP answer, "silent" when the gateway neither answered nor
    closed within 5 s)."""
    answers = _Answers()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(raw)
        done = False
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                return [*answers.statuses, "silent"]
            except ConnectionResetError:
                break
            if not chunk:
                break
            try:
                answers.parser.feed_data(chunk)
            except httptools.HttpParserError:
                return [*answers.statuses, "broken"]
            if not done and any(status >= 200 for status in answers.statuses):
                # The caller is done once answered: without the half-close aiohttp waits up
                # to 10 s for the rest of a body it did not read before it closes.
                done = True
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_WR)
    return [*answers.statuses, "closed"]


@st.composite
def requests(draw: st.DrawFn, uid: str) -> bytes:
    body = draw(
        st.sampled_from([BODY, b"", b"{", b"0\r\n\r\n", b"4\r\n{}{}\r\n0\r\n\r\n", BODY * 8])
    )
    n = len(body)
    method = draw(st.sampled_from(["POST", "POST", "POST", "GET", "PUT", "post"]))
    path = draw(
        st.sampled_from(
            [
                f"/v1/infers/{uid}",
                "/v1/infers/iris",
                "/v1/infers/alice.iris",
                "/v1/models/iris:predict",
                "/v2/models/iris/infer",
                "/v2/models/iris/versions/1.0.0/infer",
                "/v2/models/iris/versions/9/infer",
                "/v1/infers/nope",
            ]
        )
    )
    tweak = draw(st.sampled_from(["", "", "", "?a=1", "/", "%41", "//", " x", "#f", "?a#b"]))
    path = draw(st.sampled_from(["", "", "", "http://gw", "HTTP://gw:80", "//gw"])) + path
    version = draw(
        st.sampled_from(["HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/1.2", "HTTP/2.0", "http/1.1"])
    )
    lengths = st.sampled_from(
        [
            str(n),
            str(n),
            f" {n}",
            f"{n} ",
            f"+{n}",
            f"0{n}",
            f"{n}, {n}",
            f"{n},{n}",
            "-1",
            "0x10",
            "",
            "9" * 20,
            str(n + 3),
            str(max(n - 3, 0)),
        ]
    )
    entries = st.one_of(
        st.tuples(st.sampled_from(["Content-Length", "content-length", "CONTENT-LENGTH"]), lengths),
        st.tuples(
            st.just("Transfer-Encoding"),
            st.sampled_from(["chunked", "Chunked", " chunked", "gzip, chunked", "identity", "x"]),
        ),
        st.tuples(st.just("Content-Encoding"), st.sampled_from(["gzip", "identity", "br"])),
        st.tuples(st.just("X-Auth-Token"), st.sampled_from([KEY, "wrong", ""])),
        st.tuples(st.just("Connection"), st.sampled_from(["close", "keep-alive", "Upgrade"])),
        st.tuples(st.just("Expect"), st.just("100-continue")),
        st.tuples(
            st.sampled_from(["Content-Length ", "Content_Length", " Content-Length", "X-A"]),
            lengths,
        ),
        st.tuples(
            st.sampled_from(["X-Request-Id", "Accept", "Content-Type", "Host", "User-Agent"]),
            st.text("ab/;", max_size=4),
        ),
        # Lines no client should send: a folded value, control bytes, a name with no value.
        st.tuples(
            st.sampled_from(["X-A", "Content-Type", "X-Auth-Token"]),
            st.sampled_from(["a\r\n b", "a\x00b", "a\x7fb", "\tb", "a\rb", "\u00e9"]),
        ),
        st.tuples(st.sampled_from(["X-A", ":", "X A", "X\x00A"]), st.just("1")),
    )
    headers = [("X-Auth-Token", KEY), ("Content-Length", str(n))]
    headers = draw(
        st.one_of(
            st.just(headers),
            st.lists(entries, max_size=4).map(lambda extra: headers[:1] + extra),
            st.lists(entries, max_size=4).map(lambda extra: headers + extra),
            st.lists(entries, max_size=4).map(lambda extra: extra + headers),
        )
    )
    end = draw(st.sampled_from(["\r\n", "\r\n", "\r\n", "\n"]))
    host = f"Host: gw{end}" if draw(st.booleans()) else ""
    head = f"{method} {path}{tweak} {version}{end}{host}"
    head += "".join(f"{name}: {value}{end}" for name, value in headers)
    sent = draw(st.sampled_from([body, body, body[: n // 2], body + b"xyz"]))
    return (head + end).encode() + sent


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_the_fast_front_reads_every_request_as_aiohttp_does(
    fronts: Fronts, data: st.DataObject
) -> None:
    raw = data.draw(requests(fronts.uid), label="request")
    seen: dict[str, tuple[list[int | str], list[bytes]]] = {}
    for front, port in fronts.ports.items():
        before = len(fronts.instance.calls)
        statuses = exchange(port, raw)
        bodies = [body for _, body, _ in fronts.instance.calls[before:]]
        seen[front] = (statuses, bodies)
    if seen["fast"] != seen["aiohttp"] and seen["aiohttp"] == ([400, "closed"], []):
        # aiohttp refuses a whole read when a later request in it is malformed, the whole
        # requests before it unanswered; the fast front answers those. Then the reference is
        # llhttp's own framing: the fast front answered each request llhttp finds whole
        # before the malformed one, and forwarded only bodies of those, in their order.
        bodies, malformed = framed(raw)
        assert malformed and bodies, (raw, seen)
        statuses, forwarded = seen["fast"]
        assert len(statuses) == len(bodies) + 1, (raw, seen)
        left = iter(bodies)
        assert all(body in left for body in forwarded), (raw, seen)
        return
    assert seen["fast"] == seen["aiohttp"], raw


class _Requests:
    """httptools' callbacks: the body of each whole request in a stream."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.body = b""

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.bodies.append(self.body)
        self.body = b""


def framed(raw: bytes) -> tuple[list[bytes], bool]:
    """The bodies of the whole requests llhttp finds in ``raw``, and whether it then refuses
    what follows."""
    seen = _Requests()
    try:
        httptools.HttpRequestParser(seen).feed_data(raw)
    except httptools.HttpParserError:
        return seen.bodies, True
    return seen.bodies, False


@pytest.mark.parametrize(
    "raw",
    [
        # Each one the fuzz test above found the fast front reading otherwise than aiohttp:
        # a head with bare LF line ends (it waited, then closed without an answer: now 400),
        b"POST /v1/infers/iris HTTP/1.1\nHost: gw\nX-Auth-Token: %s\nContent-Length: %d\n\n%s",
        # a fragment in the target (it took "iris#f" for the service's name: 404, now 200),
        b"POST /v1/infers/iris#f HTTP/1.1\r\nHost: gw\r\nX-Auth-Token: %s\r\n"
        b"Content-Length: %d\r\n\r\n%s",
        # an HTTP/1.1 call without Host (forwarded: now 400, as aiohttp refuses it),
        b"POST /v1/infers/iris HTTP/1.1\r\nX-Auth-Token: %s\r\nContent-Length: %d\r\n\r\n%s",
        # and a second Content-Type (forwarded: now 400, as aiohttp refuses it).
        b"POST /v1/infers/iris HTTP/1.1\r\nHost: gw\r\nX-Auth-Token: %s\r\nContent-Length: %d\r\n"
        b"Content-Type: a\r\nContent-Type: b\r\n\r\n%s",
    ],
    ids=["bare-lf", "fragment", "no-host", "two-content-types"],
)
def test_what_the_fuzz_found_is_read_as_aiohttp_reads_it(fronts: Fronts, raw: bytes) -> None:
    raw = raw % (KEY.encode(), len(BODY), BODY)
    seen = {front: exchange(port, raw) for front, port in fronts.ports.items()}
    assert seen["fast"] == seen["aiohttp"]
