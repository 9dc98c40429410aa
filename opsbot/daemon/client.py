"""The control API client with dict answers, kept for callers not yet on the typed one.

:class:`opsbot.client.ControlClient` is the client (typed answers, errors as the core's
classes, pluggable transports); this class sends through it and answers plain JSON, as the
dashboard still expects. New code uses ``ControlClient``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from opsbot.client.api import MODEL_CHECK_TIMEOUT_S, ControlClient, service_path
from opsbot.client.errors import DaemonUnavailable, RemoteError
from opsbot.client.transport import Transport, UnixSocketTransport
from opsbot.core.registry import split_ref
from opsbot.core.sandbox import SOCKET_NAME

__all__ = [
    "MODEL_CHECK_TIMEOUT_S",
    "SOCKET_NAME",
    "Client",
    "DaemonUnavailable",
    "RemoteError",
    "service_path",
]


class Client:
    def __init__(self, home: Path, timeout: float = 60.0, *, transport: Transport | None = None):
        self.socket = Path(home) / SOCKET_NAME
        self.control = ControlClient(transport or UnixSocketTransport(self.socket), timeout)

    @property
    def timeout(self) -> float:
        return self.control.timeout

    def available(self) -> bool:
        return self.control.available()

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: dict[str, Any] | None = None,
        raw: bytes | None = None,
        timeout: float | None = None,
    ) -> Any:
        """One call; ``timeout`` (seconds) replaces the client's for calls known to be long."""
        return self.control.request(method, path, body, query, raw, timeout)

    def stream(self, path: str, query: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """Server-sent events from the daemon, one JSON object each, until the daemon closes."""
        return self.control.stream(path, query)

    # -- conveniences (dict answers) -----------------------------------------------------------

    def services(self, everyone: bool = False) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.request(
            "GET", "/v1/services", query={"all": "1" if everyone else ""}
        )
        return result

    def service(self, name: str, owner: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", service_path(name), query={"owner": owner})
        return result

    def action(self, name: str, verb: str, owner: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self.request(
            "POST", service_path(name, verb), query={"owner": owner}
        )
        return result

    def create_model(
        self,
        name: str,
        version: str,
        path: Path,
        fmt: str,
        *,
        entry: str | None = None,
        origin: str = "custom",
        description: str = "",
    ) -> dict[str, Any]:
        """Register a model version from a directory (POST /v1/models); waits for the check
        (the model loaded once and predicting its sample), which may take minutes."""
        body = {
            "name": name,
            "version": version,
            "path": str(Path(path).expanduser().absolute()),
            "format": fmt,
            "entry": entry,
            "origin": origin,
            "description": description,
        }
        result: dict[str, Any] = self.request(
            "POST", "/v1/models", body, timeout=max(self.timeout, MODEL_CHECK_TIMEOUT_S)
        )
        return result

    def publish_model(self, name: str, public: bool = True) -> dict[str, Any]:
        result: dict[str, Any] = self.request(
            "POST", f"/v1/models/{quote(name)}/publish", {"public": public}
        )
        return result

    def subscribe(self, ref: str) -> dict[str, Any]:
        """Subscribe to a published model named OWNER/NAME."""
        owner, name = split_ref(ref)
        result: dict[str, Any] = self.request(
            "POST", f"/v1/models/{quote(owner)}/{quote(name)}/subscribe"
        )
        return result

    def pools(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.request("GET", "/v1/pools")
        return result
