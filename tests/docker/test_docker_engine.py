"""The docker runtime on a real engine, through a real daemon (``opsbot up --runtime docker``):
deploys, predictions through the gateway, logs and stats, and reconciliation after a ``kill -9``
of the daemon in the middle of a deploy and after a restart of the engine itself.

The engine restart runs on a dedicated second dockerd (its own data root, exec root, pid file
and socket), so the engine other tests use is never restarted.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
from docker_fixtures import (  # noqa: F401 - the fixtures
    cleanup,
    engine_fixture,
    engine_or_skip,
    image_fixture,
    scorer_image_fixture,
    wait_for,
)
from e2e.test_daemon import (
    IRIS,
    Daemon,
    call,
    sklearn_predictions,
    start_daemon,
    stop_everything,
)
from homes import clone_home

from opsbot.client.wire import ServiceDetail
from opsbot.core.config import load_config
from opsbot.core.images import USER
from opsbot.core.runtimes.docker import (
    LABEL_HOME,
    LABEL_INSTANCE,
    LABEL_SOCKET,
    SOCKET_DIRS,
    SOCKET_MOUNT,
    SOCKET_NAME,
)
from opsbot.core.sandbox import run_root_path

pytestmark = pytest.mark.slow


def containers(client: Any, home: Path, *, running_only: bool = False) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = client.api.containers(
        all=not running_only, filters={"label": f"{LABEL_HOME}={home.resolve()}"}
    )
    return found


def wait_status(d: Daemon, name: str, status: str, timeout: float = 60) -> ServiceDetail | None:
    last: ServiceDetail | None = None

    def reached() -> bool:
        nonlocal last
        last = d.client.service(name)
        return last.status == status

    try:
        wait_for(f"{name} to be {status}", reached, timeout)
    except AssertionError as exc:
        log = (d.home / "daemon-test.log").read_text()
        raise AssertionError(f"{name}: {last}\n{log[-4000:]}") from exc
    return last


@contextlib.contextmanager
def docker_daemon(template: Path, home: Path, client: Any, image: str) -> Iterator[Daemon]:
    clone_home(template, home)
    d = start_daemon(home, runtime="docker")
    try:
        yield d
    finally:
        stop_everything(home, d.proc)
        cleanup(home, client, image)


@pytest.fixture(scope="module")
def shared(
    template: Path, tmp_path_factory: pytest.TempPathFactory, engine: Any, image: str
) -> Iterator[Daemon]:
    home = tmp_path_factory.mktemp("docker") / "home"
    with docker_daemon(template, home, engine, image) as d:
        yield d


def test_deploy_to_running_in_containers_and_predict_through_the_gateway(
    shared: Daemon, engine: Any, image: str
) -> None:
    created = shared.deploy(
        "--name", "iris-docker", "--model", "iris", "--version", "2.0.0", "--instances", "2"
    )
    assert created["status"] == "running"
    status, headers, body = call(created["url"], {"instances": IRIS}, created["api_key"])
    assert status == 200, body
    assert body["predictions"] == sklearn_predictions(shared.home, "2.0.0")
    assert headers["X-Model-Version"] == "2.0.0"

    found = containers(engine, shared.home, running_only=True)
    mine = [c for c in found if c["Labels"]["opsbot.service"] == created["id"]]
    assert len(mine) == 2
    assert sorted(c["Labels"][LABEL_INSTANCE] for c in mine) == [
        f"{created['id']}/0/0",
        f"{created['id']}/0/1",
    ]
    info = engine.api.inspect_container(mine[0]["Id"])
    assert info["Config"]["Image"] == image
    assert info["Config"]["User"] == USER
    assert info["Config"]["Labels"]["opsbot.owner"] == created["owner"]
    assert info["Config"]["Labels"]["opsbot.version"] == "2.0.0"
    host = info["HostConfig"]
    assert host["SecurityOpt"] == ["no-new-privileges"]
    # No network: it serves on a unix socket in a directory of the daemon's, mounted for it.
    assert host["NetworkMode"] == "none"
    socket_mount = next(m for m in info["Mounts"] if m["Destination"] == SOCKET_MOUNT)
    sockets = Path(socket_mount["Source"])
    assert sockets.parent == run_root_path(shared.home) / SOCKET_DIRS
    assert (sockets.parent.stat().st_uid, sockets.parent.stat().st_mode & 0o777) == (
        os.geteuid(),
        0o700,
    )
    assert info["Config"]["Labels"][LABEL_SOCKET] == str(sockets / SOCKET_NAME)
    assert host["Memory"] == 8 * 2**30
    assert host["RestartPolicy"]["Name"] == "on-failure"
    model_mount = next(m for m in info["Mounts"] if m["Destination"] == "/model")
    assert model_mount["RW"] is False
    # A copy of that version's files for the container's user, outside the daemon's home.
    source = Path(model_mount["Source"])
    assert not source.is_relative_to(shared.home)
    assert (source / "model.joblib").stat().st_uid == int(USER.split(":")[0])
    assert host["CapDrop"] == ["ALL"]
    # the process in the container really is not root
    top = engine.api.top(mine[0]["Id"], ps_args="-o pid,uid,args")
    assert {row[1] for row in top["Processes"]} == {"10001"}, top
    # the engine's health check runs the readiness route
    wait_for(
        "the container to be healthy",
        lambda: (
            engine.api.inspect_container(mine[0]["Id"])["State"]["Health"]["Status"] == "healthy"
        ),
        timeout=40,
        step=1,
    )


def test_show_has_engine_stats_and_logs_come_from_the_engine(shared: Daemon) -> None:
    shared.deploy("--name", "iris-stats", "--model", "iris-onnx", "--version", "1.0.0")
    shown = json.loads(shared.cli("show", "iris-stats", "--json").stdout)
    (inst,) = shown["instances"]
    stats = inst["stats"]
    assert stats["memory_bytes"] > 1_000_000  # a python with onnxruntime loaded
    assert stats["memory_limit_bytes"] == 8 * 2**30
    assert stats["cpu_percent"] >= 0
    table = shared.cli("show", "iris-stats").stdout
    assert "cpu" in table and "memory" in table and "GiB" in table
    logs = shared.cli("logs", "iris-stats").stdout
    assert "model iris-onnx 1.0.0 (onnx) loaded" in logs


def test_a_model_that_cannot_load_fails_with_the_servers_reason(
    shared: Daemon, engine: Any
) -> None:
    me = json.loads(shared.cli("services", "--json").stdout)[0]["owner"]
    model_file = shared.home / "models" / me / "iris-onnx" / "1.0.0" / "model.onnx"
    saved = model_file.read_bytes()
    model_file.write_bytes(b"not an onnx file")
    try:
        result = shared.cli(
            "deploy", "--name", "broken", "--model", "iris-onnx", "--version", "1.0.0",
            "--wait", "--json", check=False,
        )  # fmt: skip
    finally:
        model_file.write_bytes(saved)
    assert result.returncode == 1
    reply = json.loads(result.stdout)
    assert reply["status"] == "failed"
    assert "model load failed" in reply["reason"]
    assert "onnx" in reply["reason"].lower()
    left = [
        c for c in containers(engine, shared.home) if c["Labels"]["opsbot.service"] == reply["id"]
    ]
    assert left == []
    # Nor the copy of the model it could not load.
    run = run_root_path(shared.home, load_config(shared.home).run_dir)
    assert not list(run.glob(f"container-{reply['id']}-*"))


def test_stop_and_delete_remove_the_containers(shared: Daemon, engine: Any) -> None:
    created = shared.deploy("--name", "iris-gone", "--model", "iris", "--version", "1.0.0")

    def of_service() -> list[dict[str, Any]]:
        return [
            c
            for c in containers(engine, shared.home)
            if c["Labels"]["opsbot.service"] == created["id"]
        ]

    assert len(of_service()) == 1
    shared.cli("stop", "iris-gone")
    wait_status(shared, "iris-gone", "stopped")
    assert of_service() == []
    shared.cli("start", "iris-gone")
    wait_status(shared, "iris-gone", "running")
    assert len(of_service()) == 1
    shared.cli("delete", "iris-gone")
    wait_for("the service to be deleted", lambda: "iris-gone" not in
             [s.name for s in shared.client.services()], 30)  # fmt: skip
    assert of_service() == []


def model_copy(engine: Any, home: Path, service_id: str) -> Path:
    """The staged copy of the model a running container of the service reads."""
    (first, *_) = [
        c
        for c in containers(engine, home, running_only=True)
        if c["Labels"]["opsbot.service"] == service_id
    ]
    info = engine.api.inspect_container(first["Id"])
    return Path(next(m["Source"] for m in info["Mounts"] if m["Destination"] == "/model"))


def test_deleting_a_service_removes_its_model_copy_and_keeps_a_running_one(
    shared: Daemon, engine: Any
) -> None:
    gone = shared.deploy("--name", "iris-copy-gone", "--model", "iris", "--version", "1.0.0")
    kept = shared.deploy("--name", "iris-copy-kept", "--model", "iris", "--version", "1.0.0")
    gone_copy, kept_copy = (
        model_copy(engine, shared.home, gone["id"]),
        model_copy(engine, shared.home, kept["id"]),
    )
    assert (gone_copy / "model.joblib").is_file() and (kept_copy / "model.joblib").is_file()
    shared.cli("delete", "iris-copy-gone")
    wait_for("the service to be deleted", lambda: "iris-copy-gone" not in
             [s.name for s in shared.client.services()], 30)  # fmt: skip
    # Gone with the service (the copy is the container user's, read-only), directory and all.
    assert not gone_copy.parent.exists()
    # The running service's copy stays, and it still answers.
    assert (kept_copy / "model.joblib").is_file()
    status, _headers, body = call(kept["url"], {"instances": IRIS}, kept["api_key"])
    assert status == 200, body
    assert model_copy(engine, shared.home, kept["id"]) == kept_copy
    shared.cli("delete", "iris-copy-kept")


def test_kill_9_mid_deploy_converges_without_duplicates_or_orphans(
    template: Path, tmp_path: Path, engine: Any, image: str
) -> None:
    home = tmp_path / "home"
    # Containers the daemon must leave alone: one with no opsbot labels, one of another home.
    bystander = engine.containers.run(
        image, ["python3", "-c", "import time; time.sleep(600)"], detach=True,
        labels={"purpose": "bystander"}, network_mode="host",
    )  # fmt: skip
    other_home = engine.containers.run(
        image, ["python3", "-c", "import time; time.sleep(600)"], detach=True,
        labels={LABEL_HOME: "/elsewhere/opsbot", LABEL_INSTANCE: "x/0/0"}, network_mode="host",
    )  # fmt: skip
    try:
        with docker_daemon(template, home, engine, image) as d:
            # A stray of this home: labels of an instance the store never heard of.
            stray = engine.containers.run(
                image, ["python3", "-c", "import time; time.sleep(600)"], detach=True,
                labels={LABEL_HOME: str(home.resolve()), LABEL_INSTANCE: "nobody/0/0",
                        "opsbot.port": "1"},
                network_mode="host",
            )  # fmt: skip
            created = json.loads(d.cli(
                "deploy", "--name", "durable", "--model", "iris", "--version", "1.0.0",
                "--instances", "3", "--json",
            ).stdout)  # fmt: skip
            # kill -9 as soon as the first container exists: mid-deploy
            wait_for("a first container", lambda: containers(engine, home), 30, step=0.05)
            assert d.client.service("durable").status == "deploying"
            os.kill(d.proc.pid, signal.SIGKILL)
            d.proc.wait()
            # A copy the killed daemon never released: a service deleted as it died.
            run = run_root_path(home, load_config(home).run_dir)
            left = run / "container-deleted0000000-0" / "model"
            left.mkdir(parents=True)
            (left / "model.joblib").write_bytes(b"old")
            left.chmod(0o500)
            # A socket directory whose container was never made (killed between the two).
            (run / SOCKET_DIRS / "deleted0000000_0_0.00000000").mkdir(parents=True)
            d2 = start_daemon(home, runtime="docker")
            d.proc = d2.proc
            shown = wait_status(d2, "durable", "running", timeout=90)
            assert shown is not None and [i.state for i in shown.instances] == ["ready"] * 3

            mine = containers(engine, home)
            keys = Counter(c["Labels"][LABEL_INSTANCE] for c in mine)
            uid = shown.id
            assert keys == Counter({f"{uid}/0/0": 1, f"{uid}/0/1": 1, f"{uid}/0/2": 1})
            # The restarted daemon swept the leftover copy and kept the one its instances read.
            assert sorted(p.name for p in run.glob("container-*")) == [f"container-{uid}-0"]
            # and every socket directory but those of the containers there, each on its tmpfs
            sockets = sorted(Path(c["Labels"][LABEL_SOCKET]).parent for c in mine)
            assert sorted((run / SOCKET_DIRS).iterdir()) == sockets
            assert all(os.path.ismount(s) for s in sockets) == (os.geteuid() == 0)
            assert all(c["State"] == "running" for c in mine)
            # the stray of this home was removed; the others were not touched
            with pytest.raises(docker.errors.NotFound):
                engine.api.inspect_container(stray.id)
            assert engine.api.inspect_container(bystander.id)["State"]["Running"]
            assert engine.api.inspect_container(other_home.id)["State"]["Running"]
            # the gateway outlived the daemon too (the first daemon's URL and key)
            status, _, body = call(created["url"], {"instances": IRIS[:5]}, created["api_key"])
            assert status == 200, body
    finally:
        bystander.remove(force=True)
        other_home.remove(force=True)
    assert containers(engine, home) == []


# -- an engine restart, on an engine of the test's own -----------------------------------------


@contextlib.contextmanager
def dedicated_engine() -> Iterator[dict[str, Any]]:
    """A second dockerd with its own data root, exec root, pid file, socket and containerd
    namespace; stopped and its state removed afterwards."""
    if shutil.which("dockerd") is None:
        engine_or_skip("unix:///nonexistent/dockerd-is-not-installed.sock")
    root = Path(tempfile.mkdtemp(prefix="obd-", dir="/tmp"))  # short: socket paths are short
    sock = f"unix://{root}/docker.sock"
    argv = [
        "dockerd",
        "--iptables=false",
        "--bridge=none",
        f"--data-root={root}/data",
        f"--exec-root={root}/exec",
        f"--pidfile={root}/dockerd.pid",
        f"--host={sock}",
        "--containerd-namespace=opsbot-test",
        "--containerd-plugins-namespace=opsbot-test-plugins",
    ]
    state: dict[str, Any] = {"root": root, "host": sock, "proc": None}

    def start() -> None:
        log = open(root / "dockerd.log", "ab")  # noqa: SIM115 - closed with the process
        state["proc"] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(Exception):
                docker.DockerClient(base_url=sock, timeout=5).ping()
                return
            if state["proc"].poll() is not None or time.monotonic() > deadline:
                raise AssertionError((root / "dockerd.log").read_text()[-3000:])
            time.sleep(0.3)

    def stop() -> None:
        proc = state["proc"]
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    state["start"], state["stop"] = start, stop
    try:
        start()
        yield state
    finally:
        stop()
        subprocess.run(["umount", "-R", str(root)], capture_output=True, check=False)
        shutil.rmtree(root, ignore_errors=True)


def test_engine_restart_the_watcher_reconnects_and_repairs(
    template: Path, tmp_path: Path, engine: Any, image: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with dedicated_engine() as eng:
        monkeypatch.setenv("DOCKER_HOST", eng["host"])
        client = engine_or_skip(eng["host"])
        # the same image, moved over from the main engine (docker save | docker load): several
        # hundred MB into an empty data root, which can take longer than a call's 20 s on a
        # busy machine (CI once ran out of them), so this call alone may take five minutes
        client.api.timeout = engine.api.timeout = 300
        client.images.load(engine.images.get(image).save(named=True))
        client.api.timeout = engine.api.timeout = 20
        assert client.images.get(image).id == engine.images.get(image).id
        home = tmp_path / "home"
        with docker_daemon(template, home, client, image) as d:
            created = d.deploy(
                "--name", "survivor", "--model", "iris", "--version", "1.0.0", "--instances", "2"
            )
            assert call(created["url"], {"instances": IRIS[:1]}, created["api_key"])[0] == 200
            before = {c["Id"] for c in containers(client, home)}
            assert len(before) == 2

            eng["stop"]()  # a clean engine stop takes the containers down with it
            wait_status(d, "survivor", "abnormal", timeout=60)
            eng["start"]()
            client = engine_or_skip(eng["host"])
            shown = wait_status(d, "survivor", "running", timeout=90)
            assert shown is not None and [i.state for i in shown.instances] == ["ready", "ready"]
            log = (home / "daemon-test.log").read_text()
            assert "runtime back: adopted" in log, log[-3000:]

            mine = containers(client, home)
            keys = Counter(c["Labels"][LABEL_INSTANCE] for c in mine)
            assert keys == Counter({f"{created['id']}/0/0": 1, f"{created['id']}/0/1": 1})
            assert all(c["State"] == "running" for c in mine)
            # the gateway reads the new instance rows at its next poll of the store (200 ms)
            deadline = time.monotonic() + 5
            while True:
                status, _, body = call(created["url"], {"instances": IRIS[:3]}, created["api_key"])
                if status == 200 or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert status == 200, body


def test_a_model_of_format_image_runs_its_own_image(
    shared: Daemon, engine: Any, scorer_image: str, tmp_path: Path
) -> None:
    model_dir = tmp_path / "scorer"
    model_dir.mkdir()
    (model_dir / "offset.txt").write_text("100")
    missing = shared.cli(
        "model", "create", "scorer", "--version", "0.9", "--path", str(model_dir),
        "--format", "image", "--entry", "opsbot-test-scorer:absent", "--json", check=False,
    )  # fmt: skip
    assert "not on the Docker engine" in missing.stdout + missing.stderr
    no_entry = shared.cli(
        "model", "create", "scorer", "--version", "0.8", "--path", str(model_dir),
        "--format", "image", check=False,
    )  # fmt: skip
    assert no_entry.returncode == 1 and "--entry IMAGE" in no_entry.stderr
    shared.cli(
        "model", "create", "scorer", "--version", "1.0", "--path", str(model_dir),
        "--format", "image", "--entry", scorer_image,
    )  # fmt: skip
    created = shared.deploy("--name", "scorer", "--model", "scorer", "--version", "1.0")
    assert created["status"] == "running"
    status, _, body = call(created["url"], {"instances": [[1, 2], [3, 4.5]]}, created["api_key"])
    assert status == 200, body
    assert body["predictions"] == [103, 107.5]  # its own server, reading its /model
    (container,) = [
        c for c in containers(engine, shared.home) if c["Labels"]["opsbot.service"] == created["id"]
    ]
    info = engine.api.inspect_container(container["Id"])
    assert info["Config"]["Image"] == scorer_image
    assert info["Config"]["User"] == USER
    assert info["HostConfig"]["SecurityOpt"] == ["no-new-privileges"]
