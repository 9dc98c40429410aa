"""Everything an instance starts ends with it, and a restarted daemon really removes strays.

The stand-in model server starts children the ways model code can: in its own process group, a
child that calls ``setsid`` and outlives its parent (a daemon), and, where the instance has a
cgroup, one that also drops its environment (so neither its session nor its marker names it).
"""

from __future__ import annotations

import os
import signal
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from opsbot.core.flavors import load_flavors
from opsbot.core.runtime import InstanceSpec
from opsbot.core.runtimes.process import ProcessRuntime

FAKE_SERVER = """#!/bin/sh
# A model server whose model starts children, then serves nothing.
sleep 300 &
echo $! > "$PIDS/child"
setsid sh -c 'sleep 300 & echo $! > "$PIDS/daemonized"; exit 0' &
if [ -n "$CGROUP" ]; then
  env -i setsid sh -c "sleep 300 & echo \\$! > $PIDS/escaped; exit 0" &
fi
exec sleep 300
"""


def _alive(pid: int) -> bool:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text[text.rindex(")") + 2] != "Z"  # a zombie has ended; only its parent may reap it


def _wait_for_pids(directory: Path, names: list[str]) -> dict[str, int]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found = {}
        for name in names:
            text = (directory / name).read_text().strip() if (directory / name).exists() else ""
            if text:
                found[name] = int(text)
        if len(found) == len(names):
            return found
        time.sleep(0.02)
    raise AssertionError(f"the children never wrote {names} into {directory}")


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[ProcessRuntime, Path]]:
    script = tmp_path / "fake-server"
    script.write_text(FAKE_SERVER)
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    home = tmp_path / "home"
    (home / "model").mkdir(parents=True)
    runtime = ProcessRuntime(home, python=str(script), accounts=lambda _: None, preload=())
    yield runtime, script
    for owned in ProcessRuntime(
        home, python=str(script), accounts=lambda _: None, preload=()
    ).owned():
        runtime.stop(owned.handle, grace_s=1)


def _spec(runtime: ProcessRuntime, pids: Path) -> tuple[InstanceSpec, list[str]]:
    names = ["child", "daemonized"]
    env = {"PIDS": str(pids)}
    if runtime.limiter.mode != "rlimit":  # a cgroup names even a child that dropped all else
        env["CGROUP"] = "1"
        names.append("escaped")
    flavor = next(f for f in load_flavors() if f.id == "cpu.2u8g")
    spec = InstanceSpec(
        service_uid="tree",
        owner="alice",
        idx=0,
        n=1,
        model_name="m",
        version="1",
        path=runtime.home / "model",
        format="sklearn",
        entry=None,
        flavor=flavor,
        env=env,
    )
    return spec, names


def test_stopping_an_instance_ends_everything_it_started(
    setup: tuple[ProcessRuntime, Path], tmp_path: Path
) -> None:
    runtime, _ = setup
    pids_dir = tmp_path / "pids"
    pids_dir.mkdir()
    spec, names = _spec(runtime, pids_dir)
    started = runtime.start(spec)
    pids = _wait_for_pids(pids_dir, names)
    assert all(_alive(p) for p in pids.values())
    runtime.stop(started.handle, grace_s=2)
    assert {n: p for n, p in pids.items() if _alive(p)} == {}
    assert not (runtime.run_dir / "tree_0_1").exists()


def test_a_restarted_daemon_removes_what_a_dead_instance_left(
    setup: tuple[ProcessRuntime, Path], tmp_path: Path
) -> None:
    runtime, script = setup
    pids_dir = tmp_path / "pids"
    pids_dir.mkdir()
    spec, names = _spec(runtime, pids_dir)
    started = runtime.start(spec)
    pids = _wait_for_pids(pids_dir, names)
    leader = int(started.handle.split(":")[0])
    os.kill(leader, signal.SIGKILL)  # the instance dies; its children live on
    runtime._children[started.handle].wait()

    # A new daemon (a new runtime object) finds them as one stray and removes it for real.
    again = ProcessRuntime(runtime.home, python=str(script), accounts=lambda _: None, preload=())
    owned = again.owned()
    assert [o.key for o in owned] == ["orphan:tree/0/1"]
    for o in owned:
        again.stop(o.handle, grace_s=2)
    assert {n: p for n, p in pids.items() if _alive(p)} == {}
    assert again.owned() == []


def test_a_restarted_daemon_adopts_a_live_instance_without_its_children(
    setup: tuple[ProcessRuntime, Path], tmp_path: Path
) -> None:
    runtime, script = setup
    pids_dir = tmp_path / "pids"
    pids_dir.mkdir()
    spec, names = _spec(runtime, pids_dir)
    started = runtime.start(spec)
    pids = _wait_for_pids(pids_dir, names)
    again = ProcessRuntime(runtime.home, python=str(script), accounts=lambda _: None, preload=())
    # The instance itself, once: its children (marker and all) are not instances nor strays.
    assert [(o.handle, o.key) for o in again.owned()] == [(started.handle, "tree/0/1")]
    again.stop(started.handle, grace_s=2)
    assert {n: p for n, p in pids.items() if _alive(p)} == {}
