"""An in-memory stand-in for opsbot.daemon.client.Client, for the TUI's Pilot tests.

Specs go through the core's own ``parse_spec`` and ``spec_warnings``, so the errors the form shows
are the ones the daemon would send; the registry and flavor checks mirror the core's field paths.
Modifications go through the core's ``parse_changes``, ``apply_changes`` and ``spec_diff``; the
fake keeps the real environment values and shows them masked, as the daemon does.
"""

from __future__ import annotations

import copy
import html
import queue
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from opsbot.core.errors import (
    Conflict,
    FieldError,
    ModelInvalid,
    NotFound,
    OpsbotError,
    SpecInvalid,
)
from opsbot.core.registry import split_ref
from opsbot.core.spec import masked_env, parse_spec, spec_warnings
from opsbot.core.update import (
    UPDATABLE,
    apply_changes,
    keep_masked,
    parse_changes,
    plan,
    spec_diff,
)
from opsbot.daemon.client import DaemonUnavailable

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
        "rules": [],
        "created_at": NOW - 60,
        "updated_at": NOW - 60,
        "status_since": NOW - 60,
        "status_actor": owner,
    }
    desired = sum(int(m.get("instances", 1)) for m in entries)
    out["instances_desired"] = desired
    out["instances_ready"] = desired if status in ("running", "concerning") else 0
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
            # Listed first, as in flavors.toml: the form must not default a custom model to it.
            {
                "id": "exeml.cpu",
                "name": "ExeML CPU",
                "allows": ["exeml"],
                "available": True,
                "reason": "",
            },
            {
                "id": "cpu.2u8g",
                "name": "CPU: 2 vCPUs | 8 GiB",
                "allows": ["custom", "exeml"],
                "available": True,
                "reason": "",
            },
            {
                "id": "gpu.t4",
                "name": "CPU: 8 vCPUs | 32 GiB GPU: 1 x T4",
                "available": False,
                "reason": "no node has an NVIDIA T4",
            },
        ]
        #: Published models of other users, which a subscription adds to self.models.
        self.published = [model("tulips", "0.1", owner="carol", public=True)]
        self.pools_list = [
            {
                "name": "public",
                "kind": "public",
                "may_use": True,
                "free_text": "8 vCPUs, 48.0 GiB",
                "summary": "8 vCPUs, 48.0 GiB free of 8 vCPUs, 48.0 GiB",
            },
            {
                "name": "team-a",
                "kind": "dedicated",
                "may_use": True,
                "free_text": "16 vCPUs, 64.0 GiB, 2 nvidia",
                "summary": "16 vCPUs, 64.0 GiB, 2 nvidia free of 16 vCPUs, 64.0 GiB, 2 nvidia",
            },
            {"name": "team-b", "kind": "dedicated", "may_use": False, "summary": "1 vCPUs"},
        ]
        self.has_extend = False
        self.events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.event_id = 0
        self.closed = threading.Event()
        #: Set while the "daemon" is away: every call fails as the real client's would and
        #: the event stream ends.
        self.away = threading.Event()
        self.logs = ["instance 0: listening on 127.0.0.1:40001", "instance 0: ready"]
        #: Config snapshots per service, oldest first (#1 is the deploy).
        self.snapshots: dict[tuple[str, str], list[dict[str, Any]]] = {}
        #: What ?stats=1 answers as "versions", per service (default: built from the spec).
        self.version_numbers: dict[tuple[str, str], list[dict[str, Any]]] = {}

    # -- helpers for tests -----------------------------------------------------------------------

    def add(self, svc: dict[str, Any]) -> dict[str, Any]:
        """Hold a service (its env values real; shown masked) with its first snapshot."""
        key = (svc["owner"], svc["name"])
        self.services_by_key[key] = svc
        self.snapshots[key] = [
            {"n": 1, "actor": svc["owner"], "created_at": NOW - 60, "spec": spec_of(svc)}
        ]
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

    def go_away(self) -> None:
        """The daemon stops: its stream ends, calls find nobody."""
        self.away.set()
        self.events.put(None)

    def come_back(self) -> None:
        self.away.clear()

    # -- the Client interface --------------------------------------------------------------------

    def services(self, everyone: bool = False) -> list[dict[str, Any]]:
        return self.request("GET", "/v1/services", query={"all": "1" if everyone else ""})  # type: ignore[no-any-return]

    def service(self, name: str, owner: str | None = None) -> dict[str, Any]:
        return self.request("GET", f"/v1/services/{name}", query={"owner": owner})  # type: ignore[no-any-return]

    def action(self, name: str, verb: str, owner: str | None = None) -> dict[str, Any]:
        return self.request("POST", f"/v1/services/{name}/{verb}", query={"owner": owner})  # type: ignore[no-any-return]

    def stream(self, path: str, query: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        self._check_away()
        while not self.closed.is_set() and not self.away.is_set():
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
        self._check_away()
        self.calls.append((method, path, body if raw is None else raw))
        parts = path.strip("/").split("/")
        if path == "/healthz":
            return {"ok": True}
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
        if path == "/v1/models" and method == "GET":
            return [dict(m) for m in self.models]
        if path == "/v1/models" and method == "POST":
            return self._create_model(body)
        if path == "/v1/pools":
            return [dict(p) for p in self.pools_list]
        if parts[:2] == ["v1", "models"] and parts[-1] in ("publish", "subscribe"):
            return self._model_change(parts, body)
        if path == "/v1/validate":
            spec, warnings = self._check(body)
            return {"spec": spec, "warnings": warnings}
        if path == "/v1/services" and method == "GET":
            everyone = bool(query.get("all"))
            return [
                view(s)
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
            if verb == "update" and parts[4:] == ["plan"]:
                verb = "update/plan"
            if verb in ("update", "update/plan", "history", "rollback"):
                return self._modification(verb, svc, body)
            return self._on_service(method, verb, svc, body, query)
        raise NotFound(f"no route {method} {path}")

    def _check_away(self) -> None:
        if self.away.is_set():
            raise DaemonUnavailable(
                "no opsbot daemon answers on /fake/opsbot.sock; start one with `opsbot up -d`"
            )

    def create_model(
        self,
        name: str,
        version: str,
        path: Any,
        fmt: str,
        *,
        entry: str | None = None,
        origin: str = "custom",
        description: str = "",
    ) -> dict[str, Any]:
        body = {"name": name, "version": version, "path": str(path), "format": fmt}
        body |= {"entry": entry, "origin": origin, "description": description}
        return self.request("POST", "/v1/models", body)  # type: ignore[no-any-return]

    def publish_model(self, name: str, public: bool = True) -> dict[str, Any]:
        return self.request("POST", f"/v1/models/{name}/publish", {"public": public})  # type: ignore[no-any-return]

    def subscribe(self, ref: str) -> dict[str, Any]:
        owner, name = split_ref(ref)
        return self.request("POST", f"/v1/models/{owner}/{name}/subscribe")  # type: ignore[no-any-return]

    def pools(self) -> list[dict[str, Any]]:
        return self.request("GET", "/v1/pools")  # type: ignore[no-any-return]

    # -- behaviour -----------------------------------------------------------------------------

    def _create_model(self, body: dict[str, Any]) -> dict[str, Any]:
        """The registry's answers for the cases the Models screen shows: a version that exists,
        a path that is not a directory, a model that fails its check."""
        name, version, path = body["name"], body["version"], body["path"]
        if any(m["name"] == name and m["version"] == version for m in self.models):
            raise Conflict(
                f"{name} {version} exists; choose a new version or delete it first",
                field="version",
            )
        if not Path(path).is_dir():
            raise ModelInvalid(f"{path} is not a directory", field="path")
        status, reason = "normal", ""
        if (Path(path) / "broken").exists():
            status, reason = "failed", "joblib could not load model.joblib"
        made = model(name, version, status=status, reason=reason, format=body["format"])
        self.models.append(made)
        return dict(made)

    def _model_change(self, parts: list[str], body: Any) -> dict[str, Any]:
        if parts[-1] == "publish":
            name = parts[2]
            mine = [m for m in self.models if m["name"] == name and m["owner"] == self.user]
            if not mine:
                raise NotFound(f"no model {self.user}/{name}: see `opsbot model list`")
            public = bool((body or {}).get("public", True))
            for m in mine:
                m["public"] = public
            return {"owner": self.user, "name": name, "public": public}
        owner, name = parts[2], parts[3]
        found = [m for m in self.published if m["owner"] == owner and m["name"] == name]
        if not found:
            raise NotFound(
                f"{owner}/{name} is not published: ask {owner} to publish it", field="model"
            )
        for m in found:
            self.models.append({**m, "source": "subscribed"})
        return {"model": f"{owner}/{name}", "subscribed": True}

    # -- behaviour of services -----------------------------------------------------------------

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
        svc = service(
            spec["name"],
            owner=self.user,
            status="deploying",
            models=spec["models"],
            auto_stop=spec["auto_stop"],
            description=spec["description"],
            traffic_limit=spec["traffic_limit"],
            rules=spec["rules"],
        )
        self.add(svc)
        out = view(svc)
        out["api_key"] = "ok_test_key_123"
        out["warnings"] = warnings
        return out

    def _modification(self, verb: str, svc: dict[str, Any], body: Any) -> Any:
        """update, history and rollback, as the daemon answers them."""
        key = (svc["owner"], svc["name"])
        snaps = self.snapshots.setdefault(key, [])
        if verb == "history":  # as the daemon sends it: each snapshot with its diff
            out = copy.deepcopy(snaps)
            for before, snap in zip([None, *out], out, strict=False):
                snap["changes"] = spec_diff(before["spec"], snap["spec"]) if before else []
            return out
        current = spec_of(svc)
        if verb == "rollback":
            to = body.get("to")
            found = [s for s in snaps if s["n"] == to]
            if not found:
                raise SpecInvalid([FieldError("to", f"{svc['name']} has no snapshot #{to}")])
            if body.get("dry_run"):
                return {"changes": spec_diff(current, found[0]["spec"]), "snapshot": None}
            return self._apply(svc, copy.deepcopy(found[0]["spec"]))
        if set(body) not in ({"spec"}, {"changes"}):
            raise SpecInvalid([FieldError("spec", 'send {"spec": {...}} or {"changes": {...}}')])
        if "changes" in body:
            wanted = apply_changes(parse_spec(current), parse_changes(body["changes"]))
        else:
            # As the daemon does: a masked value sent back means "keep".
            wanted = keep_masked(parse_spec(current), body["spec"])
        if verb == "update/plan":
            if svc["status"] not in {s.value for s in UPDATABLE}:
                raise Conflict(f"{svc['name']} is {svc['status'].capitalize()}", title="Not now")
            new, _ = self._check(wanted)
            return plan(parse_spec(current), parse_spec(new)).as_dict()
        return self._apply(svc, wanted)

    def _apply(self, svc: dict[str, Any], wanted: dict[str, Any]) -> dict[str, Any]:
        if svc["status"] not in {s.value for s in UPDATABLE}:
            raise Conflict(
                f"{svc['name']} is {svc['status'].capitalize()}; wait until it is Running (or "
                "Stopped), then modify it",
                title="Not now",
            )
        new, _ = self._check(wanted)
        if new["name"] != svc["name"]:
            raise SpecInvalid([FieldError("name", "a service keeps its name")])
        old = spec_of(svc)
        changes = spec_diff(old, new)
        out: dict[str, Any]
        if not changes:
            out = view(svc)
            out |= {"changes": [], "snapshot": None}
            return out
        for field in ("auto_stop", "description", "traffic_limit", "models", "rules"):
            svc[field] = new[field]
        svc["updated_at"] = float(svc.get("updated_at", NOW)) + 1
        key = (svc["owner"], svc["name"])
        n = len(self.snapshots[key]) + 1
        self.snapshots[key].append(
            {"n": n, "actor": self.user, "created_at": NOW + n, "spec": copy.deepcopy(new)}
        )
        out = view(svc)
        out |= {"changes": changes, "snapshot": n}
        return out

    def _on_service(
        self, method: str, verb: str, svc: dict[str, Any], body: Any, query: dict[str, Any]
    ) -> dict[str, Any] | list[Any]:
        name = svc["name"]
        if method == "GET" and verb == "":
            out = view(svc)
            out["instances"] = [
                {
                    "version_index": 0,
                    "n": 0,
                    "state": "ready",
                    "node": "gpu-box",
                    "host": "127.0.0.1",
                    "port": 40001,
                    "reason": "",
                    "restarts": 0,
                    "devices": [],
                    "started_at": NOW - 50,
                }
            ]
            out["auto_stop_text"] = svc["auto_stop"]
            key = (svc["owner"], name)
            out["versions"] = copy.deepcopy(self.version_numbers.get(key)) or [
                {
                    "idx": i,
                    "model": m["model"],
                    "version": m["version"],
                    "traffic_ratio": m["traffic_ratio"],
                    "desired": m["instances"],
                    "ready": m["instances"],
                    "calls": None,
                    "failures": None,
                    "p50_ms": None,
                    "p99_ms": None,
                    "cpu_percent": None,
                    "memory_bytes": None,
                }
                for i, m in enumerate(svc["models"])
            ]
            if query.get("stats") != "1":
                for row in out["versions"]:
                    row |= {"cpu_percent": None, "memory_bytes": None}
            return out
        if method == "DELETE":
            svc["status"] = "deleting"
            return view(svc)
        if verb == "stop":
            svc["status"] = "stopped"
            return view(svc)
        if verb == "start":
            if svc["status"] not in ("stopped", "failed"):
                raise Conflict(f"{name} is {svc['status']}; start a Stopped or Failed service")
            svc["status"] = "deploying"
            return view(svc)
        if verb == "key":
            return {"name": name, "api_key": "ok_rotated_key_456"}
        if verb in ("extend", "autostop"):
            if not self.has_extend:
                raise NotFound("no such route: 404 Not Found")
            if verb == "extend":
                svc["remaining_s"] = float(svc.get("remaining_s") or 0) + 3600 * body["hours"]
            else:
                svc["auto_stop"] = "off" if body["auto_stop"] == "off" else "1h"
            return view(svc)
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


def view(svc: dict[str, Any]) -> dict[str, Any]:
    """A service as the daemon shows it: a copy, secret-looking env values masked."""
    out = copy.deepcopy(svc)
    for entry in out["models"]:
        entry["env"] = masked_env(entry.get("env") or {})
    return out


def spec_of(svc: dict[str, Any]) -> dict[str, Any]:
    """The normalised spec of a service the fake holds (env values real)."""
    return parse_spec(
        {
            "name": svc["name"],
            "auto_stop": svc["auto_stop"],
            "description": svc["description"],
            "resource_pool": svc["resource_pool"],
            "traffic_limit": svc["traffic_limit"],
            "models": copy.deepcopy(svc["models"]),
            "rules": copy.deepcopy(svc.get("rules", [])),
        }
    ).model_dump(mode="json")


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
