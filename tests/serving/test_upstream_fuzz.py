"""The raw upstream client against aiohttp's, on answers an instance should never send.

An instance runs model code, so what comes back from it is untrusted input to the gateway's
hand-written HTTP client. Hypothesis writes answers near valid ones (odd status lines, duplicated
or disagreeing Content-Length, chunked bodies good and bad, bare LF, bodies short or long of what
the head says, the connection closed after or kept) and each client reads the same one. Both must
come to the same outcome (the reply, or which failure), and the call after it, on the same pool,
must get its own answer whole: whatever a bad answer left on a connection never reaches the next
caller.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from opsbot.serving.upstream import AiohttpClient, RawClient, Reply, UpstreamClient
from serving.test_upstream import OK, OK_BODY, Scripted, _post

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@st.composite
def answers(draw: st.DrawFn) -> tuple[bytes, bool]:
    """An answer's bytes, and whether the instance closes the connection after them."""
    body = draw(st.sampled_from([b'{"predictions":[1]}', b"", b"x" * 70]))
    n = len(body)
    end = draw(st.sampled_from(["\r\n", "\r\n", "\r\n", "\n"]))
    status = draw(
        st.sampled_from(
            [
                "HTTP/1.1 200 OK",
                "HTTP/1.1 503 Service Unavailable",
                "HTTP/1.0 200 OK",
                "HTTP/1.1 200",
                "HTTP/1.1 99 Odd",
                "HTTP/1.1 1000 Odd",
                "HTTP/2 200 OK",
                "HTTP/1.1  200 OK",
                "200 OK",
            ]
        )
    )
    chunked = draw(st.booleans())
    shorter = str(max(n - 2, 0))
    lengths = st.sampled_from(
        [str(n), f" {n}", f"{n} ", f"+{n}", f"{n}, {n}", "-1", "", "9" * 20, str(n + 2), shorter]
    )
    headers = []
    if chunked:
        headers.append(("Transfer-Encoding", draw(st.sampled_from(["chunked", "Chunked", "x"]))))
        size = draw(st.sampled_from([f"{n:x}", f"{n + 1:x}", "zz", f"{n:x};a=b", ""]))
        last = draw(st.sampled_from(["0\r\n\r\n", "0\r\nX-T: 1\r\n\r\n", "", "0\r\n"]))
        sent = f"{size}\r\n".encode() + body + b"\r\n" + last.encode() if n else last.encode()
    else:
        sent = body
    headers += draw(
        st.lists(
            st.one_of(
                st.tuples(st.sampled_from(["Content-Length", "content-length"]), lengths),
                st.tuples(st.just("Connection"), st.sampled_from(["close", "keep-alive"])),
                st.tuples(st.just("Content-Type"), st.just("application/json")),
                st.tuples(st.just("X-A"), st.sampled_from(["1", "a\r\n b", "a\x00b"])),
            ),
            max_size=3,
        )
    )
    if not chunked and draw(st.booleans()):
        headers.append(("Content-Length", str(n)))
    head = status + end + "".join(f"{k}: {v}{end}" for k, v in headers) + end
    sent = draw(st.sampled_from([sent, sent, sent[: len(sent) // 2], sent + b"HTTP/1.1 200 OK"]))
    return head.encode() + sent, draw(st.booleans())


def outcome(result: Reply | BaseException) -> tuple[Any, ...]:
    if isinstance(result, Reply):
        return ("reply", result.status, result.body)
    return (type(result).__name__,)


async def both(answer: bytes, close: bool) -> dict[str, tuple[tuple[Any, ...], tuple[Any, ...]]]:
    """Each client's outcome of the bad answer, then of the good one asked for after it."""
    seen = {}
    for name in ("raw", "aiohttp"):
        server = Scripted([([answer], close), ([OK + OK_BODY], False)])
        await server.start()
        client: UpstreamClient = RawClient() if name == "raw" else AiohttpClient()
        try:
            results: list[tuple[Any, ...]] = []
            for _ in range(2):
                try:
                    results.append(outcome(await _post(client, server.port, timeout=0.5)))
                except Exception as exc:  # the outcome compared, whatever its kind
                    results.append(outcome(exc))
            seen[name] = (results[0], results[1])
        finally:
            await client.close()
            await server.close()
    return seen


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(answer=answers())
# Found by CI: a Transfer-Encoding other than chunked beside a Content-Length was read by the
# length (and waited on past the short body) where aiohttp refuses any Transfer-Encoding there.
@example(
    answer=(
        b'HTTP/1.1 200 OK\r\nTransfer-Encoding: x\r\nContent-Length: 19\r\n\r\n13\r\n{"predictio',
        False,
    )
)
def test_a_bad_answer_is_read_as_aiohttp_reads_it_and_never_reaches_the_next_call(
    answer: tuple[bytes, bool],
) -> None:
    seen = asyncio.run(both(*answer))
    raw_first, raw_next = seen["raw"]
    assert raw_next == ("reply", 200, OK_BODY), (answer, seen)
    lenient = seen["aiohttp"][0]
    # The raw client may be stricter than aiohttp's lenient parser (a bare LF, a folded header
    # line, a chunk not ended by CRLF): it refuses at once what aiohttp reads or waits on. It
    # never reads what aiohttp refuses, and never waits where aiohttp decides.
    stricter = raw_first == ("BrokenReply",) and lenient[0] in ("reply", "TimeoutError")
    assert raw_first == lenient or stricter, (answer, seen)
