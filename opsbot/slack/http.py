"""A small threaded HTTP listener for Bolt's HTTP mode that can be stopped.

Bolt's own ``App.start()`` is a development server that never returns; the daemon needs one it
can shut down, on the path Slack posts to (``/slack/events``).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from slack_bolt import App
from slack_bolt.request import BoltRequest

EVENTS_PATH = "/slack/events"


class SlackHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, app: App, address: tuple[str, int]):
        self.app = app
        super().__init__(address, _Handler)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}{EVENTS_PATH}"

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, name="slack-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(5)


class _Handler(BaseHTTPRequestHandler):
    server: SlackHTTPServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass  # Bolt logs what matters; one line per request would drown the daemon's log

    def do_POST(self) -> None:
        parts = urlsplit(self.path)
        if parts.path != EVENTS_PATH:
            self._reply(404, f"not found; Slack posts to {EVENTS_PATH}", {})
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8")
        headers: dict[str, str | Sequence[str]] = {}
        for key, value in self.headers.items():
            headers[key.lower()] = value
        request = BoltRequest(body=body, query=parts.query, headers=headers)
        response = self.server.app.dispatch(request)
        self._reply(response.status, response.body, response.headers)

    def _reply(self, status: int, body: str, headers: dict[str, list[str]] | object) -> None:
        data = body.encode("utf-8")
        self.send_response(status)
        if isinstance(headers, dict):
            for key, values in headers.items():
                if key.lower() == "content-length":
                    continue
                for value in values:
                    self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def serve(app: App, port: int, host: str = "0.0.0.0") -> SlackHTTPServer:
    """Listen for Slack's requests on ``host:port`` in a thread; ``stop()`` ends it."""
    server = SlackHTTPServer(app, (host, port))
    server.start()
    return server
