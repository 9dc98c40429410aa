"""The control API's client: typed methods, pydantic answers, the core's errors, pluggable
transports (the daemon's unix socket; the real app served in-process for tests)."""

from opsbot.client.api import ControlClient, service_path
from opsbot.client.errors import DaemonUnavailable, RemoteError, error_from
from opsbot.client.transport import InProcessTransport, Transport, UnixSocketTransport

__all__ = [
    "ControlClient",
    "DaemonUnavailable",
    "InProcessTransport",
    "RemoteError",
    "Transport",
    "UnixSocketTransport",
    "error_from",
    "service_path",
]
