"""The process runtime with a stand-in interpreter: environment, sessions, adoption, stop."""

from __future__ import annotations

import os
import resource
import socket
import stat
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from homes import RlimitOnly, instance_spec

from opsbot.core.address import unix_address
from opsbot.core.errors import OpsbotError
from opsbot.core.flavors import load_flavors
from opsbot.core.hardware import Device
from opsbot.core.runtime import InstanceSpec, Started, failure_reason
from opsbot.core.runtimes.process import ProcessRuntime

FAKE_PYTHON = """#!/bin/sh
# Stands in for the model server: records its arguments, then its environment, then serves
# nothing. Each is written aside and renamed: once env-PID is there, both are whole (the gate
# execs it, so PID is the handle's).
echo "$@" > "$OPSBOT_HOME_ID/.argv-$$"
mv "$OPSBOT_HOME_ID/.argv-$$" "$OPSBOT_HOME_ID/argv-$$"
env > "$OPSBOT_HOME_ID/.env-$$"
mv "$OPSBOT_HOME_ID/.env-$$" "$OPSBOT_HOME_ID/env-$$"
if [ -n "$FAIL" ]; then echo "LOAD FAILED: $FAIL" >&2; exit 3; fi
if [ -n "$BURN" ]; then while :; do :; done; fi
exec sleep 60
"""


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[ProcessRuntime]:
    script = tmp_path / "fake-python"
    script.write_text(FAKE_PYTHON)
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    (tmp_path / "model").mkdir()
    # As the daemon's own account: these tests are about the environment, sessions and
    # adoption (tests/security runs instances as their owners' accounts).
    rt = ProcessRuntime(
        tmp_path, python=str(script), limiter=RlimitOnly(), accounts=lambda _: None, preload=()
    )
    yield rt
    for owned in rt.owned():
        rt.stop(owned.handle, grace_s=1)


def _spec(
    tmp_path: Path, flavor_id: str, devices: tuple[Device, ...] = (), **env: str
) -> InstanceSpec:
    return instance_spec(
        tmp_path / "model", flavor=flavor_id, service_uid="abc123", n=1, env=env, devices=devices
    )


def _pid(started: Started) -> int:
    return int(started.handle.split(":")[0])


def _wait_for(path: Path) -> dict[str, str]:
    """The environment the stand-in recorded in ``path`` (whole once it exists)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if path.exists():
            return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
        time.sleep(0.02)
    raise AssertionError(f"{path} never appeared")


def test_gpu_instance_gets_the_assigned_devices_and_caps(
    runtime: ProcessRuntime, tmp_path: Path
) -> None:
    gpus = (Device("nvidia", "Tesla T4", 1), Device("nvidia", "Tesla T4", 3))
    started = runtime.start(_spec(tmp_path, "gpu.t4", gpus, LOG_LEVEL="debug"))
    env = _wait_for(tmp_path / f"env-{_pid(started)}")
    assert env["CUDA_VISIBLE_DEVICES"] == "1,3"
    assert env["OMP_NUM_THREADS"] == "8"
    assert env["LOG_LEVEL"] == "debug"
    assert env["OPSBOT_INSTANCE"] == "abc123/0/1"
    argv = (tmp_path / f"argv-{_pid(started)}").read_text().split()
    assert argv[:2] == ["-m", "opsbot.serving.server"]
    assert "--port" not in argv and "--host" not in argv
    assert argv[argv.index("--listen-fd") + 1].isdigit()
    pid = int(started.handle.split(":")[0])
    assert os.getpgid(pid) == pid  # its own session and process group


def test_cpu_instance_sees_no_gpu(runtime: ProcessRuntime, tmp_path: Path) -> None:
    started = runtime.start(_spec(tmp_path, "cpu.2u8g"))
    env = _wait_for(tmp_path / f"env-{_pid(started)}")
    assert env["CUDA_VISIBLE_DEVICES"] == ""
    assert env["OMP_NUM_THREADS"] == "2"


def test_owned_finds_instances_a_new_runtime_did_not_start(
    runtime: ProcessRuntime, tmp_path: Path
) -> None:
    started = runtime.start(_spec(tmp_path, "cpu.2u8g"))
    _wait_for(tmp_path / f"env-{_pid(started)}")
    fresh = ProcessRuntime(tmp_path, python=runtime.python, limiter=RlimitOnly(), preload=())
    (owned,) = fresh.owned()
    # Its address with it: the socket the runtime bound, found in the record.
    assert (owned.handle, owned.key) == (started.handle, "abc123/0/1")
    assert (owned.host, owned.port) == (started.host, started.port) == unix_address(started.host)
    assert fresh.exited(owned.handle) is None
    fresh.stop(owned.handle, grace_s=2)
    assert fresh.exited(owned.handle) is not None
    assert runtime.exited(started.handle) is not None
    assert fresh.owned() == []


def test_load_failure_is_read_from_the_log(runtime: ProcessRuntime, tmp_path: Path) -> None:
    started = runtime.start(_spec(tmp_path, "cpu.2u8g", FAIL="no model.joblib"))
    deadline = time.monotonic() + 10
    while (ended := runtime.exited(started.handle)) is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert ended is not None
    assert ended.code == 3
    assert ended.reason == "no model.joblib"


def test_an_instance_started_again_under_its_key_leaves_no_socket_of_the_last(
    runtime: ProcessRuntime, tmp_path: Path
) -> None:
    # The controller starts a crashed instance again (same key) without stopping it first.
    first = runtime.start(_spec(tmp_path, "cpu.2u8g", FAIL="crashed"))
    deadline = time.monotonic() + 10
    while runtime.exited(first.handle) is None:
        assert time.monotonic() < deadline, "the first start never ended"
        time.sleep(0.02)
    again = runtime.start(_spec(tmp_path, "cpu.2u8g"))
    assert again.host != first.host
    assert list(runtime.socket_dir.iterdir()) == [Path(again.host)]
    runtime.stop(again.handle, grace_s=1)
    assert list(runtime.socket_dir.iterdir()) == []


def test_failure_reason_without_a_load_line() -> None:
    assert failure_reason(["starting", "Traceback ...", "MemoryError", ""], 1) == (
        "exit code 1: MemoryError"
    )
    assert failure_reason([], None) == "ended"


def test_a_killed_instance_is_not_blamed_on_its_last_log_line() -> None:
    lines = ["loading", "iris 1.0.0 ready on 127.0.0.1:9000"]
    for code in (-9, 137):
        reason = failure_reason(lines, code)
        assert reason.startswith("killed by SIGKILL") and "ready" not in reason
    assert failure_reason(lines, None) == (
        "ended, exit code unknown; last log line: iris 1.0.0 ready on 127.0.0.1:9000"
    )


def test_stats_measure_the_instance_cpu_and_memory(runtime: ProcessRuntime, tmp_path: Path) -> None:
    busy = runtime.start(_spec(tmp_path, "cpu.2u8g", BURN="1"))
    idle = runtime.start(_spec(tmp_path, "cpu.2u8g"))
    _wait_for(tmp_path / f"env-{_pid(idle)}")
    hot, cold = runtime.stats(busy.handle), runtime.stats(idle.handle)
    assert hot is not None and cold is not None
    assert hot["cpu_percent"] > 20 > cold["cpu_percent"]
    assert hot["memory_bytes"] > 100_000 and cold["memory_bytes"] > 100_000
    assert hot["memory_limit_bytes"] == 0  # rlimits only: no cgroup holds a cap
    runtime.stop(busy.handle, grace_s=1)
    assert runtime.stats(busy.handle) is None


def test_an_instance_s_copy_goes_when_it_stops(runtime: ProcessRuntime, tmp_path: Path) -> None:
    (tmp_path / "model" / "model.joblib").write_bytes(b"w")
    started = runtime.start(_spec(tmp_path, "cpu.2u8g"))
    corner = runtime.run_dir / "abc123_0_1"
    assert (corner / "model" / "model.joblib").read_bytes() == b"w"
    runtime.stop(started.handle, grace_s=1)
    assert not corner.exists()


def test_a_start_that_fails_leaves_no_copy_behind(runtime: ProcessRuntime, tmp_path: Path) -> None:
    # The version's files went (a disk error, say) after the instance's directory was made.
    spec = replace(_spec(tmp_path, "cpu.2u8g"), path=tmp_path / "no-such-model")
    with pytest.raises(FileNotFoundError):
        runtime.start(spec)
    assert not (runtime.run_dir / "abc123_0_1").exists()
    assert list(runtime.socket_dir.iterdir()) == []  # nor a socket


def test_a_run_directory_too_long_for_a_socket_is_refused_naming_the_setting(
    tmp_path: Path,
) -> None:
    # sun_path holds 108 bytes: a socket path past it cannot be bound at all.
    deep = tmp_path / ("r" * 60) / ("u" * 60)
    runtime = ProcessRuntime(
        tmp_path,
        python="/bin/false",
        limiter=RlimitOnly(),
        accounts=lambda _: None,
        run_dir=deep,
        preload=(),
    )
    (tmp_path / "model").mkdir()
    with pytest.raises(OpsbotError) as caught:
        runtime.start(_spec(tmp_path, "cpu.2u8g"))
    assert caught.value.field == "run_dir" and "shorter path" in str(caught.value)
    assert not deep.exists() and runtime.owned() == []  # no copy, no socket, no record


@pytest.mark.parametrize("planted", ["symlink", "foreign"])
def test_a_sockets_directory_not_the_daemons_own_is_refused(
    runtime: ProcessRuntime, tmp_path: Path, planted: str
) -> None:
    """Another account that got a ``sockets`` in first (a link to a directory of its choice, or
    a directory of its own) would hear every call: no instance starts, the error names run_dir."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    sockets = runtime.run_dir / "sockets"
    runtime.run_dir.mkdir(parents=True, exist_ok=True)
    if planted == "symlink":
        sockets.symlink_to(elsewhere)
    else:
        if os.geteuid() != 0:
            pytest.skip("giving a directory to another account needs root (CI runs as root)")
        sockets.mkdir()
        os.chown(sockets, 65534, 65534)
    with pytest.raises(OpsbotError) as caught:
        runtime.start(_spec(tmp_path, "cpu.2u8g"))
    assert caught.value.field == "run_dir" and "not a directory of this account's" in str(
        caught.value
    )
    assert runtime.owned() == [] and list(elsewhere.iterdir()) == []


def test_the_sweep_removes_instance_copies_no_record_names(
    runtime: ProcessRuntime, tmp_path: Path
) -> None:
    running = runtime.start(_spec(tmp_path, "cpu.2u8g"))
    # A daemon killed while starting an instance: its copy, read-only, its socket, no record.
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(runtime.socket_dir / "abc123_1_0.0123abcd.sock"))
    stale.close()
    left = runtime.run_dir / "abc123_1_0"
    (left / "model").mkdir(parents=True)
    (left / "model" / "model.joblib").write_bytes(b"w")
    for path in (left / "model" / "model.joblib", left / "model", left):
        path.chmod(0o400 if path.is_file() else 0o500)
    # Not the process runtime's: a registry check's, a container's staged copy.
    (runtime.run_dir / "check-0123").mkdir()
    (runtime.run_dir / "container-abc123-0").mkdir()
    runtime.sweep({})
    assert {p.name for p in runtime.run_dir.iterdir()} == {
        "abc123_0_1",
        "check-0123",
        "container-abc123-0",
        "sockets",
    }
    assert list(runtime.socket_dir.iterdir()) == [Path(running.host)]


def test_a_memory_cap_that_does_not_take_is_said_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where cgroups fail as an instance starts, the cap is set from outside, which another
    account's process allows only with CAP_SYS_RESOURCE: when it does not take, the
    instance's log says its memory is not capped instead of naming a cap it lacks."""
    flavor = next(f for f in load_flavors() if f.id == "cpu.2u8g")
    limiter = RlimitOnly()
    assert limiter.data_cap(flavor) == flavor.memory_bytes  # set by the instance as it starts
    assert limiter.apply(os.getpid(), "k", flavor, True).startswith("rlimit: data 8 GiB")

    def refused(*args: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(resource, "prlimit", refused)
    said = limiter.apply(os.getpid(), "k", flavor, False)
    assert said.startswith("memory NOT capped ("), said
    assert "Operation not permitted" in said
