"""Where an instance is reached: a TCP ``host`` and ``port``, or a unix socket.

One representation, kept in every place an address goes (a runtime's ``Started`` and ``Owned``,
the instances table, the gateway's routes and targets): an instance reached on the unix socket
``PATH`` has ``host`` = ``PATH`` (always absolute) and ``port`` = :data:`UNIX_PORT` (0). No TCP
host starts with ``/``, so the two never mix, and nothing but this module tells them apart.
The process runtime's instances are served so (the daemon binds the socket), and the docker
runtime's own model servers (each binds it in a directory of the daemon's mounted into its
container); a docker image of the user's own and the swarm runtime's tasks over TCP.
"""

from __future__ import annotations

import http.client
import socket

#: Connections the kernel queues on an instance's socket before its server accepts them.
LISTEN_BACKLOG = 1024
#: The port of an address that is a unix socket.
UNIX_PORT = 0
#: The Host header of a call over a unix socket (the socket has no host name).
UNIX_HOST_HEADER = "localhost"


def unix_address(path: str) -> tuple[str, int]:
    """The (host, port) of an instance reached on the unix socket ``path`` (absolute)."""
    if not path.startswith("/"):
        raise ValueError(f"a unix socket address needs an absolute path, not {path!r}")
    return path, UNIX_PORT


def unix_path(host: str) -> str | None:
    """The unix socket's path when (``host``, port) names one, else None (TCP)."""
    return host if host.startswith("/") else None


def show(host: str, port: int | None) -> str:
    """The address as people and the gateway's statistics name it: ``unix:PATH`` or
    ``host:port``."""
    path = unix_path(host)
    if path is not None:
        return f"unix:{path}"
    return f"{host}:{'' if port is None else port}"


class _UnixHTTPConnection(http.client.HTTPConnection):
    """An HTTP/1.1 connection over a unix socket (Host: localhost)."""

    def __init__(self, path: str, timeout: float):
        super().__init__(UNIX_HOST_HEADER, timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self._path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def connection(host: str, port: int, timeout: float) -> http.client.HTTPConnection:
    """An HTTP connection to the address, whichever kind it is (the daemon's own calls to an
    instance: its readiness check)."""
    path = unix_path(host)
    if path is not None:
        return _UnixHTTPConnection(path, timeout)
    return http.client.HTTPConnection(host, port, timeout=timeout)


def get_status(host: str, port: int, path: str, timeout: float = 1.0) -> int:
    """The status of ``GET path`` at the address; raises OSError or
    ``http.client.HTTPException`` when no answer came."""
    conn = connection(host, port, timeout)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()
