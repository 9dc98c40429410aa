"""The process runtime, the embedded default: each instance a model server in its own session.

An instance is ``python -m opsbot.serving.server`` started with ``setsid`` (its own process
group, so a dying daemon does not take it along), its output in a log file under
``$OPSBOT_HOME/logs``. It serves on a unix socket the daemon binds and passes it
(``--listen-fd``), in a directory of the run directory only the daemon's account may enter
(:data:`SOCKETS`, 0700): no port to race another program for, and no other account can connect
(the gateway and the controller run as the daemon). The instance never has write access there,
so it cannot swap its socket for another; the socket file goes when the instance is removed.
An instance is a fork of the interpreter's preloader (:mod:`opsbot.core.zygote`, which has
imported the model libraries once) when preloading is on, else a new interpreter. A
restarted daemon adopts instances, their sockets' paths included, from its private records
(``$OPSBOT_HOME/instances``); processes left without a record are found by their environment
(``OPSBOT_HOME_ID``), which ``/proc`` shows for a new interpreter and for anything a model
starts (a fork's shows the preloader's), and stopped as strays.

Limits: when running as root with a writable cgroup hierarchy (v2, or v1 ``cpu`` and
``memory``), each instance gets its own cgroup with the flavor's CPU quota and memory limit.
Otherwise memory is capped with ``RLIMIT_DATA``, which the instance sets itself as it starts,
soft and hard, before it takes its owner's account (:mod:`opsbot.core.gate`), and CPU only by the
thread-pool variables (``OMP_NUM_THREADS`` and friends): an unprivileged process cannot cap
another's CPU time share.
Logs: each instance's (and the preloader's) is kept within :data:`opsbot.core.logcap.LOG_CAP`,
rotated on the controller's passes, with a file size cap every instance gets from its gate
(:mod:`opsbot.core.gate`) before it takes its owner's account.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import resource
import secrets
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from opsbot.core.accounts import Account, runtime_account
from opsbot.core.address import LISTEN_BACKLOG, unix_address
from opsbot.core.config import load_config
from opsbot.core.errors import OpsbotError
from opsbot.core.flavors import Flavor
from opsbot.core.instance_auth import INSTANCE_SECRET_ENV, daemon_secret, instance_secret
from opsbot.core.logcap import LOG_CAP, LogCap, rotate, tail_lines
from opsbot.core.runtime import (
    Exit,
    InstanceSpec,
    Owned,
    Started,
    device_env,
    failure_reason,
    server_args,
    server_argv,
    thread_env,
)
from opsbot.core.sandbox import (
    MARKER,
    clean_env,
    corner,
    environ_value,
    kill_tree,
    pick_python,
    private_dir,
    release,
    release_corner,
    remove_tree,
    run_root_path,
    run_subdir,
    spawn,
    stage,
    tree,
)
from opsbot.core.store import DB_NAME, Store
from opsbot.core.zygote import LISTEN_FD, Held, Zygote, ZygoteError

log = logging.getLogger("opsbot.core.runtimes.process")

HOST = "127.0.0.1"
CGROUP_ROOT = Path("/sys/fs/cgroup")
CFS_PERIOD_US = 100_000
PRELOADER_LOG = "preloader.log"
#: The directory of the run directory holding the instances' sockets.
SOCKETS = "sockets"
#: The longest path a unix socket may have (sun_path's 108 bytes, less the final NUL).
MAX_SOCKET_PATH = 107


def package_root() -> str:
    """The directory holding the opsbot package, so children import this very copy of it."""
    return str(Path(__file__).resolve().parents[3])


def child_pythonpath() -> str:
    current = os.environ.get("PYTHONPATH", "")
    return package_root() + (os.pathsep + current if current else "")


def model_pythonpath(python: str) -> str:
    """PYTHONPATH for model code run by ``python``: this opsbot first, then, when ``python`` is
    another interpreter than the daemon's (``model_python``), the daemon's own packages."""
    parts = [child_pythonpath()]
    if os.path.realpath(python) != os.path.realpath(sys.executable):
        paths = sysconfig.get_paths()
        parts += dict.fromkeys([paths["purelib"], paths["platlib"]])
    return os.pathsep.join(parts)


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

    def dirs(self, key: str) -> list[Path]:
        """The instance's cgroup directories (none in rlimit mode)."""
        leaf = re.sub(r"[^A-Za-z0-9_.-]", "_", key)
        if self.mode == "v2":
            return [self.root / self.name / leaf]
        if self.mode == "v1":
            return [self.root / c / self.name / leaf for c in ("cpu", "memory")]
        return []

    def data_cap(self, flavor: Flavor) -> int | None:
        """The data-segment cap an instance sets itself before it takes its account (see
        :mod:`opsbot.core.gate`): the flavor's memory, when no cgroup will hold it."""
        return flavor.memory_bytes if self.mode == "rlimit" else None

    def apply(self, pid: int, key: str, flavor: Flavor, data_capped: bool) -> str:
        """Cap the process; say how (for the instance's log). ``data_capped``: it capped its
        data segment itself as it started (:meth:`data_cap`)."""
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
        if not data_capped:
            # Only here when the cgroup failed just now: from outside, which another account's
            # process allows only with CAP_SYS_RESOURCE. Said as it is when it does not take.
            try:
                resource.prlimit(pid, resource.RLIMIT_DATA, (memory, memory))
            except (OSError, ValueError) as exc:
                return f"{note}memory NOT capped ({exc}), threads {flavor.cpus:g}"
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
            leaf = self.dirs(key)[0]
            leaf.mkdir(exist_ok=True)
            (leaf / "cpu.max").write_text(f"{quota} {CFS_PERIOD_US}")
            (leaf / "memory.max").write_text(str(flavor.memory_bytes))
            (leaf / "cgroup.procs").write_text(str(pid))
            return
        cpu, mem = self.dirs(key)
        for leaf in (cpu, mem):
            leaf.mkdir(parents=True, exist_ok=True)
        (cpu / "cpu.cfs_period_us").write_text(str(CFS_PERIOD_US))
        (cpu / "cpu.cfs_quota_us").write_text(str(quota))
        (mem / "memory.limit_in_bytes").write_text(str(flavor.memory_bytes))
        for leaf in (cpu, mem):
            (leaf / "cgroup.procs").write_text(str(pid))

    def memory_limit(self, key: str) -> int:
        """The memory cap of the instance's cgroup in bytes; 0 when none holds it."""
        for leaf in self.dirs(key):
            for name in ("memory.max", "memory.limit_in_bytes"):
                with contextlib.suppress(OSError, ValueError):
                    return int((leaf / name).read_text().strip())
        return 0

    def release(self, key: str) -> None:
        for leaf in self.dirs(key):
            with contextlib.suppress(OSError):
                leaf.rmdir()


@dataclass(frozen=True)
class _Record:
    """What the daemon keeps, privately, of an instance it started: how to find all of it."""

    key: str
    handle: str
    port: int
    marker: str
    #: The unix socket it serves on ("": a record from before, of an instance on ``port``).
    socket: str = ""

    @property
    def address(self) -> tuple[str, int]:
        return unix_address(self.socket) if self.socket else (HOST, self.port)

    @property
    def leaf(self) -> str:
        return instance_leaf(self.key)


def instance_leaf(key: str) -> str:
    """An instance key (``uid/idx/n``) as one file name."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", key)


def fitting_socket_path(path: Path) -> Path:
    """``path``, refused before anything is made when it is too long for a unix socket (the
    run directory is)."""
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise OpsbotError(
            f"the instance socket {path} would be longer than the {MAX_SOCKET_PATH} bytes a "
            "unix socket path may have: set run_dir in config.toml to a shorter path",
            field="run_dir",
        )
    return path


class ProcessRuntime:
    """Model servers as local processes (see the module docstring for limits)."""

    name = "process"

    def __init__(
        self,
        home: Path,
        *,
        python: str | None = None,
        limiter: CgroupLimiter | None = None,
        accounts: Callable[[str], Account | None] | None = None,
        run_dir: Path | None = None,
        preload: Sequence[str] | None = None,
        log_cap: LogCap = LOG_CAP,
    ):
        """``log_cap``: how much log each instance (and the preloader) keeps; tests shrink it."""
        self.home = Path(home).resolve()
        #: The interpreter configured for model code (None: see sandbox.pick_python).
        needed = python is None or run_dir is None or preload is None
        config = load_config(self.home) if needed else None
        self.python = config.model_python if python is None and config else python
        self._run_dir_setting = str(run_dir) if run_dir else config.run_dir if config else None
        #: What each interpreter's preloader imports ([]: every instance starts cold).
        self.preload = list(
            preload if preload is not None else config.model_preload if config else []
        )
        #: One per interpreter and thread count: (python, OMP_NUM_THREADS) -> its preloader.
        self._zygotes: dict[tuple[str, str], Zygote] = {}
        self._cold: set[str] = set()  # interpreters whose preloader failed: said once, not retried
        self._zygote_lock = threading.Lock()
        self._forks: dict[str, Zygote] = {}  # handle -> the preloader it was forked from
        self.limiter = limiter or CgroupLimiter()
        self.log_dir = self.home / "logs"
        self.log_cap = log_cap
        self.records_dir = self.home / "instances"
        self._accounts = accounts
        self._store: Store | None = None
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._keys: dict[str, str] = {}

    @property
    def run_dir(self) -> Path:
        """Each instance's own directory lives here, outside OPSBOT_HOME."""
        return run_root_path(self.home, self._run_dir_setting)

    def account(self, owner: str) -> Account | None:
        """Who the owner's instances run as (None: the daemon's own account, when not root)."""
        if self._accounts is not None:
            return self._accounts(owner)
        if self._store is None:
            self._store = Store(self.home / DB_NAME)
        return runtime_account(self._store, owner)

    def log_path(self, key: str) -> Path:
        return self.log_dir / (key.replace("/", "-") + ".log")

    @property
    def socket_dir(self) -> Path:
        """Where the instances' sockets are (see :data:`SOCKETS`)."""
        return self.run_dir / SOCKETS

    def _socket_path(self, leaf: str) -> Path:
        """A new socket path for the instance ``leaf``; refused, before anything is made, when
        the run directory is too long a path for a unix socket."""
        return fitting_socket_path(self.socket_dir / f"{leaf}.{secrets.token_hex(4)}.sock")

    def _bind(self, path: Path) -> socket.socket:
        """A new listening unix socket at ``path`` in :attr:`socket_dir` (made 0700 if need be,
        refused when it is not this account's own directory)."""
        run_subdir(self.home, self._run_dir_setting, SOCKETS)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(path))
            sock.listen(LISTEN_BACKLOG)
        except BaseException:
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            raise
        return sock

    def start(self, spec: InstanceSpec) -> Started:
        log_path = self.log_path(spec.key)
        private_dir(self.log_dir)
        private_dir(self.records_dir)
        account = self.account(spec.owner)
        python = pick_python(self.python, account)
        socket_path = self._socket_path(instance_leaf(spec.key))
        # The instance's own corner: its version's files read-only, a scratch home, nothing else.
        base = corner(self.home, self._run_dir_setting, instance_leaf(spec.key))
        held: Held | _Cold | None = None
        data = self.limiter.data_cap(spec.flavor)
        listening: socket.socket | None = None
        try:
            listening = self._bind(socket_path)
            model = stage(spec.path, base / "model", account)
            scratch = base / "home"
            scratch.mkdir(mode=0o700)
            if account is not None:
                os.chown(scratch, account.uid, account.gid)
                os.chown(base, account.uid, account.gid)
            os.chmod(base, 0o500)
            marker = secrets.token_hex(16)
            env = clean_env(
                {
                    **spec.env,
                    **thread_env(spec.flavor),
                    **device_env(spec.flavor, spec.devices),
                    "HOME": str(scratch),
                    "TMPDIR": str(scratch),
                    "PWD": str(scratch),
                    "PYTHONUNBUFFERED": "1",
                    "PYTHONPATH": model_pythonpath(python),
                    "OPSBOT_INSTANCE": spec.key,
                    "OPSBOT_HOME_ID": str(self.home),
                    INSTANCE_SECRET_ENV: instance_secret(
                        daemon_secret(self.home), spec.service_uid, spec.idx
                    ),
                    MARKER: marker,
                }
            )
            # O_APPEND: each write lands at the end, also once rotation has truncated the file.
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW
            fd = os.open(log_path, flags, 0o600)
            with open(fd, "ab") as log_file:
                who = f"uid {account.uid}" if account else "the daemon's account"
                log_file.write(
                    f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} start {spec.key} as {who}\n".encode()
                )
                log_file.flush()
                zygote = self._zygote(python, thread_env(spec.flavor))
                if zygote is not None:
                    try:
                        held = zygote.spawn(
                            server_args(str(model), spec, HOST, 0, LISTEN_FD),
                            env=env,
                            cwd=scratch,
                            account=account,
                            log_fd=log_file.fileno(),
                            listen_fd=listening.fileno(),
                            file_size=self.log_cap.backstop_bytes,
                            data=data,
                        )
                    except ZygoteError as exc:
                        log.warning("%s: starting cold: %s", spec.key, exc)
                if held is None:
                    argv = server_argv(python, str(model), spec, HOST, 0, listening.fileno())
                    proc = spawn(
                        argv,
                        account=account,
                        env=env,
                        cwd=scratch,
                        stdout=log_file,
                        stderr=log_file,
                        held=True,
                        file_size=self.log_cap.backstop_bytes,
                        data=data,
                        pass_fds=(listening.fileno(),),
                    )
                    held = _Cold(proc)
        except BaseException:
            if held is None:  # nothing runs from it: its copy and socket go now
                release_corner(base)
                if listening is not None:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(listening.getsockname())
            raise
        finally:
            if listening is not None:  # the instance has its own: the daemon keeps none open
                listening.close()
        try:  # in its cgroup before it runs anything, so all it forks is in there too
            how = self.limiter.apply(held.pid, spec.key, spec.flavor, data is not None)
        finally:
            held.release()
        start = "forked from the preloader" if isinstance(held, Held) else "a new interpreter"
        files = f"files up to {self.log_cap.backstop_bytes} bytes"
        with open(log_path, "ab") as log_file:
            log_file.write(f"--- limits: {how}; {files}; {start}\n".encode())
        pid = held.pid
        handle = f"{pid}:{_start_time(pid) or '0'}"
        if isinstance(held, _Cold):
            self._children[handle] = held.proc
        elif zygote is not None:
            self._forks[handle] = zygote
        self._keys[handle] = spec.key
        previous = self._leaf_record(instance_leaf(spec.key))
        if previous is not None and not self._alive(previous.handle):
            # The instance this one replaces under its key ended (the controller starts a
            # crashed one again without a stop): its record goes now, its socket with it.
            _unlink_socket(previous)
        self._write_record(_Record(spec.key, handle, 0, marker, str(socket_path)))
        return Started(handle, *unix_address(str(socket_path)))

    # -- records: the daemon's private list of what it started --------------------------------

    def _write_record(self, record: _Record) -> None:
        path = self.records_dir / f"{record.leaf}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(record)))
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)

    def _records(self) -> list[_Record]:
        out: list[_Record] = []
        if not self.records_dir.is_dir():
            return out
        for path in sorted(self.records_dir.glob("*.json")):
            with contextlib.suppress(OSError, ValueError, TypeError):
                out.append(_Record(**json.loads(path.read_text())))
        return out

    def _leaf_record(self, leaf: str) -> _Record | None:
        with contextlib.suppress(OSError, ValueError, TypeError):
            return _Record(**json.loads((self.records_dir / f"{leaf}.json").read_text()))
        return None

    def _record(self, handle: str) -> _Record | None:
        return next((r for r in self._records() if r.handle == handle), None)

    @staticmethod
    def _pid(handle: str) -> int:
        return int(handle.split(":", 1)[0])

    @staticmethod
    def _alive(handle: str) -> bool:
        pid_text, _, started = handle.partition(":")
        return _start_time(int(pid_text)) == started

    def exited(self, handle: str) -> Exit | None:
        proc = self._children.get(handle)
        if proc is not None:
            code = proc.poll()
            if code is None:
                return None
            return Exit(code, failure_reason(self._log_lines(handle), code))
        if self._alive(handle):
            return None
        zygote = self._forks.get(handle)
        if zygote is not None:
            code = zygote.exit_code(self._pid(handle))
            if code is None and zygote.running:
                return None  # gone, and the preloader is about to say how
            return Exit(code, failure_reason(self._log_lines(handle), code))
        return Exit(None, failure_reason(self._log_lines(handle), None))

    def foreign_listener(self, handle: str, host: str, port: int) -> str | None:
        """None: an instance serves on a socket the daemon bound itself and handed over."""
        return None

    def stop(self, handle: str, grace_s: float = 10.0) -> None:
        """End the instance and everything it started (its cgroup, its session, every process
        carrying its marker), then remove its files. Idempotent."""
        record = self._record(handle)
        pid = self._pid(handle)
        key = record.key if record else self._keys.get(handle)
        marker = record.marker if record else sandbox_marker(pid)
        leader = pid if self._alive(handle) else -1  # a dead leader's pid may be someone else's
        procs = [d / "cgroup.procs" for d in self.limiter.dirs(key)] if key else []
        kill_tree(
            leader, marker, cgroup_procs=procs, grace_s=grace_s, reap=self._children.get(handle)
        )
        proc = self._children.pop(handle, None)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        zygote = self._forks.pop(handle, None)
        if zygote is not None:
            zygote.forget(pid)
        self._keys.pop(handle, None)
        if key:
            self.limiter.release(key)
            if not any(r.key == key and r.handle != handle for r in self._records()):
                release_corner(self.run_dir / instance_leaf(key))
        if record is not None:
            self._drop_record(record)

    # -- the preloaders ------------------------------------------------------------------------

    def _zygote(self, python: str, threads: dict[str, str]) -> Zygote | None:
        """The running preloader for ``python`` with these thread-pool variables (the libraries
        size their pools as they load), started and waited for on first use; None when
        preloading is off or this interpreter's preloader could not start."""
        if not self.preload:
            return None
        key = (python, threads.get("OMP_NUM_THREADS", ""))
        with self._zygote_lock:
            zygote = self._zygotes.get(key)
            if zygote is None or not zygote.running:
                if python in self._cold:
                    return None
                private_dir(self.log_dir)
                base = {"PYTHONPATH": model_pythonpath(python), "PYTHONUNBUFFERED": "1"}
                zygote = Zygote(
                    python,
                    env=clean_env({**base, **threads}),
                    preload=self.preload,
                    log_path=self.log_dir / PRELOADER_LOG,
                    log_cap=self.log_cap,
                )
                zygote.start()
                self._zygotes[key] = zygote
        if zygote.wait_ready():
            return zygote
        with self._zygote_lock:
            if python not in self._cold:
                self._cold.add(python)
                log.warning("instances of %s start cold (no preloader): %s", python, zygote.problem)
        zygote.close()
        return None

    def warm(self, flavor: Flavor) -> None:
        """Start (and wait for) the preloader an instance of ``flavor`` forks from, so that the
        first deploy after ``opsbot up`` does not wait for its imports."""
        try:
            python = pick_python(self.python, None)
        except OpsbotError as exc:
            log.warning("no preloader: %s", exc)
            return
        self._zygote(python, thread_env(flavor))

    def close(self) -> None:
        """End the preloaders (the instances forked from them run on)."""
        with self._zygote_lock:
            zygotes, self._zygotes = list(self._zygotes.values()), {}
        for zygote in zygotes:
            zygote.close()

    def rotate_logs(self) -> None:
        """Rotate each running instance's log, and the preloaders', once past the cap (see
        :mod:`opsbot.core.logcap`); the controller calls it on every pass."""
        paths = {self.log_path(key) for key in list(self._keys.values())}
        for path in sorted(paths | {self.log_dir / PRELOADER_LOG}):
            try:
                rotate(path, self.log_cap)
            except OSError as exc:  # a full disk, say: the backstop still holds
                log.warning("could not rotate %s: %s", path, exc)

    def release(self, service_uid: str, keep: Collection[int]) -> None:
        """Nothing to do: each instance's copy is its own, removed when it stops."""

    def sweep(self, keep: Mapping[str, Collection[int]]) -> None:
        """Remove the instance directories and sockets no record names (a daemon killed while
        starting one); those of recorded instances go when they stop, strays' included."""
        records = self._records()
        recorded = {r.leaf for r in records}
        sockets = {r.socket for r in records}
        with contextlib.suppress(FileNotFoundError):
            with os.scandir(self.socket_dir) as entries:
                stale = [e.path for e in entries if e.path not in sockets]
            for path in stale:
                log.info("removing %s: no instance of it is recorded", path)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        try:
            with os.scandir(self.run_dir) as entries:
                leaves = [e.name for e in entries if e.is_dir(follow_symlinks=False)]
        except FileNotFoundError:
            return
        for leaf in leaves:
            uid_idx_n = leaf.rsplit("_", 2)
            is_instance = len(uid_idx_n) == 3 and all(part.isdigit() for part in uid_idx_n[1:])
            if is_instance and leaf not in recorded:
                log.info("removing %s: no instance of it is recorded", leaf)
                remove_tree(self.run_dir / leaf)

    def _forget(self, record: _Record) -> None:
        self.limiter.release(record.key)
        release_corner(self.run_dir / record.leaf)
        self._drop_record(record)

    def _drop_record(self, record: _Record) -> None:
        """The instance is gone: its socket file and its record go too."""
        _unlink_socket(record)
        with contextlib.suppress(FileNotFoundError):
            (self.records_dir / f"{record.leaf}.json").unlink()

    def owned(self) -> Sequence[Owned]:
        """The instances this daemon started that still run, then one entry per orphan: a
        process left by an instance that ended (or of a record lost), which the controller stops
        as a stray. Orphans are named ``orphan:KEY`` so no service claims them."""
        found: list[Owned] = []
        live_markers: set[str] = set()
        seen: set[str] = set()
        for record in self._records():
            if self._alive(record.handle):
                self._keys.setdefault(record.handle, record.key)
                found.append(Owned(record.handle, record.key, *record.address))
                live_markers.add(record.marker)
            elif record.marker not in seen and tree(
                -1, record.marker, [d / "cgroup.procs" for d in self.limiter.dirs(record.key)]
            ):
                found.append(Owned(record.handle, f"orphan:{record.key}", *record.address))
            else:  # ended with nothing left behind: its files go
                self._forget(record)
            seen.add(record.marker)
        home = str(self.home)
        for pid in _all_pids():
            env = _environ(pid)
            if env.get("OPSBOT_HOME_ID") != home:
                continue
            marker = sandbox_marker(pid) or f"pid:{pid}"
            if marker in live_markers or marker in seen:
                continue
            started = _start_time(pid)
            if started is None:
                continue
            seen.add(marker)
            key = env.get("OPSBOT_INSTANCE", "?")
            # Its address is not known (nor needed: an orphan is only stopped).
            found.append(Owned(f"{pid}:{started}", f"orphan:{key}", HOST, 0))
        return found

    def _log_lines(self, handle: str, tail: int = 50) -> list[str]:
        key = self._keys.get(handle)
        return tail_lines(self.log_path(key), tail, self.log_cap.files) if key else []

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


class _Cold:
    """A model server started as a new interpreter, held like a fork (see ``sandbox.spawn``)."""

    def __init__(self, proc: subprocess.Popen[bytes]):
        self.proc = proc
        self.pid = proc.pid

    def release(self) -> None:
        release(self.proc)


def _unlink_socket(record: _Record) -> None:
    if record.socket:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(record.socket)


def sandbox_marker(pid: int) -> str | None:
    return environ_value(pid, MARKER)


def _all_pids() -> list[int]:
    return [int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit()]


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
