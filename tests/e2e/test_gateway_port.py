"""The gateway's port: one chosen as free is the daemon's from the moment it is chosen (the
daemon binds it and hands the listening socket to the gateway process), so no other program
takes it in the second the gateway needs to start; one configured and taken is refused."""

from __future__ import annotations

import errno
import json
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from opsbot.daemon.server import Daemon, PortBusy, _cmdline


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    made = Daemon(tmp_path / "home", gateway_port=0, examples=False, say=lambda _: None)
    try:
        yield made
    finally:
        made.stop_gateway()
        made.release_gateway_socket()
        made.controller.close()
        made.core.store.close()


def test_a_port_chosen_as_free_is_held_until_the_gateway_serves_on_it(daemon: Daemon) -> None:
    port = daemon.gateway_port
    assert port > 0
    # Before the gateway starts, nobody else can take it (it used to be free again here).
    with socket.socket() as other, pytest.raises(OSError) as taken:
        other.bind(("127.0.0.1", port))
    assert taken.value.errno == errno.EADDRINUSE

    daemon.ensure_gateway()

    with urllib.request.urlopen(f"{daemon.gateway_url}/healthz", timeout=10) as resp:
        assert json.loads(resp.read())["status"] == "ok"
    pid = daemon._gateway_pid
    assert pid is not None
    assert "--listen-fd" in _cmdline(pid)  # served on the socket the daemon bound


def test_a_configured_port_that_is_taken_is_refused_naming_it(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        made = Daemon(tmp_path / "home", gateway_port=port, examples=False, say=lambda _: None)
        try:
            with pytest.raises(PortBusy) as refused:
                made.ensure_gateway()
            assert f"port {port}" in str(refused.value)
            assert made._gateway_pid is None  # nothing was started
        finally:
            made.controller.close()
            made.core.store.close()
