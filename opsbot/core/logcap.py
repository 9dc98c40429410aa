"""The cap on an instance's log, one set of figures for every runtime.

Model code is untrusted, and what it prints must not fill the daemon's disk. Docker and Swarm
hand the figures to the engine's ``json-file`` log driver (:func:`json_file_options`). An
instance of the process runtime writes its log file itself, through a descriptor the daemon
opened with ``O_APPEND`` (it keeps running across daemon restarts, so the log cannot be a pipe to
the daemon), and gets the same bound in two parts:

- rotation (:func:`rotate`), on each controller pass: a log past ``max_bytes`` has its newest
  ``max_bytes`` copied to ``<log>.1`` (older copies move up to ``.2`` and so on, ``files`` kept
  in all, the live log included) and is then truncated in place, as logrotate's
  ``copytruncate``: the instance keeps its descriptor and, with ``O_APPEND``, its next write
  lands at the new end;
- a backstop between passes: ``RLIMIT_FSIZE`` at ``backstop_bytes``, soft and hard, set by
  :func:`opsbot.core.gate.become` in the instance (cold or forked) before it takes its owner's
  account and runs anything, with ``SIGXFSZ`` ignored: a write that would take a file past it
  fails with ``EFBIG`` instead of killing the instance, until the next pass has rotated the
  log. The preloader is capped the same way.

The backstop caps every file the instance writes, not only its log, and CPython writes its
bytecode caches (``.pyc``) without checking for a short write: a cap below a module's bytecode
would leave a truncated cache that breaks the next import of that module. Hence
:data:`MIN_BACKSTOP_BYTES`, well above the largest module's bytecode.

So an instance keeps at most ``backstop_bytes + (files - 1) * max_bytes`` of log on disk. Lines
written between a rotation's copy and its truncation are lost, as with ``copytruncate``.

Rotation and reading never follow a symlink planted in place of a log or one of its copies, and
every copy is made afresh, 0600, by the daemon.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

MIB = 1024 * 1024
#: The smallest backstop a cap may have (see the module docstring: bytecode caches).
MIN_BACKSTOP_BYTES = MIB
#: How much of a log :func:`tail_lines` reads at a time, backwards from its end, and at most
#: from one file (lines that long are not all returned).
TAIL_READ_BYTES = 64 * 1024
TAIL_MAX_BYTES = 4 * MIB


@dataclass(frozen=True)
class LogCap:
    """How much log one instance keeps: files of ``max_bytes``, ``files`` of them (the live one
    included), and the file size past which a write fails (the process runtime's backstop)."""

    max_bytes: int = 10 * MIB
    files: int = 3
    #: Well past ``max_bytes``: a pass (about a second apart) rotates the log long before an
    #: instance prints this much, unless it prints tens of MiB a second.
    backstop_bytes: int = 40 * MIB

    def __post_init__(self) -> None:
        if self.max_bytes < 1:
            raise ValueError(f"log cap max_bytes must be at least 1, not {self.max_bytes}")
        if self.files < 1:
            raise ValueError(f"log cap files must be at least 1, not {self.files}")
        if self.backstop_bytes < MIN_BACKSTOP_BYTES:
            raise ValueError(
                f"log cap backstop_bytes must be at least {MIN_BACKSTOP_BYTES}, not "
                f"{self.backstop_bytes}: it caps every file the instance writes, bytecode "
                "caches included"
            )
        if self.backstop_bytes < self.max_bytes:
            raise ValueError(
                f"log cap backstop_bytes ({self.backstop_bytes}) must be at least max_bytes "
                f"({self.max_bytes}), or the backstop would come before rotation"
            )

    @property
    def kept_bytes(self) -> int:
        """The most log one process-runtime instance keeps on disk."""
        return self.backstop_bytes + (self.files - 1) * self.max_bytes


#: The cap every runtime applies.
LOG_CAP = LogCap()


def _docker_size(n: int) -> str:
    """A size as the json-file driver reads it (binary units)."""
    for unit, factor in (("m", MIB), ("k", 1024)):
        if n % factor == 0:
            return f"{n // factor}{unit}"
    return str(n)


def json_file_options(cap: LogCap = LOG_CAP) -> dict[str, str]:
    """The options of Docker's ``json-file`` log driver for ``cap``."""
    return {"max-size": _docker_size(cap.max_bytes), "max-file": str(cap.files)}


def rotated(path: Path, n: int) -> Path:
    """The ``n``-th older copy of the log ``path`` (0: the live log)."""
    return path if n == 0 else path.with_name(f"{path.name}.{n}")


def _open_regular(path: Path, flags: int) -> int | None:
    """A descriptor on ``path`` when it is a regular file (never through a symlink)."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:  # absent, or a symlink (ELOOP)
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return fd


def _read_to_end(fd: int, offset: int) -> bytes:
    chunks: list[bytes] = []
    while True:
        chunk = os.pread(fd, MIB, offset)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        offset += len(chunk)


def rotate(path: Path, cap: LogCap = LOG_CAP) -> bool:
    """Rotate the log ``path`` when it holds more than ``cap.max_bytes`` (see the module
    docstring); True when it did. A missing log, or anything but a regular file, is left."""
    fd = _open_regular(path, os.O_RDWR)
    if fd is None:
        return False
    try:
        size = os.fstat(fd).st_size
        if size <= cap.max_bytes:
            return False
        start = size - cap.max_bytes
        data = _read_to_end(fd, start)  # what came since the stat too: the window stays short
        os.ftruncate(fd, 0)
    finally:
        os.close(fd)
    if cap.files < 2:
        return True
    kept = data[-cap.max_bytes :]
    newline = kept.find(b"\n")
    if 0 <= newline < len(kept) - 1:  # the oldest line kept was cut: it starts the copy no more
        kept = kept[newline + 1 :]
    for n in range(cap.files - 1, 1, -1):
        with contextlib.suppress(FileNotFoundError):
            os.replace(rotated(path, n - 1), rotated(path, n))  # moves a link, never follows it
    _write_private(rotated(path, 1), kept)
    return True


def _write_private(path: Path, data: bytes) -> None:
    """``path`` made afresh (0600, owned by the daemon) holding ``data``, whatever was there."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with open(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _tail_of(path: Path, n: int) -> tuple[list[str], bool]:
    """The last ``n`` lines of one file, read backwards from its end a block at a time, and
    whether they are the whole file."""
    fd = _open_regular(path, os.O_RDONLY)
    if fd is None:
        return [], True
    try:
        start = os.fstat(fd).st_size
        data = b""
        # n lines need n newlines before them (the last line may lack its own).
        while start > 0 and data.count(b"\n") <= n and len(data) < TAIL_MAX_BYTES:
            step = min(TAIL_READ_BYTES, start)
            start -= step
            data = os.pread(fd, step, start) + data
    finally:
        os.close(fd)
    lines = data.decode(errors="replace").splitlines()
    if start > 0:
        lines = lines[1:]  # the first may be the end of an older line
    return lines[-n:], start == 0 and len(lines) <= n


def tail_lines(path: Path, n: int, files: int = LOG_CAP.files) -> list[str]:
    """The newest ``n`` lines of the log ``path``: its end, then, when it holds fewer, the end
    of its rotated copies (``path.1`` ...), up to ``files`` files in all. Symlinks are not
    followed."""
    lines: list[str] = []
    for age in range(max(1, files)):
        if len(lines) >= n:
            break
        older, whole = _tail_of(rotated(path, age), n - len(lines))
        lines = older + lines
        if not whole:
            break
    return lines
