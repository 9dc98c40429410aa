"""The gateway's numbers: per version calls, failures, latency and rule hits, per service the
answers that reached no version, and the two documents made of them (``/stats`` JSON and the
``/metrics`` Prometheus text)."""

from __future__ import annotations

import bisect
import math
from collections import deque
from time import perf_counter
from typing import TYPE_CHECKING, Any, Final

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest

if TYPE_CHECKING:
    from opsbot.serving.gateway.core import Gateway
    from opsbot.serving.gateway.routing import Target

#: Latency histogram bucket bounds, in seconds (the last bucket, +Inf, is implicit).
LATENCY_BUCKETS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    20.0,
    40.0,
)

# Latencies kept per version for /stats percentiles, and the seconds of the calls series.
_RECENT: Final = 1024
_SERIES_S: Final = 60


class VersionStats:
    """Calls, failures and latency of one version of one service, kept for the process's life."""

    __slots__ = (
        "buckets",
        "calls",
        "codes",
        "failures",
        "inflight",
        "latency_sum",
        "recent",
        "rule_fallbacks",
        "rule_hits",
        "second",
        "series_calls",
        "series_failures",
        "upstream_errors",
    )

    def __init__(self) -> None:
        self.calls = 0
        self.failures = 0
        self.inflight = 0
        self.upstream_errors = 0
        # Calls a routing rule sent to this version, and those it could not take (no ready
        # instance), which the ratios placed instead.
        self.rule_hits = 0
        self.rule_fallbacks = 0
        self.codes: dict[int, int] = {}
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.recent: deque[float] = deque(maxlen=_RECENT)
        self.second = 0
        self.series_calls = [0] * _SERIES_S
        self.series_failures = [0] * _SERIES_S

    def record(self, status: int, seconds: float, now: float) -> None:
        self.calls += 1
        failed = status >= 500
        if failed:
            self.failures += 1
        codes = self.codes
        codes[status] = codes.get(status, 0) + 1
        self.buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds
        self.recent.append(seconds)
        second = int(now)
        if second != self.second:
            self._advance(second)
        slot = second % _SERIES_S
        self.series_calls[slot] += 1
        if failed:
            self.series_failures[slot] += 1

    def _advance(self, second: int) -> None:
        """Zero the per-second slots between the last recorded second and ``second``."""
        if not 0 < second - self.second < _SERIES_S:
            self.series_calls = [0] * _SERIES_S
            self.series_failures = [0] * _SERIES_S
        else:
            for s in range(self.second + 1, second + 1):
                self.series_calls[s % _SERIES_S] = 0
                self.series_failures[s % _SERIES_S] = 0
        self.second = second

    def series(self, now: float) -> tuple[list[int], list[int]]:
        """Calls and failures in each of the last 60 seconds, oldest first, this one last."""
        second = int(now)
        if second != self.second:
            self._advance(second)
        start = (second + 1) % _SERIES_S
        calls = self.series_calls[start:] + self.series_calls[:start]
        failures = self.series_failures[start:] + self.series_failures[:start]
        return calls, failures

    def quantiles(self) -> tuple[float, float, float] | None:
        """Median, 99th percentile and mean of the recent calls, in seconds; None before any."""
        recent = sorted(self.recent)
        if not recent:
            return None
        n = len(recent)
        return (
            recent[(n - 1) // 2],
            recent[min(n - 1, math.ceil(0.99 * n) - 1)],
            sum(recent) / n,
        )

    def latency_ms(self) -> dict[str, float | None]:
        """Median, 99th percentile and mean of the recent calls, in milliseconds."""
        found = self.quantiles()
        if found is None:
            return {"p50": None, "p99": None, "mean": None}
        p50, p99, mean = found
        return {
            "p50": round(p50 * 1000, 3),
            "p99": round(p99 * 1000, 3),
            "mean": round(mean * 1000, 3),
        }


class ServiceCounters:
    """Calls of one service answered without reaching any version, by status code."""

    __slots__ = ("codes",)

    def __init__(self) -> None:
        self.codes: dict[int, int] = {}

    def count(self, status: int) -> None:
        self.codes[status] = self.codes.get(status, 0) + 1

    @property
    def unauthorized(self) -> int:
        return self.codes.get(401, 0)

    @property
    def rate_limited(self) -> int:
        return self.codes.get(429, 0)

    @property
    def too_large(self) -> int:
        return self.codes.get(413, 0)

    @property
    def unavailable(self) -> int:
        return self.codes.get(503, 0)


def stats_document(gateway: Gateway, *, recent: bool = False) -> dict[str, Any]:
    """What ``GET /stats`` answers: per service and version, calls, failures, latency,
    rule hits and each instance's calls in flight; ``upstreams`` has every instance the
    gateway routes to or is draining, by address (what a controller waits on before it
    stops an instance)."""
    now = perf_counter()
    draining = gateway.draining()
    drained_by: dict[tuple[str, str], list[Target]] = {}
    for t in draining:
        drained_by.setdefault((t.uid, t.label), []).append(t)
    upstreams: dict[str, dict[str, Any]] = {}
    services = []
    for uid, service in gateway.services.items():
        route = service.route
        counters = service.counters
        versions = []
        for version in service.versions:
            stats = version.stats
            calls, failures = stats.series(now)
            for t in version.targets:
                upstreams[t.address] = _upstream(t, routed=True)
            versions.append(
                {
                    "idx": version.idx,
                    "version": version.label,
                    "model": version.model,
                    "ratio": version.ratio,
                    "calls": stats.calls,
                    "failures": stats.failures,
                    "upstream_errors": stats.upstream_errors,
                    "inflight": stats.inflight,
                    "codes": {str(c): n for c, n in sorted(stats.codes.items())},
                    "latency_ms": stats.latency_ms(),
                    "calls_per_s": calls,
                    "failures_per_s": failures,
                    "rule_hits": stats.rule_hits,
                    "rule_fallbacks": stats.rule_fallbacks,
                    **({"recent_s": list(stats.recent)} if recent else {}),
                    "instances": [
                        {
                            "address": t.address,
                            "inflight": t.outstanding,
                            "outstanding": t.outstanding,
                            "ejected": t.ejected_until > now,
                        }
                        for t in version.targets
                    ],
                    "draining": [
                        {"address": t.address, "inflight": t.outstanding}
                        for t in drained_by.get((uid, version.label), ())
                    ],
                }
            )
        services.append(
            {
                "id": uid,
                "name": route.name,
                "owner": route.owner,
                "status": route.status.value,
                "traffic_limit": route.traffic_limit,
                "unauthorized": counters.unauthorized,
                "rate_limited": counters.rate_limited,
                "too_large": counters.too_large,
                "unavailable": counters.unavailable,
                "refused": {str(c): n for c, n in sorted(counters.codes.items())},
                "versions": versions,
            }
        )
    for t in draining:
        upstreams.setdefault(t.address, _upstream(t, routed=False))
    return {
        "loaded_at": gateway.loaded_at,
        "reloads": gateway.reloads,
        "buffered_bytes": gateway.buffered,
        "unrouted": {str(c): n for c, n in sorted(gateway.unrouted.codes.items())},
        "services": services,
        "upstreams": upstreams,
    }


def metrics_text(gateway: Gateway) -> str:
    """The Prometheus text exposition (format 0.0.4) of every counter."""
    out: list[str] = []

    def family(name: str, kind: str, help_: str) -> None:
        out.append(f"# HELP {name} {help_}")
        out.append(f"# TYPE {name} {kind}")

    stats = sorted(gateway.stats.items())
    family(
        "opsbot_gateway_requests_total",
        "counter",
        "Every answer, by status code: version is empty for calls answered before one was "
        "chosen (401, 404, 413, 429, 503 ...), service too when the call named no service.",
    )
    for (uid, label), s in stats:
        base = f'service="{_esc(uid)}",version="{_esc(label)}"'
        for code, n in sorted(s.codes.items()):
            out.append(f'opsbot_gateway_requests_total{{{base},code="{code}"}} {n}')
    for uid, c in [*sorted(gateway.counters.items()), ("", gateway.unrouted)]:
        base = f'service="{_esc(uid)}",version=""'
        for code, n in sorted(c.codes.items()):
            out.append(f'opsbot_gateway_requests_total{{{base},code="{code}"}} {n}')
    for name, kind, attr, help_ in _VERSION_FAMILIES:
        family(f"opsbot_gateway_{name}", kind, help_)
        for (uid, label), s in stats:
            base = f'service="{_esc(uid)}",version="{_esc(label)}"'
            out.append(f"opsbot_gateway_{name}{{{base}}} {getattr(s, attr)}")
    family(
        "opsbot_gateway_request_seconds",
        "histogram",
        "Time from receiving a call to answering it, for calls that reached a version.",
    )
    for (uid, label), s in stats:
        base = f'service="{_esc(uid)}",version="{_esc(label)}"'
        running = 0
        for bound, count in zip(LATENCY_BUCKETS, s.buckets, strict=False):
            running += count
            out.append(f'opsbot_gateway_request_seconds_bucket{{{base},le="{bound}"}} {running}')
        out.append(f'opsbot_gateway_request_seconds_bucket{{{base},le="+Inf"}} {s.calls}')
        out.append(f"opsbot_gateway_request_seconds_sum{{{base}}} {s.latency_sum!r}")
        out.append(f"opsbot_gateway_request_seconds_count{{{base}}} {s.calls}")
    family(
        "opsbot_gateway_latency_recent_seconds",
        "gauge",
        f"Median (percentile 50) and 99th percentile of the last {_RECENT} calls' latency.",
    )
    for (uid, label), s in stats:
        found = s.quantiles()
        if found is None:
            continue
        base = f'service="{_esc(uid)}",version="{_esc(label)}"'
        for percentile, value in (("50", found[0]), ("99", found[1])):
            out.append(
                f'opsbot_gateway_latency_recent_seconds{{{base},percentile="{percentile}"}} '
                f"{value!r}"
            )
    family(
        "opsbot_gateway_upstream_inflight",
        "gauge",
        "Calls in flight per instance address; routed is false while one drains.",
    )
    routed = [
        (t, True)
        for service in gateway.services.values()
        for v in service.versions
        for t in v.targets
    ]
    for t, is_routed in sorted(
        [*routed, *((t, False) for t in gateway.draining())],
        key=lambda pair: (pair[0].uid, pair[0].label, pair[0].address),
    ):
        out.append(
            f'opsbot_gateway_upstream_inflight{{service="{_esc(t.uid)}",'
            f'version="{_esc(t.label)}",address="{_esc(t.address)}",'
            f'routed="{str(is_routed).lower()}"}} {t.outstanding}'
        )
    family(
        "opsbot_gateway_buffered_bytes",
        "gauge",
        "Request body bytes held now across all calls (the cap is --max-buffered-mb).",
    )
    out.append(f"opsbot_gateway_buffered_bytes {gateway.buffered}")
    family(
        "opsbot_gateway_upstreams_ready",
        "gauge",
        "Ready instances the gateway routes to, per service and version.",
    )
    for uid, service in sorted(gateway.services.items()):
        for version in service.versions:
            base = f'service="{_esc(uid)}",version="{_esc(version.label)}"'
            out.append(f"opsbot_gateway_upstreams_ready{{{base}}} {len(version.targets)}")
    family(
        "opsbot_gateway_service_info",
        "gauge",
        "Name and owner of each routed service, by id (always 1).",
    )
    for uid, service in sorted(gateway.services.items()):
        route = service.route
        out.append(
            f'opsbot_gateway_service_info{{service="{_esc(uid)}",name="{_esc(route.name)}",'
            f'owner="{_esc(route.owner)}"}} 1'
        )
    family("opsbot_gateway_route_reloads_total", "counter", "Times the routes changed.")
    out.append(f"opsbot_gateway_route_reloads_total {gateway.reloads}")
    # The process's own numbers (memory, CPU, file descriptors), as every exporter has.
    return "\n".join(out) + "\n" + generate_latest(_PROCESS).decode()


#: process_* metrics of this process (resident memory, CPU seconds, open files).
_PROCESS: Final = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=_PROCESS)


def _upstream(target: Target, *, routed: bool) -> dict[str, Any]:
    return {
        "service": target.uid,
        "version": target.label,
        "inflight": target.outstanding,
        "routed": routed,
    }


#: Per-version metric families that are one VersionStats attribute each: name, type, attribute,
#: help text.
_VERSION_FAMILIES = (
    (
        "failures_total",
        "counter",
        "failures",
        "Calls answered with a 5xx: the instance's own, 502 when no instance answered, "
        "504 on timeout.",
    ),
    (
        "upstream_errors_total",
        "counter",
        "upstream_errors",
        "Connections to instances that failed before an answer (each retried elsewhere).",
    ),
    ("inflight", "gauge", "inflight", "Calls being answered now, per service and version."),
    ("rule_hits_total", "counter", "rule_hits", "Calls a routing rule sent to this version."),
    (
        "rule_fallbacks_total",
        "counter",
        "rule_fallbacks",
        "Calls a routing rule named this version for while it had no ready instance; "
        "the traffic ratios placed them.",
    ),
)


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
