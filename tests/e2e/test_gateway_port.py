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


def _healthz(url: str) -> str:
    with urllib.request.urlopen(f"{url}/healthz", timeout=10) as resp:
        return str(json.loads(resp.read())["status"])


@pytest.mark.parametrize("configured", ["free", "another"])
def test_a_restarted_daemon_points_at_the_gateway_it_adopts(
    daemon: Daemon, tmp_path: Path, configured: str
) -> None:
    """A daemon started again (after kill -9, or `opsbot down` keeping the gateway) adopts the
    running gateway: its URL, its route pushes and its stats go to the port that gateway serves
    on, not to the one this start chose as free (or a port the config now names)."""
    daemon.ensure_gateway()
    serving = daemon.gateway_url
    said: list[str] = []
    if configured == "free":
        port = 0
    else:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
    again = Daemon(tmp_path / "home", gateway_port=port, examples=False, say=said.append)
    try:
        assert again.gateway_url != serving  # what this start alone would have used
        again.ensure_gateway()
        assert again._gateway_pid == daemon._gateway_pid  # adopted, not started
        assert again.gateway_url == serving
        assert _healthz(again.gateway_url) == "ok"
        assert f"adopted the gateway (pid {daemon._gateway_pid}) at {serving}" in said
        told = [line for line in said if "not on the configured" in line]
        assert len(told) == (1 if configured == "another" else 0)
    finally:
        again.release_gateway_socket()
        again.controller.close()
        again.core.store.close()
