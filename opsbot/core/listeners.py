"""Who holds a TCP port on this machine, read from the kernel's socket tables in ``/proc``.

The docker runtime gives a container of a model of format image (a server of the user's own, on
a TCP port) a free port that the container binds later: another program
may take the port in between and answer the readiness check in its place, and would then be sent
the callers' data and the version's instance secret. Before the controller routes to such an
instance it asks the runtime whether the socket listening there is the instance's own
(``Runtime.foreign_listener``); the docker runtime answers with what this module reads.

Only the network namespace of the reading process is seen, which is the one of a container with
host networking.
"""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Final

_TABLES: Final = (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6))
_LISTEN: Final = "0A"  # TCP_LISTEN, as the kernel's tables write the state
_WILDCARDS: Final = frozenset({"0.0.0.0", "::"})


@dataclass(frozen=True)
class Listener:
    """A listening socket: the account that made it and its inode (``socket:[INODE]``)."""

    uid: int
    inode: int


def _address(hexed: str, family: int) -> str:
    """An address as the tables write it (32-bit words in the machine's byte order)."""
    words = [int(hexed[i : i + 8], 16).to_bytes(4, sys.byteorder) for i in range(0, len(hexed), 8)]
    return socket.inet_ntop(family, b"".join(words))


def listeners(port: int, host: str = "127.0.0.1", proc: Path = Path("/proc")) -> list[Listener]:
    """The TCP sockets listening on ``port`` that a connection to ``host`` reaches: bound to
    ``host`` itself (or its IPv4-mapped form) or to every address."""
    reachable = {host, f"::ffff:{host}", *_WILDCARDS}
    found = []
    for table, family in _TABLES:
        try:
            lines = (proc / "net" / table).read_text().splitlines()[1:]
        except OSError:  # no IPv6 on this machine, or no /proc
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != _LISTEN:
                continue
            address, _, hex_port = fields[1].partition(":")
            if int(hex_port, 16) != port or _address(address, family) not in reachable:
                continue
            found.append(Listener(uid=int(fields[7]), inode=int(fields[9])))
    return found


def holders(inode: int, proc: Path = Path("/proc")) -> list[int] | None:
    """The processes holding the socket ``inode`` open; None when some process's descriptors
    could not be read (another account's, this process not being root), so the list may lack
    the holder."""
    wanted = f"socket:[{inode}]"
    found = []
    unreadable = False
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = os.listdir(entry / "fd")
        except PermissionError:
            unreadable = True
            continue
        except OSError:  # gone meanwhile
            continue
        for fd in fds:
            try:
                if os.readlink(entry / "fd" / fd) == wanted:
                    found.append(int(entry.name))
                    break
            except OSError:
                continue
    if not found and unreadable:
        return None
    return found


def pid_namespace(pid: int, proc: Path = Path("/proc")) -> str | None:
    """The pid namespace ``pid`` lives in (``pid:[INODE]``); None when it cannot be read."""
    try:
        return os.readlink(proc / str(pid) / "ns" / "pid")
    except OSError:
        return None


def describe(pid: int, proc: Path = Path("/proc")) -> str:
    """``pid 123: python3 -m http.server``, as far as its command line can be read."""
    try:
        args = (proc / str(pid) / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return f"pid {pid}"
    line = " ".join(a.decode(errors="replace") for a in args if a)
    return f"pid {pid}: {line[:80]}" if line else f"pid {pid}"
