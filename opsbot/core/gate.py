"""The last steps before an instance runs model code, the same for a cold start and a fork.

:func:`become` caps the size of every file the process writes (the log cap's backstop, see
:mod:`opsbot.core.logcap`), soft and hard, and ignores ``SIGXFSZ`` so that a write past it fails
instead of killing the process; caps its data (heap and private mappings, ``RLIMIT_DATA``) at
the flavor's memory when no cgroup holds the instance; then, when an account is given, it drops
to that account with no supplementary groups. The caps are set before the account switch, while
the process is still the daemon's: a hard limit, once lowered, cannot be raised by the account,
and no process of the account ever sees this one uncapped. (Setting them from the daemon
afterwards with ``prlimit`` would need ``CAP_SYS_RESOURCE``, which a root in a container often
lacks.)

A fork of the preloader calls :func:`become` itself. Every other process of model code (a cold
start, the registry's check) is started through this file as a gate::

    python -I -S .../opsbot/core/gate.py FILE_SIZE DATA UID GID WAIT -- ARGV...

(DATA ``-`` to leave it uncapped; UID and GID ``-`` to stay the daemon's account): it calls
:func:`become`, reads ARGV's environment as one line of JSON on stdin, then, with WAIT ``held``,
waits, having run nothing, for another line (the daemon's go, once it has put the process in its
cgroup), and executes ARGV with that environment. The gate itself starts with an empty
environment and runs isolated (``-I -S``, standard library only): until it has become the
account it may run as root, and the instance's environment is partly the service owner's to
choose (``LD_PRELOAD``, say), so none of it applies before the exec.

Descriptors: the gate opens none that outlive it (Python's are close-on-exec) and closes none,
so what reaches ARGV is what the daemon passed (``sandbox.spawn``'s ``pass_fds``, the instance's
listening socket) besides stdin, stdout and stderr.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys


def become(
    file_size: int | None, uid: int | None, gid: int | None, data: int | None = None
) -> None:
    """Cap file sizes at ``file_size`` and the data segment at ``data`` bytes (None: leave
    them), then switch to ``uid``/``gid`` (None: stay). Raises when the switch did not take."""
    if file_size is not None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))
    if data is not None:
        resource.setrlimit(resource.RLIMIT_DATA, (data, data))
    if uid is not None and gid is not None:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
        if (os.getuid(), os.geteuid(), os.getgid(), os.getegid()) != (uid, uid, gid, gid):
            raise RuntimeError(f"still uid {os.geteuid()} after switching to {uid}")


def gate_argv(
    python: str,
    file_size: int,
    uid: int | None,
    gid: int | None,
    *,
    held: bool,
    data: int | None = None,
) -> list[str]:
    """The command line that runs this gate with ``python`` (put before the instance's)."""
    who = ["-", "-"] if uid is None or gid is None else [str(uid), str(gid)]
    wait = "held" if held else "run"
    capped = "-" if data is None else str(data)
    gate = os.path.abspath(__file__)
    return [python, "-I", "-S", gate, str(file_size), capped, *who, wait, "--"]


def main(argv: list[str]) -> int:
    """Gate: become, wait for go when held, exec. Exit code 126 when it cannot become it."""
    try:
        file_size, data, uid, gid, wait, dashes, *command = argv
        if dashes != "--" or not command or wait not in ("held", "run"):
            raise ValueError("usage: FILE_SIZE DATA UID GID held|run -- ARGV...")
        become(
            int(file_size),
            None if uid == "-" else int(uid),
            None if gid == "-" else int(gid),
            None if data == "-" else int(data),
        )
        env = json.loads(sys.stdin.buffer.readline() or b"null")
        if not isinstance(env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items()
        ):
            raise ValueError("no environment came on stdin")
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"opsbot gate: {exc}", file=sys.stderr, flush=True)
        return 126
    if wait == "held" and not sys.stdin.buffer.readline():
        return 0  # the daemon went away before go: nothing was started
    os.execvpe(command[0], command, env)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
