"""The shape of a container: what the docker runtime asks the engine for, checked on the
create arguments and, where an engine answers, on the created container's HostConfig."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests.exceptions
from docker_fixtures import engine_fixture, image_fixture  # noqa: F401 - fixtures

from opsbot.core.errors import OpsbotError
from opsbot.core.flavors import Accelerator, Flavor, load_flavors
from opsbot.core.hardware import Device
from opsbot.core.images import USER, ImageError
from opsbot.core.runtime import InstanceSpec
from opsbot.core.runtimes.docker import (
    LABEL_HOME,
    LABEL_INSTANCE,
    LABEL_OWNER,
    LABEL_SERVICE,
    LABEL_SOCKET,
    LABEL_VERSION,
    MODEL_MOUNT,
    PACKAGE_MOUNT,
    RESTART_MAX,
    SOCKET_MOUNT,
    SOCKET_NAME,
    DockerRuntime,
    container_args,
)
from opsbot.core.runtimes.process import package_root
from opsbot.daemon.server import make_runtime

FLAVORS = {f.id: f for f in load_flavors()}
TWO_GPUS = Flavor(
    id="gpu.two",
    name="4 vCPUs | 16 GiB | 2 x NVIDIA",
    cpus=4,
    memory_gib=16,
    accelerator=Accelerator(kind="nvidia", count=2),
)


def spec(
    tmp_path: Path,
    flavor: Flavor,
    devices: tuple[Device, ...] = (),
    fmt: str = "sklearn",
    entry: str | None = None,
) -> InstanceSpec:
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    return InstanceSpec(
        service_uid="svc0001",
        owner="alice",
        idx=1,
        n=2,
        model_name="iris",
        version="2.0.0",
        path=model,
        format=fmt,
        entry=entry,
        flavor=flavor,
        env={"LOG_LEVEL": "debug"},
        devices=devices,
    )


def test_cpu_instance_args(tmp_path: Path) -> None:
    home = tmp_path / "home"
    s = spec(tmp_path, FLAVORS["cpu.2u8g"])
    sockets = tmp_path / "run" / "containers" / "svc0001-1-2.ab12"
    args = container_args(s, image="opsbot-serving:abc", port=0, home=home, socket_dir=sockets)
    assert args["image"] == "opsbot-serving:abc"
    assert args["labels"] == {
        LABEL_SERVICE: "svc0001",
        LABEL_VERSION: "2.0.0",
        "opsbot.model": "iris",
        LABEL_INSTANCE: "svc0001/1/2",
        LABEL_OWNER: "alice",
        LABEL_HOME: str(home.resolve()),
        "opsbot.port": "0",
        LABEL_SOCKET: str(sockets / SOCKET_NAME),
    }
    # caps from the flavor: 2 vCPUs, 8 GiB
    assert args["nano_cpus"] == 2_000_000_000
    assert args["mem_limit"] == 8 * 2**30
    # who and how
    assert args["user"] == USER == "10001:10001"
    assert args["security_opt"] == ["no-new-privileges"]
    assert args["cap_drop"] == ["ALL"]
    assert args["read_only"] is True
    # no network: it serves on a unix socket in its own directory, mounted
    assert args["network_mode"] == "none"
    assert args["restart_policy"] == {"Name": "on-failure", "MaximumRetryCount": RESTART_MAX}
    health = args["healthcheck"]["test"]
    assert health[:3] == ["CMD", "python3", "-c"]
    assert f"get_status('{SOCKET_MOUNT}/{SOCKET_NAME}', 0, '/v2/health/ready', 3)" in health[3]
    assert args["healthcheck"]["interval"] > 0 and args["healthcheck"]["retries"] >= 1
    # the model read-only at /model, the daemon's own package read-only on PYTHONPATH
    mounts = {m["Target"]: m for m in args["mounts"]}
    assert mounts[MODEL_MOUNT]["Source"] == str(s.path)
    assert mounts[MODEL_MOUNT]["ReadOnly"] is True
    assert mounts[f"{PACKAGE_MOUNT}/opsbot"]["Source"] == str(Path(package_root()) / "opsbot")
    assert mounts[f"{PACKAGE_MOUNT}/opsbot"]["ReadOnly"] is True
    assert mounts[SOCKET_MOUNT]["Source"] == str(sockets)
    assert mounts[SOCKET_MOUNT]["ReadOnly"] is False
    env = args["environment"]
    assert env["LOG_LEVEL"] == "debug"  # the service's env
    assert env["OMP_NUM_THREADS"] == "2"
    assert env["CUDA_VISIBLE_DEVICES"] == ""  # a CPU flavor sees no GPU
    assert "OPSBOT_PORT" not in env and env["OPSBOT_INSTANCE"] == "svc0001/1/2"
    assert env["PYTHONPATH"] == PACKAGE_MOUNT
    # the same model server and arguments as the process runtime, with in-container paths
    assert args["command"] == [
        "python3",
        "-m",
        "opsbot.serving.server",
        "--path",
        MODEL_MOUNT,
        "--format",
        "sklearn",
        "--name",
        "iris",
        "--version",
        "2.0.0",
        "--unix",
        f"{SOCKET_MOUNT}/{SOCKET_NAME}",
    ]
    assert "device_requests" not in args


def test_container_network_host_gives_the_machine_s_network_and_keeps_the_socket(
    tmp_path: Path,
) -> None:
    args = container_args(
        spec(tmp_path, FLAVORS["cpu.2u8g"]),
        image="i",
        port=0,
        home=tmp_path,
        socket_dir=tmp_path / "s",
        network="host",
    )
    assert args["network_mode"] == "host"
    assert args["command"][-2:] == ["--unix", f"{SOCKET_MOUNT}/{SOCKET_NAME}"]
    assert "OPSBOT_PORT" not in args["environment"]


def test_without_a_socket_directory_it_serves_on_its_port_with_host_networking(
    tmp_path: Path,
) -> None:
    """What the swarm runtime's tasks are made from: reached over the network, on a port."""
    args = container_args(spec(tmp_path, FLAVORS["cpu.2u8g"]), image="i", port=41234, home=tmp_path)
    assert args["network_mode"] == "host"
    assert args["environment"]["OPSBOT_PORT"] == "41234"
    assert args["command"][-4:] == ["--host", "127.0.0.1", "--port", "41234"]
    assert "get_status('127.0.0.1', 41234, '/v2/health/ready', 3)" in args["healthcheck"]["test"][3]
    assert LABEL_SOCKET not in args["labels"]
    assert SOCKET_MOUNT not in [m["Target"] for m in args["mounts"]]


def test_a_model_of_format_image_gets_no_socket_directory(tmp_path: Path) -> None:
    s = spec(tmp_path, FLAVORS["cpu.2u8g"], fmt="image", entry="acme/scorer:1.2")
    with pytest.raises(ValueError, match="serves on its port"):
        container_args(s, image="i", port=1, home=tmp_path, socket_dir=tmp_path / "s")


def test_the_cpu_cap_is_at_most_what_the_engine_has(tmp_path: Path) -> None:
    s = spec(tmp_path, FLAVORS["gpu.v100"], (Device("nvidia", "Tesla V100", 0),))
    assert container_args(s, image="i", port=1, home=tmp_path)["nano_cpus"] == 8 * 10**9
    capped = container_args(s, image="i", port=1, home=tmp_path, engine_cpus=2)
    assert capped["nano_cpus"] == 2 * 10**9


def test_gpu_flavor_requests_exactly_the_assigned_devices(tmp_path: Path) -> None:
    devices = (Device("nvidia", "Tesla T4", 1), Device("nvidia", "Tesla T4", 3))
    args = container_args(spec(tmp_path, TWO_GPUS, devices), image="i", port=1, home=tmp_path)
    (request,) = args["device_requests"]
    assert request["DeviceIDs"] == ["1", "3"]
    assert request["Capabilities"] == [["gpu"]]
    assert request["Driver"] == "nvidia"
    assert not request.get("Count")  # by id, never "all"
    assert args["environment"]["CUDA_VISIBLE_DEVICES"] == "1,3"


def test_an_image_model_runs_its_own_image_without_our_package(tmp_path: Path) -> None:
    s = spec(tmp_path, FLAVORS["cpu.2u8g"], fmt="image", entry="acme/scorer:1.2")
    args = container_args(s, image="opsbot-serving:abc", port=40000, home=tmp_path)
    assert args["image"] == "acme/scorer:1.2"
    assert args["command"] is None
    assert args["environment"]["OPSBOT_PORT"] == "40000"
    assert [m["Target"] for m in args["mounts"]] == [MODEL_MOUNT]
    assert "healthcheck" not in args  # it may have no python3: its own HEALTHCHECK stands
    assert args["user"] == USER and args["security_opt"] == ["no-new-privileges"]


def test_the_engine_records_the_gpu_request_and_the_limits(
    tmp_path: Path, engine: Any, image: str
) -> None:
    """Create (never start: no GPU here) a GPU instance's container and read its HostConfig."""
    devices = (Device("nvidia", "Tesla T4", 0), Device("nvidia", "Tesla T4", 2))
    ncpu = int(engine.info()["NCPU"])
    args = container_args(
        spec(tmp_path, TWO_GPUS, devices),
        image=image,
        port=40001,
        home=tmp_path / "h",
        engine_cpus=ncpu,
    )
    container = engine.containers.create(**args)
    try:
        info = engine.api.inspect_container(container.id)
    finally:
        container.remove(force=True)
    host = info["HostConfig"]
    (request,) = host["DeviceRequests"]
    assert request["DeviceIDs"] == ["0", "2"]
    assert request["Capabilities"] == [["gpu"]]
    assert host["NanoCpus"] == min(4, ncpu) * 10**9
    assert host["Memory"] == 16 * 2**30
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["ReadonlyRootfs"] is True
    assert host["NetworkMode"] == "host"
    assert host["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": RESTART_MAX}
    assert info["Config"]["User"] == USER
    assert "CUDA_VISIBLE_DEVICES=0,2" in info["Config"]["Env"]
    assert info["Config"]["Healthcheck"]["Test"][0] == "CMD"


def test_an_image_model_without_an_image_is_refused(tmp_path: Path) -> None:
    with pytest.raises(OpsbotError, match="entry"):
        container_args(
            spec(tmp_path, FLAVORS["cpu.2u8g"], fmt="image"), image="i", port=1, home=tmp_path
        )


# -- clear errors when the engine or the image is missing ------------------------------------


def test_no_engine_is_a_clear_error_from_opsbot_up(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"}
    result = subprocess.run(
        [sys.executable, "-m", "opsbot", "--home", str(home), "up", "--runtime", "docker",
         "--no-examples", "--gateway-port", "0"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert f"no Docker engine answers at unix://{tmp_path}/no-engine.sock" in result.stderr
    assert "--runtime process" in result.stderr  # and what to do instead
    assert not (home / "opsbot.sock").exists()


def test_an_image_not_built_says_to_build_it(
    tmp_path: Path, engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPSBOT_SERVING_IMAGE", "opsbot-serving:never-built")
    with pytest.raises(ImageError) as caught:
        make_runtime("docker", tmp_path)
    assert "opsbot-serving:never-built is not built" in str(caught.value)
    assert "run `opsbot image build`" in str(caught.value)


# -- the event watcher, against an engine that goes away and comes back -----------------------


class FlakyEngine:
    """Just enough of docker-py's client for the watcher: an event stream that breaks once,
    an engine that then refuses two pings, then answers again."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self.api = self
        self.windows: list[tuple[int, int]] = []
        self.pings_refused = 2
        self.broken = False

    def info(self) -> dict[str, Any]:
        return {"NCPU": 2}

    def ping(self) -> bool:
        if self.broken and self.pings_refused > 0:
            self.pings_refused -= 1
            raise requests.exceptions.ConnectionError("engine gone")
        return True

    def events(self, *, since: int, until: int, **_: Any) -> Iterator[dict[str, Any]]:
        self.windows.append((since, until))
        if len(self.windows) == 1:
            yield {"status": "die", "id": "abc"}
            self.broken = True
            raise requests.exceptions.ChunkedEncodingError("stream cut")
        if len(self.windows) >= 3:
            self.stop.set()
        yield {"status": "start", "id": "def"}


def test_the_watcher_reconnects_and_asks_for_a_repair(tmp_path: Path) -> None:
    stop = threading.Event()
    engine = FlakyEngine(stop)
    runtime = DockerRuntime(tmp_path, client=engine, image="opsbot-serving:test")
    woken: list[str] = []
    thread = threading.Thread(
        target=runtime.watch,
        args=(stop, lambda: woken.append("change"), lambda: woken.append("repair")),
        kwargs={"window_s": 1},
    )
    thread.start()
    thread.join(30)
    assert not thread.is_alive()
    assert engine.pings_refused == 0  # it waited for the engine instead of giving up
    # the die event wakes the controller, the broken stream too; once back: repair, then follow
    assert woken[:3] == ["change", "change", "repair"]
    assert woken[3:] == ["change"] * (len(woken) - 3) and len(woken) >= 4
    # windows follow each other with no gap after the reconnection
    assert all(b[0] >= a[0] for a, b in itertools.pairwise(engine.windows))
