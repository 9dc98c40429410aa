"""Routes: what the gateway needs to know about each servable service, read from the store.

The gateway runs in its own process and reads these from SQLite; ``PRAGMA data_version`` tells
it cheaply when another connection has committed, so a route change reaches it within one poll.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlite_utils

from opsbot.core.status import Status

#: Statuses in which the gateway forwards calls (to whichever instances are ready).
SERVING = (Status.RUNNING, Status.CONCERNING, Status.ABNORMAL, Status.DEPLOYING)

READY = "ready"


@dataclass(frozen=True)
class Upstream:
    host: str
    port: int

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass(frozen=True)
class VersionRoute:
    idx: int
    model: str
    version: str
    ratio: int
    upstreams: tuple[Upstream, ...]


@dataclass(frozen=True)
class ServiceRoute:
    uid: str
    name: str
    owner: str
    status: Status
    traffic_limit: int
    key_hashes: frozenset[str]
    versions: tuple[VersionRoute, ...] = field(default=())


def load_routes(db: sqlite_utils.Database) -> dict[str, ServiceRoute]:
    """Every service that may take calls, keyed by its uid (the id in the gateway URL)."""
    marks = ",".join("?" for _ in SERVING)
    services = db.execute(
        f"SELECT id, uid, name, owner, status, traffic_limit FROM services "
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
        )
        for sid, uid, name, owner, status, limit in services
    }
