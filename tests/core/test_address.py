"""One representation of an instance's address: TCP host and port, or a unix socket's path."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from socketserver import UnixStreamServer

import pytest

from opsbot.core.address import UNIX_PORT, get_status, show, unix_address, unix_path
from opsbot.core.controller import http_ready


def test_a_unix_socket_is_an_absolute_path_and_port_0() -> None:
    assert unix_address("/run/x/i.sock") == ("/run/x/i.sock", UNIX_PORT) == ("/run/x/i.sock", 0)
    assert unix_path("/run/x/i.sock") == "/run/x/i.sock"
    assert unix_path("127.0.0.1") is None and unix_path("::1") is None
    with pytest.raises(ValueError, match="absolute path"):
        unix_address("i.sock")
    assert show("/run/x/i.sock", 0) == "unix:/run/x/i.sock"
    assert show("127.0.0.1", 8080) == "127.0.0.1:8080"


class _Ready(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        # What the daemon sends on a unix socket: Host localhost, no port.
        ok = self.path == "/v2/health/ready" and self.headers["Host"] == "localhost"
        self.send_response(200 if ok else 418)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def address_string(self) -> str:  # a unix peer has no (host, port)
        return "unix"

    def log_message(self, format: str, *args: object) -> None:
        pass


class _UnixHTTPServer(UnixStreamServer):
    pass


def test_the_readiness_check_reaches_an_instance_on_a_unix_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "ready.sock")
    server = _UnixHTTPServer(path, _Ready)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert get_status(*unix_address(path), "/v2/health/ready") == 200
        assert http_ready(*unix_address(path))
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert not http_ready(*unix_address(path))  # nothing listens: not ready, no error
    assert not http_ready(*unix_address(str(tmp_path / "missing.sock")))


def test_the_readiness_check_still_reaches_tcp(tmp_path: Path) -> None:
    server = HTTPServer(("127.0.0.1", 0), _Ready)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:  # over TCP the Host header carries the port: the handler answers 418, still an answer
        assert get_status("127.0.0.1", server.server_address[1], "/v2/health/ready") == 418
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        assert not http_ready("127.0.0.1", probe.getsockname()[1])
