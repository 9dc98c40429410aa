"""The typed control client: a method per control API route, answers as pydantic models.

Errors come back as the core's own classes (see :mod:`opsbot.client.errors`). The transport is
pluggable: the daemon's unix socket for real use (:meth:`ControlClient.for_home`), the real app
served in-process for tests (:class:`opsbot.client.transport.InProcessTransport`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

from pydantic import BaseModel, TypeAdapter, ValidationError

from opsbot.client import wire
from opsbot.client.errors import DaemonUnavailable, RemoteError, error_from
from opsbot.client.transport import Transport, UnixSocketTransport
from opsbot.core.errors import FieldError, InvalidInput
from opsbot.core.registry import split_ref
from opsbot.core.sandbox import SOCKET_NAME

M = TypeVar("M", bound=BaseModel)
#: How long a model creation may take: the registry's check (300 s) and the copy.
MODEL_CHECK_TIMEOUT_S = 330.0


def service_path(name: str, verb: str = "") -> str:
    """The API path of a service (and of one of its verbs): the name quoted whole, so a
    name with a slash cannot reach another route."""
    if not name:
        raise InvalidInput([FieldError("name", "give the service's name; see `opsbot services`")])
    return f"/v1/services/{quote(name, safe='')}" + (f"/{verb}" if verb else "")


def _target(path: str, query: Mapping[str, Any] | None) -> str:
    params = {k: v for k, v in (query or {}).items() if v not in (None, "", False)}
    return path + ("?" + urlencode(params) if params else "")


class ControlClient:
    """The control API as methods. ``timeout`` (seconds) bounds each call but the model
    check's, which may take minutes."""

    def __init__(self, transport: Transport, timeout: float = 60.0):
        self.transport = transport
        self.timeout = timeout

    @classmethod
    def for_home(cls, home: Path, timeout: float = 60.0) -> ControlClient:
        """The client of the daemon serving ``home`` (its socket, ``HOME/opsbot.sock``)."""
        return cls(UnixSocketTransport(Path(home) / SOCKET_NAME), timeout)

    # -- the wire ------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: Mapping[str, Any] | None = None,
        raw: bytes | None = None,
        timeout: float | None = None,
    ) -> Any:
        """One call; the decoded JSON answer. Empty, false and None query values are left
        out. Raises the error the daemon answered with, rebuilt (NotFound, SpecInvalid...)."""
        target = _target(path, query)
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        headers = {"Content-Type": "application/json"} if data is not None else {}
        answer = self.transport.send(
            method, target, data, headers, self.timeout if timeout is None else timeout
        )
        try:
            payload = json.loads(answer.body) if answer.body else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            # Not the daemon's answer (a proxy, another program on the socket): say what came.
            snippet = answer.body[:200].decode(errors="replace").strip()
            raise RemoteError(
                {
                    "error": "BadAnswer",
                    "title": "Unexpected answer",
                    "message": f"{method} {target} answered HTTP {answer.status} with non-JSON "
                    f"({snippet!r}); is {self.transport.where} an opsbot daemon of this version?",
                },
                answer.status,
            ) from None
        if answer.status >= 400:
            raise error_from(payload, answer.status)
        return payload

    def _as(self, model: Any, payload: Any, what: str) -> Any:
        try:
            return TypeAdapter(model).validate_python(payload)
        except ValidationError as exc:
            raise RemoteError(
                {
                    "error": "BadAnswer",
                    "title": "Unexpected answer",
                    "message": f"{what} answered what this client cannot read ({exc}); is "
                    f"{self.transport.where} an opsbot daemon of this version?",
                },
                200,
            ) from None

    def _one(self, model: type[M], method: str, path: str, **kw: Any) -> M:
        result: M = self._as(model, self.request(method, path, **kw), f"{method} {path}")
        return result

    def _many(self, model: type[M], method: str, path: str, **kw: Any) -> list[M]:
        result: list[M] = self._as(list[model], self.request(method, path, **kw), path)  # type: ignore[valid-type]
        return result

    def stream(self, path: str, query: Mapping[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """Server-sent events, one JSON object each, until the daemon closes."""
        lines = self.transport.lines(_target(path, query))
        status, first = next(lines)
        if status >= 400:
            try:
                payload = json.loads(first or b"{}")
            except ValueError:
                payload = {"message": f"{path} answered HTTP {status}"}
            raise error_from(payload, status)
        for line in lines:
            if line[1].startswith(b"data: "):
                yield json.loads(line[1][6:])

    # -- the daemon ------------------------------------------------------------------------------

    def health(self) -> None:
        """Ask the daemon whether it is up (``/healthz``); raises DaemonUnavailable, saying
        what to do, when nothing answers."""
        self.request("GET", "/healthz")

    def available(self) -> bool:
        """Whether a daemon answers (``/healthz``)."""
        try:
            self.health()
        except DaemonUnavailable:
            return False
        return True

    def openapi(self) -> dict[str, Any]:
        document: dict[str, Any] = self.request("GET", "/openapi.json")
        return document

    def whoami(self) -> wire.WhoAmI:
        return self._one(wire.WhoAmI, "GET", "/v1/whoami")

    def create_token(self) -> wire.TokenCreated:
        return self._one(wire.TokenCreated, "POST", "/v1/tokens")

    def metrics_token(self, *, rotate: bool = False) -> wire.MetricsToken:
        if rotate:
            return self._one(wire.MetricsToken, "POST", "/v1/metrics-token/rotate")
        return self._one(wire.MetricsToken, "GET", "/v1/metrics-token")

    # -- flavors, pools, nodes, models ---------------------------------------------------------

    def flavors(self, pool: str = "public") -> list[wire.FlavorInfo]:
        return self._many(wire.FlavorInfo, "GET", "/v1/flavors", query={"pool": pool})

    def pools(self) -> list[wire.PoolInfo]:
        return self._many(wire.PoolInfo, "GET", "/v1/pools")

    def nodes(self) -> wire.NodeReport:
        return self._one(wire.NodeReport, "GET", "/v1/nodes")

    def stats(self) -> wire.GatewayNumbers:
        return self._one(wire.GatewayNumbers, "GET", "/v1/stats")

    def models(self, source: str | None = None) -> list[wire.ModelInfo]:
        return self._many(wire.ModelInfo, "GET", "/v1/models", query={"source": source})

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
    ) -> wire.ModelInfo:
        """Register a model version from a directory; waits for the check (the model loaded
        once and predicting its sample), which may take minutes."""
        body = {
            "name": name,
            "version": version,
            "path": str(Path(path).expanduser().absolute()),
            "format": fmt,
            "entry": entry,
            "origin": origin,
            "description": description,
        }
        timeout = max(self.timeout, MODEL_CHECK_TIMEOUT_S)
        return self._one(wire.ModelInfo, "POST", "/v1/models", body=body, timeout=timeout)

    def publish_model(self, name: str, public: bool = True) -> wire.Published:
        path = f"/v1/models/{quote(name, safe='')}/publish"
        return self._one(wire.Published, "POST", path, body={"public": public})

    def subscribe(self, ref: str) -> wire.Subscribed:
        """Subscribe to a published model named OWNER/NAME."""
        owner, name = split_ref(ref)
        path = f"/v1/models/{quote(owner, safe='')}/{quote(name, safe='')}/subscribe"
        return self._one(wire.Subscribed, "POST", path)

    # -- deploy ----------------------------------------------------------------------------------

    def validate(self, spec: Mapping[str, Any]) -> wire.Validated:
        """Check a spec as a deploy would, changing nothing: the normalised spec, warnings and
        the summary to confirm."""
        return self._one(wire.Validated, "POST", "/v1/validate", body=dict(spec))

    def deploy(self, spec: Mapping[str, Any]) -> wire.Deployed:
        return self._one(wire.Deployed, "POST", "/v1/services", body=dict(spec))

    # -- services --------------------------------------------------------------------------------

    def services(self, everyone: bool = False) -> list[wire.ServiceInfo]:
        return self._many(
            wire.ServiceInfo, "GET", "/v1/services", query={"all": "true" if everyone else ""}
        )

    def service(
        self, name: str, owner: str | None = None, *, stats: bool = False
    ) -> wire.ServiceDetail:
        """One service with its instances; ``stats``: with CPU, memory and the numbers per
        version (about a second slower)."""
        query = {"owner": owner, "stats": "true" if stats else ""}
        return self._one(wire.ServiceDetail, "GET", service_path(name), query=query)

    def stop(self, name: str, owner: str | None = None) -> wire.ServiceInfo:
        path = service_path(name, "stop")
        return self._one(wire.ServiceInfo, "POST", path, query={"owner": owner})

    def start(self, name: str, owner: str | None = None) -> wire.ServiceInfo:
        path = service_path(name, "start")
        return self._one(wire.ServiceInfo, "POST", path, query={"owner": owner})

    def delete(self, name: str, owner: str | None = None) -> wire.ServiceInfo:
        return self._one(wire.ServiceInfo, "DELETE", service_path(name), query={"owner": owner})

    def rotate_key(self, name: str, owner: str | None = None) -> wire.KeyRotated:
        path = service_path(name, "key")
        return self._one(wire.KeyRotated, "POST", path, query={"owner": owner})

    def extend(self, name: str, hours: int, owner: str | None = None) -> wire.ServiceInfo:
        path = service_path(name, "extend")
        return self._one(
            wire.ServiceInfo, "POST", path, body={"hours": hours}, query={"owner": owner}
        )

    def extend_plan(self, name: str, hours: int, owner: str | None = None) -> wire.ExtendPlan:
        path = service_path(name, "extend/plan")
        return self._one(
            wire.ExtendPlan, "POST", path, body={"hours": hours}, query={"owner": owner}
        )

    def set_auto_stop(self, name: str, value: str, owner: str | None = None) -> wire.ServiceInfo:
        path = service_path(name, "autostop")
        return self._one(
            wire.ServiceInfo, "POST", path, body={"auto_stop": value}, query={"owner": owner}
        )

    def update(
        self,
        name: str,
        *,
        spec: Mapping[str, Any] | None = None,
        changes: Mapping[str, Any] | None = None,
        owner: str | None = None,
    ) -> wire.Modified:
        """Modify a service: a whole new spec, or changes to the current one (one of the two)."""
        path = service_path(name, "update")
        return self._one(
            wire.Modified, "POST", path, body=_update_body(spec, changes), query={"owner": owner}
        )

    def update_plan(
        self,
        name: str,
        *,
        spec: Mapping[str, Any] | None = None,
        changes: Mapping[str, Any] | None = None,
        owner: str | None = None,
    ) -> wire.UpdatePlan:
        """What :meth:`update` would change and restart, changing nothing."""
        path = service_path(name, "update/plan")
        return self._one(
            wire.UpdatePlan, "POST", path, body=_update_body(spec, changes), query={"owner": owner}
        )

    def history(self, name: str, owner: str | None = None) -> list[wire.Snapshot]:
        path = service_path(name, "history")
        return self._many(wire.Snapshot, "GET", path, query={"owner": owner})

    def rollback_preview(
        self, name: str, to: int, owner: str | None = None
    ) -> wire.RollbackPreview:
        path = service_path(name, "rollback")
        return self._one(
            wire.RollbackPreview,
            "POST",
            path,
            body={"to": to, "dry_run": True},
            query={"owner": owner},
        )

    def rollback(self, name: str, to: int, owner: str | None = None) -> wire.Modified:
        path = service_path(name, "rollback")
        return self._one(wire.Modified, "POST", path, body={"to": to}, query={"owner": owner})

    def events(
        self,
        name: str | None = None,
        *,
        owner: str | None = None,
        level: str | None = None,
        since: str | None = None,
        after_id: int | None = None,
    ) -> list[wire.EventInfo]:
        """Events of one service, or of every service the caller may see."""
        path = service_path(name, "events") if name is not None else "/v1/events"
        query = {"owner": owner, "level": level, "since": since, "after_id": after_id}
        return self._many(wire.EventInfo, "GET", path, query=query)

    def follow_events(
        self,
        *,
        service: str | None = None,
        owner: str | None = None,
        level: str | None = None,
        after_id: int | None = None,
    ) -> Iterator[wire.EventInfo]:
        """Events as they happen (those after ``after_id`` first), until the daemon stops."""
        query = {"service": service, "owner": owner, "level": level, "after_id": after_id}
        for event in self.stream("/v1/events/stream", query):
            yield wire.EventInfo.model_validate(event)

    def logs(self, name: str, tail: int = 100, owner: str | None = None) -> list[str]:
        lines: list[str] = self._as(
            list[str],
            self.request("GET", service_path(name, "logs"), query={"tail": tail, "owner": owner}),
            "logs",
        )
        return lines

    def predict(self, name: str, body: bytes, owner: str | None = None) -> wire.Prediction:
        """Call the service through the gateway as its owner; ``body`` is the JSON request."""
        path = service_path(name, "predict")
        return self._one(wire.Prediction, "POST", path, raw=body, query={"owner": owner})


def _update_body(
    spec: Mapping[str, Any] | None, changes: Mapping[str, Any] | None
) -> dict[str, Any]:
    if (spec is None) == (changes is None):
        raise InvalidInput(
            [FieldError("spec", "give a whole spec or changes to the current one, not both")]
        )
    return {"spec": dict(spec)} if spec is not None else {"changes": dict(changes or {})}
