"""Helpers for the Slack tests: a fake Web API that records calls, a fake Socket Mode
websocket server, and signed requests."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode

from aiohttp import WSMsgType, web

from opsbot.core.hardware import GIB, FakeProbe, Node

SECRET = "test-signing-secret"
#: Slack gives every request its own trigger_id (and event_id): so do the helpers, so that two
#: requests alike in all else are not one request replayed.
_SERIAL = itertools.count(1)


def new_trigger() -> str:
    return f"1.{next(_SERIAL)}.trigger"


def trigger_of(body: str) -> str:
    """The trigger_id of a request body made by these helpers."""
    form = parse_qs(body)
    if "payload" in form:
        return str(json.loads(form["payload"][0])["trigger_id"])
    return form["trigger_id"][0]


def big_probe() -> FakeProbe:
    """One node so large that capacity never limits a test."""
    return FakeProbe([Node(name="big", cpus=4096, memory_bytes=65536 * GIB, arch="x86_64")])


@dataclass
class Call:
    method: str  # "chat.postMessage", or "response" for a response_url
    args: dict[str, Any]
    reply: dict[str, Any] = field(default_factory=dict)  # what the fake answered


class FakeSlack(ThreadingHTTPServer):
    """The Web API on 127.0.0.1: answers ok, records every call; can answer 429 once."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _FakeHandler)
        self.calls: list[Call] = []
        self.rate_limit_next: set[str] = set()
        #: chat.postMessage to these channels answers the error given (e.g. not_in_channel).
        self.refuse: dict[str, str] = {}
        #: What apps.connections.open answers: the websocket URL (Socket Mode), or an error.
        self.socket_url: str | None = None
        self.socket_error: str | None = None
        self._cond = threading.Condition()
        self._ts = itertools.count(1)
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/api/"

    @property
    def response_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/response/1"

    def record(self, call: Call) -> None:
        with self._cond:
            self.calls.append(call)
            self._cond.notify_all()

    def of(self, method: str) -> list[dict[str, Any]]:
        with self._cond:
            return [c.args for c in self.calls if c.method == method]

    def wait_for(
        self, method: str, predicate: Callable[[dict[str, Any]], bool] = lambda _: True
    ) -> dict[str, Any]:
        """The first recorded call to ``method`` that matches, waiting up to 5 s for it."""
        with self._cond:
            found: list[dict[str, Any]] = []

            def match() -> bool:
                found[:] = [c.args for c in self.calls if c.method == method and predicate(c.args)]
                return bool(found)

            assert self._cond.wait_for(match, 5), (
                f"no {method} call matched; calls: {[c.method for c in self.calls]}"
            )
            return found[0]

    def wait_count(self, method: str, n: int, timeout: float = 30) -> None:
        """Wait until ``method`` was called ``n`` times."""
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.of(method)) >= n, timeout), (
                f"{len(self.of(method))} {method} calls of {n}"
            )

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(5)


class _FakeHandler(BaseHTTPRequestHandler):
    server: FakeSlack

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        if "json" in (self.headers.get("Content-Type") or ""):
            args: dict[str, Any] = json.loads(raw or "{}")
        else:
            args = {k: v[0] for k, v in parse_qs(raw).items()}
        for key in ("blocks", "view"):
            if isinstance(args.get(key), str):
                args[key] = json.loads(args[key])
        if self.path.startswith("/response/"):
            self.server.record(Call("response", args))
            self._send(200, {"ok": True})
            return
        method = self.path.removeprefix("/api/")
        if method in self.server.rate_limit_next:
            self.server.rate_limit_next.discard(method)
            self.server.record(Call(f"{method}#429", args))
            self._send(429, {"ok": False, "error": "ratelimited"}, {"Retry-After": "0"})
            return
        body: dict[str, Any] = {"ok": True}
        refused = self.server.refuse.get(str(args.get("channel")))
        if method == "chat.postMessage" and refused:
            self.server.record(Call(f"{method}#refused", args))
            self._send(200, {"ok": False, "error": refused})
            return
        if method == "apps.connections.open":
            args["authorization"] = self.headers.get("Authorization", "")
            if self.server.socket_error or self.server.socket_url is None:
                body = {"ok": False, "error": self.server.socket_error or "no_socket_url_yet"}
            else:
                body["url"] = self.server.socket_url
        elif method == "auth.test":
            body.update(user_id="UBOT", bot_id="BBOT", team_id="T1", user="opsbot", team="t")
        elif method in ("chat.postMessage", "chat.update"):
            channel = str(args.get("channel", ""))
            body.update(
                channel="D" + channel if channel.startswith("U") else channel,
                ts=args.get("ts") or f"1700000000.{next(self.server._ts):06d}",
            )
        elif method.startswith("views."):
            body["view"] = {"id": "V1", "hash": "h1", **(args.get("view") or {})}
        self.server.record(Call(method, args, body))
        self._send(200, body)

    def _send(self, status: int, body: Mapping[str, Any], headers: Mapping[str, str] = {}) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)


class FakeSocketMode:
    """Slack's side of Socket Mode on 127.0.0.1: a websocket server (aiohttp, in a thread of
    its own) that sends envelopes to the connected client and records what it answers."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.closed = threading.Event()
        self._cond = threading.Condition()
        self._ws: web.WebSocketResponse | None = None
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._runner: web.AppRunner | None = None
        self._run(self._start())

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/link/?ticket=test"

    def _run(self, coro: Any, timeout: float = 5) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/link/", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=1)
        await self._runner.setup()
        await web.SockSite(self._runner, self._sock).start()

    async def _handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        with self._cond:
            self._ws = ws
            self._cond.notify_all()
        await ws.send_json({"type": "hello", "num_connections": 1})
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                with self._cond:
                    self.received.append(json.loads(message.data))
                    self._cond.notify_all()
        self.closed.set()
        return ws

    def wait_connected(self, timeout: float = 10) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: self._ws is not None, timeout), "no client came"

    def send(self, envelope: Mapping[str, Any]) -> None:
        ws = self._ws
        assert ws is not None, "no client is connected"
        self._run(ws.send_json(dict(envelope)))

    def wait_for(self, envelope_id: str, timeout: float = 5) -> dict[str, Any]:
        """The client's answer to an envelope."""
        found: list[dict[str, Any]] = []

        def match() -> bool:
            found[:] = [m for m in self.received if m.get("envelope_id") == envelope_id]
            return bool(found)

        with self._cond:
            assert self._cond.wait_for(match, timeout), f"no answer to {envelope_id}"
        return found[0]

    def stop(self) -> None:
        if self._ws is not None and not self._ws.closed:
            self._run(self._ws.close())
        if self._runner is not None:
            self._run(self._runner.cleanup())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


def sign(body: str, timestamp: int | None = None, secret: str = SECRET) -> dict[str, str]:
    """Slack's v0 signature headers for a body."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(secret.encode(), f"v0:{ts}:{body}".encode(), hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": f"v0={digest}"}


@dataclass
class Reply:
    status: int
    body: str
    seconds: float

    def json(self) -> Any:
        return json.loads(self.body)


def post(url: str, body: str, content_type: str, headers: Mapping[str, str] | None = None) -> Reply:
    """POST a body to the bot's listener, signed unless headers are given."""
    signed = dict(sign(body) if headers is None else headers)
    request = urllib.request.Request(
        url,
        data=body.encode(),
        headers={"Content-Type": content_type, **signed},
        method="POST",
    )
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return Reply(response.status, response.read().decode(), time.perf_counter() - started)
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, exc.read().decode(), time.perf_counter() - started)


def command_body(command: str, text: str, response_url: str, user: str = "U1") -> str:
    return urlencode(
        {
            "command": command,
            "text": text,
            "user_id": user,
            "user_name": user.lower(),
            "team_id": "T1",
            "channel_id": "C1",
            "trigger_id": new_trigger(),
            "response_url": response_url,
        }
    )


def payload_body(payload: Mapping[str, Any]) -> str:
    return urlencode({"payload": json.dumps(payload)})


def block_action(
    action: Mapping[str, Any],
    *,
    user: str = "U1",
    view: Mapping[str, Any] | None = None,
    response_url: str | None = None,
    container: Mapping[str, Any] | None = None,
) -> str:
    payload: dict[str, Any] = {
        "type": "block_actions",
        "user": {"id": user},
        "team": {"id": "T1"},
        "api_app_id": "A1",
        "trigger_id": new_trigger(),
        "actions": [action],
        "container": container or {"type": "message"},
    }
    if view is not None:
        payload["view"] = view
        payload["container"] = {"type": "view", "view_id": view.get("id", "V1")}
    if response_url:
        payload["response_url"] = response_url
    return payload_body(payload)


def filled(
    view: Mapping[str, Any], values: Mapping[str, str | Mapping[str, Any]]
) -> dict[str, Any]:
    """The view as Slack sends it back with ``values`` typed in: keys are block ids, or block
    id prefixes such as ``m0.model`` (the generation part left out); a static select's value is
    an option's value or the text it shows, an external select's the option picked from the
    bot's answer to a block_suggestion (see :func:`suggestion_body`)."""
    state: dict[str, dict[str, Any]] = {}
    for block in view["blocks"]:
        if block["type"] != "input":
            continue
        bid = block["block_id"]
        element = block["element"]
        key = next((k for k in values if bid == k or bid.startswith(k + ".")), None)
        if key is None:
            continue
        value = values[key]
        if element["type"] == "external_select":
            assert isinstance(value, Mapping), f"{bid}: pick an option the bot suggested"
            slot: dict[str, Any] = {"type": "external_select", "selected_option": dict(value)}
        elif element["type"] == "static_select":
            # The user picks an option by what it shows; Slack sends the option's value (a
            # value no option has is sent as is: a forged one).
            option = next(
                (o for o in element["options"] if value in (o["value"], o["text"]["text"])),
                {"value": value, "text": {"type": "plain_text", "text": value}},
            )
            slot = {"type": "static_select", "selected_option": option}
        else:
            slot = {"type": element["type"], "value": value}
        state[bid] = {element["action_id"]: slot}
    return {
        "id": "V1",
        "hash": "h1",
        "type": "modal",
        "callback_id": view["callback_id"],
        "private_metadata": view["private_metadata"],
        "blocks": view["blocks"],
        "state": {"values": state},
    }


def suggestion_body(view: Mapping[str, Any], block_id: str, typed: str, user: str = "U1") -> str:
    """What Slack posts to the Options Load URL while ``typed`` is in the external_select of
    block ``block_id`` (its action id read from the view): a block_suggestion payload."""
    block = next(b for b in view["blocks"] if b.get("block_id") == block_id)
    return payload_body(
        {
            "type": "block_suggestion",
            "user": {"id": user, "team_id": "T1"},
            "team": {"id": "T1"},
            "api_app_id": "A1",
            "container": {"type": "view", "view_id": view.get("id", "V1")},
            "action_id": block["element"]["action_id"],
            "block_id": block_id,
            "value": typed,
            "view": {
                **view,
                "id": view.get("id", "V1"),
                "state": view.get("state", {"values": {}}),
            },
        }
    )


def submission(view: Mapping[str, Any], user: str = "U1") -> str:
    return payload_body(
        {
            "type": "view_submission",
            "user": {"id": user},
            "team": {"id": "T1"},
            "api_app_id": "A1",
            "trigger_id": new_trigger(),
            "view": view,
        }
    )


def event_body(event: Mapping[str, Any]) -> str:
    return json.dumps(
        {
            "type": "event_callback",
            "team_id": "T1",
            "api_app_id": "A1",
            "event": event,
            "event_id": f"Ev{next(_SERIAL)}",
            "event_time": int(time.time()),
        }
    )


def submit(url: str, view: Mapping[str, Any], user: str = "U1") -> Reply:
    """Submit a modal as Slack does. When opsbot answers with what to confirm first (the
    entered information before a deploy, the daemon's plan before a modification) and no
    warning, confirm it as the user would: the same form again, with the modal's new metadata."""
    form = "application/x-www-form-urlencoded"
    reply = post(url, submission(view, user), form)
    if not reply.body:
        return reply
    answer = json.loads(reply.body)
    shown = answer.get("view") or {}
    asks = answer.get("response_action") == "update"
    if asks and str(shown.get("submit", {}).get("text", "")).startswith("Confirm"):
        confirmed = {**view, "private_metadata": shown["private_metadata"]}
        return post(url, submission(confirmed, user), form)
    return reply
