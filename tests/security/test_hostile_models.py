"""Hostile model code, in the registry's check and in a running instance, with real accounts.

A ``python`` model owned by a member and a pickle owned by a Slack-only user try what the issue
saw succeed: read ``/etc/shadow``, the store and its WAL, ``gateway.secret``, another owner's
model and instance environment, the daemon's environment, list OPSBOT_HOME, and call another
service's instance directly. Every attempt must fail, and each runs as the owner's account.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import pytest
from homes import call_instance, instance_spec, wait_ready

from opsbot.core.accounts import MANAGED_UID_BASE
from opsbot.core.app import Core
from opsbot.core.identity import User
from opsbot.core.instance_auth import INSTANCE_HEADER, daemon_secret, instance_secret
from opsbot.core.registry import ModelVersion
from opsbot.core.runtime import InstanceSpec, Started
from opsbot.core.runtimes.process import ProcessRuntime
from opsbot.core.store import DB_NAME

from .conftest import People

#: A python model whose predict() reports what its process could reach, and as whom.
HOSTILE_PY = """
import json, os, socket, sys

class Model:
    sample = [1]

    def load(self, path):
        self.probes = json.load(open(os.path.join(path, "probes.json")))

    def predict(self, instances):
        out = {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(), "read": {},
               "list": {}, "env": {}, "call": {}, "replace": {}}
        for path in self.probes["read"]:
            try:
                with open(path, "rb") as f:
                    f.read(16)
                out["read"][path] = "READ"
            except OSError as exc:
                out["read"][path] = type(exc).__name__
        for path in self.probes["list"]:
            try:
                os.listdir(path)
                out["list"][path] = "LISTED"
            except OSError as exc:
                out["list"][path] = type(exc).__name__
        for name in self.probes["env"]:
            out["env"][name] = name in os.environ
        for path in self.probes["call"]:  # another instance's socket
            sock = socket.socket(socket.AF_UNIX)
            try:
                sock.connect(path)
                sock.sendall(b"GET /v2/health/ready HTTP/1.0\\r\\n\\r\\n")
                out["call"][path] = sock.recv(12).decode()
            except OSError as exc:
                out["call"][path] = type(exc).__name__
            finally:
                sock.close()
        if "--listen-fd" in sys.argv:  # as an instance: its own socket, by the name it has
            fd = int(sys.argv[sys.argv.index("--listen-fd") + 1])
            own = socket.socket(fileno=os.dup(fd)).getsockname()
            out["own"] = own
            attempts = {
                "unlink": lambda: os.unlink(own),
                "rename": lambda: os.rename(own, own + ".old"),
                "symlink": lambda: os.symlink("/tmp/elsewhere.sock", own + ".new"),
                "chmod": lambda: os.chmod(os.path.dirname(own), 0o777),
            }
            for name, attempt in attempts.items():
                try:
                    attempt()
                    out["replace"][name] = "DONE"
                except OSError as exc:
                    out["replace"][name] = type(exc).__name__
        return [out]
"""

#: What a pickle runs while it is loaded: the same probes, reported in the error it raises.
HOSTILE_PICKLE_CODE = """
import json, os
found = {"uid": os.getuid()}
for path in PATHS:
    try:
        open(path, "rb").read(16)
        found[path] = "READ"
    except OSError as exc:
        found[path] = type(exc).__name__
found["env"] = [n for n in ("AWS_SECRET_ACCESS_KEY", "SLACK_SIGNING_SECRET") if n in os.environ]
found["system"] = os.system("id -u > /dev/null")
raise RuntimeError("FOUND" + json.dumps(found) + "END")
"""

DAEMON_ENV = {"AWS_SECRET_ACCESS_KEY": "aws-daemon-secret", "SLACK_SIGNING_SECRET": "slack-s3cr"}


class HostilePickle:
    def __init__(self, paths: list[str]):
        self.paths = paths

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"PATHS = {self.paths!r}\n" + HOSTILE_PICKLE_CODE, {}))


@dataclass
class World:
    home: Path
    core: Core
    runtime: ProcessRuntime
    people: People
    bob_model: ModelVersion


def _readable_dir(path: Path) -> Path:
    """A directory every account may read (what a member hands to ``model create``)."""
    path.mkdir(parents=True)
    path.chmod(0o755)
    return path


def _spec(mv: ModelVersion, uid: str) -> InstanceSpec:
    return instance_spec(
        Path(mv.path),
        service_uid=uid,
        owner=mv.owner,
        n=1,
        model_name=mv.name,
        version=mv.version,
        format=mv.format,
        entry=mv.entry,
        env={"LOG_LEVEL": "info"},
    )


def _post(started: Started, path: str, headers: dict[str, str]) -> tuple[int, Any]:
    return call_instance(started, "POST", path, {"instances": [[5.1, 3.5, 1.4, 0.2]]}, headers)


@pytest.fixture
def world(
    tmp_path: Path,
    people: People,
    example_dirs: dict[tuple[str, str], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[World]:
    for name, value in DAEMON_ENV.items():
        monkeypatch.setenv(name, value)
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    (home / "config.toml").write_text(
        f'socket_group = "{people.group}"\nadmins = ["{people.admin.name}"]\n'
    )
    umask = os.umask(0o022)
    os.umask(umask)
    core = Core(home)
    core.secure_home()
    runtime = ProcessRuntime(home)
    try:
        bob_model = core.create_model(
            User(people.bob.name),
            "iris",
            "1.0.0",
            example_dirs[("iris", "1.0.0")],
            "sklearn",
            trusted_path=True,
        )
        assert bob_model.status == "normal", bob_model.reason
        yield World(home, core, runtime, people, bob_model)
    finally:
        for owned in runtime.owned():
            runtime.stop(owned.handle, grace_s=2)
        os.umask(umask)
        core.store.close()


def _targets(world: World, bob_pid: int | None = None) -> list[str]:
    home = world.home
    paths = [
        "/etc/shadow",
        str(home / DB_NAME),
        str(home / f"{DB_NAME}-wal"),
        str(home / "gateway.secret"),
        str(Path(world.bob_model.path) / "model.joblib"),
        str(home / "config.toml"),
    ]
    if bob_pid is not None:
        paths.append(f"/proc/{bob_pid}/environ")
    return paths


def test_a_hostile_python_model_reaches_nothing(
    world: World, people: People, tmp_path: Path
) -> None:
    # bob's service runs; alice's hostile model then probes, in the check and as an instance.
    bob = world.runtime.start(_spec(world.bob_model, "bobsvc"))
    wait_ready(bob)
    bob_pid = int(bob.handle.split(":")[0])
    assert os.stat(f"/proc/{bob_pid}").st_uid == people.bob.uid  # bob's own account

    src = _readable_dir(Path("/tmp") / f"hostile-{people.alice.name}-{tmp_path.name}")
    try:
        (src / "model.py").write_text(HOSTILE_PY)
        probes = {
            "read": _targets(world, bob_pid),
            "list": [str(world.home), str(world.home / "models")],
            "env": list(DAEMON_ENV),
            "call": [bob.host],
        }
        (src / "probes.json").write_text(json.dumps(probes))
        for f in src.iterdir():
            f.chmod(0o644)
        mv = world.core.create_model(
            User(people.alice.name), "probe", "1", src, "python", entry="model:Model"
        )
    finally:
        shutil.rmtree(src)
    assert mv.status == "normal", mv.reason

    # The registry's check, as alice.
    checked = world.core.registry._sandboxed_check(mv, timeout=60)
    assert checked["ok"], checked
    # The instance, as alice, called with its own secret as the gateway would.
    started = world.runtime.start(_spec(mv, "alicesvc"))
    wait_ready(started)
    secret = instance_secret(daemon_secret(world.home), "alicesvc", 0)
    status, answer = _post(started, "/predict", {INSTANCE_HEADER: secret})
    assert status == 200, answer
    for found in (checked["output"][0], answer["predictions"][0]):
        assert found["uid"] == people.alice.uid
        assert found["gid"] == people.alice.gid
        assert found["groups"] in ([], [people.alice.gid])  # not in the socket group
        assert set(found["read"].values()) == {"PermissionError"}, found["read"]
        assert set(found["list"].values()) == {"PermissionError"}, found["list"]
        assert found["env"] == dict.fromkeys(DAEMON_ENV, False)
        # bob's instance cannot even be reached: its socket is in the daemon's own directory.
        assert found["call"] == {bob.host: "PermissionError"}
    # Its own socket: it learns the name, and can neither remove, move nor replace it.
    found = answer["predictions"][0]
    assert found["own"] == started.host
    assert found["replace"] == dict.fromkeys(
        ("unlink", "rename", "symlink", "chmod"), "PermissionError"
    )
    assert sorted(os.listdir(Path(started.host).parent)) == sorted(
        Path(s).name for s in (started.host, bob.host)
    )
    assert _post(started, "/predict", {INSTANCE_HEADER: secret})[0] == 200  # still serving


def test_a_hostile_pickle_of_a_slack_only_user_reaches_nothing(world: World) -> None:
    registry = world.core.registry
    src = Path("/tmp") / f"pickle-{world.people.eve.name}"
    src.mkdir()
    try:
        joblib.dump(HostilePickle(_targets(world)), src / "model.joblib")
        mv = registry.create("slack:UEVIL", "evil", "1", src, "sklearn")
    finally:
        shutil.rmtree(src)
    result = registry._sandboxed_check(mv, timeout=60)
    assert not result["ok"]
    match = re.search(r"FOUND(\{.*\})END", result["reason"])
    assert match, result["reason"]
    found = json.loads(match.group(1))
    assert found.pop("uid") >= MANAGED_UID_BASE  # a uid opsbot manages: not root, not ours
    assert found.pop("env") == []
    found.pop("system")  # it may run programs, as that uid: what they reach is checked here
    assert set(found.values()) == {"PermissionError"}, found


def test_an_instance_answers_only_with_its_secret(world: World) -> None:
    started = world.runtime.start(_spec(world.bob_model, "bobsvc"))
    wait_ready(started)
    status, answer = _post(started, "/predict", {})
    assert status == 401, answer
    assert "gateway" in answer["error"]
    other = instance_secret(daemon_secret(world.home), "othersvc", 0)
    assert _post(started, "/predict", {INSTANCE_HEADER: other})[0] == 401
    assert _post(started, "/v2/models/iris/infer", {})[0] == 401
    mine = instance_secret(daemon_secret(world.home), "bobsvc", 0)
    status, answer = _post(started, "/predict", {INSTANCE_HEADER: mine})
    assert status == 200, answer


def test_the_home_is_private_and_an_existing_one_is_tightened(
    tmp_path: Path, people: People
) -> None:
    home = tmp_path / "loose"
    (home / "logs").mkdir(parents=True)
    (home / "logs" / "x.log").write_text("secret log")
    (home / "opsbot.db").write_text("")
    for path, mode in ((home, 0o755), (home / "logs", 0o755), (home / "logs" / "x.log", 0o644)):
        path.chmod(mode)
    (home / "config.toml").write_text(f'socket_group = "{people.group}"\n')
    umask = os.umask(0o022)
    try:
        Core(home).secure_home()
        (home / "later.txt").write_text("made after")  # the daemon's umask is private now
    finally:
        os.umask(umask)
    st = home.stat()
    assert (st.st_mode & 0o777, st.st_gid) == (0o710, people_group_gid(people))
    assert (home / "logs").stat().st_mode & 0o777 == 0o700
    for name in ("logs/x.log", "opsbot.db", "config.toml", "later.txt"):
        assert (home / name).stat().st_mode & 0o777 == 0o600, name


def people_group_gid(people: People) -> int:
    import grp

    return grp.getgrnam(people.group).gr_gid


def test_a_new_store_and_its_wal_are_private(tmp_path: Path) -> None:
    umask = os.umask(0o022)  # what a CLI run by hand may have
    try:
        core = Core(tmp_path / "home")
        core.store.db.execute("CREATE TABLE IF NOT EXISTS t (x)")
        names = [DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm"]
        modes = {n: (tmp_path / "home" / n).stat().st_mode & 0o777 for n in names}
        core.store.close()
    finally:
        os.umask(umask)
    assert modes == dict.fromkeys(names, 0o600)


#: A model whose load() starts a daemonized child (setsid, parent gone), then never returns.
STUCK_PY = """
import os, subprocess, sys, time

class Model:
    sample = [1]

    def load(self, path):
        subprocess.Popen(["/bin/sh", "-c", "setsid sh -c 'sleep 300 & echo $! > %s' &"])
        time.sleep(3600)

    def predict(self, instances):
        return instances
"""


def test_the_check_is_time_limited_and_killed_with_what_it_started(
    world: World, people: People
) -> None:
    spot = Path("/tmp") / f"stuck-{people.alice.name}"
    spot.mkdir(mode=0o777)
    spot.chmod(0o1777)
    pid_file = spot / "child.pid"
    src = _readable_dir(spot / "model")
    try:
        (src / "model.py").write_text(STUCK_PY % pid_file)
        (src / "model.py").chmod(0o644)
        started = time.monotonic()
        mv = world.core.registry.create(people.alice.name, "stuck", "1", src, "python")
        result = world.core.registry._sandboxed_check(mv, timeout=5)
        assert time.monotonic() - started < 30
        assert result == {"ok": False, "reason": "loading took longer than 5 s"}
        child = int(pid_file.read_text())
        stat = Path(f"/proc/{child}/stat")
        assert not stat.exists() or stat.read_text().split(") ")[1][0] == "Z"
    finally:
        shutil.rmtree(spot)
