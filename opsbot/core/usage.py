"""Per-version numbers of a service: traffic from the gateway, CPU and memory from the runtime.

Every front shows the same figures, built here from two documents the daemon has at hand: the
gateway's ``/stats`` JSON and the instances listing with their runtime ``stats``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import sqlite_utils

from opsbot.core.routes import READY
from opsbot.core.services import Service


def version_slots(db: sqlite_utils.Database, service: Service) -> list[tuple[int, int, str]]:
    """(idx, position in the spec, version) of each version: the slot instances and the gateway
    use, and the entry of the spec it belongs to."""
    rows = db.execute(
        "SELECT sv.idx, m.owner, m.name, v.version FROM service_versions sv "
        "JOIN model_versions v ON v.id = sv.model_version_id JOIN models m ON m.id = v.model_id "
        "WHERE sv.service_id = ? ORDER BY sv.idx",
        (service.id,),
    ).fetchall()
    out = []
    for idx, owner, name, version in rows:
        for pos, entry in enumerate(service.spec.models):
            full = entry.model if "/" in entry.model else f"{service.owner}/{entry.model}"
            if (full, entry.version) == (f"{owner}/{name}", version):
                out.append((idx, pos, version))
    return out


def version_numbers(
    service: Service,
    slots: Sequence[tuple[int, int, str]],
    instances: Sequence[Mapping[str, Any]],
    gateway: Mapping[str, Any] | None,
) -> list[dict[str, Any]]:
    """A row per version, in the spec's order: ratio, instances ready/desired, calls, failures,
    p50/p99 latency (ms), CPU % and memory bytes summed over its instances. A figure nobody
    could measure is None (no call yet, or a runtime that cannot tell)."""
    by_idx: dict[int, Mapping[str, Any]] = {}
    for doc in (gateway or {}).get("services", []):
        if doc.get("id") == service.uid:
            by_idx = {int(v["idx"]): v for v in doc.get("versions", [])}
    rows = []
    for idx, pos, _version in sorted(slots, key=lambda s: s[1]):
        entry = service.spec.models[pos]
        mine = [i for i in instances if i.get("version_index") == idx]
        measured = [i["stats"] for i in mine if i.get("stats")]
        traffic = by_idx.get(idx, {})
        latency = traffic.get("latency_ms") or {}
        rows.append(
            {
                "idx": idx,
                "model": entry.model,
                "version": entry.version,
                "traffic_ratio": entry.traffic_ratio,
                "desired": entry.instances,
                "ready": sum(1 for i in mine if i.get("state") == READY),
                "calls": traffic.get("calls"),
                "failures": traffic.get("failures"),
                "p50_ms": latency.get("p50"),
                "p99_ms": latency.get("p99"),
                "cpu_percent": round(sum(s["cpu_percent"] for s in measured), 1)
                if measured
                else None,
                "memory_bytes": sum(s["memory_bytes"] for s in measured) if measured else None,
            }
        )
    return rows
