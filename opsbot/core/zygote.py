"""The preloader: one process that has imported the model libraries, forked per instance.

A model server spends most of its start importing numpy, scipy and scikit-learn (1.5-2 s on two
cores) before it reads a byte of the model. The process runtime starts, per interpreter, one
preloader (``python -s -m opsbot.serving.zygote``) that imports them once; each instance is then
a fork of it that becomes the instance (its session, log, directory, environment and account)
and runs the model server from there, so it starts with the libraries already in memory.

What a fork inherits, and why that is safe:

- The preloader starts with a fixed environment (no variable of the daemon's), reads no file of
  the daemon's and never runs model code. It never reads an instance's request either: for each
  instance the runtime hands it one end of a fresh socket pair and the fork reads its request
  (environment, secret, account) from there, so no instance's secret is ever in the memory later
  forks are copied from.
- A fork closes every descriptor but its log and its listening socket (moved to
  :data:`LISTEN_FD`) before it runs anything of the model, and drops to the owner's account (no
  supplementary groups) exactly as a cold start would.
- The runtime puts the fork in its cgroup before saying go, so nothing it runs starts outside.
- The math libraries size their thread pools once, from ``OMP_NUM_THREADS`` and friends as
  they load, so there is one preloader per interpreter and thread count (the flavor's vCPUs),
  started with those variables: a fork's pools are the ones a cold start of its flavor gets.

Wire (all on unix sockets the runtime made; nothing listens):

- runtime -> preloader (control): one byte ``S`` carrying one descriptor, the fork's socket;
- preloader -> runtime (control): ``ready\\n`` once it has imported what it preloads, then
  ``exit PID CODE\\n`` as each fork ends (CODE as :attr:`subprocess.Popen.returncode`);
- runtime -> fork: one byte ``L`` carrying the log's descriptor (then the instance's listening
  socket, when the runtime bound one), a 4-byte big-endian length and
  that many bytes of JSON (:class:`Request`), later ``go``; fork -> runtime: its pid and ``\\n``.

The preloader ends when the runtime closes its control socket (or dies); forks live on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import struct
import subprocess
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

from opsbot.core.accounts import Account
from opsbot.core.errors import OpsbotError
from opsbot.core.logcap import LOG_CAP, LogCap

log = logging.getLogger("opsbot.core.zygote")

#: What a preloader imports by default: the model server and scikit-learn's common estimators
#: (numpy, scipy and joblib come with them). A module that fails to import is skipped.
DEFAULT_PRELOAD = (
    "opsbot.serving.server",
    "joblib",
    "sklearn.linear_model",
    "sklearn.tree",
    "sklearn.ensemble",
    "sklearn.pipeline",
    "sklearn.preprocessing",
    "sklearn.neighbors",
    "sklearn.svm",
)
READY_TIMEOUT_S = 120.0
REPLY_TIMEOUT_S = 30.0
LENGTH = struct.Struct(">I")
MAX_REQUEST = 16 * 1024 * 1024
SPAWN, LOG, GO = b"S", b"L", b"go"
#: The descriptor a fork's listening socket has once it runs the model server (its arguments
#: say ``--listen-fd 3``): the first after stdin, stdout and stderr.
LISTEN_FD = 3


class ZygoteError(OpsbotError):
    title = "Preloader"
    status = 500


@dataclass(frozen=True)
class Request:
    """What one fork becomes."""

    args: list[str]  # the model server's arguments (after ``-m opsbot.serving.server``)
    env: dict[str, str]
    cwd: str
    uid: int | None = None
    gid: int | None = None
    #: The cap on the size of any file it writes (the log cap's backstop); None: the preloader's.
    file_size: int | None = None
    #: The cap on its data segment (the memory cap where no cgroup holds it); None: none.
    data: int | None = None

    def encode(self) -> bytes:
        body = json.dumps(asdict(self)).encode()
        return LENGTH.pack(len(body)) + body

    @classmethod
    def decode(cls, body: bytes) -> Request:
        return cls(**json.loads(body))


def read_exactly(sock: socket.socket, n: int) -> bytes:
    """``n`` bytes from ``sock``, or fewer when it closes first."""
    chunks: list[bytes] = []
    left = n
    while left:
        chunk = sock.recv(left)
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


class Held:
    """A fork that has told its pid and waits, having run nothing, for :meth:`release`."""

    def __init__(self, pid: int, conn: socket.socket):
        self.pid = pid
        self._conn = conn

    def release(self) -> None:
        with contextlib.suppress(OSError):
            self._conn.sendall(GO)
        self._conn.close()

    def cancel(self) -> None:
        """Close without go: the fork exits without having run anything."""
        self._conn.close()


class Zygote:
    """One running preloader and what it said: whether it is ready, and how forks ended."""

    def __init__(
        self,
        python: str,
        *,
        env: Mapping[str, str],
        preload: Sequence[str] = DEFAULT_PRELOAD,
        log_path: Path | None = None,
        log_cap: LogCap = LOG_CAP,
    ):
        """``log_cap``: the preloader caps its own file sizes with it (its forks are born so)."""
        self.python = python
        self._env = dict(env)
        self._preload = list(preload)
        self._log_path = log_path
        self._log_cap = log_cap
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._ended = threading.Event()
        self._settled = threading.Event()  # ready, or ended with its problem said
        self._exits: dict[int, int] = {}
        self._exit_lock = threading.Lock()
        self._ctrl: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self.problem: str | None = None

    # -- life ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the preloader (returns at once; :meth:`wait_ready` waits for its imports)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        out: int | IO[bytes] = subprocess.DEVNULL
        log_file = None
        if self._log_path is not None:
            # O_APPEND ("a"): the daemon rotates it by copy and truncate (opsbot.core.logcap).
            log_file = open(self._log_path, "ab")  # noqa: SIM115 - handed to the child
            os.chmod(self._log_path, 0o600)
            out = log_file
        try:
            self._proc = subprocess.Popen(
                [
                    self.python,
                    "-s",
                    "-m",
                    "opsbot.serving.zygote",
                    "--control-fd",
                    str(theirs.fileno()),
                    "--preload",
                    ",".join(self._preload),
                    "--file-size",
                    str(self._log_cap.backstop_bytes),
                ],
                env=self._env,
                cwd="/",
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                pass_fds=(theirs.fileno(),),
            )
        finally:
            theirs.close()
            if log_file is not None:
                log_file.close()
        self._ctrl = ours
        threading.Thread(target=self._listen, name="zygote-listen", daemon=True).start()

    def _listen(self) -> None:
        assert self._ctrl is not None
        reader = self._ctrl.makefile("rb")
        try:
            for raw in reader:
                words = raw.decode(errors="replace").split()
                if words == ["ready"]:
                    self._ready.set()
                    self._settled.set()
                elif len(words) == 3 and words[0] == "exit":
                    with self._exit_lock:
                        self._exits[int(words[1])] = int(words[2])
        except (OSError, ValueError) as exc:
            log.warning("preloader %s: control channel broke: %s", self.python, exc)
        finally:
            self._ended.set()
            if not self._ready.is_set():
                self.problem = self._why_not_ready()
            self._settled.set()  # after the problem, so a waiter reads it

    def _why_not_ready(self) -> str:
        code = self._proc.wait() if self._proc is not None else None
        tail = ""
        if self._log_path is not None:
            with contextlib.suppress(OSError):
                lines = self._log_path.read_text(errors="replace").strip().splitlines()
                tail = lines[-1] if lines else ""
        return f"the preloader ended (exit code {code}) before it was ready" + (
            f": {tail}" if tail else ""
        )

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> bool:
        """True once the preloader has imported its libraries; False if it ended or took longer
        than ``timeout`` (:attr:`problem` then says why)."""
        if not self._settled.wait(timeout):
            self.problem = f"the preloader was not ready within {timeout:.0f} s"
            return False
        return self.alive

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """Started and not ended (ready or still importing)."""
        proc = self._proc
        return proc is not None and proc.poll() is None and not self._ended.is_set()

    @property
    def alive(self) -> bool:
        """Ready to fork."""
        return self._ready.is_set() and self.running

    def close(self) -> None:
        """End the preloader (its forks live on). One still importing has nothing to finish
        and no fork yet: it is killed rather than waited for."""
        if self._ctrl is not None:
            with contextlib.suppress(OSError):
                self._ctrl.shutdown(socket.SHUT_RDWR)
            self._ctrl.close()
        if self._proc is not None:
            if not self._ready.is_set():
                self._proc.kill()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    # -- forks -----------------------------------------------------------------------------

    def spawn(
        self,
        args: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: Path,
        account: Account | None,
        log_fd: int,
        listen_fd: int | None = None,
        file_size: int | None = None,
        data: int | None = None,
    ) -> Held:
        """A fork set up as ``args`` would be by a cold start, held until released.
        ``listen_fd``: a listening socket the fork gets as :data:`LISTEN_FD` (its ``args`` then
        say ``--listen-fd`` with that number)."""
        if not self.alive or self._ctrl is None:
            raise ZygoteError(self.problem or "the preloader is not running")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with self._lock:
                socket.send_fds(self._ctrl, [SPAWN], [theirs.fileno()])
            theirs.close()
            ours.settimeout(REPLY_TIMEOUT_S)
            request = Request(
                list(args),
                dict(env),
                str(cwd),
                account.uid if account else None,
                account.gid if account else None,
                file_size,
                data,
            )
            passed = [log_fd] if listen_fd is None else [log_fd, listen_fd]
            socket.send_fds(ours, [LOG], passed)
            ours.sendall(request.encode())
            line = b""
            while not line.endswith(b"\n"):
                chunk = ours.recv(32)
                if not chunk:
                    raise ZygoteError("the preloader's fork ended before it said its pid")
                line += chunk
            pid = int(line)
        except (OSError, ValueError) as exc:
            ours.close()
            theirs.close()
            raise ZygoteError(f"the preloader did not fork an instance: {exc}") from exc
        with self._exit_lock:
            self._exits.pop(pid, None)  # a pid used again: its earlier end is not this one's
        return Held(pid, ours)

    def exit_code(self, pid: int) -> int | None:
        """How the fork ``pid`` ended, once the preloader has reaped it."""
        with self._exit_lock:
            return self._exits.get(pid)

    def forget(self, pid: int) -> None:
        """The fork ``pid`` is stopped and done with: its end need not be kept."""
        with self._exit_lock:
            self._exits.pop(pid, None)
