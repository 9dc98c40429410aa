"""Instances forked from the preloader: the same instance a cold start makes, only sooner.

A python-format model reports what its process looks like from inside (environment, account,
directory, descriptors, thread pools, numpy's generator); the same spec started cold (its own
interpreter) is the reference. Runs as the daemon's own account (tests/security runs forks as
their owners' accounts and reads the preloader's memory).
"""

from __future__ import annotations

import os
import signal
import stat
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from homes import ask_instance, python_model_spec, wait_ready

from opsbot.core.address import unix_path
from opsbot.core.flavors import Flavor
from opsbot.core.runtime import Exit, InstanceSpec, Started
from opsbot.core.runtimes.process import ProcessRuntime
from opsbot.core.zygote import LISTEN_FD, Zygote

PROBE_PY = """
import os, sys

class Model:
    sample = [1]

    def load(self, path):
        if os.environ.get("FAIL_LOAD"):
            raise RuntimeError(os.environ["FAIL_LOAD"])
        self.preloaded = "sklearn.linear_model" in sys.modules
        import sklearn.linear_model  # what an sklearn model's load imports, cold or forked

    def predict(self, instances):
        import numpy
        fds = {}
        for name in os.listdir("/proc/self/fd"):
            try:
                fds[name] = os.readlink(f"/proc/self/fd/{name}")
            except OSError:
                pass
        try:
            from threadpoolctl import threadpool_info
            pools = {p["internal_api"]: p["num_threads"] for p in threadpool_info()}
        except ImportError:
            pools = {}
        return [{
            "env": dict(os.environ), "uid": os.getuid(), "gid": os.getgid(),
            "groups": os.getgroups(), "cwd": os.getcwd(), "fds": fds, "pools": pools,
            "draw": float(numpy.random.random()), "argv": sys.argv,
            "preloaded": self.preloaded,
        }]
"""
#: Differ per instance by design.
OWN = {"OPSBOT_INSTANCE", "OPSBOT_INSTANCE_SECRET", "OPSBOT_SANDBOX"}
OWN |= {"HOME", "TMPDIR", "PWD"}


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    path = tmp_path / "probe"
    path.mkdir()
    (path / "model.py").write_text(PROBE_PY)
    return path


@pytest.fixture
def runtimes(tmp_path: Path) -> Iterator[tuple[ProcessRuntime, ProcessRuntime]]:
    """One runtime that forks from a preloader, one that starts cold, on the same home."""
    home = tmp_path / "home"
    home.mkdir()
    forking = ProcessRuntime(home, accounts=lambda _: None, preload=["sklearn.linear_model"])
    cold = ProcessRuntime(home, accounts=lambda _: None, preload=())
    try:
        yield forking, cold
    finally:
        for owned in cold.owned():
            forking.stop(owned.handle, grace_s=2)
        forking.close()


def _until(what: str, check: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"{what} within {timeout:.0f} s")


def _report(runtime: ProcessRuntime, spec: InstanceSpec, started: Started) -> dict[str, Any]:
    return ask_instance(runtime.home, spec, started)


def _log(runtime: ProcessRuntime, spec: InstanceSpec) -> str:
    return runtime.log_path(spec.key).read_text()


def test_a_fork_is_the_instance_a_cold_start_makes(
    runtimes: tuple[ProcessRuntime, ProcessRuntime],
    model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "daemon-only")  # the daemon's, never a model's
    forking, cold = runtimes
    forked_spec = python_model_spec(model_dir, "fork1", LOG_LEVEL="debug")
    cold_spec = python_model_spec(model_dir, "cold1", LOG_LEVEL="debug")
    forked = _report(forking, forked_spec, forking.start(forked_spec))
    reference = _report(cold, cold_spec, cold.start(cold_spec))

    assert "forked from the preloader" in _log(forking, forked_spec)
    assert "a new interpreter" in _log(cold, cold_spec)
    assert forked["preloaded"] is True and reference["preloaded"] is False

    # The same environment, nothing of the daemon's; each its own per-instance values.
    assert "AWS_SECRET_ACCESS_KEY" not in forked["env"]
    same = {k: v for k, v in forked["env"].items() if k not in OWN}
    assert same == {k: v for k, v in reference["env"].items() if k not in OWN}
    assert set(forked["env"]) == set(reference["env"])
    assert forked["env"]["OPSBOT_INSTANCE"] == "fork1/0/1"
    assert forked["env"]["LOG_LEVEL"] == "debug"
    # The same account, directory shape and command line.
    for key in ("uid", "gid", "groups"):
        assert forked[key] == reference[key]
    assert forked["cwd"] == forked["env"]["HOME"] and forked["cwd"].endswith("/home")
    assert forked["argv"][1:3] == ["-m", "opsbot.serving.server"]
    assert forked["argv"][forked["argv"].index("--format") + 1] == "python"
    # Thread pools sized for the flavor (2 vCPUs), in the threads that predict too.
    assert forked["pools"] and set(forked["pools"].values()) == {2}, forked["pools"]
    assert forked["pools"] == reference["pools"]
    # Its log on stdout and stderr, nothing on stdin; no descriptor of the preloader's.
    fds = forked["fds"]
    assert fds["0"] == "/dev/null"
    assert fds["1"] == fds["2"] == str(forking.log_path(forked_spec.key))
    zygote = forking._zygotes[next(iter(forking._zygotes))]
    theirs = set()
    for name in os.listdir(f"/proc/{zygote.pid}/fd"):
        target = os.readlink(f"/proc/{zygote.pid}/fd/{name}")
        if target.startswith(("socket:", "pipe:")):
            theirs.add(target)
    assert theirs, "the preloader holds its control socket and wake-up pipe"
    assert theirs.isdisjoint(fds.values())


def test_a_fork_and_a_cold_start_serve_on_the_socket_the_runtime_bound(
    runtimes: tuple[ProcessRuntime, ProcessRuntime], model_dir: Path
) -> None:
    forking, cold = runtimes
    forked_spec = python_model_spec(model_dir, "sockf")
    cold_spec = python_model_spec(model_dir, "sockc")
    forked_at, cold_at = forking.start(forked_spec), cold.start(cold_spec)
    # Each answered over its unix socket: the address the runtime gave is that socket.
    forked = _report(forking, forked_spec, forked_at)
    reference = _report(cold, cold_spec, cold_at)
    for started in (forked_at, cold_at):
        assert unix_path(started.host) is not None and started.port == 0
        path = Path(started.host)
        assert stat.S_ISSOCK(path.lstat().st_mode) and path.parent == forking.socket_dir
        assert path.parent.stat().st_mode & 0o777 == 0o700
    for report, number in ((forked, str(LISTEN_FD)), (reference, None)):
        argv = report["argv"]
        assert "--port" not in argv and "--host" not in argv
        fd = argv[argv.index("--listen-fd") + 1]
        assert number is None or fd == number  # a fork's is moved to a known number
        assert report["fds"][fd].startswith("socket:")
    # Stopped, the socket goes with it; the directory stays the daemon's.
    forking.stop(forked_at.handle, grace_s=2)
    cold.stop(cold_at.handle, grace_s=2)
    assert not Path(forked_at.host).exists() and not Path(cold_at.host).exists()


def test_each_fork_draws_its_own_random_numbers(
    runtimes: tuple[ProcessRuntime, ProcessRuntime], model_dir: Path
) -> None:
    forking, _ = runtimes
    specs = [python_model_spec(model_dir, f"draw{i}") for i in range(2)]
    draws = [_report(forking, s, forking.start(s))["draw"] for s in specs]
    assert draws[0] != draws[1]


def test_how_a_fork_ended_is_told_like_a_childs(
    runtimes: tuple[ProcessRuntime, ProcessRuntime], model_dir: Path
) -> None:
    forking, _ = runtimes
    failing = python_model_spec(model_dir, "fails", FAIL_LOAD="the weights are missing")
    handle = forking.start(failing).handle
    ended: Exit = _until("the failed load ended", lambda: forking.exited(handle))
    assert ended.code == 3
    assert "the weights are missing" in ended.reason
    assert "forked from the preloader" in _log(forking, failing)

    killed = python_model_spec(model_dir, "killed")
    started = forking.start(killed)
    wait_ready(started)
    os.kill(int(started.handle.split(":")[0]), signal.SIGKILL)
    gone: Exit = _until("the killed instance ended", lambda: forking.exited(started.handle))
    assert gone.code == -signal.SIGKILL
    assert "SIGKILL" in gone.reason


def test_forks_outlive_the_preloader_and_a_new_one_starts_on_demand(
    runtimes: tuple[ProcessRuntime, ProcessRuntime], model_dir: Path
) -> None:
    forking, _ = runtimes
    first = python_model_spec(model_dir, "early")
    started = forking.start(first)
    wait_ready(started)
    (zygote,) = forking._zygotes.values()
    forking.close()
    _until("the preloader ended", lambda: not zygote.running)
    assert forking.exited(started.handle) is None
    wait_ready(started, timeout=5)
    later = python_model_spec(model_dir, "later")
    assert _report(forking, later, forking.start(later))["preloaded"] is True
    assert zygote not in forking._zygotes.values()


def test_without_a_preloader_instances_start_cold_and_say_so(
    tmp_path: Path, model_dir: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    broken = ProcessRuntime(home, accounts=lambda _: None, preload=["opsbot.no_such_module"])
    # A module that cannot import is skipped, not fatal: a preloader with less in it.
    spec = python_model_spec(model_dir, "partial")
    try:
        assert _report(broken, spec, broken.start(spec))["preloaded"] is False
        assert "forked from the preloader" in _log(broken, spec)
        assert "preload skipped opsbot.no_such_module" in (home / "logs/preloader.log").read_text()
    finally:
        for owned in broken.owned():
            broken.stop(owned.handle, grace_s=2)
        broken.close()

    dead = ProcessRuntime(home, python="/bin/false", accounts=lambda _: None, preload=["json"])
    assert dead._zygote("/bin/false", {}) is None  # ended before it was ready
    assert "/bin/false" in dead._cold
    assert dead._zygote("/bin/false", {}) is None  # said once, not tried again
    dead.close()


def test_warming_starts_the_preloader_each_thread_count_forks_from(
    runtimes: tuple[ProcessRuntime, ProcessRuntime], model_dir: Path
) -> None:
    forking, _ = runtimes
    first = python_model_spec(model_dir, "warm2")
    forking.warm(first.flavor)  # what the daemon does as it starts
    (warmed,) = forking._zygotes.values()
    assert warmed.alive
    assert _report(forking, first, forking.start(first))["preloaded"] is True
    assert list(forking._zygotes.values()) == [warmed]  # forked from the warmed one
    one = Flavor(id="cpu.1u2g", name="1 vCPU", cpus=1, memory_gib=2)
    narrow = replace(python_model_spec(model_dir, "narrow"), flavor=one)
    report = _report(forking, narrow, forking.start(narrow))
    assert report["preloaded"] is True
    assert len(forking._zygotes) == 2  # the libraries size their pools as they load
    assert set(report["pools"].values()) == {1}


def test_a_preloader_closed_while_importing_is_killed_not_waited_for(tmp_path: Path) -> None:
    zygote = Zygote(sys.executable, env={"PATH": "/usr/bin:/bin"}, preload=["sklearn.ensemble"])
    zygote.start()
    zygote.close()  # a daemon stopping in its first second
    assert zygote._proc is not None and zygote._proc.returncode == -signal.SIGKILL
    assert not zygote.running
