"""`opsbot tui` and its terminal: it refuses to start without one (`ssh -T`, a pipe) and leaves
when the terminal hangs up (the SSH client killed), in real processes."""

from __future__ import annotations

import contextlib
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from opsbot.tui.app import NoTerminal, require_terminal

HERE = Path(__file__).parent
ROOT = HERE.parent.parent

#: The dashboard on the daemon's control API (an empty home), watching its terminal as
#: `opsbot tui` does.
DASHBOARD = """
import sys
from pathlib import Path
sys.path.insert(0, {here!r})
from tui_live import LiveApi
from opsbot.tui.app import OpsbotApp
home = Path({tmp!r})
(home / "home").mkdir()
api = LiveApi(home / "home", socket_dir=home)
app = OpsbotApp(api.client, stats=None, watch_terminal=True)
print("dashboard", __import__("os").getpid(), flush=True)
app.run()
print("exit", app.return_code, file=sys.stderr)
sys.exit(app.return_code or 0)
"""


def test_require_terminal_names_ssh_t(tmp_path: Path) -> None:
    with (
        open(tmp_path / "in", "w+") as pipe_in,
        open(tmp_path / "out", "w") as pipe_out,
        pytest.raises(NoTerminal) as caught,
    ):
        require_terminal(pipe_in, pipe_out)
    assert "ssh -t" in caught.value.message


def test_opsbot_tui_without_a_terminal_says_one_line_and_exits(tmp_path: Path) -> None:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "opsbot", "--home", str(tmp_path), "tui"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 1
    assert "ssh -t" in result.stderr
    assert "\x1b[" not in result.stdout  # no escape codes written into the pipe
    assert time.monotonic() - started < 30


def read_until(fd: int, needle: bytes, within: float) -> bytes:
    """Read the terminal until ``needle`` shows (the dashboard drew its screen)."""
    seen = b""
    deadline = time.monotonic() + within
    while needle not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {needle!r} within {within:g} s: {seen[-500:]!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                seen += os.read(fd, 65536)
            except OSError:
                break
    return seen


def test_dashboard_leaves_when_the_terminal_hangs_up(tmp_path: Path) -> None:
    pid, fd = pty.fork()
    if pid == 0:  # the child: the dashboard on the pty
        os.environ["TERM"] = "xterm-256color"
        os.environ["PYTHONPATH"] = str(ROOT)
        dashboard = DASHBOARD.format(here=str(HERE), tmp=str(tmp_path))
        os.execv(sys.executable, [sys.executable, "-c", dashboard])
    try:
        read_until(fd, b"deploy", within=60)  # the empty table says how to deploy
        os.kill(pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        status = None
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            # Keep draining the pty so the child's writes never block.
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                with contextlib.suppress(OSError):
                    os.read(fd, 65536)
        else:
            raise AssertionError("the dashboard outlived its terminal's hangup by 10 s")
        assert status is not None and os.waitstatus_to_exitcode(status) == 129
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(fd)


#: The session leader on the pty starts a launcher (not a session leader), which starts the
#: dashboard: killing the launcher orphans the dashboard with no hangup from the kernel.
LEADER = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", {launcher!r}])
time.sleep(120)
"""
LAUNCHER = """
import os, subprocess, sys
print("launcher", os.getpid(), flush=True)
subprocess.Popen([sys.executable, "-c", {dashboard!r}]).wait()
"""


def alive(pid: int) -> bool:
    """Whether the process runs (a zombie nobody reaped has ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_dashboard_leaves_when_orphaned_without_a_hangup(tmp_path: Path) -> None:
    dashboard = DASHBOARD.format(here=str(HERE), tmp=str(tmp_path))
    launcher = LAUNCHER.format(dashboard=dashboard)
    pid, fd = pty.fork()
    if pid == 0:
        os.environ["TERM"] = "xterm-256color"
        os.environ["PYTHONPATH"] = str(ROOT)
        os.execv(sys.executable, [sys.executable, "-c", LEADER.format(launcher=launcher)])
    dash = 0
    try:
        seen = read_until(fd, b"deploy", within=60)
        words = seen.replace(b"\r", b" ").replace(b"\n", b" ").split()
        launcher_pid = int(words[words.index(b"launcher") + 1])
        dash = int(words[words.index(b"dashboard") + 1])
        os.kill(launcher_pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while alive(dash):
            if time.monotonic() > deadline:
                raise AssertionError("the orphaned dashboard still runs 10 s later")
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                with contextlib.suppress(OSError):
                    os.read(fd, 65536)
    finally:
        for victim in (dash, pid):
            if victim:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(victim, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        os.close(fd)
