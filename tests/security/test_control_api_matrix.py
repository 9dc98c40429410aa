"""Every control-API route x {owner, other member, admin, outsider, no token}, with real accounts.

A real daemon (root, as a service would run it) with a socket group and an admin; each caller is
a process of that account speaking HTTP over the unix socket (the daemon knows it by its peer
credentials), or over the TCP listener without a token. What each answers:

- the owner and an admin: the route works on the owner's service (2xx, or 409/400 when the
  service's state or the body says no) - never 401, 403 or 404;
- another member: 403 on every route that names the owner's service or the owner's events, and
  on everyone's service list; their own routes (whoami, their models) work for them;
- an outsider (not in the socket group): cannot even open the socket;
- no token on the TCP listener: refused on every route but ``/openapi.json`` and ``/healthz``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from opsbot.client import ControlClient
from opsbot.core.accounts import Account
from opsbot.core.app import Core
from opsbot.core.identity import User
from opsbot.core.runtimes.process import ProcessRuntime, free_port, model_pythonpath
from opsbot.core.sandbox import pick_python, remove_tree, run_root_path

from .conftest import People, Person

#: Sends requests as the account it runs as; prints each status (or the error that stopped it).
CALLER = r"""
import http.client, json, socket, sys

class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=30)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(self.path)

job = json.load(sys.stdin)
out = []
for method, path, body in job["requests"]:
    try:
        if job["tcp"]:
            host, port = job["tcp"].split(":")
            conn = http.client.HTTPConnection(host, int(port), timeout=30)
        else:
            conn = UnixConnection(job["socket"])
        data = None if body is None else json.dumps(body)
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        out.append(conn.getresponse().status)
        conn.close()
    except OSError as exc:
        out.append(type(exc).__name__)
print(json.dumps(out))
"""

SVC = "svc"


def service_routes(owner: str) -> list[tuple[str, str, Any]]:
    """The routes that name one service, destructive last but delete (kept apart)."""
    q = f"?owner={owner}"
    base = f"/v1/services/{SVC}"
    return [
        ("GET", f"{base}{q}", None),
        ("GET", f"{base}/history{q}", None),
        ("POST", f"{base}/rollback{q}", {"to": 1, "dry_run": True}),
        ("GET", f"{base}/events{q}", None),
        ("GET", f"{base}/logs{q}", None),
        ("POST", f"{base}/predict{q}", {"instances": [[5.1, 3.5, 1.4, 0.2]]}),
        ("POST", f"{base}/extend{q}", {"hours": 1}),
        ("POST", f"{base}/autostop{q}", {"auto_stop": "2h"}),
        ("POST", f"{base}/update{q}", {"changes": {"description": "changed"}}),
        ("POST", f"{base}/key{q}", None),
        ("POST", f"{base}/stop{q}", None),
        ("POST", f"{base}/start{q}", None),
    ]


def own_routes() -> list[tuple[str, str, Any]]:
    """Routes about the caller's own things: every member may call them."""
    return [
        ("GET", "/v1/whoami", None),
        ("GET", "/v1/flavors", None),
        ("GET", "/v1/models", None),
        (
            "POST",
            "/v1/models",
            {"name": "m", "version": "1", "path": "/none", "format": "onnx"},
        ),
        ("POST", "/v1/models/iris/publish", {"public": False}),
        ("GET", "/v1/pools", None),
        ("POST", "/v1/validate", {"name": "x", "models": [{"model": "iris", "version": "1.0.0"}]}),
        ("GET", "/v1/services", None),
        ("POST", "/v1/services", {"name": "mine", "models": [{"model": "nope", "version": "1"}]}),
        ("GET", "/v1/events", None),
        ("POST", "/v1/tokens", None),
    ]


OPSBOT = (sys.executable, "-m", "opsbot")
OPEN = [("GET", "/openapi.json", None), ("GET", "/healthz", None)]
DENIED = {401, 403, 404}


@dataclass
class Running:
    home: Path
    proc: subprocess.Popen[bytes]
    tcp: str
    people: People


def _call(run: Running, who: Person | None, requests: list[tuple[str, str, Any]]) -> list[Any]:
    """Statuses of ``requests`` sent by ``who`` over the socket (None: over TCP, no token)."""
    account = None if who is None else Account(who.uid, who.gid, who.name)
    python = pick_python(None, account)
    job = {
        "socket": str(run.home / "opsbot.sock"),
        "tcp": run.tcp if who is None else None,
        "requests": requests,
    }
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": model_pythonpath(python)}
    kw: dict[str, Any] = {}
    if who is not None:
        groups = [g for g in os.getgrouplist(who.name, who.gid)]
        kw = {"user": who.uid, "group": who.gid, "extra_groups": groups}
    done = subprocess.run(
        [python, "-c", CALLER],
        input=json.dumps(job).encode(),
        capture_output=True,
        env=env,
        cwd="/",
        timeout=300,
        check=False,
        **kw,
    )
    assert done.returncode == 0, done.stderr.decode()
    statuses: list[Any] = json.loads(done.stdout)
    return statuses


@pytest.fixture(scope="module")
def running(
    people: People,
    example_dirs: dict[tuple[str, str], Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Running]:
    # Members reach the socket by its path: the directories above the home must let them by
    # (pytest's own are 0700).
    top = Path(tempfile.mkdtemp(prefix="opsbot-matrix-"))
    top.chmod(0o755)
    home = top / "home"
    home.mkdir()
    tcp = f"127.0.0.1:{free_port()}"
    (home / "config.toml").write_text(
        f'socket_group = "{people.group}"\nadmins = ["{people.admin.name}"]\napi_listen = "{tcp}"\n'
    )
    core = Core(home)
    alice = User(people.alice.name)
    mv = core.create_model(
        alice, "iris", "1.0.0", example_dirs[("iris", "1.0.0")], "sklearn", trusted_path=True
    )
    assert mv.status == "normal", mv.reason
    core.create_service(alice, {"name": SVC, "models": [{"model": "iris", "version": "1.0.0"}]})
    core.store.close()
    log = open(home / "daemon-test.log", "ab")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [*OPSBOT, "--home", str(home), "up", "--gateway-port", "0", "--no-examples"],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    client = ControlClient.for_home(home, timeout=10)
    deadline = time.monotonic() + 60
    while not client.available():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError((home / "daemon-test.log").read_text())
        time.sleep(0.1)
    try:
        yield Running(home, proc, tcp, people)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        gateway = home / "gateway.pid"
        if gateway.exists():
            subprocess.run(["kill", "-9", gateway.read_text().strip()], check=False)
        runtime = ProcessRuntime(home)
        for owned in runtime.owned():
            runtime.stop(owned.handle, grace_s=2)
        remove_tree(run_root_path(home))  # outside the run's base temp: the suite's sweep misses it
        shutil.rmtree(top, ignore_errors=True)


def test_the_socket_and_home_are_the_group_s(running: Running) -> None:
    st = running.home.stat()
    assert st.st_mode & 0o777 == 0o710
    assert (running.home / "opsbot.sock").stat().st_mode & 0o777 == 0o660
    for name in ("opsbot.db", "gateway.secret", "metrics-token", "logs"):
        mode = (running.home / name).stat().st_mode & 0o777
        assert mode & 0o077 == 0, f"{name} is {oct(mode)}"


def test_another_member_is_refused_on_every_route_of_the_owner_s_service(
    running: Running,
) -> None:
    people = running.people
    routes = [
        *service_routes(people.alice.name),
        ("DELETE", f"/v1/services/{SVC}?owner={people.alice.name}", None),
        ("GET", f"/v1/events?owner={people.alice.name}", None),
        ("GET", f"/v1/events/stream?owner={people.alice.name}&service={SVC}", None),
        ("GET", "/v1/services?all=1", None),
    ]
    statuses = _call(running, people.bob, routes)
    got = {f"{m} {p}": s for (m, p, _), s in zip(routes, statuses, strict=True)}
    # The stream filters by owner itself: it answers 200 and sends bob nothing of alice's.
    stream = f"GET /v1/events/stream?owner={people.alice.name}&service={SVC}"
    assert got.pop(stream) == 200
    assert {k: v for k, v in got.items() if v != 403} == {}
    # Nothing changed: alice still sees her service as it was.
    assert _call(running, people.alice, [routes[0]]) == [200]


def test_own_routes_work_for_every_member(running: Running) -> None:
    people = running.people
    for who in (people.alice, people.bob, people.admin):
        statuses = _call(running, who, own_routes() + OPEN)
        got = {f"{m} {p}": s for (m, p, _), s in zip(own_routes() + OPEN, statuses, strict=True)}
        assert {k: v for k, v in got.items() if v in DENIED or not isinstance(v, int)} == {
            # bob and the admin have no model named iris to publish: theirs, not found.
            **({} if who is people.alice else {"POST /v1/models/iris/publish": 404}),
        }, who.name


def test_the_owner_and_an_admin_may_use_every_route(running: Running) -> None:
    people = running.people
    events = ("GET", f"/v1/events?owner={people.alice.name}", None)
    routes = [*service_routes(people.alice.name), events]
    for who in (people.alice, people.admin):
        statuses = _call(running, who, routes)
        got = {f"{m} {p}": s for (m, p, _), s in zip(routes, statuses, strict=True)}
        assert {k: v for k, v in got.items() if v in DENIED or not isinstance(v, int)} == {}, (
            who.name
        )
    assert _call(running, people.alice, [("GET", "/v1/services?all=1", None)]) == [403]
    assert _call(running, people.admin, [("GET", "/v1/services?all=1", None)]) == [200]


def test_only_an_admin_reads_or_rotates_the_metrics_scrape_token(running: Running) -> None:
    people = running.people
    read = ("GET", "/v1/metrics-token", None)
    rotate = ("POST", "/v1/metrics-token/rotate", None)
    before = (running.home / "metrics-token").read_text()
    for who in (people.alice, people.bob):
        assert _call(running, who, [read, rotate]) == [403, 403], who.name
    assert set(_call(running, None, [read, rotate])) <= {401, 403}
    assert (running.home / "metrics-token").read_text() == before  # refused: nothing changed
    assert _call(running, people.admin, [read, rotate]) == [200, 200]
    assert (running.home / "metrics-token").read_text() != before


def test_an_outsider_cannot_open_the_socket(running: Running) -> None:
    routes = own_routes()[:2] + service_routes(running.people.alice.name)[:1]
    assert set(_call(running, running.people.eve, routes)) == {"PermissionError"}


def test_no_token_is_refused_everywhere_but_the_open_routes(running: Running) -> None:
    people = running.people
    routes = service_routes(people.alice.name) + own_routes()
    statuses = _call(running, None, routes)
    assert {s for s in statuses} <= {401, 403}, statuses
    assert _call(running, None, OPEN) == [200, 200]


def test_the_admin_may_delete_the_owner_s_service(running: Running) -> None:
    people = running.people
    route = ("DELETE", f"/v1/services/{SVC}?owner={people.alice.name}", None)
    assert _call(running, people.admin, [route]) == [202]
