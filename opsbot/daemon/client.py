"""A small synchronous client of the control API over the daemon's unix socket.

The CLI and the TUI's workers use it. Errors from the daemon come back as the same OpsbotError
(title, message, field errors) the core raised.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from opsbot.core.errors import FieldError, InvalidInput, OpsbotError
from opsbot.core.registry import split_ref

SOCKET_NAME = "opsbot.sock"
#: How long a model creation may take: the registry's check (300 s) and the copy.
MODEL_CHECK_TIMEOUT_S = 330.0


class DaemonUnavailable(OpsbotError):
    title = "Daemon not running"
    status = 503


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


class RemoteError(OpsbotError):
    """An error the daemon reported, rebuilt on this side."""

    def __init__(self, payload: dict[str, Any], status: int):
        super().__init__(str(payload.get("message", "error")), title=payload.get("title"))
        self.status = status
        self.kind = str(payload.get("error", "OpsbotError"))
        self._errors = [FieldError(e["field"], e["message"]) for e in payload.get("errors", [])]

    @property
    def errors(self) -> list[FieldError]:
        return list(self._errors)

    def as_dict(self) -> dict[str, Any]:
        return {**super().as_dict(), "error": self.kind}


def service_path(name: str, verb: str = "") -> str:
    """The API path of a service (and of one of its verbs): the name quoted whole, so a
    name with a slash cannot reach another route."""
    if not name:
        raise InvalidInput([FieldError("name", "give the service's name; see `opsbot services`")])
    return f"/v1/services/{quote(name, safe='')}" + (f"/{verb}" if verb else "")


class Client:
    def __init__(self, home: Path, timeout: float = 60.0):
        self.socket = Path(home) / SOCKET_NAME
        self.timeout = timeout

    def available(self) -> bool:
        try:
            self.request("GET", "/healthz")
        except DaemonUnavailable:
            return False
        return True

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
        params = {k: v for k, v in (query or {}).items() if v not in (None, "", False)}
        if params:
            path += "?" + urlencode(params)
        timeout = self.timeout if timeout is None else timeout
        conn = _UnixConnection(str(self.socket), timeout)
        try:
            data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
            headers = {"Content-Type": "application/json"} if data is not None else {}
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            text = resp.read()
        except PermissionError:
            raise DaemonUnavailable(
                f"you may not use {self.socket}; ask the admin to add you to its group"
            ) from None
        except TimeoutError:
            raise DaemonUnavailable(
                f"the daemon on {self.socket} did not answer within {timeout:g} s"
            ) from None
        except (OSError, http.client.HTTPException):
            raise DaemonUnavailable(
                f"no opsbot daemon answers on {self.socket}; start one with `opsbot up -d`"
            ) from None
        finally:
            conn.close()
        try:
            payload = json.loads(text) if text else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            # Not the daemon's answer (a proxy, another program on the socket): say what came.
            snippet = text[:200].decode(errors="replace").strip()
            raise RemoteError(
                {
                    "error": "BadAnswer",
                    "title": "Unexpected answer",
                    "message": f"{method} {path} answered HTTP {resp.status} with non-JSON "
                    f"({snippet!r}); is {self.socket} an opsbot daemon of this version?",
                },
                resp.status,
            ) from None
        if resp.status >= 400:
            if isinstance(payload, dict) and payload.get("error") in (
                "SpecInvalid",
                "InvalidInput",
                "ConfigInvalid",
            ):
                errs = [FieldError(e["field"], e["message"]) for e in payload.get("errors", [])]
                if errs:
                    raise InvalidInput(errs, title=payload.get("title"))
            raise RemoteError(payload if isinstance(payload, dict) else {}, resp.status)
        return payload

    def stream(self, path: str, query: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """Server-sent events from the daemon, one JSON object each, until the daemon closes."""
        params = {k: v for k, v in (query or {}).items() if v not in (None, "", False)}
        if params:
            path += "?" + urlencode(params)
        conn = _UnixConnection(str(self.socket), timeout=None)
        try:
            try:
                conn.request("GET", path)
                resp = conn.getresponse()
            except OSError:
                raise DaemonUnavailable(
                    f"no opsbot daemon answers on {self.socket}; start one with `opsbot up -d`"
                ) from None
            if resp.status >= 400:
                try:
                    payload = json.loads(resp.read() or b"{}")
                except ValueError:
                    payload = {"message": f"{path} answered HTTP {resp.status}"}
                raise RemoteError(payload if isinstance(payload, dict) else {}, resp.status)
            while True:
                line = resp.readline()
                if not line:
                    return
                if line.startswith(b"data: "):
                    yield json.loads(line[6:])
        finally:
            conn.close()

    # -- conveniences ------------------------------------------------------------------------

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
