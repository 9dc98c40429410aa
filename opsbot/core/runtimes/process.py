"""The process runtime, the embedded default: each instance a model server in its own session.

An instance is ``python -m opsbot.serving.server`` started with ``setsid`` (its own process
group, so a dying daemon does not take it along), on a free loopback port, its output in a log
file under ``$OPSBOT_HOME/logs``. Its identity travels in its environment
(``OPSBOT_INSTANCE``, ``OPSBOT_HOME_ID``), which is how a restarted daemon finds and adopts it.

Limits: when running as root with a writable cgroup hierarchy (v2, or v1 ``cpu`` and
``memory``), each instance gets its own cgroup with the flavor's CPU quota and memory limit.
Otherwise memory is capped with ``RLIMIT_DATA`` and CPU only by the thread-pool variables
(``OMP_NUM_THREADS`` and friends): an unprivileged process cannot cap another's CPU time share.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from opsbot.core.flavors import Flavor
from opsbot.core.runtime import (
    Exit,
    InstanceSpec,
    Owned,
    Started,
    device_env,
    failure_reason,
    server_argv,
    thread_env,
)

HOST = "127.0.0.1"
CGROUP_ROOT = Path("/sys/fs/cgroup")
CFS_PERIOD_US = 100_000


def package_root() -> str:
    """The directory holding the opsbot package, so children import this very copy of it."""
    return str(Path(__file__).resolve().parents[3])


def child_pythonpath() -> str:
    current = os.environ.get("PYTHONPATH", "")
    return package_root() + (os.pathsep + current if current else "")


def free_port(host: str = HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks: with the pid, a name no later process reuses."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return fields[19]


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    out: dict[str, str] = {}
    for item in raw.split(b"\0"):
        name, sep, value = item.partition(b"=")
        if sep and name.startswith(b"OPSBOT_"):
            out[name.decode()] = value.decode(errors="replace")
    return out


class CgroupLimiter:
    """Per-instance cgroups (v2 or v1) when root may write them; otherwise rlimits only."""

    def __init__(self, root: Path = CGROUP_ROOT, name: str = "opsbot"):
        self.root = root
        self.name = name
        self.mode = self._detect()

    def _detect(self) -> str:
        if os.geteuid() != 0:
            return "rlimit"
        if (self.root / "cgroup.controllers").exists() and os.access(self.root, os.W_OK):
            return "v2"
        if all(os.access(self.root / c, os.W_OK) for c in ("cpu", "memory")):
            return "v1"
        return "rlimit"

    def _dirs(self, key: str) -> list[Path]:
        leaf = re.sub(r"[^A-Za-z0-9_.-]", "_", key)
        if self.mode == "v2":
            return [self.root / self.name / leaf]
        if self.mode == "v1":
            return [self.root / c / self.name / leaf for c in ("cpu", "memory")]
        return []

    def apply(self, pid: int, key: str, flavor: Flavor) -> str:
        """Cap the process; say how (for the instance's log)."""
        memory = flavor.memory_bytes
        if self.mode != "rlimit":
            try:
                self._cgroup(pid, key, flavor)
                return f"cgroup {self.mode}: {flavor.cpus:g} CPUs, {flavor.memory_gib:g} GiB"
            except OSError as exc:
                self.mode = "rlimit"
                note = f"cgroups unusable ({exc}); "
        else:
            note = ""
        with contextlib.suppress(OSError, ValueError):
            resource.prlimit(pid, resource.RLIMIT_DATA, (memory, memory))
        return f"{note}rlimit: data {flavor.memory_gib:g} GiB, threads {flavor.cpus:g}"

    def _cgroup(self, pid: int, key: str, flavor: Flavor) -> None:
        quota = int(flavor.cpus * CFS_PERIOD_US)
        if self.mode == "v2":
            parent = self.root / self.name
            parent.mkdir(exist_ok=True)
            with contextlib.suppress(OSError):
                (self.root / "cgroup.subtree_control").write_text("+cpu +memory")
            with contextlib.suppress(OSError):
                (parent / "cgroup.subtree_control").write_text("+cpu +memory")
            leaf = self._dirs(key)[0]
            leaf.mkdir(exist_ok=True)
            (leaf / "cpu.max").write_text(f"{quota} {CFS_PERIOD_US}")
            (leaf / "memory.max").write_text(str(flavor.memory_bytes))
            (leaf / "cgroup.procs").write_text(str(pid))
            return
        cpu, mem = self._dirs(key)
        for leaf in (cpu, mem):
            leaf.mkdir(parents=True, exist_ok=True)
        (cpu / "cpu.cfs_period_us").write_text(str(CFS_PERIOD_US))
        (cpu / "cpu.cfs_quota_us").write_text(str(quota))
        (mem / "memory.limit_in_bytes").write_text(str(flavor.memory_bytes))
        for leaf in (cpu, mem):
            (leaf / "cgroup.procs").write_text(str(pid))

    def memory_limit(self, key: str) -> int:
        """The memory cap of the instance's cgroup in bytes; 0 when none holds it."""
        for leaf in self._dirs(key):
            for name in ("memory.max", "memory.limit_in_bytes"):
                with contextlib.suppress(OSError, ValueError):
                    return int((leaf / name).read_text().strip())
        return 0

    def release(self, key: str) -> None:
        for leaf in self._dirs(key):
            with contextlib.suppress(OSError):
                leaf.rmdir()


class ProcessRuntime:
    """Model servers as local processes (see the module docstring for limits)."""

    name = "process"

    def __init__(
        self, home: Path, *, python: str = sys.executable, limiter: CgroupLimiter | None = None
    ):
        self.home = Path(home).resolve()
        self.python = python
        self.limiter = limiter or CgroupLimiter()
        self.log_dir = self.home / "logs"
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._keys: dict[str, str] = {}

    def log_path(self, key: str) -> Path:
        return self.log_dir / (key.replace("/", "-") + ".log")

    def start(self, spec: InstanceSpec) -> Started:
        port = free_port()
        log_path = self.log_path(spec.key)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("OPSBOT_") and k not in {"CUDA_VISIBLE_DEVICES"}
        }
        env.update(spec.env)
        env.update(thread_env(spec.flavor))
        env.update(device_env(spec.flavor, spec.devices))
        env.update(
            {
                "OPSBOT_INSTANCE": spec.key,
                "OPSBOT_HOME_ID": str(self.home),
                "OPSBOT_PORT": str(port),
                "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": child_pythonpath(),
            }
        )
        argv = server_argv(self.python, str(spec.path), spec, HOST, port)
        with open(log_path, "ab") as log:
            log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} start {spec.key}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=str(self.home),
                start_new_session=True,
            )
        how = self.limiter.apply(proc.pid, spec.key, spec.flavor)
        with open(log_path, "ab") as log:
            log.write(f"--- limits: {how}\n".encode())
        handle = f"{proc.pid}:{_start_time(proc.pid) or '0'}"
        self._children[handle] = proc
        self._keys[handle] = spec.key
        return Started(handle, HOST, port)

    @staticmethod
    def _pid(handle: str) -> int:
        return int(handle.split(":", 1)[0])

    def exited(self, handle: str) -> Exit | None:
        proc = self._children.get(handle)
        if proc is not None:
            code = proc.poll()
            if code is None:
                return None
            return Exit(code, failure_reason(self._log_lines(handle), code))
        pid_text, _, started = handle.partition(":")
        if _start_time(int(pid_text)) == started:
            return None
        return Exit(None, failure_reason(self._log_lines(handle), None))

    def stop(self, handle: str, grace_s: float = 10.0) -> None:
        pid = self._pid(handle)
        if self.exited(handle) is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline and self.exited(handle) is None:
                time.sleep(0.05)
            if self.exited(handle) is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
                proc = self._children.get(handle)
                if proc is not None:
                    proc.wait(timeout=5)
        self._children.pop(handle, None)
        key = self._keys.pop(handle, None)
        if key:
            self.limiter.release(key)

    def owned(self) -> Sequence[Owned]:
        found: list[Owned] = []
        home = str(self.home)
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            env = _environ(pid)
            if env.get("OPSBOT_HOME_ID") != home or "OPSBOT_INSTANCE" not in env:
                continue
            started = _start_time(pid)
            if started is None:
                continue
            handle = f"{pid}:{started}"
            self._keys.setdefault(handle, env["OPSBOT_INSTANCE"])
            found.append(Owned(handle, env["OPSBOT_INSTANCE"], HOST, int(env["OPSBOT_PORT"])))
        return found

    def _log_lines(self, handle: str, tail: int = 50) -> list[str]:
        key = self._keys.get(handle)
        return tail_lines(self.log_path(key), tail) if key else []

    def logs(self, handle: str, tail: int = 100) -> list[str]:
        return self._log_lines(handle, tail)

    def stats(self, handle: str, sample_s: float = 0.5) -> dict[str, float] | None:
        """CPU % (over ``sample_s``) and resident memory of the instance's process group,
        with the memory cap when a cgroup holds it; None once it has ended."""
        pid = self._pid(handle)
        if self.exited(handle) is not None:
            return None
        first = _group_usage(pid)
        time.sleep(sample_s)
        second = _group_usage(pid)
        if first is None or second is None:
            return None
        ticks = os.sysconf("SC_CLK_TCK")
        percent = 100.0 * (second[0] - first[0]) / ticks / sample_s
        key = self._keys.get(handle) or _environ(pid).get("OPSBOT_INSTANCE", "")
        return {
            "cpu_percent": round(max(0.0, percent), 1),
            "memory_bytes": float(second[1]),
            "memory_limit_bytes": float(self.limiter.memory_limit(key) if key else 0),
        }


def _group_usage(pgid: int) -> tuple[int, int] | None:
    """CPU ticks used (user + system) and resident bytes of every process in the group."""
    ticks = rss = 0
    found = False
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) != pgid:  # field 5 of stat: the process group
            continue
        found = True
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
        rss += int(fields[21]) * page
    return (ticks, rss) if found else None


def tail_lines(path: Path, n: int) -> list[str]:
    """The last n lines of a text file, reading only its end."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read()
    except OSError:
        return []
    return data.decode(errors="replace").splitlines()[-n:]
