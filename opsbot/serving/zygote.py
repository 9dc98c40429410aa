"""The preloader's own side: import the libraries once, then fork a model server per request.

Started by the process runtime (see :mod:`opsbot.core.zygote` for the design, the wire and why
a fork carries nothing of the daemon's)::

    python -s -m opsbot.serving.zygote --control-fd FD --preload mod1,mod2
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import os
import select
import signal
import socket
import sys
import traceback
from typing import NoReturn

from opsbot.core.gate import become as become_account
from opsbot.core.zygote import (
    GO,
    LENGTH,
    LISTEN_FD,
    LOG,
    MAX_REQUEST,
    SPAWN,
    Request,
    read_exactly,
)

#: A fork that cannot become its instance (no account switch, no request) exits with this,
#: having run nothing of the model.
EXIT_SETUP_FAILED = 126


def preload(modules: list[str]) -> list[str]:
    """Import each module; the ones that failed, each with why."""
    failed = []
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # a library missing here only means a slower cold import later
            failed.append(f"{name} ({type(exc).__name__}: {exc})")
    return failed


def _reseed() -> None:
    """numpy's global generator was seeded once in the preloader; every fork gets its own."""
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed()


def become(conn: socket.socket, imported: dict[str, str]) -> int:
    """In a fork: read the request, say the pid, wait for go, become the instance, serve.
    ``imported``: the variables the preloaded libraries set for themselves on import, which a
    cold start's would set too. Returns the exit code; raises only before anything of the model
    has run."""
    os.setsid()
    _, fds, _, _ = socket.recv_fds(conn, len(LOG), 2)
    if not fds:
        raise RuntimeError("no log descriptor came with the request")
    log_fd = fds[0]
    listen_fd = fds[1] if len(fds) > 1 else None
    (length,) = LENGTH.unpack(read_exactly(conn, LENGTH.size))
    if length > MAX_REQUEST:
        raise RuntimeError(f"a request of {length} bytes")
    request = Request.decode(read_exactly(conn, length))
    conn.sendall(f"{os.getpid()}\n".encode())
    if read_exactly(conn, len(GO)) != GO:
        return 0  # the runtime went away before go: nothing was started
    # From here on, what a cold start gets: its descriptors, directory, account, environment.
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    conn.close()  # before the socket takes its number: conn may hold it now
    first_closed = 3
    if listen_fd is not None:
        if listen_fd != LISTEN_FD:
            os.dup2(listen_fd, LISTEN_FD, inheritable=False)
        first_closed = LISTEN_FD + 1
    highest = os.sysconf("SC_OPEN_MAX")
    os.closerange(first_closed, highest if highest > 0 else 65536)
    os.chdir(request.cwd)
    become_account(request.file_size, request.uid, request.gid, request.data)  # as a gate does
    os.environ.clear()
    os.environ.update(request.env)
    for name, value in imported.items():
        os.environ.setdefault(name, value)
    sys.argv = [sys.executable, "-m", "opsbot.serving.server", *request.args]
    sys.path[0] = request.cwd
    _reseed()
    from opsbot.serving import server

    return server.main(request.args)


def _fork(fd: int, ctrl: socket.socket, wake: tuple[int, int], imported: dict[str, str]) -> None:
    pid = os.fork()
    if pid:
        os.close(fd)
        return
    code = EXIT_SETUP_FAILED
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        ctrl.close()
        os.close(wake[0])
        os.close(wake[1])
        code = become(socket.socket(fileno=fd), imported)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _reap(ctrl: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        with contextlib.suppress(OSError):
            ctrl.sendall(f"exit {pid} {os.waitstatus_to_exitcode(status)}\n".encode())


def serve(ctrl: socket.socket, imported: dict[str, str]) -> NoReturn:
    """Fork on each request until the runtime closes the control socket."""
    wake: tuple[int, int] = os.pipe()
    for fd in wake:
        os.set_blocking(fd, False)
    signal.set_wakeup_fd(wake[1])
    signal.signal(signal.SIGCHLD, lambda *_: None)
    while True:
        readable, _, _ = select.select([ctrl.fileno(), wake[0]], [], [], 1.0)
        if wake[0] in readable:
            with contextlib.suppress(BlockingIOError):
                while os.read(wake[0], 512):
                    pass
        if ctrl.fileno() in readable:
            data, fds, _, _ = socket.recv_fds(ctrl, len(SPAWN), 1)
            if not data:
                os._exit(0)  # the runtime is gone; the forks live on
            for fd in fds:
                if data == SPAWN:
                    _fork(fd, ctrl, wake, imported)
                else:
                    os.close(fd)
        _reap(ctrl)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m opsbot.serving.zygote")
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--preload", default="")
    parser.add_argument("--file-size", type=int, help="cap every file it (and a fork) writes")
    args = parser.parse_args(argv)
    become_account(args.file_size, None, None)  # before it imports or writes anything
    ctrl = socket.socket(fileno=args.control_fd)
    launched = dict(os.environ)
    failed = preload([m for m in args.preload.split(",") if m])
    imported = {k: v for k, v in os.environ.items() if launched.get(k) != v}
    for line in failed:
        print(f"preload skipped {line}", file=sys.stderr, flush=True)
    gc.collect()
    gc.freeze()  # what is loaded now stays shared with every fork instead of being copied
    ctrl.sendall(b"ready\n")
    serve(ctrl, imported)


if __name__ == "__main__":
    raise SystemExit(main())
