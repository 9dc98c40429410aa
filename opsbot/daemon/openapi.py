"""The control API's OpenAPI 3.1 document, built from the core's pydantic models."""

from __future__ import annotations

import functools
from typing import Any

from pydantic import TypeAdapter

from opsbot import __version__
from opsbot.core.spec import DeploySpec
from opsbot.core.update import Changes

REF = "#/components/schemas/{model}"

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

_SERVICE = {
    "type": "object",
    "required": ["id", "name", "owner", "status", "url"],
    "properties": {
        "id": {"type": "string", "description": "service id used in the gateway URL"},
        "name": {"type": "string"},
        "owner": {"type": "string"},
        "status": {
            "type": "string",
            "enum": [
                "deploying",
                "running",
                "concerning",
                "abnormal",
                "failed",
                "stopping",
                "stopped",
                "deleting",
            ],
        },
        "progress": {"type": "integer"},
        "reason": {"type": "string"},
        "url": {"type": "string"},
        "auto_stop": {"type": "string"},
        "due_time": {"type": ["number", "null"]},
        "remaining_s": {"type": ["number", "null"]},
        "instances_ready": {"type": "integer", "description": "instances answering readiness"},
        "instances_desired": {"type": "integer", "description": "instances the spec asks for"},
        "api_key": {"type": "string", "description": "only in the reply to the deploy"},
    },
}


_CHANGES = TypeAdapter(Changes).json_schema()

_MODEL_CREATE = {
    "type": "object",
    "required": ["name", "version", "path", "format"],
    "properties": {
        "name": {"type": "string"},
        "version": {"type": "string"},
        "path": {"type": "string", "description": "absolute path of a directory the caller reads"},
        "format": {"type": "string", "enum": ["sklearn", "onnx", "python"]},
        "entry": {"type": "string", "description": "python format: module:Class"},
        "origin": {"type": "string", "enum": ["custom", "exeml"]},
        "description": {"type": "string"},
    },
}


def _op(
    summary: str,
    ok: str = "200",
    schema: dict[str, Any] | None = None,
    body: dict[str, Any] | None = None,
    params: tuple[str, ...] = (),
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {
            ok: {
                "description": "OK",
                "content": {"application/json": {"schema": schema or {"type": "object"}}},
            },
            "default": {
                "description": "error",
                "content": {"application/json": {"schema": {"$ref": REF.format(model="Error")}}},
            },
        },
    }
    parameters = [
        {
            "name": p,
            "in": "path" if p == "name" else "query",
            "required": p == "name",
            "schema": {"type": "string"},
        }
        for p in params
    ]
    if parameters:
        op["parameters"] = parameters
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return op


@functools.cache
def openapi_document() -> dict[str, Any]:
    schema = DeploySpec.model_json_schema(ref_template=REF)
    defs = schema.pop("$defs", {})
    spec_ref = {"$ref": REF.format(model="DeploySpec")}
    service_ref = {"$ref": REF.format(model="Service")}
    svc = ("name", "owner")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "opsbot control API",
            "version": __version__,
            "description": "Served on the daemon's unix socket; the caller is the socket's peer.",
        },
        "paths": {
            "/healthz": {"get": _op("Liveness of the daemon")},
            "/v1/whoami": {"get": _op("The calling user, admin flag and quota use")},
            "/v1/flavors": {"get": _op("Flavors with availability", params=("pool",))},
            "/v1/models": {
                "get": _op("Model versions the caller can deploy", params=("source",)),
                "post": _op(
                    "Register a model version from a directory (Building, then Normal or Failed)",
                    ok="201",
                    body=_MODEL_CREATE,
                ),
            },
            "/v1/models/{name}/publish": {
                "post": _op(
                    "Publish one of the caller's models (public: false makes it private)",
                    params=("name",),
                    body={"type": "object", "properties": {"public": {"type": "boolean"}}},
                )
            },
            "/v1/models/{owner}/{name}/subscribe": {
                "post": {
                    **_op("Subscribe to a published model (My Subscriptions)"),
                    "parameters": [
                        {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                        for p in ("owner", "name")
                    ],
                }
            },
            "/v1/pools": {
                "get": _op(
                    "Resource pools: kind, capacity, free capacity, whether the caller may use it",
                    schema={"type": "array", "items": {"type": "object"}},
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
            "/v1/validate": {"post": _op("Validate a deploy spec", body=spec_ref)},
            "/v1/services": {
                "get": _op(
                    "Services (the caller's, or everyone's with all=1)",
                    schema={"type": "array", "items": service_ref},
                    params=("all",),
                ),
                "post": _op("Deploy a service", ok="201", schema=service_ref, body=spec_ref),
            },
            "/v1/services/{name}": {
                "get": _op("One service with its instances", schema=service_ref, params=svc),
                "delete": _op("Delete a service", ok="202", schema=service_ref, params=svc),
            },
            "/v1/services/{name}/stop": {"post": _op("Stop", schema=service_ref, params=svc)},
            "/v1/services/{name}/start": {"post": _op("Start", schema=service_ref, params=svc)},
            "/v1/services/{name}/key": {"post": _op("Rotate the API key", params=svc)},
            "/v1/services/{name}/extend": {
                "post": _op(
                    "Extend auto stop: add hours to the time left, capped at 24 h from now",
                    schema=service_ref,
                    params=svc,
                    body={"type": "object", "properties": {"hours": {"type": "integer"}}},
                )
            },
            "/v1/services/{name}/extend/plan": {
                "post": _op(
                    "What Extend would do: time left, new deadline (capped at 24 h), changing "
                    "nothing",
                    schema={"type": "object"},
                    params=svc,
                    body={"type": "object", "properties": {"hours": {"type": "integer"}}},
                )
            },
            "/v1/services/{name}/autostop": {
                "post": _op(
                    "Auto stop off, on or a duration",
                    schema=service_ref,
                    params=svc,
                    body={"type": "object", "properties": {"auto_stop": {"type": "string"}}},
                )
            },
            "/v1/services/{name}/update": {
                "post": _op(
                    "Modify a service: a whole new spec, or changes to the current one",
                    schema=service_ref,
                    params=svc,
                    body={
                        "type": "object",
                        "properties": {"spec": spec_ref, "changes": _CHANGES},
                    },
                )
            },
            "/v1/services/{name}/update/plan": {
                "post": _op(
                    "What a modification would change and restart (masked values mean keep), "
                    "changing nothing",
                    schema={"type": "object"},
                    params=svc,
                    body={
                        "type": "object",
                        "properties": {"spec": spec_ref, "changes": _CHANGES},
                    },
                )
            },
            "/v1/services/{name}/history": {
                "get": _op(
                    "Config snapshots, #1 the deploy",
                    schema={"type": "array", "items": {"type": "object"}},
                    params=svc,
                )
            },
            "/v1/services/{name}/rollback": {
                "post": _op(
                    "Apply snapshot N again (dry_run: only the changes)",
                    params=svc,
                    body={
                        "type": "object",
                        "required": ["to"],
                        "properties": {
                            "to": {"type": "integer"},
                            "dry_run": {"type": "boolean"},
                        },
                    },
                )
            },
            "/v1/events/stream": {
                "get": _op("Server-sent events", params=("service", "level", "after_id"))
            },
            "/v1/services/{name}/events": {
                "get": _op("Events of a service", params=(*svc, "level", "since", "after_id"))
            },
            "/v1/services/{name}/logs": {
                "get": _op("Log tail of the instances", params=(*svc, "tail"))
            },
            "/v1/services/{name}/predict": {
                "post": _op(
                    "Predict through the gateway as the owner", params=svc, body={"type": "object"}
                )
            },
            "/v1/events": {
                "get": _op("Events", params=("service", "owner", "level", "since", "after_id"))
            },
        },
        "components": {
            "schemas": {**defs, "DeploySpec": schema, "Service": _SERVICE, "Error": _ERROR}
        },
    }
