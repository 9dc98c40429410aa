"""The control API's OpenAPI 3.1 document: the contract, tested by schemathesis in CI.

Request bodies come from the pydantic models the handlers validate with (opsbot.daemon.bodies
and the core's DeploySpec and Changes), so the document and the code cannot disagree on them.
"""

from __future__ import annotations

import functools
from typing import Any

from pydantic import BaseModel, TypeAdapter

from opsbot import __version__
from opsbot.core.spec import DeploySpec
from opsbot.core.status import Status
from opsbot.core.update import Changes
from opsbot.daemon.bodies import (
    LEVELS,
    MAX_ID,
    MAX_TAIL,
    SOURCES,
    AutoStopBody,
    ExtendBody,
    ModelCreateBody,
    PublishBody,
    RollbackBody,
    UpdateBody,
)

REF = "#/components/schemas/{model}"


def ref(model: str) -> dict[str, str]:
    return {"$ref": REF.format(model=model)}


_ERROR = {
    "type": "object",
    "required": ["error", "title", "message", "errors"],
    "properties": {
        "error": {"type": "string", "description": "error class, e.g. SpecInvalid"},
        "title": {"type": "string"},
        "message": {"type": "string", "description": "what happened and what to do"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["field", "message"],
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
}

_NUMBER_OR_NULL = {"type": ["number", "null"]}

_SERVICE = {
    "type": "object",
    "required": ["id", "name", "owner", "status", "url"],
    "properties": {
        "id": {"type": "string", "description": "service id used in the gateway URL"},
        "name": {"type": "string"},
        "owner": {"type": "string"},
        "status": {
            "type": "string",
            "enum": [s.value for s in Status],
            "description": "lower case on the wire; shown capitalised (Running, Stopped)",
        },
        "progress": {"type": "integer"},
        "reason": {"type": "string"},
        "url": {"type": "string"},
        "auto_stop": {"type": "string"},
        "due_time": _NUMBER_OR_NULL,
        "remaining_s": _NUMBER_OR_NULL,
        "instances_ready": {"type": "integer", "description": "instances answering readiness"},
        "instances_desired": {"type": "integer", "description": "instances the spec asks for"},
        "api_key": {"type": "string", "description": "only in the reply to the deploy"},
        "instances": {"type": "array", "items": {"type": "object"}},
        "changes": {"type": "array", "items": {"type": "string"}},
        "snapshot": {"type": ["integer", "null"]},
    },
}

_EVENT = {
    "type": "object",
    "required": ["id", "time", "level", "kind", "message", "actor"],
    "properties": {
        "id": {"type": "integer"},
        "time": {"type": "number"},
        "service_id": {"type": ["integer", "null"]},
        "service": {"type": ["string", "null"]},
        "owner": {"type": ["string", "null"]},
        "level": {"type": "string", "enum": list(LEVELS)},
        "kind": {"type": "string"},
        "message": {"type": "string"},
        "actor": {"type": "string"},
    },
}

_OBJECTS = {"type": "array", "items": {"type": "object"}}


def _schema(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema(ref_template=REF)


def _param(name: str, schema: dict[str, Any], where: str = "query", **extra: Any) -> dict[str, Any]:
    return {"name": name, "in": where, "required": where == "path", "schema": schema, **extra}


_NAME = _param("name", {"type": "string", "minLength": 1}, "path", description="service name")
_OWNER = _param("owner", {"type": "string"}, description="the owner, for an admin's call")
_BOOL = {"type": "boolean"}
PARAMS: dict[str, dict[str, Any]] = {
    "pool": _param("pool", {"type": "string", "default": "public"}),
    "source": _param("source", {"type": "string", "enum": list(SOURCES)}),
    "all": _param("all", _BOOL, description="everyone's services (admins)"),
    "stats": _param("stats", _BOOL, description="CPU, memory and per-version numbers (slow)"),
    "service": _param("service", {"type": "string"}),
    "level": _param("level", {"type": "string", "enum": list(LEVELS)}),
    "since": _param(
        "since",
        {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*[smhdSMHD]\s*$"},
        description="only newer than this: 45s, 30m, 1h, 2d",
    ),
    "after_id": _param("after_id", {"type": "integer", "minimum": 0, "maximum": MAX_ID}),
    "tail": _param("tail", {"type": "integer", "minimum": 1, "maximum": MAX_TAIL, "default": 100}),
}


_TOKEN: dict[str, Any] = {
    "type": "object",
    "required": ["token"],
    "properties": {"token": {"type": "string"}},
}


def _op(
    summary: str,
    ok: str = "200",
    schema: dict[str, Any] | None = None,
    body: dict[str, Any] | None = None,
    params: tuple[str, ...] = (),
    body_required: bool = True,
    public: bool = False,
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {
            ok: {
                "description": "OK",
                "content": {"application/json": {"schema": schema or {"type": "object"}}},
            },
            "default": {
                "description": "error (401 with WWW-Authenticate when the token is missing)",
                "content": {"application/json": {"schema": ref("Error")}},
            },
        },
    }
    parameters = [_NAME if p == "name" else _OWNER if p == "owner" else PARAMS[p] for p in params]
    if parameters:
        op["parameters"] = parameters
    if body is not None:
        op["requestBody"] = {
            "required": body_required,
            "content": {"application/json": {"schema": body}},
        }
    if public:
        op["security"] = []
    return op


SVC = ("name", "owner")


@functools.cache
def openapi_document() -> dict[str, Any]:
    schema = DeploySpec.model_json_schema(ref_template=REF)
    defs = schema.pop("$defs", {})
    changes = TypeAdapter(Changes).json_schema(ref_template=REF)
    defs.update(changes.pop("$defs", {}))
    update = _schema(UpdateBody)
    update["properties"]["spec"] = {"anyOf": [ref("DeploySpec"), {"type": "null"}]}
    update["properties"]["changes"] = {"anyOf": [ref("Changes"), {"type": "null"}]}
    update["description"] = "Exactly one of spec and changes."
    update["minProperties"] = 1
    service, services = ref("Service"), {"type": "array", "items": ref("Service")}
    events = {"type": "array", "items": ref("Event")}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "opsbot control API",
            "version": __version__,
            "description": (
                "Served on the daemon's unix socket, where the caller is the socket's peer and "
                "needs no token, and optionally on TCP (api_listen), where every call but "
                "/healthz and /openapi.json needs `Authorization: Bearer TOKEN` "
                "(`opsbot token create`). Every error is a JSON Error document."
            ),
        },
        "security": [{"bearerAuth": []}],
        "paths": {
            "/healthz": {
                "get": _op(
                    "Liveness of the daemon, the controller's finished reconciliations and "
                    "the open event streams",
                    schema={
                        "type": "object",
                        "required": ["ok", "reconciled", "event_streams"],
                        "properties": {
                            "ok": {"type": "boolean"},
                            "reconciled": {"type": "integer", "minimum": 0},
                            "event_streams": {"type": "integer", "minimum": 0},
                        },
                    },
                    public=True,
                )
            },
            "/openapi.json": {"get": _op("This document", public=True)},
            "/v1/whoami": {"get": _op("The calling user, admin flag and quota use")},
            "/v1/tokens": {
                "post": _op("A token for the TCP listener, acting as the caller", ok="201")
            },
            "/v1/metrics-token": {
                "get": _op(
                    "The scrape token of the gateway's /metrics (an admin's, or the daemon "
                    "account's)",
                    schema=_TOKEN,
                )
            },
            "/v1/metrics-token/rotate": {
                "post": _op(
                    "A new scrape token for the gateway's /metrics; the old one is refused from "
                    "the next scrape on",
                    schema=_TOKEN,
                )
            },
            "/v1/flavors": {
                "get": _op("Flavors with availability", schema=_OBJECTS, params=("pool",))
            },
            "/v1/models": {
                "get": _op(
                    "Model versions the caller can deploy", schema=_OBJECTS, params=("source",)
                ),
                "post": _op(
                    "Register a model version from a directory (Building, then Normal or Failed)",
                    ok="201",
                    body=_schema(ModelCreateBody),
                ),
            },
            "/v1/models/{name}/publish": {
                "post": _op(
                    "Publish one of the caller's models (public: false makes it private)",
                    params=("name",),
                    body=_schema(PublishBody),
                    body_required=False,
                )
            },
            "/v1/models/{owner}/{name}/subscribe": {
                "post": {
                    **_op("Subscribe to a published model (My Subscriptions)"),
                    "parameters": [
                        _param(p, {"type": "string", "minLength": 1}, "path")
                        for p in ("owner", "name")
                    ],
                }
            },
            "/v1/pools": {
                "get": _op(
                    "Resource pools: kind, capacity, free capacity, whether the caller may use it",
                    schema=_OBJECTS,
                )
            },
            "/v1/nodes": {
                "get": _op(
                    "Each pool with its nodes (state, address, CPUs, memory, accelerators, what "
                    "is free) and warnings about node pool labels no pool names",
                    schema={
                        "type": "object",
                        "required": ["pools", "warnings"],
                        "properties": {
                            "pools": {"type": "array", "items": {"type": "object"}},
                            "warnings": {"type": "array", "items": {"type": "string"}},
                        },
                    },
                )
            },
            "/v1/stats": {
                "get": _op(
                    "The gateway's numbers (calls, failures, latency per version) of the services "
                    "the caller may read (admins: every service)",
                    schema={
                        "type": "object",
                        "required": ["services"],
                        "properties": {"services": {"type": "array", "items": {"type": "object"}}},
                    },
                )
            },
            "/v1/validate": {"post": _op("Validate a deploy spec", body=ref("DeploySpec"))},
            "/v1/services": {
                "get": _op(
                    "Services (the caller's, or everyone's with all=true)",
                    schema=services,
                    params=("all",),
                ),
                "post": _op("Deploy a service", ok="201", schema=service, body=ref("DeploySpec")),
            },
            "/v1/services/{name}": {
                "get": _op(
                    "One service with its instances", schema=service, params=(*SVC, "stats")
                ),
                "delete": _op("Delete a service", ok="202", schema=service, params=SVC),
            },
            "/v1/services/{name}/stop": {"post": _op("Stop", schema=service, params=SVC)},
            "/v1/services/{name}/start": {"post": _op("Start", schema=service, params=SVC)},
            "/v1/services/{name}/key": {
                "post": _op(
                    "Rotate the API key; answers once the gateway routes the new key "
                    "(routed: false, with a warning, if it did not within 5 s)",
                    params=SVC,
                    schema={
                        "type": "object",
                        "required": ["name", "api_key", "routed"],
                        "properties": {
                            "name": {"type": "string"},
                            "api_key": {"type": "string"},
                            "routed": {"type": "boolean"},
                            "warning": {"type": "string"},
                        },
                    },
                )
            },
            "/v1/services/{name}/extend": {
                "post": _op(
                    "Extend auto stop: add hours to the time left, capped at 24 h from now",
                    schema=service,
                    params=SVC,
                    body=_schema(ExtendBody),
                )
            },
            "/v1/services/{name}/extend/plan": {
                "post": _op(
                    "What Extend would do: time left, new deadline (capped at 24 h), changing "
                    "nothing",
                    schema={"type": "object"},
                    params=SVC,
                    body=_schema(ExtendBody),
                )
            },
            "/v1/services/{name}/autostop": {
                "post": _op(
                    "Auto stop off, on or a duration",
                    schema=service,
                    params=SVC,
                    body=_schema(AutoStopBody),
                )
            },
            "/v1/services/{name}/update": {
                "post": _op(
                    "Modify a service: a whole new spec, or changes to the current one",
                    schema=service,
                    params=SVC,
                    body=update,
                )
            },
            "/v1/services/{name}/update/plan": {
                "post": _op(
                    "What a modification would change and restart (masked values mean keep), "
                    "changing nothing",
                    schema={"type": "object"},
                    params=SVC,
                    body=update,
                )
            },
            "/v1/services/{name}/history": {
                "get": _op("Config snapshots, #1 the deploy", schema=_OBJECTS, params=SVC)
            },
            "/v1/services/{name}/rollback": {
                "post": _op(
                    "Apply snapshot N again (dry_run: only the changes)",
                    params=SVC,
                    body=_schema(RollbackBody),
                )
            },
            "/v1/events/stream": {
                "get": {
                    "summary": "Server-sent events, endless: one `data: {Event}` per event",
                    "parameters": [
                        PARAMS["service"],
                        _OWNER,
                        PARAMS["level"],
                        PARAMS["after_id"],
                    ],
                    "responses": {
                        "200": {
                            "description": "an endless event stream",
                            "content": {"text/event-stream": {"schema": {"type": "string"}}},
                        },
                        "default": {
                            "description": "error",
                            "content": {"application/json": {"schema": ref("Error")}},
                        },
                    },
                }
            },
            "/v1/services/{name}/events": {
                "get": _op(
                    "Events of a service",
                    schema=events,
                    params=(*SVC, "level", "since", "after_id"),
                )
            },
            "/v1/services/{name}/logs": {
                "get": _op(
                    "Log tail of the instances",
                    schema={"type": "array", "items": {"type": "string"}},
                    params=(*SVC, "tail"),
                )
            },
            "/v1/services/{name}/predict": {
                "post": _op(
                    "Predict through the gateway as the owner",
                    params=SVC,
                    body={"type": "object", "description": "the model's JSON request"},
                )
            },
            "/v1/events": {
                "get": _op(
                    "Events",
                    schema=events,
                    params=("service", "owner", "level", "since", "after_id"),
                )
            },
        },
        "components": {
            "schemas": {
                **defs,
                "DeploySpec": schema,
                "Changes": changes,
                "Service": _SERVICE,
                "Event": _EVENT,
                "Error": _ERROR,
            },
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "a token from `opsbot token create` (TCP listener only)",
                }
            },
        },
    }
