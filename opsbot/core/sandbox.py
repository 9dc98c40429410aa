"""Where untrusted model code runs, and how what it reads gets there.

Three tools, shared by the registry's check and the process runtime:

- :func:`copy_tree`: copy a user's model directory without following a symlink out of it, with a
  bounded walk (files, bytes, depth), every file opened relative to its directory's descriptor
  with ``O_NOFOLLOW`` (so a file swapped for a symlink between listing and reading is refused,
  not followed), and, for a caller whose rights are narrower than the daemon's, every opened file
  checked readable by that caller.
- :func:`stage`: a private copy of a version's files for one account (owned by it, read-only),
  so model code reads its own version and nothing of ``OPSBOT_HOME``.
- :func:`spawn` and :func:`kill_tree`: start a process as an account in its own session with a
  clean environment, and end it with everything it started, ``setsid`` or not (its cgroup when
  it has one, its session and process group, and every process carrying its marker).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from opsbot.core.accounts import Account
from opsbot.core.errors import ModelInvalid, OpsbotError, PermissionDenied
from opsbot.core.gate import gate_argv

#: Defaults of the bounded walk over a directory handed to ``model create``.
MAX_FILES = 10_000
MAX_BYTES = 20 * 1024**3
MAX_DEPTH = 32
#: The variable every sandboxed process starts with; its value names the sandbox.
MARKER = "OPSBOT_SANDBOX"
#: The daemon's control socket under $OPSBOT_HOME.
SOCKET_NAME = "opsbot.sock"
#: Variables model code may see besides the spec's env and opsbot's own ``OPSBOT_*``.
BASE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@dataclass(frozen=True)
class Reader:
    """A caller whose own read rights bound what the daemon copies for them."""

    name: str
    uid: int
    gids: frozenset[int]

    def may(self, st: os.stat_result, need: int) -> bool:
        """Whether the mode bits grant ``need`` (4 read, 1 search/execute, 5 both)."""
        if self.uid == 0:
            return True
        shift = 6 if st.st_uid == self.uid else 3 if st.st_gid in self.gids else 0
        return (st.st_mode >> shift) & need == need


def reader_for(name: str) -> Reader | None:
    """The read rights ``model create`` copies with for a caller: a local account's own; None
    when the caller is the daemon's account or root (the copy itself is then the check).
    PermissionDenied for a caller with no local account (a Slack-only user)."""
    if name == _own_name():
        return None
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise PermissionDenied(
            f"{name} is not a local account: create models from a path as a local user over "
            "the control socket"
        ) from None
    if entry.pw_uid == 0:
        return None
    return Reader(name, entry.pw_uid, frozenset(os.getgrouplist(name, entry.pw_gid)))


def _own_name() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"uid{os.geteuid()}"


@dataclass(frozen=True)
class Limits:
    files: int = MAX_FILES
    bytes: int = MAX_BYTES
    depth: int = MAX_DEPTH


class _Walk:
    def __init__(self, src: Path, reader: Reader | None, limits: Limits):
        self.src = src
        self.reader = reader
        self.limits = limits
        self.files = 0
        self.bytes = 0

    def refuse(self, rel: str, why: str) -> ModelInvalid:
        where = self.src / rel if rel else self.src
        return ModelInvalid(f"{where}: {why}", field="path")

    def check(self, st: os.stat_result, rel: str, need: int) -> None:
        if self.reader is not None and not self.reader.may(st, need):
            raise ModelInvalid(
                f"{self.reader.name} may not read {self.src / rel}; the daemon copies only what "
                "you can read yourself: fix its permissions (chmod) or leave it out",
                field="path",
            )

    def count(self, rel: str, size: int) -> None:
        self.files += 1
        self.bytes += size
        if self.files > self.limits.files:
            raise self.refuse(
                rel, f"more than {self.limits.files} files: copy only what the model needs"
            )
        if self.bytes > self.limits.bytes:
            raise self.refuse(
                rel,
                f"more than {self.limits.bytes / 1024**3:g} GiB: copy only what the model needs",
            )


def open_dir(path: Path, reader: Reader | None = None) -> int:
    """A descriptor of the directory ``path`` (resolved first), opened one component at a time
    without following symlinks, each component searchable by ``reader``."""
    resolved = path.expanduser().resolve()
    fd = os.open("/", _DIR_FLAGS)
    try:
        for part in resolved.parts[1:]:
            st = os.fstat(fd)
            if reader is not None and not reader.may(st, 1):
                raise ModelInvalid(
                    f"{reader.name} may not enter a directory above {resolved}", field="path"
                )
            nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nxt
    except FileNotFoundError:
        os.close(fd)
        raise ModelInvalid(
            f"{resolved} is not a directory (nothing is there): give the model's directory",
            field="path",
        ) from None
    except NotADirectoryError:
        os.close(fd)
        raise ModelInvalid(f"{resolved} is not a directory", field="path") from None
    except OSError as exc:
        os.close(fd)
        if exc.errno == errno.ELOOP:
            raise ModelInvalid(
                f"{resolved} changed while it was opened; retry", field="path"
            ) from None
        raise ModelInvalid(f"cannot open {resolved}: {exc.strerror}", field="path") from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def copy_tree(
    src: Path, dest: Path, *, reader: Reader | None = None, limits: Limits | None = None
) -> None:
    """Copy the directory ``src`` to ``dest`` (which must not exist) as plain files.

    A symlink to a file inside ``src`` is copied as that file; any other symlink (out of the
    directory, to a directory, a chain of links) and anything but files and directories is
    refused with ModelInvalid naming it, as is a walk past the limits. Nothing is followed out
    of ``src``. ``dest`` is private to the daemon (0700 directories, 0600 files).
    """
    walk = _Walk(src, reader, limits or Limits())
    root = open_dir(src, reader)
    try:
        walk.check(os.fstat(root), "", 5)
        os.mkdir(dest, 0o700)
        _copy_dir(walk, root, root, "", dest, 0)
    finally:
        os.close(root)


def _copy_dir(walk: _Walk, root: int, fd: int, rel: str, dest: Path, depth: int) -> None:
    if depth > walk.limits.depth:
        raise walk.refuse(rel, f"nested deeper than {walk.limits.depth} directories")
    for name in sorted(os.listdir(fd)):
        sub = f"{rel}/{name}" if rel else name
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            child = _open_at(walk, fd, name, sub, _DIR_FLAGS)
            try:
                walk.check(os.fstat(child), sub, 5)
                os.mkdir(dest / name, 0o700)
                _copy_dir(walk, root, child, sub, dest / name, depth + 1)
            finally:
                os.close(child)
        elif stat.S_ISREG(st.st_mode):
            _copy_file(walk, _open_at(walk, fd, name, sub, _FILE_FLAGS), sub, dest / name)
        elif stat.S_ISLNK(st.st_mode):
            target = os.readlink(name, dir_fd=fd)
            _copy_file(walk, _open_link_target(walk, root, rel, sub, target), sub, dest / name)
        else:
            raise walk.refuse(sub, "not a file or directory (a device, pipe or socket)")


def _open_at(walk: _Walk, fd: int, name: str, rel: str, flags: int) -> int:
    try:
        return os.open(name, flags, dir_fd=fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):
            raise walk.refuse(rel, "changed while it was copied (now a symlink?); retry") from None
        raise walk.refuse(rel, f"cannot open: {exc.strerror}") from None


def _open_link_target(walk: _Walk, root: int, rel_dir: str, rel: str, target: str) -> int:
    """Open the file a symlink names, when it lies inside the copied directory, walking from the
    root's descriptor without following any further link."""
    base = Path(rel_dir) if rel_dir else Path()
    if os.path.isabs(target):
        try:
            inside = Path(target).relative_to(walk.src.expanduser().resolve())
        except ValueError:
            raise walk.refuse(
                rel, f"a symlink to {target}, outside the directory: copy the file in instead"
            ) from None
    else:
        inside = Path(os.path.normpath(base / target))
    if inside.parts[:1] == ("..",) or str(inside) in (".", ""):
        raise walk.refuse(
            rel, f"a symlink to {target}, outside the directory: copy the file in instead"
        )
    fd = os.dup(root)
    try:
        for part in inside.parts[:-1]:
            nxt = _open_at(walk, fd, part, rel, _DIR_FLAGS)
            os.close(fd)
            fd = nxt
        st = os.stat(inside.parts[-1], dir_fd=fd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            raise walk.refuse(
                rel,
                f"a symlink to the directory {target}: directory links (and loops) are refused; "
                "copy the directory in instead",
            )
        if stat.S_ISLNK(st.st_mode):
            raise walk.refuse(rel, f"a symlink to a symlink ({target}): link the file itself")
        return _open_at(walk, fd, inside.parts[-1], rel, _FILE_FLAGS)
    finally:
        os.close(fd)


def _copy_file(walk: _Walk, fd: int, rel: str, dest: Path) -> None:
    with open(fd, "rb", closefd=True) as src:
        st = os.fstat(src.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise walk.refuse(rel, "not a regular file")
        walk.check(st, rel, 4)
        walk.count(rel, st.st_size)
        out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with open(out, "wb", closefd=True) as dst:
            copied = 0
            while chunk := src.read(1024 * 1024):
                copied += len(chunk)
                if copied > st.st_size:  # it grows while we read: count what we write
                    walk.count(rel, len(chunk))
                dst.write(chunk)


# -- staging and private files ---------------------------------------------------------------


def stage(src: Path, dest: Path, account: Account | None, *, world: bool = False) -> Path:
    """A read-only copy of ``src`` at ``dest`` for ``account``: owned by it (when the daemon may
    chown), directories 0500 and files 0400, nothing else of the daemon's reachable from it.
    ``world``: readable by every account instead (0555/0444), for a reader the daemon cannot
    chown to (a container's user when the daemon is not root)."""
    if dest.exists():
        remove_tree(dest)
    dirs_mode, files_mode = (0o555, 0o444) if world else (0o500, 0o400)
    shutil.copytree(src, dest, symlinks=False)
    for top, dirs, files in os.walk(dest, topdown=False):
        for name in files:
            _own(Path(top) / name, account, files_mode)
        for name in dirs:
            _own(Path(top) / name, account, dirs_mode)
    _own(dest, account, dirs_mode)
    return dest


def _own(path: Path, account: Account | None, mode: int) -> None:
    if account is not None:
        os.chown(path, account.uid, account.gid, follow_symlinks=False)
    os.chmod(path, mode, follow_symlinks=False)


def remove_tree(path: Path) -> None:
    """Remove a staged tree (its read-only directories made writable first)."""
    if not path.exists():
        return
    for top, dirs, _files in os.walk(path):
        for name in dirs:
            with contextlib.suppress(OSError):
                os.chmod(Path(top) / name, 0o700)
    with contextlib.suppress(OSError):
        os.chmod(path, 0o700)
    shutil.rmtree(path, ignore_errors=True)


def run_root_path(home: Path, configured: str | None = None) -> Path:
    """Where :func:`run_root` is, without making it."""
    if configured:
        return Path(configured)
    digest = hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"opsbot-run-{os.geteuid()}-{digest}"


def run_root(home: Path, configured: str | None = None) -> Path:
    """Where model code's own directories live: outside ``OPSBOT_HOME``, which model code may
    not enter. ``configured`` (config ``run_dir``), else one directory per daemon account and
    home under the system's temporary directory. Search-only for others (0711): an instance
    reaches its own directory by name and lists nothing. A directory there that is not ours
    (made by someone else before the daemon, or a symlink) is refused."""
    root = run_root_path(home, configured)
    with contextlib.suppress(FileExistsError):
        os.mkdir(root, 0o711)
    st = os.lstat(root)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise OpsbotError(
            f"{root} is not a directory of this account's: remove it, or set run_dir in "
            "config.toml",
            field="run_dir",
        )
    os.chmod(root, 0o711)
    return root


def run_subdir(home: Path, configured: str | None, name: str) -> Path:
    """``name`` in the run directory: a directory of the daemon's alone (0700), made if need
    be, refused when it is not this account's own (made by someone else first, a symlink)."""
    for _ in range(5):
        directory = run_root(home, configured) / name
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            pass
        except FileNotFoundError:  # the run directory went between the two: again
            continue
        st = os.lstat(directory)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            raise OpsbotError(
                f"{directory} is not a directory of this account's: remove it", field="run_dir"
            )
        os.chmod(directory, 0o700)
        return directory
    raise OpsbotError(f"cannot make {name} in the run directory: set run_dir in config.toml")


def corner(home: Path, configured: str | None, name: str) -> Path:
    """A new directory ``name`` in the run directory (0700 until its owner is set), whatever
    was there before removed. The run directory is made again if a release emptied and removed
    it meanwhile."""
    for _ in range(5):
        base = run_root(home, configured) / name
        remove_tree(base)
        try:
            os.mkdir(base, 0o700)
        except FileNotFoundError:  # the run directory went between the two: make it again
            continue
        return base
    raise OpsbotError(f"cannot make {name} in the run directory: set run_dir in config.toml")


def release_corner(base: Path) -> None:
    """Remove a directory made by :func:`corner`, and the run directory once it is empty."""
    remove_tree(base)
    with contextlib.suppress(OSError):
        base.parent.rmdir()


def private_dir(path: Path, mode: int = 0o700) -> Path:
    """Make ``path`` a directory only the daemon may read (created or tightened)."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)
    return path


def secure_home(home: Path, *, group: int | None = None, keep: Iterable[str] = ()) -> None:
    """Make ``home`` private: 0700, or 0710 with ``group`` (the socket group, whose members
    reach the control socket by name and list nothing); every directory in it 0700 and every
    file 0600, all the way down. Names in ``keep`` (the control socket) are left as they are.
    The daemon's umask becomes 077, so what it creates later is private too."""
    os.umask(0o077)
    home.mkdir(parents=True, exist_ok=True)
    if group is not None:
        os.chown(home, -1, group)
    os.chmod(home, 0o710 if group is not None else 0o700)
    skip = set(keep)
    for entry in os.scandir(home):
        if entry.name in skip or entry.is_symlink():
            continue
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            _tighten_tree(path)
        elif entry.is_file(follow_symlinks=False):
            os.chmod(path, 0o600)


def _tighten_tree(root: Path) -> None:
    os.chmod(root, 0o700)
    for top, dirs, files in os.walk(root):
        for name in dirs:
            with contextlib.suppress(OSError):
                os.chmod(Path(top) / name, 0o700, follow_symlinks=False)
        for name in files:
            path = Path(top) / name
            if not path.is_symlink():
                with contextlib.suppress(OSError):
                    os.chmod(path, 0o600)


# -- processes -------------------------------------------------------------------------------


def runnable_by(program: str, account: Account | None) -> str | None:
    """Why ``account`` cannot run ``program`` (a directory on the way it may not search, the
    file not executable for it), or None when it can. None for the daemon's own account."""
    if account is None:
        return None
    groups = frozenset({account.gid})
    who = Reader(account.name, account.uid, groups)
    path = Path(program)
    seen = 0
    while True:  # follow the links, as exec does, checking every directory on the way
        resolved = Path(os.path.abspath(path))
        for parent in reversed(resolved.parents):
            try:
                st = os.stat(parent)
            except OSError as exc:
                return f"{parent}: {exc.strerror}"
            if not who.may(st, 1):
                return (
                    f"uid {account.uid} may not enter {parent}, so it cannot run {program}: "
                    "install opsbot where every account can run it, or set model_python in "
                    "config.toml to a python3 of the same version they can run"
                )
        if not resolved.is_symlink():
            break
        seen += 1
        if seen > 40:
            return f"{program}: too many levels of symbolic links"
        path = resolved.parent / os.readlink(resolved)
    try:
        st = os.stat(resolved)
    except OSError as exc:
        return f"{program}: {exc.strerror}"
    if not who.may(st, 5):
        return f"uid {account.uid} may not run {resolved}: set model_python in config.toml"
    return None


def pick_python(configured: str | None, account: Account | None) -> str:
    """The interpreter to run ``account``'s model code with: ``configured`` (config
    ``model_python``) when set; else opsbot's own, or, when the account may not run that (a
    pyenv under /root), the system's python of the same version. OpsbotError saying what to set
    when the account can run none of them."""
    if configured:
        candidates = [configured]
    else:
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        candidates = [
            sys.executable,
            f"/usr/local/bin/python{version}",
            f"/usr/bin/python{version}",
        ]
    first_problem = None
    for candidate in candidates:
        if candidate != sys.executable and not os.path.exists(candidate):
            continue
        problem = runnable_by(candidate, account)
        if problem is None:
            return candidate
        first_problem = first_problem or problem
    raise OpsbotError(first_problem or "no python to run model code", field="model_python")


def clean_env(extra: Mapping[str, str]) -> dict[str, str]:
    """A model process's whole environment: a fixed base, then ``extra`` (the spec's env and
    opsbot's own variables). Nothing of the daemon's environment passes."""
    return {**BASE_ENV, **extra}


def spawn(
    argv: Sequence[str],
    *,
    account: Account | None,
    env: Mapping[str, str],
    cwd: Path,
    stdout: int | IO[bytes],
    stderr: int | IO[bytes],
    file_size: int,
    data: int | None = None,
    held: bool = False,
    pass_fds: Sequence[int] = (),
) -> subprocess.Popen[bytes]:
    """Start ``argv``, model code, in its own session with exactly ``env``, through the gate
    (:mod:`opsbot.core.gate`): every file it writes capped at ``file_size`` bytes, its data at
    ``data`` bytes when given (the memory cap where no cgroup holds it), then as
    ``account`` when given (its primary group only). ``held``: it waits, having run nothing,
    until :func:`release` (the daemon first puts it in its cgroup, so no child it forks starts
    outside). ``pass_fds``: descriptors it inherits under the same numbers (an instance's
    listening socket); every other one is closed, the standard three aside."""
    uid, gid = (account.uid, account.gid) if account is not None else (None, None)
    proc = subprocess.Popen(
        [*gate_argv(sys.executable, file_size, uid, gid, held=held, data=data), *argv],
        stdin=subprocess.PIPE,
        stdout=stdout,
        stderr=stderr,
        env={},  # the gate may run as root: ``env`` is argv's alone, applied at its exec
        cwd=str(cwd),
        start_new_session=True,
        pass_fds=tuple(pass_fds),
    )
    assert proc.stdin is not None
    with contextlib.suppress(BrokenPipeError):  # a gate that failed says why in its log
        proc.stdin.write(json.dumps(dict(env)).encode() + b"\n")
        proc.stdin.flush()
    if not held:
        proc.stdin.close()
    return proc


def release(proc: subprocess.Popen[bytes]) -> None:
    """Let a process started ``held`` run."""
    if proc.stdin is not None:
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.write(b"go\n")
            proc.stdin.close()


def environ_value(pid: int, name: str) -> str | None:
    """One variable of a process's environment as it started; None when unreadable."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    prefix = name.encode() + b"="
    for item in raw.split(b"\0"):
        if item.startswith(prefix):
            return item[len(prefix) :].decode(errors="replace")
    return None


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def _pids() -> list[int]:
    return [int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit()]


def tree(leader: int, marker: str | None, cgroup_procs: Iterable[Path] = ()) -> set[int]:
    """Every live process of one sandbox: those in its cgroup, in the leader's session or
    process group, descended from the leader, or carrying ``MARKER=marker``."""
    found: set[int] = set()
    for procs in cgroup_procs:
        with contextlib.suppress(OSError, ValueError):
            found |= {int(p) for p in procs.read_text().split()}
    parents: dict[int, int] = {}
    me = os.getpid()
    for pid in _pids():
        fields = _stat_fields(pid)
        if fields is None or fields[0] == "Z" or pid == me:
            continue
        ppid, pgid, sid = int(fields[1]), int(fields[2]), int(fields[3])
        parents[pid] = ppid
        in_session = pid == leader or leader in (pgid, sid)
        if in_session or (marker is not None and environ_value(pid, MARKER) == marker):
            found.add(pid)
    changed = True
    while changed:  # descendants of anything found
        changed = False
        for pid, ppid in parents.items():
            if ppid in found and pid not in found:
                found.add(pid)
                changed = True
    found.discard(me)
    return found


def kill_tree(
    leader: int,
    marker: str | None,
    *,
    cgroup_procs: Iterable[Path] = (),
    grace_s: float = 10.0,
    reap: subprocess.Popen[bytes] | None = None,
) -> None:
    """SIGTERM the whole sandbox, SIGKILL what is left after ``grace_s``; returns once none is
    left (or, for processes the kernel will not let go of, 5 s after the SIGKILL)."""
    procs = list(cgroup_procs)
    skip = {reap.pid} if reap is not None else set()

    def alive() -> set[int]:
        if reap is not None:
            reap.poll()  # reap our own child, so it is no zombie counted as alive
        return tree(leader, marker, procs) - (
            skip if reap is not None and reap.returncode is not None else set()
        )

    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        pids = alive()
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            pids = alive()
            if not pids:
                return
            if sig == signal.SIGKILL:  # children forked since the last sweep
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, sig)
            time.sleep(0.05)
