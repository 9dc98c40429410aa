"""The client's wire models agree with what the control API really sends and with its OpenAPI
document: a key added on one side only fails here, not in a user's terminal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from inprocess import serve_control_api, settle
from pydantic import BaseModel

from opsbot.client import wire
from opsbot.core.status import Status
from opsbot.daemon.openapi import openapi_document

IRIS = {"name": "iris-one", "models": [{"model": "iris", "version": "1.0.0"}]}


def declared(model: type[BaseModel]) -> set[str]:
    return set(model.model_fields)


def required(model: type[BaseModel]) -> set[str]:
    return {name for name, f in model.model_fields.items() if f.is_required()}


def unread(answer: dict[str, Any], model: type[BaseModel]) -> set[str]:
    """Keys the daemon sent that the model would drop."""
    return set(answer) - declared(model)


def test_every_key_the_api_sends_is_read(examples_home: Path) -> None:
    with serve_control_api(examples_home) as (daemon, client):
        ask = client.request
        deployed = ask("POST", "/v1/services", IRIS)
        settle(daemon, "iris-one", Status.RUNNING, due_in_s=600)
        svc = "/v1/services/iris-one"
        checks: list[tuple[dict[str, Any], type[BaseModel]]] = [
            (deployed, wire.Deployed),
            (deployed["models"][0], wire.ServiceVersion),
            (ask("GET", "/v1/services")[0], wire.ServiceInfo),
            (ask("GET", svc, query={"stats": "true"}), wire.ServiceDetail),
            (ask("POST", "/v1/validate", IRIS), wire.Validated),
            (ask("GET", "/v1/whoami"), wire.WhoAmI),
            (ask("GET", "/v1/flavors")[0], wire.FlavorInfo),
            (ask("GET", "/v1/models")[0], wire.ModelInfo),
            (ask("GET", "/v1/pools")[0], wire.PoolInfo),
            (ask("GET", "/v1/nodes")["pools"][0], wire.PoolNodes),
            (ask("GET", "/v1/nodes")["pools"][0]["nodes"][0], wire.NodeInfo),
            (ask("GET", "/v1/events")[0], wire.EventInfo),
            (ask("GET", f"{svc}/history")[0], wire.Snapshot),
            (ask("POST", f"{svc}/extend/plan", {"hours": 1}), wire.ExtendPlan),
            (ask("POST", f"{svc}/update/plan", {"changes": {"traffic_limit": 5}}), wire.UpdatePlan),
            (ask("POST", f"{svc}/update", {"changes": {"traffic_limit": 5}}), wire.Modified),
            (ask("POST", f"{svc}/rollback", {"to": 1, "dry_run": True}), wire.RollbackPreview),
            (ask("POST", f"{svc}/key"), wire.KeyRotated),
            (ask("POST", "/v1/tokens"), wire.TokenCreated),
            (ask("GET", "/v1/metrics-token"), wire.MetricsToken),
            (ask("POST", "/v1/metrics-token/rotate"), wire.MetricsToken),
            (ask("POST", "/v1/models/iris/publish", {"public": True}), wire.Published),
        ]
        for answer, model in checks:
            assert unread(answer, model) == set(), model.__name__
            model.model_validate(answer)  # and every field it requires came


def test_the_openapi_document_and_the_models_agree() -> None:
    schemas = openapi_document()["components"]["schemas"]
    service = schemas["Service"]
    sent_by_some_route = (
        declared(wire.Deployed) | declared(wire.ServiceDetail) | declared(wire.Modified)
    )
    assert set(service["properties"]) <= sent_by_some_route
    assert set(service["required"]) <= required(wire.ServiceInfo)
    assert set(service["properties"]["status"]["enum"]) == {s.value for s in Status}
    event = schemas["Event"]
    assert set(event["properties"]) == declared(wire.EventInfo)
    assert set(event["required"]) == required(wire.EventInfo)
    error = schemas["Error"]
    assert set(error["properties"]) == declared(wire.ErrorDocument)
    item = error["properties"]["errors"]["items"]
    assert set(item["required"]) == required(wire.FieldProblem) == declared(wire.FieldProblem)
