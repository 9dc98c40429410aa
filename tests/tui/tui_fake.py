"""An in-memory stand-in for opsbot.daemon.client.Client, for the TUI's Pilot tests.

Specs go through the core's own ``parse_spec`` and ``spec_warnings``, so the errors the form shows
are the ones the daemon would send; the registry and flavor checks mirror the core's field paths.
"""

from __future__ import annotations

import html
import queue
import re
import threading
from collections.abc import Iterator
from typing import Any

from opsbot.core.errors import Conflict, FieldError, NotFound, OpsbotError, SpecInvalid
from opsbot.core.spec import masked_env, parse_spec, spec_warnings

NOW = 1_750_000_000.0
GATEWAY = "http://127.0.0.1:9000"


def model(name: str, version: str, status: str = "normal", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "owner": extra.pop("owner", "alice"),
        "version": version,
        "status": status,
        "source": extra.pop("source", "mine"),
        "format": "sklearn",
        "public": False,
        "reason": "",
        **extra,
    }


def service(
    name: str,
    owner: str = "alice",
    status: str = "running",
    models: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    entries = models or [
        {
            "source": "mine",
            "model": "iris",
            "version": "1.0.0",
            "traffic_ratio": 100,
            "flavor": "cpu.2u8g",
            "instances": 1,
            "env": {},
        }
    ]
    out = {
        "id": f"uid-{owner}-{name}",
        "name": name,
        "owner": owner,
        "status": status,
        "progress": 100 if status != "deploying" else 40,
        "reason": "",
        "url": f"{GATEWAY}/v1/infers/uid-{owner}-{name}",
        "auto_stop": "1h",
        "due_time": NOW + 3600,
        "remaining_s": 3600.0,
        "resource_pool": "public",
        "traffic_limit": 100,
        "description": "",
        "models": entries,
        "created_at": NOW - 60,
        "updated_at": NOW - 60,
        "status_since": NOW - 60,
        "status_actor": owner,
    }
    out.update(extra)
    return out


class FakeClient:
    """Answers the control API's routes from memory; records every call in ``calls``."""

    def __init__(self, user: str = "alice", admin: bool = False) -> None:
        self.user = user
        self.admin = admin
        self.calls: list[tuple[str, str, Any]] = []
        self.services_by_key: dict[tuple[str, str], dict[str, Any]] = {}
        self.models = [
            model("iris", "1.0.0"),
            model("iris", "2.0.0"),
            model("iris", "3.0.0", status="building"),
            model("digits", "0.1"),
            model("shared", "1.0", owner="bob", source="subscribed"),
        ]
        self.flavors = [
            {"id": "cpu.2u8g", "name": "CPU: 2 vCPUs | 8 GiB", "available": True, "reason": ""},
            {
                "id": "gpu.t4",
                "name": "CPU: 8 vCPUs | 32 GiB GPU: 1 x T4",
                "available": False,
                "reason": "no node has an NVIDIA T4",
            },
        ]
        self.has_extend = False
        self.events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.event_id = 0
        self.closed = threading.Event()
        self.logs = ["instance 0: listening on 127.0.0.1:40001", "instance 0: ready"]

    # -- helpers for tests -----------------------------------------------------------------------

    def add(self, svc: dict[str, Any]) -> dict[str, Any]:
        self.services_by_key[(svc["owner"], svc["name"])] = svc
        return svc

    def emit(self, svc: dict[str, Any], kind: str, level: str = "normal") -> dict[str, Any]:
        self.event_id += 1
        event = {
            "id": self.event_id,
            "time": NOW,
            "service_id": 1,
            "service": svc["name"],
            "owner": svc["owner"],
            "level": level,
            "kind": kind,
            "message": f"{svc['name']} {kind}",
            "actor": svc["owner"],
        }
        self.events.put(event)
        return event

    def close(self) -> None:
        self.closed.set()
        self.events.put(None)

    # -- the Client interface --------------------------------------------------------------------

    def services(self, everyone: bool = False) -> list[dict[str, Any]]:
        return self.request("GET", "/v1/services", query={"all": "1" if everyone else ""})  # type: ignore[no-any-return]

    def service(self, name: str, owner: str | None = None) -> dict[str, Any]:
        return self.request("GET", f"/v1/services/{name}", query={"owner": owner})  # type: ignore[no-any-return]

    def action(self, name: str, verb: str, owner: str | None = None) -> dict[str, Any]:
        return self.request("POST", f"/v1/services/{name}/{verb}", query={"owner": owner})  # type: ignore[no-any-return]

    def stream(self, path: str, query: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        while not self.closed.is_set():
            try:
                event = self.events.get(timeout=0.05)
            except queue.Empty:
                continue
            if event is None:
                return
            yield event

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: dict[str, Any] | None = None,
        raw: bytes | None = None,
    ) -> Any:
        query = query or {}
        self.calls.append((method, path, body if raw is None else raw))
        parts = path.strip("/").split("/")
        if path == "/v1/whoami":
            return {
                "user": self.user,
                "admin": self.admin,
                "quota_used": len(self.services_by_key),
                "quota": 20,
                "runtime": "process",
                "gateway_url": GATEWAY,
            }
        if path == "/v1/flavors":
            return [dict(f) for f in self.flavors]
        if path == "/v1/models":
            return [dict(m) for m in self.models]
        if path == "/v1/validate":
            spec, warnings = self._check(body)
            return {"spec": spec, "warnings": warnings}
        if path == "/v1/services" and method == "GET":
            everyone = bool(query.get("all"))
            return [
                dict(s)
                for (owner, _), s in sorted(self.services_by_key.items())
                if everyone or owner == self.user
            ]
        if path == "/v1/services" and method == "POST":
            return self._create(body)
        if parts[:2] == ["v1", "services"] and len(parts) >= 3:
            name = parts[2]
            owner = query.get("owner") or self.user
            svc = self.services_by_key.get((owner, name))
            if svc is None:
                raise NotFound(f"{owner} has no service {name!r}: see `opsbot services`")
            verb = parts[3] if len(parts) > 3 else ""
            return self._on_service(method, verb, svc, body)
        raise NotFound(f"no route {method} {path}")

    # -- behaviour -----------------------------------------------------------------------------

    def _check(self, body: Any) -> tuple[dict[str, Any], list[dict[str, str]]]:
        spec = parse_spec(body)
        errors: list[FieldError] = []
        flavors = {f["id"]: f for f in self.flavors}
        for i, entry in enumerate(spec.models):
            at = f"models[{i}]"
            versions = [
                m
                for m in self.models
                if m["name"] == entry.model.split("/")[-1] and m["version"] == entry.version
            ]
            if not versions:
                errors.append(FieldError(f"{at}.model", f"no model {entry.model} {entry.version}"))
            elif versions[0]["status"] != "normal":
                errors.append(
                    FieldError(
                        f"{at}.version",
                        f"{entry.model} {entry.version} is {versions[0]['status'].capitalize()}; "
                        "only Normal versions can be deployed",
                    )
                )
            flavor = flavors.get(entry.flavor)
            if flavor is None:
                errors.append(FieldError(f"{at}.flavor", f"no flavor {entry.flavor}"))
            elif not flavor["available"]:
                errors.append(
                    FieldError(f"{at}.flavor", f"{entry.flavor} is unavailable: {flavor['reason']}")
                )
        if errors:
            raise SpecInvalid(errors)
        warnings = [w.as_dict() for w in spec_warnings(spec)]
        return spec.model_dump(mode="json"), warnings

    def _create(self, body: Any) -> dict[str, Any]:
        spec, warnings = self._check(body)
        if (self.user, spec["name"]) in self.services_by_key:
            raise Conflict(
                f"you already have a service named {spec['name']}; choose another name",
                field="name",
            )
        for entry in spec["models"]:
            entry["env"] = masked_env(entry["env"])
        svc = service(
            spec["name"],
            owner=self.user,
            status="deploying",
            models=spec["models"],
            auto_stop=spec["auto_stop"],
            description=spec["description"],
            traffic_limit=spec["traffic_limit"],
        )
        self.add(svc)
        out = dict(svc)
        out["api_key"] = "ok_test_key_123"
        out["warnings"] = warnings
        return out

    def _on_service(
        self, method: str, verb: str, svc: dict[str, Any], body: Any
    ) -> dict[str, Any] | list[Any]:
        name = svc["name"]
        if method == "GET" and verb == "":
            out = dict(svc)
            out["instances"] = [
                {
                    "version_index": 0,
                    "n": 0,
                    "state": "ready",
                    "host": "127.0.0.1",
                    "port": 40001,
                    "reason": "",
                    "restarts": 0,
                    "devices": [],
                    "started_at": NOW - 50,
                }
            ]
            out["auto_stop_text"] = svc["auto_stop"]
            return out
        if method == "DELETE":
            svc["status"] = "deleting"
            return dict(svc)
        if verb == "stop":
            svc["status"] = "stopped"
            return dict(svc)
        if verb == "start":
            if svc["status"] not in ("stopped", "failed"):
                raise Conflict(f"{name} is {svc['status']}; start a Stopped or Failed service")
            svc["status"] = "deploying"
            return dict(svc)
        if verb == "key":
            return {"name": name, "api_key": "ok_rotated_key_456"}
        if verb in ("extend", "autostop"):
            if not self.has_extend:
                raise NotFound("no such route: 404 Not Found")
            if verb == "extend":
                svc["remaining_s"] = float(svc.get("remaining_s") or 0) + 3600 * body["hours"]
            else:
                svc["auto_stop"] = "off" if body["auto_stop"] == "off" else "1h"
            return dict(svc)
        if verb == "events":
            return [
                {
                    "id": 1,
                    "time": NOW - 60,
                    "level": "normal",
                    "kind": "created",
                    "message": f"{name} created",
                    "actor": svc["owner"],
                    "service": name,
                    "owner": svc["owner"],
                    "service_id": 1,
                }
            ]
        if verb == "logs":
            return list(self.logs)
        if verb == "predict":
            return {
                "status": 200,
                "version": "1.0.0",
                "latency_ms": 3.2,
                "response": {"predictions": [0]},
            }
        raise OpsbotError(f"unknown verb {verb}")


def stats_document(uid: str, calls: int = 5, failures: int = 1) -> dict[str, Any]:
    """A gateway /stats document with one service and one version."""
    return {
        "loaded_at": NOW,
        "reloads": 1,
        "services": [
            {
                "id": uid,
                "name": "x",
                "versions": [
                    {
                        "version": "1.0.0",
                        "calls": calls,
                        "failures": failures,
                        "latency_ms": {"p50": 2.0, "p99": 9.5, "mean": 3.0},
                        "calls_per_s": [0, 1, 2, 3] * 15,
                        "failures_per_s": [0] * 60,
                        "instances": [{"address": "127.0.0.1:1", "ejected": False}],
                    }
                ],
            }
        ],
    }


def sample_client() -> FakeClient:
    """A client holding a running, a gated-launch, a stopped and a deploying service."""
    fake = FakeClient()
    fake.add(service("alpha"))
    fake.add(
        service(
            "canary",
            models=[
                {
                    "source": "mine",
                    "model": "iris",
                    "version": v,
                    "traffic_ratio": r,
                    "flavor": "cpu.2u8g",
                    "instances": 2,
                    "env": {},
                }
                for v, r in (("1.0.0", 90), ("2.0.0", 10))
            ],
        )
    )
    fake.add(service("nightly", status="stopped", auto_stop="off"))
    fake.add(service("rollout", status="deploying"))
    return fake


_SVG_TEXT = re.compile(r'<text[^>]*clip-path="url\(#terminal-\d+-line-(\d+)\)">([^<]*)</text>')


def screen_text(svg: str) -> str:
    """The visible text of an exported SVG screenshot, one line per terminal row."""
    rows: dict[int, list[str]] = {}
    for match in _SVG_TEXT.finditer(svg):
        rows.setdefault(int(match.group(1)), []).append(
            html.unescape(match.group(2)).replace("\xa0", " ")
        )
    return "\n".join("".join(rows[k]) for k in sorted(rows))
