"""A program that takes a container's port before the container binds it is never routed to.

The docker runtime gives each container a free port that the container binds a moment later.
Another local account's program (or one running as the containers' own user outside any
container) that binds it first answers the readiness check in the container's place; routed to,
it would get the callers' data and the version's instance secret. The runtime tells the two apart
by who holds the listening socket (``DockerRuntime.foreign_listener``), and the controller never
routes to an instance whose port another program holds: it stops it and starts it again on
another port (``tests/core/test_controller.py`` has that part).
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from docker_fixtures import engine_fixture, image_fixture  # noqa: F401 - the fixtures
from homes import instance_spec, wait_ready
from security.conftest import (
    People,
    people_fixture,  # noqa: F401 - the accounts fixture
)

from opsbot.core.images import USER_ID
from opsbot.core.listeners import holders, listeners
from opsbot.core.runtime import Started
from opsbot.core.runtimes import docker as docker_runtime
from opsbot.core.runtimes.docker import DockerRuntime

# A squatter: an HTTP server on a free loopback port that says 200 to every GET, as a model
# server's readiness route would. It prints its port once it listens.
SQUATTER = """
import http.server, sys
class Yes(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", 0), Yes)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


@contextmanager
def squatter(uid: int, gid: int) -> Iterator[tuple[int, int]]:
    """A squatter running as ``uid``: its port and pid."""
    proc = subprocess.Popen(
        ["/usr/bin/python3", "-c", SQUATTER],
        user=uid,
        group=gid,
        extra_groups=[],
        stdout=subprocess.PIPE,
        cwd="/",
        env={"PATH": "/usr/bin:/bin"},
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        yield port, proc.pid
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_the_kernel_s_tables_name_the_listener_its_account_and_its_holder(
    people: People,
) -> None:
    with socket.socket() as mine:
        mine.bind(("127.0.0.1", 0))
        mine.listen()
        port = mine.getsockname()[1]
        (found,) = listeners(port)
        assert (found.uid, found.inode) == (os.geteuid(), os.fstat(mine.fileno()).st_ino)
        assert holders(found.inode) == [os.getpid()]
        assert listeners(port, "127.0.0.2") == []  # bound to 127.0.0.1 alone
    assert listeners(port) == []  # closed
    with socket.socket(socket.AF_INET6) as every:
        every.bind(("::", 0))
        every.listen()
        (found,) = listeners(every.getsockname()[1])  # reached through 127.0.0.1 too
        assert found.inode == os.fstat(every.fileno()).st_ino
    eve = people.eve
    with squatter(eve.uid, eve.gid) as (port, pid):
        (found,) = listeners(port)
        assert found.uid == eve.uid and holders(found.inode) == [pid]


@pytest.fixture
def runtime(tmp_path: Path, engine: Any, image: str) -> Iterator[DockerRuntime]:
    home = tmp_path / "home"
    home.mkdir()
    made = DockerRuntime(home, client=engine, image=image)
    try:
        yield made
    finally:
        for owned in made.owned():
            made.stop(owned.handle, grace_s=1)
        made.staged.sweep({})


def test_a_squatter_on_a_container_s_port_is_told_from_the_container(
    runtime: DockerRuntime,
    example_dirs: dict[tuple[str, str], Path],
    people: People,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = example_dirs[("iris", "1.0.0")]
    # The container's own socket: held inside its pid namespace.
    own = runtime.start(instance_spec(model, service_uid="sq0", n=0))
    wait_ready(own)
    assert runtime.foreign_listener(own.handle, own.host, own.port) is None

    eve = people.eve
    for uid, gid in ((eve.uid, eve.gid), (USER_ID, USER_ID)):
        # Another account; then the containers' own user, outside any container, which only
        # the holder's namespace tells apart.
        with squatter(uid, gid) as (port, pid):
            monkeypatch.setattr(docker_runtime, "free_port", lambda port=port: port)
            started = runtime.start(instance_spec(model, service_uid=f"sq{uid}", n=0))
            assert started.port == port
            wait_ready(Started(started.handle, started.host, port))  # the squatter says ready
            said = runtime.foreign_listener(started.handle, started.host, port)
            assert said is not None, f"the squatter as uid {uid} passed for the container"
            assert f"another program holds its port {port} (pid {pid}: " in said, said
            assert f"; uid {uid}), not its container" in said, said
            runtime.stop(started.handle, grace_s=1)
