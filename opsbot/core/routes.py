"""Routes: what the gateway needs to know about each servable service, read from the store.

The gateway runs in its own process and reads these from SQLite; ``PRAGMA data_version`` tells
it cheaply when another connection has committed, so a route change reaches it within one poll.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import sqlite_utils

from opsbot.core.errors import SpecInvalid
from opsbot.core.spec import RoutingRule, parse_spec
from opsbot.core.status import Status

log = logging.getLogger(__name__)

#: Statuses in which the gateway forwards calls (to whichever instances are ready).
SERVING = (Status.RUNNING, Status.CONCERNING, Status.ABNORMAL, Status.DEPLOYING)

READY = "ready"


@dataclass(frozen=True)
class Upstream:
    """A ready instance's address (a unix socket's too: see :mod:`opsbot.core.address`)."""

    host: str
    port: int


@dataclass(frozen=True)
class VersionRoute:
    idx: int
    model: str
    version: str
    ratio: int
    upstreams: tuple[Upstream, ...]


@dataclass(frozen=True)
class RouteRule:
    """A routing rule with the index of the version it sends matching calls to."""

    rule: RoutingRule
    idx: int

    def applies(self, headers: Mapping[str, str]) -> bool:
        return self.rule.applies(headers.get(self.rule.header))


@dataclass(frozen=True)
class ServiceRoute:
    uid: str
    name: str
    owner: str
    status: Status
    traffic_limit: int
    key_hashes: frozenset[str]
    versions: tuple[VersionRoute, ...] = field(default=())
    rules: tuple[RouteRule, ...] = field(default=())

    def ruled(self, headers: Mapping[str, str]) -> int | None:
        """The version index the first matching rule names, or None: then the ratios decide."""
        for rule in self.rules:
            if rule.applies(headers):
                return rule.idx
        return None


def _rules(spec_json: str, owner: str, versions: list[VersionRoute]) -> tuple[RouteRule, ...]:
    """The spec's rules, each with the slot (idx) of the version it names."""
    data = json.loads(spec_json)
    if not data.get("rules"):
        return ()
    try:
        spec = parse_spec(data)
    except SpecInvalid:  # a spec stored under older rules: its calls follow the ratios
        log.warning("ignoring the routing rules of a spec that no longer validates")
        return ()
    slots = {(v.model, v.version): v.idx for v in versions}
    out = []
    for rule in spec.rules:
        pos = rule.target(spec.models)
        if pos is None:
            continue
        entry = spec.models[pos]
        model = entry.model if "/" in entry.model else f"{owner}/{entry.model}"
        idx = slots.get((model, entry.version))
        if idx is not None:
            out.append(RouteRule(rule, idx))
    return tuple(out)


def load_routes(db: sqlite_utils.Database) -> dict[str, ServiceRoute]:
    """Every service that may take calls, keyed by its uid (the id in the gateway URL)."""
    marks = ",".join("?" for _ in SERVING)
    services = db.execute(
        f"SELECT id, uid, name, owner, status, traffic_limit, spec FROM services "
        f"WHERE status IN ({marks})",
        [s.value for s in SERVING],
    ).fetchall()
    if not services:
        return {}
    keys: dict[int, set[str]] = {}
    for sid, key_hash in db.execute("SELECT service_id, key_hash FROM api_keys"):
        keys.setdefault(sid, set()).add(key_hash)
    ups: dict[tuple[int, int], list[Upstream]] = {}
    for sid, idx, host, port in db.execute(
        "SELECT service_id, idx, host, port FROM instances WHERE state = ? AND port IS NOT NULL "
        "ORDER BY service_id, idx, n",
        (READY,),
    ):
        ups.setdefault((sid, idx), []).append(Upstream(host, int(port)))
    versions: dict[int, list[VersionRoute]] = {}
    for sid, idx, ratio, owner, name, version in db.execute(
        "SELECT sv.service_id, sv.idx, sv.traffic_ratio, m.owner, m.name, v.version "
        "FROM service_versions sv JOIN model_versions v ON v.id = sv.model_version_id "
        "JOIN models m ON m.id = v.model_id ORDER BY sv.service_id, sv.idx"
    ):
        versions.setdefault(sid, []).append(
            VersionRoute(idx, f"{owner}/{name}", version, ratio, tuple(ups.get((sid, idx), [])))
        )
    return {
        uid: ServiceRoute(
            uid=uid,
            name=name,
            owner=owner,
            status=Status(status),
            traffic_limit=limit,
            key_hashes=frozenset(keys.get(sid, ())),
            versions=tuple(versions.get(sid, ())),
            rules=_rules(spec, owner, versions.get(sid, [])),
        )
        for sid, uid, name, owner, status, limit, spec in services
    }
