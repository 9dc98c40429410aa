"""Nobody answers in a container's place, and a container reaches nothing on the network.

The docker runtime's own model servers have no network: each binds a unix socket in a directory
of the daemon's own, made for it and mounted into its container. No other account can enter the
directory, so none can take the instance's address before it binds it or connect to it, and
model code in the container reaches no listener on the machine's loopback.

A model of format image runs a server of the user's own, which serves on a TCP port with host
networking: the runtime gives it a free port that the container binds a moment later. Another
local account's program (or one running as the containers' own user outside any container) that
binds it first answers the readiness check in the container's place; routed to, it would get the
callers' data and the version's instance secret. The runtime tells the two apart by who holds the
listening socket (``DockerRuntime.foreign_listener``), and the controller never routes to an
instance whose port another program holds: it stops it and starts it again on another port
(``tests/core/test_controller.py`` has that part).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from docker_fixtures import (  # noqa: F401 - the fixtures
    engine_fixture,
    image_fixture,
    scorer_image_fixture,
    wait_for,
)
from homes import instance_spec, wait_ready
from security.conftest import (
    People,
    people_fixture,  # noqa: F401 - the accounts fixture
)

from opsbot.core.address import unix_path
from opsbot.core.images import IMAGE_FORMAT, USER_ID
from opsbot.core.listeners import holders, listeners
from opsbot.core.runtime import InstanceSpec, Started
from opsbot.core.runtimes import docker as docker_runtime
from opsbot.core.runtimes.docker import SOCKET_MOUNT, DockerRuntime

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


# Run inside an instance's container, as its user: connect to each loopback port given.
REACH = """
import json, socket, sys
found = {}
for port in sys.argv[1:]:
    try:
        socket.create_connection(("127.0.0.1", int(port)), timeout=3).close()
        found[port] = "reached"
    except OSError as exc:
        found[port] = type(exc).__name__
print(json.dumps(found))
"""

# Run inside an instance's container: write 1 MiB beside its socket.
FILL = f"""
import errno
try:
    with open("{SOCKET_MOUNT}/fill", "wb") as out:
        out.write(bytes(2**20))
    print("written")
except OSError as exc:
    print(errno.errorcode[exc.errno])
"""

# Run as another account: connect to the unix socket given.
KNOCK = """
import socket, sys
try:
    socket.socket(socket.AF_UNIX).connect(sys.argv[1])
    print("reached")
except OSError as exc:
    print(type(exc).__name__)
"""


def test_a_container_reaches_nothing_and_only_the_daemon_reaches_it(
    runtime: DockerRuntime,
    engine: Any,
    example_dirs: dict[tuple[str, str], Path],
    people: People,
) -> None:
    started = runtime.start(instance_spec(example_dirs[("iris", "1.0.0")], service_uid="nn0"))
    path = unix_path(started.host)
    assert path is not None and started.port == 0, started
    wait_ready(started)
    # Model code in the container: a listener on the machine's loopback is out of its reach.
    with socket.socket() as bait:
        bait.bind(("127.0.0.1", 0))
        bait.listen()
        bait.setblocking(False)
        port = bait.getsockname()[1]
        ran = engine.api.exec_create(started.handle, ["python3", "-c", REACH, str(port)])
        out = engine.api.exec_start(ran["Id"]).decode()
        assert json.loads(out.strip().splitlines()[-1]) == {str(port): "ConnectionRefusedError"}
        with pytest.raises(BlockingIOError):
            bait.accept()  # nothing came
    # Another account cannot even reach the socket: its directory is in the daemon's own.
    eve = people.eve
    knocked = subprocess.run(
        ["/usr/bin/python3", "-c", KNOCK, path],
        user=eve.uid,
        group=eve.gid,
        extra_groups=[],
        capture_output=True,
        text=True,
        cwd="/",
        env={"PATH": "/usr/bin:/bin"},
        timeout=30,
    )
    assert knocked.stdout.strip() == "PermissionError", knocked
    assert runtime.foreign_listener(started.handle, started.host, started.port) is None
    # What the container may write in that directory is capped, as its /tmp is: the directory
    # is a filesystem of its own with room for the socket alone.
    assert os.path.ismount(Path(path).parent)
    ran = engine.api.exec_create(started.handle, ["python3", "-c", FILL])
    assert engine.api.exec_start(ran["Id"]).decode().strip().splitlines()[-1] == "ENOSPC"
    wait_ready(started)  # still serving
    # Stopped, its directory goes with it.
    runtime.stop(started.handle, grace_s=1)
    assert not Path(path).parent.exists()


def test_a_socket_directory_whose_container_went_is_swept_at_start(
    runtime: DockerRuntime, engine: Any, example_dirs: dict[tuple[str, str], Path]
) -> None:
    """Removed behind the daemon's back (by hand, while it was down): the next start's sweep
    unmounts and removes the directory, and keeps the one of a container still there."""
    model = example_dirs[("iris", "1.0.0")]
    kept = runtime.start(instance_spec(model, service_uid="sw0"))
    gone = runtime.start(instance_spec(model, service_uid="sw1"))
    kept_dir, gone_dir = (Path(str(unix_path(s.host))).parent for s in (kept, gone))
    engine.api.remove_container(gone.handle, force=True)
    runtime.sweep({"sw0": [0]})  # what the controller keeps: the instance still there
    assert not gone_dir.exists() and not os.path.ismount(gone_dir)
    assert kept_dir.is_dir()
    assert os.path.ismount(kept_dir) == (os.geteuid() == 0)
    wait_ready(kept)


def test_container_network_host_reaches_the_machine_s_loopback(
    tmp_path: Path, engine: Any, image: str, example_dirs: dict[tuple[str, str], Path]
) -> None:
    """The admin's choice (config ``container_network = "host"``), for models that fetch what
    they need as they load: the same listener is reached, and the instance keeps its socket."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text('container_network = "host"\n')
    made = DockerRuntime(home, client=engine, image=image)
    started = made.start(instance_spec(example_dirs[("iris", "1.0.0")], service_uid="nh0"))
    try:
        assert unix_path(started.host) is not None
        wait_ready(started)
        with socket.socket() as bait:
            bait.bind(("127.0.0.1", 0))
            bait.listen()
            port = bait.getsockname()[1]
            ran = engine.api.exec_create(started.handle, ["python3", "-c", REACH, str(port)])
            out = engine.api.exec_start(ran["Id"]).decode()
            assert json.loads(out.strip().splitlines()[-1]) == {str(port): "reached"}
    finally:
        made.stop(started.handle, grace_s=1)
        made.staged.sweep({})


def test_a_squatter_on_an_image_model_s_port_is_told_from_the_container(
    runtime: DockerRuntime,
    scorer_image: str,
    tmp_path: Path,
    people: People,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = tmp_path / "scorer"
    model.mkdir()
    (model / "offset.txt").write_text("100")

    def scorer(uid: str) -> InstanceSpec:
        return instance_spec(model, service_uid=uid, n=0, format=IMAGE_FORMAT, entry=scorer_image)

    # The container's own socket: held inside its pid namespace.
    own = runtime.start(scorer("sq0"))
    wait_ready(own)
    assert runtime.foreign_listener(own.handle, own.host, own.port) is None

    eve = people.eve
    for uid, gid in ((eve.uid, eve.gid), (USER_ID, USER_ID)):
        # Another account; then the containers' own user, outside any container, which only
        # the holder's namespace tells apart.
        with squatter(uid, gid) as (port, pid):
            monkeypatch.setattr(docker_runtime, "free_port", lambda port=port: port)
            started = runtime.start(scorer(f"sq{uid}"))
            assert started.port == port
            wait_ready(Started(started.handle, started.host, port))  # the squatter says ready
            # Asked while the container may still be starting, and again once it has given up
            # on its taken port (exited for good, no process left): named both times.
            for asked in ("starting", "exited"):
                if asked == "exited":
                    wait_for(
                        "the container to give up on the taken port",
                        lambda handle=started.handle: runtime.exited(handle) is not None,
                        timeout=60,
                        step=0.2,
                    )
                said = runtime.foreign_listener(started.handle, started.host, port)
                assert said is not None, f"the squatter as uid {uid} passed for the container"
                assert f"another program holds its port {port} (pid {pid}: " in said, said
                assert f"; uid {uid}), not its container" in said, said
            runtime.stop(started.handle, grace_s=1)
