"""Slack's HTTP mode: an aiohttp server that checks each request, then hands it to Bolt.

Bolt's own ``App.start()`` is a development server that never returns, and a hand-made
``http.server`` has a tiny backlog and no timeouts. This listener runs aiohttp (the daemon's
HTTP stack) on an event loop of its own thread, so Slack's bursts never wait on the control API:

- connections that send nothing, or only part of the headers, close after ``idle_timeout_s``
  (aiohttp's keep-alive timer runs from the connection's start); a body must arrive within
  ``read_timeout_s``;
- the signature is checked before anything of the body is parsed (401), then the body's shape
  (400); Bolt only sees signed, well-formed requests;
- a signed request seen before within Slack's five-minute window is answered 200 and not acted
  on again (a replay, or Slack retrying what it already delivered), unless answering it again
  changes nothing (a select's options, which the same typing asks for again);
- Bolt's ``dispatch`` (which waits for the listener's ``ack()``) runs in a thread pool large
  enough for Slack's bursts.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from slack_bolt import App
from slack_bolt.request import BoltRequest
from slack_bolt.request.internals import parse_body
from slack_sdk.signature import Clock, SignatureVerifier

log = logging.getLogger(__name__)

EVENTS_PATH = "/slack/events"
#: Slack refuses requests older than five minutes; so do we, and replays are remembered as long.
WINDOW_S = 300
#: Slack's bodies are small (a modal's state is the largest); anything larger is not Slack.
MAX_BODY_BYTES = 1024 * 1024
BACKLOG = 1024


class BadRequest(Exception):
    """A request refused before Bolt sees it: an HTTP status and what was wrong."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class ReplayGuard:
    """Signatures seen within the window: a second request with one of them is a replay.

    Used from the listener's event loop only, so it needs no lock."""

    def __init__(self, window_s: float = WINDOW_S):
        self.window_s = window_s
        self._seen: OrderedDict[str, float] = OrderedDict()

    def first_time(self, signature: str, now: float) -> bool:
        """Record ``signature``; False when it was seen within the window."""
        while self._seen:
            oldest, at = next(iter(self._seen.items()))
            if now - at <= self.window_s:
                break
            del self._seen[oldest]
        if signature in self._seen:
            return False
        self._seen[signature] = now
        return True

    def __len__(self) -> int:
        return len(self._seen)


class _FixedClock(Clock):
    def __init__(self, now: float):
        self._now = now

    def now(self) -> float:
        return self._now


def check_signature(
    secret: str, body: bytes, timestamp: str | None, signature: str | None, now: float
) -> None:
    """Slack's v0 signature of ``body``; raises BadRequest(401) naming what is wrong."""
    if not timestamp or not signature:
        raise BadRequest(401, "X-Slack-Request-Timestamp and X-Slack-Signature are required")
    if not timestamp.isascii() or not timestamp.isdigit():
        raise BadRequest(401, "X-Slack-Request-Timestamp must be whole seconds since the epoch")
    if abs(now - int(timestamp)) > WINDOW_S:
        raise BadRequest(401, "X-Slack-Request-Timestamp is more than five minutes away")
    if not SignatureVerifier(secret, _FixedClock(now)).is_valid(body, timestamp, signature):
        raise BadRequest(401, "X-Slack-Signature does not match the signing secret")


def bolt_request(body: bytes, query: str, headers: dict[str, str]) -> BoltRequest:
    """The request as Bolt takes it, once its body has a shape Slack sends: a JSON object, or
    a form whose ``payload`` (when present) is a JSON object. Raises BadRequest(400)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(400, "the body is not UTF-8") from None
    content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), None)
    try:
        parsed = parse_body(text, (content_type or "").split(";")[0].strip() or None)
    except ValueError as exc:  # json.JSONDecodeError included
        raise BadRequest(400, f"the body is neither a JSON object nor a form ({exc})") from None
    if not isinstance(parsed, dict):
        raise BadRequest(400, "the body (or its payload field) must be a JSON object")
    try:
        request = BoltRequest(body=text, query=query, headers=dict(headers))
    except (ValueError, TypeError, AttributeError, KeyError, IndexError) as exc:
        # Bolt reads the team, user and channel out of the object: odd types there
        raise BadRequest(400, f"the JSON object is not shaped as Slack's ({exc!r})") from None
    return request


class _OneLineBadRequests(logging.Filter):
    """aiohttp answers a request it cannot parse (a bad Content-Length, a broken request line)
    with 400 itself, then logs it with a traceback; here it is one line, as any refusal."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            first = (exc.message or "").strip().splitlines()
            record.msg = "malformed HTTP request refused (%s): %s"
            record.args = (exc.code, first[0] if first else "")
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


SERVER_LOG = logging.getLogger(__name__ + ".server")
SERVER_LOG.addFilter(_OneLineBadRequests())


def _idempotent(request: BoltRequest) -> bool:
    """Whether answering ``request`` again changes nothing: a select asking for its options
    (block_suggestion). Slack sends the very same one again when the same text is typed again
    within a second (same body, same timestamp, so the same signature), and a select left
    without its answer would show nothing."""
    return request.body.get("type") == "block_suggestion"


def _answer(status: int, message: str) -> web.Response:
    reply = web.json_response({"ok": False, "error": message}, status=status)
    reply.force_close()  # what is left of a refused request (a half-sent body) is not read
    return reply


class SlackHTTPServer:
    """Serves ``EVENTS_PATH`` for one Bolt app on ``host:port``; ``stop()`` ends it."""

    def __init__(
        self,
        app: App,
        signing_secret: str,
        host: str,
        port: int,
        *,
        idle_timeout_s: float = 5.0,
        read_timeout_s: float = 5.0,
        workers: int = 64,
        clock: Callable[[], float] = time.time,
    ):
        if not signing_secret:
            raise ValueError("Slack's HTTP mode needs the signing secret (SLACK_SIGNING_SECRET)")
        self.app = app
        self.secret = signing_secret
        self.host = host
        self.port = port
        self.idle_timeout_s = idle_timeout_s
        self.read_timeout_s = read_timeout_s
        self.clock = clock
        self.replays = ReplayGuard()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="slack-dispatch")
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{EVENTS_PATH}"

    # -- the request -------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        try:
            async with asyncio.timeout(self.read_timeout_s):
                body = await request.read()
        except TimeoutError:
            return _answer(408, f"the body did not arrive within {self.read_timeout_s:g} s")
        headers = request.headers
        signature = headers.get("X-Slack-Signature")
        try:
            check_signature(
                self.secret, body, headers.get("X-Slack-Request-Timestamp"), signature, self.clock()
            )
            assert signature is not None
            bolt = bolt_request(body, request.query_string, {k: v for k, v in headers.items()})
        except BadRequest as exc:
            return _answer(exc.status, exc.message)
        if not _idempotent(bolt) and not self.replays.first_time(signature, self.clock()):
            log.warning("Slack request replayed (same signature within 5 min): not acted on")
            return web.Response(status=200, headers={"X-Opsbot-Replay": "1"})
        loop = asyncio.get_running_loop()
        response = await loop.run_in_executor(self._pool, self.app.dispatch, bolt)
        out = web.Response(status=response.status, body=response.body.encode("utf-8"))
        for key, values in response.headers.items():
            if key.lower() != "content-length":
                for value in values:
                    out.headers.add(key, value)
        return out

    async def _not_here(self, request: web.Request) -> web.Response:
        return _answer(404, f"not found; Slack posts to {EVENTS_PATH}")

    # -- life cycle --------------------------------------------------------------------------

    async def _start(self) -> None:
        # The body is read (and capped) by _handle, under its own timeout.
        web_app = web.Application(client_max_size=MAX_BODY_BYTES)
        web_app.router.add_post(EVENTS_PATH, self._handle)
        web_app.router.add_route("*", "/{tail:.*}", self._not_here)
        self._runner = web.AppRunner(
            web_app,
            handle_signals=False,
            access_log=None,
            keepalive_timeout=self.idle_timeout_s,
            logger=SERVER_LOG,
            lingering_time=0,  # a refused body is not waited for
            shutdown_timeout=2.0,
        )
        await self._runner.setup()
        # Bound here so that port 0 tells the port it got; a backlog for Slack's bursts.
        sock = socket.create_server((self.host, self.port), backlog=BACKLOG)
        self.port = int(sock.getsockname()[1])
        await web.SockSite(self._runner, sock, backlog=BACKLOG).start()

    async def _close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        # Connections still open (idle ones, within their timeout) end with the loop.
        rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in rest:
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)

    def start(self) -> None:
        """Listen; returns once the port is bound (raises OSError when it cannot be)."""
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="slack-http", daemon=True
        )
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._thread = None
        self._loop.close()
        self._pool.shutdown(wait=False, cancel_futures=True)


def serve(app: App, signing_secret: str, port: int, host: str = "0.0.0.0") -> SlackHTTPServer:
    """Listen for Slack's requests on ``host:port`` in a thread; ``stop()`` ends it."""
    server = SlackHTTPServer(app, signing_secret, host, port)
    server.start()
    return server
