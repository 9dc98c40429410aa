"""The inference gateway: the one door between callers and the model server instances.

Per service, named by its id, ``owner.name`` or a name only one owner uses: ``POST
/v1/infers/{service}`` (ModelArts style) and ``POST /v1/models/{service}:predict`` (KServe v1)
go to an instance's ``/predict``; the Open Inference Protocol v2 surface (``/v2/models/{service}
[/versions/{v}]`` metadata, ``/ready`` and ``/infer``) to the instance's ``/v2/models/{model}``,
where ``model`` is the name the runtime starts the model server with (the model's name without
its owner), with ``X-Opsbot-Model-Name`` saying what the caller named; server-level
``/v2/health/*``, ``/v2`` and ``/`` describe the gateway. For every call the gateway checks the
service key (``X-Auth-Token`` or ``Authorization: Bearer``), holds request bodies within a
byte budget shared by all calls, decodes gzip and deflate bodies, enforces the service's traffic
limit with a token bucket once a body has arrived whole, picks a version (the one the path
names, else the one the first matching routing rule names, else one by traffic ratio) and an
instance by fewest outstanding requests, and tries another instance when a connection fails
before any answer or an instance answers 503. ``X-Model-Version`` names the version that
answered. ``/metrics`` (Prometheus text), ``/stats`` (JSON) and ``/healthz`` describe it.

An instance that leaves the routes stops getting calls at the next poll; the calls in flight there
finish and stay counted (``/stats`` lists it under ``draining`` and in ``upstreams`` with
``routed`` false) until none is left, which is what a controller waits for before stopping it.

It runs in its own process (``python -m opsbot.serving.gateway --home HOME --port PORT``) so
inference load cannot starve the control plane. Routes come from the store through
:func:`opsbot.core.routes.load_routes`; a poll of ``PRAGMA data_version`` every 200 ms notices any
commit by another connection, so a route change takes effect within a fraction of a second.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import ctypes
import ctypes.util
import json
import logging
import math
import random
import signal
import socket
import sqlite3
import sys
from collections import deque
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Coroutine,
    Iterable,
    Mapping,
    Sequence,
)
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from time import perf_counter, time
from typing import Any, Final
from urllib.parse import quote

import sqlite_utils
import uvloop
from aiohttp import web
from aiohttp.web import RequestPayloadError
from multidict import CIMultiDictProxy
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest

from opsbot import __version__
from opsbot.core.instance_auth import DAEMON_SECRET_FILE, INSTANCE_HEADER, instance_secret
from opsbot.core.routes import ServiceRoute, VersionRoute, load_routes
from opsbot.core.store import DB_NAME, Store
from opsbot.serving import HEADER_LENGTH, MODEL_NAME_HEADER
from opsbot.serving.http_errors import allow_header, routing_message
from opsbot.serving.upstream import (
    BrokenReply,
    ClientKind,
    ConnectFailed,
    Disconnected,
    UpstreamClient,
    make_client,
)
from opsbot.serving.workers import (
    SIBLING_HEADER,
    SharedBucket,
    SharedBuckets,
    Siblings,
    default_workers,
    listen,
    merge_metrics,
    merge_stats,
    supervise,
)

log = logging.getLogger("opsbot.serving.gateway")

#: The file, under $OPSBOT_HOME, holding the daemon's own token: calls that carry it (the owner's
#: `opsbot predict`, the dashboard) pass for any service's key, and still count and meet limits.
INTERNAL_SECRET: Final = DAEMON_SECRET_FILE
INTERNAL_HEADER: Final = "X-Opsbot-Internal"

#: Upstream paths, by call kind: ModelArts style (and KServe v1), Open Inference Protocol v2
#: infer, and v2 model metadata (a GET).
PREDICT: Final = 0
V2_INFER: Final = 1
V2_METADATA: Final = 2

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

# Request headers an instance may need; everything else (the key above all) stays here.
# Content-Encoding is not among them: the gateway decodes a compressed body itself.
_FORWARDED: Final = (
    "Content-Type",
    "Accept",
    "X-Request-Id",
    HEADER_LENGTH,
)
#: Request body encodings the gateway decodes (aiohttp's parser does it as the body is read).
_ENCODINGS: Final = frozenset({"gzip", "deflate", "identity"})
_BEARER: Final = "bearer "
# Added to an ejected instance's load so it is chosen only when nothing else is left.
_EJECTED_PENALTY: Final = 1 << 30
# Latencies kept per version for /stats percentiles, and the seconds of the calls series.
_RECENT: Final = 1024
_SERIES_S: Final = 60
_UNAVAILABLE_RETRY_S: Final = 5


@dataclass(frozen=True)
class GatewayOptions:
    """How the gateway treats calls; every field has the default the CLI uses."""

    max_body_mb: float = 12.0
    """Largest request body accepted, in MB (10**6 bytes); larger gets 413."""
    timeout_s: float = 40.0
    """Time allowed for the upstream part of one call, retries included; then 504."""
    attempts: int = 3
    """Instances tried per call when connections fail before an answer; then 502."""
    poll_s: float = 0.2
    """How often the store is polled for route changes."""
    eject_s: float = 1.0
    """How long an instance that refused a connection is passed over while others remain."""
    client: ClientKind = "raw"
    """HTTP client for the hop to instances: the lean asyncio one, or aiohttp's (see upstream)."""
    internal_token_hash: str | None = None
    """SHA-256 of the daemon's token (``X-Opsbot-Internal``), accepted for every service."""
    max_buffered_mb: float = 256.0
    """Request bytes held at once across all calls, in MB; a call that would go over waits
    for no one: it gets 503 with Retry-After before its body is read."""
    read_timeout_s: float = 30.0
    """Time allowed for a request's head and for its body to arrive; then 408."""
    instance_key: str | None = None
    """The daemon's token, from which each service version's instance secret is derived
    (:mod:`opsbot.core.instance_auth`); None: instances are called without one."""

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1_000_000)

    @property
    def max_buffered_bytes(self) -> int:
        return int(self.max_buffered_mb * 1_000_000)


# --------------------------------------------------------------------------------------------
# Traffic limit


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; a call takes one token."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, now: float):
        self.rate = max(float(rate), 1e-9)
        self.burst = max(1.0, float(rate))
        self.tokens = self.burst
        self.stamp = now

    def configure(self, rate: float) -> None:
        """Take a new limit, keeping what is saved up (never above the new burst)."""
        self.rate = max(float(rate), 1e-9)
        self.burst = max(1.0, float(rate))
        self.tokens = min(self.tokens, self.burst)

    def take(self, now: float) -> float:
        """Take a token: 0.0 when there was one, else the seconds until there will be."""
        tokens = self.tokens + (now - self.stamp) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        self.stamp = now
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return 0.0
        self.tokens = tokens
        return (1.0 - tokens) / self.rate


# --------------------------------------------------------------------------------------------
# Numbers


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


# --------------------------------------------------------------------------------------------
# Routing state, rebuilt from the store's routes on every change


class Target:
    """One ready instance of one version, with the calls now outstanding on it.

    A Target outlives route changes while its address stays routed, and while calls are still
    outstanding on it after it left the routes (it is then draining: no new call goes there).
    """

    __slots__ = ("ejected_until", "host", "label", "outstanding", "paths", "port", "uid")

    def __init__(self, host: str, port: int, model_name: str):
        self.host = host
        self.port = port
        self.outstanding = 0
        self.ejected_until = 0.0
        # The service and version label it was last routed for (set by Gateway.apply).
        self.uid = ""
        self.label = ""
        # By call kind: PREDICT, V2_INFER, V2_METADATA.
        model = f"/v2/models/{quote(model_name, safe='')}"
        self.paths = ("/predict", f"{model}/infer", model)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


class Version:
    """One version of a service as the gateway routes to it."""

    __slots__ = ("_turn", "idx", "label", "model", "ratio", "stats", "targets")

    def __init__(
        self, route: VersionRoute, label: str, targets: tuple[Target, ...], stats: VersionStats
    ):
        self.idx = route.idx
        self.label = label
        self.model = route.model
        self.ratio = route.ratio
        self.targets = targets
        self.stats = stats
        self._turn = 0

    def pick(self, now: float, avoid: Sequence[Target] = ()) -> Target | None:
        """The instance with the fewest outstanding calls, ties taken in turn.

        Instances in ``avoid`` are skipped; ejected ones are chosen only when no other is left.
        """
        targets = self.targets
        n = len(targets)
        if n == 1:
            only = targets[0]
            return None if only in avoid else only
        start = self._turn
        self._turn = start + 1
        best: Target | None = None
        best_load = _EJECTED_PENALTY * 2
        for i in range(n):
            target = targets[(start + i) % n]
            if target in avoid:
                continue
            load = target.outstanding
            if target.ejected_until > now:
                load += _EJECTED_PENALTY
            if load < best_load:
                best, best_load = target, load
        return best


class Service:
    """One servable service: its key hashes, its traffic bucket and its weighted versions."""

    __slots__ = (
        "_by_idx",
        "_by_label",
        "_cumulative",
        "_live",
        "bucket",
        "counters",
        "key_hashes",
        "route",
        "rules",
        "uid",
        "versions",
    )

    def __init__(
        self,
        route: ServiceRoute,
        versions: tuple[Version, ...],
        bucket: TokenBucket | SharedBucket,
        counters: ServiceCounters,
    ):
        self.route = route
        self.uid = route.uid
        self.key_hashes = route.key_hashes
        self.versions = versions
        self.bucket = bucket
        self.counters = counters
        self.rules = bool(route.rules)
        self._by_idx = {v.idx: v for v in versions}
        self._by_label = {v.label: v for v in versions}
        self._live, self._cumulative = _weights([v for v in versions if v.targets])

    @property
    def ready(self) -> bool:
        return bool(self._live)

    def choose(self) -> Version:
        """A version with a ready instance, drawn by traffic ratio. Only call when ``ready``."""
        live = self._live
        if len(live) == 1:
            return live[0]
        cumulative = self._cumulative
        return live[bisect.bisect_right(cumulative, random.random() * cumulative[-1])]

    def first(self, headers: Mapping[str, str]) -> Version:
        """The version a call goes to first: the one the first matching routing rule names,
        when it has a ready instance, else one drawn by ratio. Only call when ``ready``.

        A rule sends calls to its version whatever that version's ratio, 0 % included.
        """
        if self.rules:
            idx = self.route.ruled(headers)
            if idx is not None:
                named = self._by_idx.get(idx)
                if named is not None:
                    if named.targets:
                        named.stats.rule_hits += 1
                        return named
                    named.stats.rule_fallbacks += 1
        return self.choose()

    def version(self, label: str) -> Version | None:
        return self._by_label.get(label)

    def fallback(self, tried: Collection[str]) -> Version | None:
        """Another version with a ready instance, by ratio, after those labelled ``tried``."""
        live, cumulative = _weights(
            [v for v in self.versions if v.targets and v.label not in tried]
        )
        if not live:
            return None
        return live[bisect.bisect_right(cumulative, random.random() * cumulative[-1])]

    def next_target(
        self, version: Version, tried: list[Target], tried_labels: list[str], now: float
    ) -> tuple[Version, Target] | None:
        """Where the next attempt of a call goes: an instance of ``version`` not yet tried, else
        one of another version by ratio, else (all tried) ``version``'s again; None when the
        service has no ready instance left."""
        target = version.pick(now, tried)
        if target is not None:
            return version, target
        other: Version | None = version
        while other is not None:
            tried_labels.append(other.label)
            other = self.fallback(tried_labels)
            if other is not None and (target := other.pick(now, tried)) is not None:
                return other, target
        if version.targets:
            again = version.pick(now)
            assert again is not None
            return version, again
        if self.ready:
            chosen = self.choose()
            again = chosen.pick(now)
            assert again is not None
            return chosen, again
        return None


def _weights(versions: list[Version]) -> tuple[list[Version], list[float]]:
    """The versions to draw from and their cumulative weights.

    Versions with a ratio take the traffic; the share of a version without a ready instance goes
    to the others in proportion. When only 0 % versions are ready they share the traffic evenly,
    because answering from a version the owner is moving away from beats answering 503.
    """
    weighted = [v for v in versions if v.ratio > 0]
    if weighted:
        versions = weighted
    cumulative: list[float] = []
    total = 0.0
    for v in versions:
        total += v.ratio if weighted else 1.0
        cumulative.append(total)
    return versions, cumulative


def _labels(versions: Sequence[VersionRoute]) -> list[str]:
    """What names each version in headers and metrics: its version, or model@version when two
    versions of different models in one service share a version string."""
    seen: dict[str, int] = {}
    for v in versions:
        seen[v.version] = seen.get(v.version, 0) + 1
    return [
        v.version if seen[v.version] == 1 else f"{v.model.rpartition('/')[2]}@{v.version}"
        for v in versions
    ]


# --------------------------------------------------------------------------------------------
# The gateway


DatabaseOpener = Callable[[], sqlite_utils.Database]


class Gateway:
    """Routes, counters and the upstream client of one gateway process."""

    def __init__(
        self,
        opener: DatabaseOpener,
        options: GatewayOptions,
        shared: SharedBuckets | None = None,
    ):
        """``shared``: the traffic buckets of a gateway run as several worker processes."""
        self.options = options
        self._shared = shared
        self._instance_secrets: dict[tuple[str, int], str] = {}
        self.services: dict[str, Service] = {}
        self.stats: dict[tuple[str, str], VersionStats] = {}
        self.counters: dict[str, ServiceCounters] = {}
        # Answers to calls that named no routed service, by status code.
        self.unrouted = ServiceCounters()
        # Services by name: "owner.name" always, a bare name while one owner uses it.
        self._qualified: dict[str, Service] = {}
        self._named: dict[str, list[Service]] = {}
        # Request body bytes held now, across all calls (reserved before a body is read).
        self.buffered = 0
        self.reloads = 0
        self.loaded_at = 0.0
        self._opener = opener
        self._targets: dict[tuple[str, int, str], Target] = {}
        # Instances that left the routes with calls still outstanding on them.
        self._draining: dict[tuple[str, int, str], Target] = {}
        self._db: sqlite_utils.Database | None = None
        self._data_version: int | None = None
        # One thread owns the store connection: reading never blocks the event loop.
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-routes")
        self._client: UpstreamClient | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._timeout = options.timeout_s
        self._attempts = max(1, options.attempts)
        self._eject_s = options.eject_s

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._client = make_client(self.options.client)
        loop = asyncio.get_running_loop()
        routes = await loop.run_in_executor(self._reader, self._read_routes)
        if routes is not None:
            self.apply(routes)
        self._watcher = asyncio.create_task(self._watch(), name="gateway-routes")

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        if self._client is not None:
            await self._client.close()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._reader, self._close_db)
        self._reader.shutdown(wait=True)

    # -- routes ------------------------------------------------------------------------------

    def _read_routes(self) -> dict[str, ServiceRoute] | None:
        """In the reader thread: the routes when the store changed since the last read."""
        if self._db is None:
            self._db = self._opener()
        conn: sqlite3.Connection = self._db.conn
        # data_version changes whenever another connection commits to the database.
        version = int(conn.execute("PRAGMA data_version").fetchone()[0])
        if version == self._data_version:
            return None
        # One read transaction, so the routes come from one consistent snapshot.
        conn.execute("BEGIN")
        try:
            routes = load_routes(self._db)
        finally:
            conn.execute("COMMIT")
        self._data_version = version
        return routes

    def _close_db(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def refresh(self) -> list[str]:
        """Read the routes now rather than at the next poll; the addresses routed to after.

        The controller calls this (``POST /-/routes``) when instances became ready, and calls a
        service Running once the answer lists them: it knows the gateway has the route.
        """
        loop = asyncio.get_running_loop()
        routes = await loop.run_in_executor(self._reader, self._read_routes)
        if routes is not None:
            self.apply(routes)
        return sorted(
            t.address for s in self.services.values() for v in s.versions for t in v.targets
        )

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.options.poll_s)
            try:
                routes = await loop.run_in_executor(self._reader, self._read_routes)
                if routes is not None:
                    self.apply(routes)
            except Exception:
                # Calls keep flowing on the last good routes; the next poll reads them afresh.
                log.exception("reading routes from the store failed; keeping the last ones")
                self._data_version = None

    def apply(self, routes: Mapping[str, ServiceRoute]) -> None:
        """Route by ``routes`` from now on, keeping buckets, counters and outstanding counts."""
        # Most commits (events, heartbeats) leave the routes as they were.
        if self.reloads and len(routes) == len(self.services):
            current = self.services
            if all(
                (service := current.get(uid)) is not None and service.route == route
                for uid, route in routes.items()
            ):
                return
        now = perf_counter()
        old_targets = self._targets
        draining = self._draining
        targets: dict[tuple[str, int, str], Target] = {}
        services: dict[str, Service] = {}
        for uid, route in routes.items():
            versions = []
            for vroute, label in zip(route.versions, _labels(route.versions), strict=True):
                model_name = vroute.model.rpartition("/")[2]
                found = []
                for up in vroute.upstreams:
                    key = (up.host, up.port, model_name)
                    # The same Target again, so outstanding counts carry over the change.
                    target = targets.get(key) or old_targets.get(key) or draining.get(key)
                    if target is None:
                        target = Target(up.host, up.port, model_name)
                    target.uid, target.label = uid, label
                    targets[key] = target
                    found.append(target)
                stats = self.stats.get((uid, label))
                if stats is None:
                    stats = self.stats[(uid, label)] = VersionStats()
                versions.append(Version(vroute, label, tuple(found), stats))
            counters = self.counters.get(uid)
            if counters is None:
                counters = self.counters[uid] = ServiceCounters()
            # The bucket outlives the reload, so a route change never refills it.
            previous = self.services.get(uid)
            if previous is None:
                bucket = self._bucket(uid, route.traffic_limit, now)
            else:
                bucket = previous.bucket
                if previous.route.traffic_limit != route.traffic_limit:
                    bucket.configure(route.traffic_limit)
            services[uid] = Service(route, tuple(versions), bucket, counters)
        self.services = services
        self._qualified = {f"{s.route.owner}.{s.route.name}": s for s in services.values()}
        named: dict[str, list[Service]] = {}
        for service in services.values():
            named.setdefault(service.route.name, []).append(service)
        self._named = named
        # A service's series leave with it: what /metrics shows is what is routed now.
        self.stats = {key: st for key, st in self.stats.items() if key[0] in services}
        self.counters = {uid: c for uid, c in self.counters.items() if uid in services}
        # Calls in flight to an instance that left the routes finish there; none starts there.
        self._draining = {
            key: target
            for key, target in (*draining.items(), *old_targets.items())
            if key not in targets and target.outstanding > 0
        }
        self._targets = targets
        if self._client is not None:
            self._client.retain({(t.host, t.port) for t in targets.values()})
        self.reloads += 1
        self.loaded_at = time()
        log.info(
            "routes loaded: %d services, %d ready instances",
            len(services),
            sum(len(v.targets) for s in services.values() for v in s.versions),
        )

    # -- calls -------------------------------------------------------------------------------

    def _bucket(self, uid: str, rate: int, now: float) -> TokenBucket | SharedBucket:
        """A new service's bucket: the workers' shared one when there are several workers."""
        if self._shared is not None:
            shared = self._shared.bucket(uid, rate, now)
            if shared is not None:
                shared.configure(rate)  # another worker may have made it under an older limit
                return shared
            log.warning("no shared traffic bucket left for %s: this worker limits it alone", uid)
        return TokenBucket(rate, now)

    def _internal(self, headers: Mapping[str, str]) -> bool:
        """Whether the call carries the daemon's own token."""
        expected = self.options.internal_token_hash
        token = headers.get(INTERNAL_HEADER)
        return (
            expected is not None
            and token is not None
            and sha256(token.encode()).hexdigest() == expected
        )

    def _with_instance_secret(self, headers: dict[str, str], uid: str, idx: int) -> dict[str, str]:
        """``headers`` plus the secret the version's instances ask of every caller."""
        key = self.options.instance_key
        if key is None:
            return headers
        secret = self._instance_secrets.get((uid, idx))
        if secret is None:
            secret = self._instance_secrets[(uid, idx)] = instance_secret(key, uid, idx)
        return {**headers, INSTANCE_HEADER: secret}

    def internal(self, headers: Mapping[str, str]) -> bool:
        """Whether the caller holds the daemon's token (what ``/stats`` asks for)."""
        return self._internal(headers)

    def lookup(self, named: str) -> Service | str:
        """The service a path names: by id, by ``owner.name``, or by a name one owner uses;
        else why not (names have no dots, so ``owner.name`` is never a name)."""
        service = self.services.get(named)
        if service is not None:
            return service
        service = self._qualified.get(named)
        if service is not None:
            return service
        found = self._named.get(named, ())
        if len(found) == 1:
            return found[0]
        if found:
            owners = ", ".join(sorted(f"{s.route.owner}.{named}" for s in found))
            return f"{len(found)} owners have a service named {named!r}: call one of {owners}"
        return f"no running service with id or name {named!r}"

    def authorized(self, service: Service, headers: Mapping[str, str]) -> bool:
        """Whether the call carries one of the service's keys or the daemon's token."""
        key = headers.get("X-Auth-Token")
        if key is None:
            authorization = headers.get("Authorization")
            if authorization is not None and authorization[:7].lower() == _BEARER:
                key = authorization[7:].strip()
        # Keys are compared by their SHA-256, the only form the store holds.
        if key is not None and sha256(key.encode()).hexdigest() in service.key_hashes:
            return True
        return self._internal(headers)

    def refuse(
        self,
        service: Service | None,
        status: int,
        reason: str,
        message: str,
        headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        """An answer that reached no version, counted by its code under its service."""
        (self.unrouted if service is None else service.counters).count(status)
        return _error(status, reason, message, headers)

    def admit(self, request: web.Request) -> tuple[Service, Version | None] | web.Response:
        """The service (and version, when the path names one) a call may go to, or the
        refusal: 404 unknown, 401 without the key, 503 with no ready instance."""
        found = self.lookup(request.match_info["service"])
        if isinstance(found, str):
            return self.refuse(None, 404, "not_found", found)
        service = found
        if not self.authorized(service, request.headers):
            return self.refuse(
                service,
                401,
                "unauthorized",
                "missing or wrong API key: send the service key as X-Auth-Token or "
                "Authorization: Bearer",
            )
        label = request.match_info.get("version")
        version = None if label is None else service.version(label)
        if label is not None and version is None:
            labels = ", ".join(v.label for v in service.versions)
            return self.refuse(
                service,
                404,
                "not_found",
                f"service {service.route.name} has no version {label!r}: use one of {labels}",
            )
        if not (service.ready if version is None else version.targets):
            route = service.route
            what = route.name if version is None else f"{route.name} version {version.label}"
            return self.refuse(
                service,
                503,
                "unavailable",
                f"service {what} ({route.status.value}) has no ready instance; "
                "retry shortly, or check its status and events",
                {"Retry-After": str(_UNAVAILABLE_RETRY_S)},
            )
        return service, version

    async def infer(self, request: web.Request, kind: int) -> web.Response:
        started = perf_counter()
        admitted = self.admit(request)
        if isinstance(admitted, web.Response):
            return admitted
        service, pinned = admitted
        headers = request.headers
        encoding = headers.get("Content-Encoding")
        if encoding is not None and encoding.strip().lower() not in _ENCODINGS:
            return _closing(
                self.refuse(
                    service,
                    415,
                    "unsupported_encoding",
                    f"Content-Encoding {encoding!r} is not taken here: send the body as is, "
                    "or with gzip or deflate",
                )
            )
        cap = self.options.max_body_bytes
        length = request.content_length
        if length is not None and length > cap:
            return _closing(self.refuse(service, 413, "too_large", _too_large(cap)))
        # A compressed body may decode to more than it carries: reserve the cap for it.
        reserve = cap if length is None or encoding is not None else length
        budget = self.options.max_buffered_bytes
        if self.buffered + reserve > budget and self.buffered > 0:
            return _closing(
                self.refuse(
                    service,
                    503,
                    "busy",
                    f"the gateway holds {self.buffered / 1_000_000:.0f} MB of request bodies "
                    f"now, its most is {budget / 1_000_000:g} MB: retry after the Retry-After "
                    "seconds",
                    {"Retry-After": "1"},
                )
            )
        self.buffered += reserve
        try:
            try:
                if request.content.is_eof():  # all here already (most small calls): no timer
                    body = await request.read()
                else:
                    async with asyncio.timeout(self.options.read_timeout_s):
                        body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                return _closing(self.refuse(service, 413, "too_large", _too_large(cap)))
            except TimeoutError:
                return _closing(
                    self.refuse(
                        service,
                        408,
                        "timeout",
                        f"the request body did not arrive within {self.options.read_timeout_s:g}"
                        " s: send it whole and at once",
                    )
                )
            except RequestPayloadError as exc:
                return _closing(
                    self.refuse(
                        service,
                        400,
                        "bad_body",
                        f"the request body could not be read ({exc.args[0] if exc.args else exc}"
                        "): send it as is, or gzip or deflate compressed as Content-Encoding says",
                    )
                )
            # Only a call that arrived whole takes a token.
            wait = service.bucket.take(perf_counter())
            if wait:
                limit = service.route.traffic_limit
                return self.refuse(
                    service,
                    429,
                    "rate_limited",
                    f"service {service.route.name} allows {limit} calls per second; "
                    "retry after the Retry-After seconds, or raise its traffic limit",
                    {"Retry-After": str(max(1, math.ceil(wait)))},
                )
            named = request.match_info["service"]
            return await self._forward(service, kind, body, headers, started, named, pinned)
        finally:
            self.buffered -= reserve

    async def metadata(self, request: web.Request) -> web.Response:
        """``GET /v2/models/{service}[/versions/{v}]``: the model's metadata from an instance,
        named as the caller named the service, with the service's versions."""
        started = perf_counter()
        admitted = self.admit(request)
        if isinstance(admitted, web.Response):
            return admitted
        service, pinned = admitted
        named = request.match_info["service"]
        reply = await self._forward(
            service, V2_METADATA, b"", request.headers, started, named, pinned, method="GET"
        )
        if reply.status != 200 or not isinstance(reply.body, bytes):
            return reply
        try:
            document = json.loads(reply.body)
        except ValueError:
            return reply
        if isinstance(document, dict):
            labels = [v.label for v in service.versions]
            document["versions"] = labels if pinned is None else [pinned.label]
            reply.body = json.dumps(document).encode()
        return reply

    def model_ready(self, request: web.Request) -> web.Response:
        """Whether a service (or one version) has a ready instance: 200 or 503."""
        admitted = self.admit(request)
        named = request.match_info["service"]
        if isinstance(admitted, web.Response):
            if admitted.status != 503:
                return admitted
            return web.json_response({"name": named, "ready": False}, status=503)
        service = admitted[0]
        service.counters.count(200)
        return web.json_response({"name": named, "ready": True})

    async def _forward(
        self,
        service: Service,
        kind: int,
        body: bytes,
        headers: CIMultiDictProxy[str],
        started: float,
        named: str,
        pinned: Version | None = None,
        method: str = "POST",
    ) -> web.Response:
        """Send the call to an instance (of ``pinned``, when the path named a version)."""
        client = self._client
        assert client is not None, "the gateway is not started"
        forwarded = {name: value for name in _FORWARDED if (value := headers.get(name)) is not None}
        if kind != PREDICT:
            forwarded[MODEL_NAME_HEADER] = named
        deadline = started + self._timeout
        version = pinned if pinned is not None else service.first(headers)
        picked = version.pick(started)
        assert picked is not None  # a version chosen from live ones has targets
        target = picked
        tried: list[Target] = []
        tried_labels: list[str] = []
        retry: tuple[Version, Target] | None = None
        attempt = 0
        now = started
        while True:
            if retry is not None:
                version, target = retry
            attempt += 1
            stats = version.stats
            target.outstanding += 1
            stats.inflight += 1
            try:
                reply = await client.post(
                    target.host,
                    target.port,
                    target.paths[kind],
                    # each version's instances want their own secret (a retry may change version)
                    self._with_instance_secret(forwarded, service.uid, version.idx),
                    body,
                    max(deadline - now, 0.001),
                    method=method,
                )
            except TimeoutError:
                # The instance may still be working on it: never send the call twice.
                return self._failed(
                    service,
                    version,
                    started,
                    504,
                    "timeout",
                    f"service {service.route.name} version {version.label} did not answer "
                    f"within {self._timeout:g} s",
                )
            except (ConnectFailed, Disconnected) as exc:
                now = perf_counter()
                stats.upstream_errors += 1
                refused = isinstance(exc, ConnectFailed)
                if refused:
                    if target.ejected_until <= now:
                        log.warning(
                            "%s (service %s version %s); passing it over for %g s",
                            exc,
                            service.route.name,
                            version.label,
                            self._eject_s,
                        )
                    target.ejected_until = now + self._eject_s
                tried.append(target)
                # The routes may have changed while this call was out (an instance stopping
                # is why connections fail during an update): go on with the current ones.
                current = self.services.get(service.uid)
                if current is not None and current is not service:
                    service = current
                    same = current.version(version.label)
                    if same is not None:
                        version = same
                    elif current.ready and pinned is None:
                        version = current.choose()
                found: tuple[Version, Target] | None = None
                if now < deadline:
                    if pinned is None:
                        found = service.next_target(version, tried, tried_labels, now)
                    elif (again := version.pick(now, tried)) is not None:
                        found = (version, again)
                # A refused connection never reached the instance, so every other ready
                # instance may be tried; other failures are retried ``attempts`` times in all.
                if found is not None and (
                    attempt < self._attempts or (refused and found[1] not in tried)
                ):
                    retry = found  # taken at the top of the loop, after `finally` below
                    continue
                return self._failed(
                    service,
                    version,
                    started,
                    502,
                    "bad_gateway",
                    f"no instance of service {service.route.name} answered after {attempt} "
                    f"attempts (last: {exc}); retry shortly",
                )
            except BrokenReply as exc:
                # The instance answered, then broke off: the call may have run, so no retry.
                return self._failed(
                    service,
                    version,
                    started,
                    502,
                    "bad_gateway",
                    f"an instance of service {service.route.name} version {version.label} "
                    f"broke off its answer: {exc}",
                )
            finally:
                target.outstanding -= 1
                stats.inflight -= 1
            if target.ejected_until:
                target.ejected_until = 0.0
            now = perf_counter()
            if reply.status == 503 and attempt < self._attempts and now < deadline:
                # A model server answers 503 only for a call it did not run (its queue is full,
                # or its model is not loaded): another instance of the version may take it.
                tried.append(target)
                other = version.pick(now, tried)
                if other is not None:
                    stats.upstream_errors += 1
                    retry = (version, other)
                    continue
            stats.record(reply.status, now - started, now)
            reply_headers = reply.headers
            reply_headers["X-Model-Version"] = version.label
            return web.Response(body=reply.body, status=reply.status, headers=reply_headers)

    def _failed(
        self,
        service: Service,
        version: Version,
        started: float,
        status: int,
        reason: str,
        message: str,
    ) -> web.Response:
        now = perf_counter()
        version.stats.record(status, now - started, now)
        if status != 504:
            log.warning("%s", message)
        response = _error(status, reason, message)
        response.headers["X-Model-Version"] = version.label
        return response

    # -- numbers -----------------------------------------------------------------------------

    def draining(self) -> list[Target]:
        """Instances out of the routes that still have calls outstanding on them."""
        self._draining = {k: t for k, t in self._draining.items() if t.outstanding > 0}
        return list(self._draining.values())

    def stats_document(self, *, recent: bool = False) -> dict[str, Any]:
        """What ``GET /stats`` answers: per service and version, calls, failures, latency,
        rule hits and each instance's calls in flight; ``upstreams`` has every instance the
        gateway routes to or is draining, by address (what a controller waits on before it
        stops an instance)."""
        now = perf_counter()
        draining = self.draining()
        drained_by: dict[tuple[str, str], list[Target]] = {}
        for t in draining:
            drained_by.setdefault((t.uid, t.label), []).append(t)
        upstreams: dict[str, dict[str, Any]] = {}
        services = []
        for uid, service in self.services.items():
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
            "loaded_at": self.loaded_at,
            "reloads": self.reloads,
            "buffered_bytes": self.buffered,
            "unrouted": {str(c): n for c, n in sorted(self.unrouted.codes.items())},
            "services": services,
            "upstreams": upstreams,
        }

    def metrics_text(self) -> str:
        """The Prometheus text exposition (format 0.0.4) of every counter."""
        out: list[str] = []

        def family(name: str, kind: str, help_: str) -> None:
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} {kind}")

        stats = sorted(self.stats.items())
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
        for uid, c in [*sorted(self.counters.items()), ("", self.unrouted)]:
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
                out.append(
                    f'opsbot_gateway_request_seconds_bucket{{{base},le="{bound}"}} {running}'
                )
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
            for service in self.services.values()
            for v in service.versions
            for t in v.targets
        ]
        for t, is_routed in sorted(
            [*routed, *((t, False) for t in self.draining())],
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
        out.append(f"opsbot_gateway_buffered_bytes {self.buffered}")
        family(
            "opsbot_gateway_upstreams_ready",
            "gauge",
            "Ready instances the gateway routes to, per service and version.",
        )
        for uid, service in sorted(self.services.items()):
            for version in service.versions:
                base = f'service="{_esc(uid)}",version="{_esc(version.label)}"'
                out.append(f"opsbot_gateway_upstreams_ready{{{base}}} {len(version.targets)}")
        family(
            "opsbot_gateway_service_info",
            "gauge",
            "Name and owner of each routed service, by id (always 1).",
        )
        for uid, service in sorted(self.services.items()):
            route = service.route
            out.append(
                f'opsbot_gateway_service_info{{service="{_esc(uid)}",name="{_esc(route.name)}",'
                f'owner="{_esc(route.owner)}"}} 1'
            )
        family("opsbot_gateway_route_reloads_total", "counter", "Times the routes changed.")
        out.append(f"opsbot_gateway_route_reloads_total {self.reloads}")
        # The process's own numbers (memory, CPU, file descriptors), as every exporter has.
        return "\n".join(out) + "\n" + generate_latest(_PROCESS).decode()


#: process_* metrics of this process (resident memory, CPU seconds, open files).
_PROCESS: Final = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=_PROCESS)

#: Where an application made by make_app keeps its Gateway.
GATEWAY: Final = web.AppKey("gateway", Gateway)


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


def _error(
    status: int, reason: str, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    """A gateway error: ``{"error": message, "reason": reason}``, like the model server's."""
    return web.Response(
        status=status,
        body=json.dumps({"error": message, "reason": reason}).encode(),
        content_type="application/json",
        headers=headers,
    )


def _too_large(cap: int) -> str:
    return (
        f"the request body is over the gateway's cap of {cap / 1_000_000:g} MB: send fewer "
        "instances per call"
    )


def _closing(response: web.Response) -> web.Response:
    """The answer to a call whose body was not read whole: the connection closes after it,
    rather than the gateway reading (and holding) a body it has refused."""
    response.force_close()
    return response


# --------------------------------------------------------------------------------------------
# The aiohttp application

SERVER_NAME: Final = "opsbot-gateway"
_ROUTES_HINT: Final = (
    "POST /v1/infers/{service}, POST /v1/models/{service}:predict, "
    "POST /v2/models/{service}[/versions/{version}]/infer, GET /v2/models/{service}"
)


@web.middleware
async def _json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """aiohttp's own errors (no route, wrong method) as ``{"error": ..., "reason": ...}``."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = allow_header(exc)
        message = routing_message(request, exc, _ROUTES_HINT)
        if isinstance(exc, web.HTTPMethodNotAllowed):
            return _error(405, "method_not_allowed", message or "", headers)
        if isinstance(exc, web.HTTPNotFound):
            return _error(404, "no_route", message or "")
        return _error(exc.status, "bad_request", exc.text or exc.reason, headers)


def make_app(
    source: Path | str | DatabaseOpener,
    options: GatewayOptions | None = None,
    *,
    shared: SharedBuckets | None = None,
    siblings: Siblings | None = None,
) -> web.Application:
    """The gateway as an aiohttp application, reading routes from ``source``.

    ``source`` is the store's database file (created and migrated if missing) or a callable that
    opens a database; it is called once, in the thread that reads routes. ``shared`` and
    ``siblings`` make it one worker of several: traffic limits shared, and ``/stats``,
    ``/metrics`` and ``POST /-/routes`` answered for all of them.
    """
    options = options or GatewayOptions()
    if callable(source):
        opener: DatabaseOpener = source
    else:
        path = Path(source)

        def opener() -> sqlite_utils.Database:
            return Store(path).db

    gateway = Gateway(opener, options, shared)
    # The body cap is checked by the handler (413 with a JSON message); aiohttp's own limit sits
    # just above it so a chunked body is cut off while it is read.
    app = web.Application(client_max_size=options.max_body_bytes, middlewares=[_json_errors])
    app[GATEWAY] = gateway

    async def predict(request: web.Request) -> web.Response:
        return await gateway.infer(request, PREDICT)

    async def v2_infer(request: web.Request) -> web.Response:
        return await gateway.infer(request, V2_INFER)

    async def v2_metadata(request: web.Request) -> web.Response:
        return await gateway.metadata(request)

    async def model_ready(request: web.Request) -> web.Response:
        return gateway.model_ready(request)

    async def live(request: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def ready(request: web.Request) -> web.Response:
        # Ready once the routes have been read: from then on every service answers.
        loaded = gateway.reloads > 0
        return web.json_response({"ready": loaded}, status=200 if loaded else 503)

    async def server_metadata(request: web.Request) -> web.Response:
        return web.json_response(
            {"name": SERVER_NAME, "version": __version__, "extensions": ["binary_tensor_data"]}
        )

    async def v1_live(request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def metrics(request: web.Request) -> web.Response:
        text = gateway.metrics_text()
        if siblings is not None:
            if not siblings.ready():
                return _starting()
            others = await siblings.gather("GET", "/-/local/metrics")
            text = merge_metrics([text, *(o.decode() for o in others)])
        return web.Response(
            body=text.encode(),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    async def stats(request: web.Request) -> web.Response:
        # It names owners, services and instance addresses: the daemon's eyes only (a gateway
        # started without the daemon's token, as in a test, has nobody to tell apart).
        if gateway.options.internal_token_hash is not None and not gateway.internal(
            request.headers
        ):
            return _error(
                401,
                "unauthorized",
                f"/stats needs the daemon's token in {INTERNAL_HEADER}; ask the daemon "
                "(`opsbot show NAME` with stats) instead",
            )
        if siblings is None:  # one worker: the same document, from its numbers alone
            return web.json_response(merge_stats([gateway.stats_document(recent=True)]))
        if not siblings.ready():
            return _starting()
        others = await siblings.gather("GET", "/-/local/stats")
        docs = [gateway.stats_document(recent=True), *(json.loads(o) for o in others)]
        return web.json_response(merge_stats(docs))

    async def routes(request: web.Request) -> web.Response:
        if not gateway._internal(request.headers):
            return _error(
                403,
                "forbidden",
                f"only the daemon reads the routes: send its token in {INTERNAL_HEADER}",
            )
        routed = set(await gateway.refresh())
        if siblings is not None:
            if not siblings.ready():
                return _starting()
            # Routed only once every worker routes it.
            for other in await siblings.gather("POST", "/-/local/routes"):
                routed &= set(json.loads(other)["routed"])
        return web.json_response({"routed": sorted(routed)})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response(
            {"status": "ok", "services": len(gateway.services), "loaded_at": gateway.loaded_at}
        )

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await gateway.start()
        yield
        if siblings is not None:
            await siblings.close()
        await gateway.stop()

    # ModelArts style, and KServe v1 (which takes and answers the same JSON).
    app.router.add_post("/v1/infers/{service}", predict)
    app.router.add_post("/v1/models/{service}:predict", predict)
    app.router.add_get("/v1/models/{service}", model_ready)
    app.router.add_get("/", v1_live)
    # Open Inference Protocol v2: a service is a model, a service version a model version.
    app.router.add_get("/v2/health/live", live)
    app.router.add_get("/v2/health/ready", ready)
    app.router.add_get("/v2", server_metadata)
    for base in ("/v2/models/{service}", "/v2/models/{service}/versions/{version}"):
        app.router.add_get(base, v2_metadata)
        app.router.add_get(base + "/ready", model_ready)
        app.router.add_post(base + "/infer", v2_infer)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/stats", stats)
    app.router.add_get("/healthz", healthz)
    app.router.add_post("/-/routes", routes)
    app.cleanup_ctx.append(lifecycle)
    return app


def _starting() -> web.Response:
    return _error(
        503,
        "starting",
        "the gateway's workers are still starting: retry in a moment",
        {"Retry-After": "1"},
    )


def sibling_app(gateway: Gateway, siblings: Siblings) -> web.Application:
    """What one worker answers the others on its private loopback port: its own numbers, and
    the routes it has after reading the store afresh."""

    @web.middleware
    async def only_siblings(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.headers.get(SIBLING_HEADER) != siblings.secret:
            return _error(403, "forbidden", "this port is for the gateway's own workers")
        return await handler(request)

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(gateway.stats_document(recent=True))

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text=gateway.metrics_text())

    async def routes(request: web.Request) -> web.Response:
        return web.json_response({"routed": await gateway.refresh()})

    app = web.Application(middlewares=[only_siblings])
    app.router.add_get("/-/local/stats", stats)
    app.router.add_get("/-/local/metrics", metrics)
    app.router.add_post("/-/local/routes", routes)
    return app


async def serve(
    db_path: Path,
    host: str,
    port: int,
    options: GatewayOptions,
    *,
    on_ready: Callable[[int], None] | None = None,
    sock: socket.socket | None = None,
    shared: SharedBuckets | None = None,
    siblings: Siblings | None = None,
    index: int = 0,
) -> None:
    """Serve until SIGTERM or SIGINT, then finish the calls in flight and stop.

    With ``sock`` (a listening socket other workers accept on too), serve on it as worker
    ``index`` of ``siblings``, with the traffic buckets ``shared``.
    """
    app = make_app(db_path, options, shared=shared, siblings=siblings)
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        # aiohttp closes a connection whose next request head has not arrived whole by then:
        # the head read timeout (a slow sender's trickle does not extend it).
        keepalive_timeout=options.read_timeout_s,
    )
    await runner.setup()
    private: web.AppRunner | None = None
    try:
        site: web.BaseSite = (
            web.TCPSite(runner, host, port, backlog=1024)
            if sock is None
            else web.SockSite(runner, sock)
        )
        await site.start()
        bound = _bound_port(runner.addresses, port)
        if siblings is not None:
            private = web.AppRunner(sibling_app(app[GATEWAY], siblings), access_log=None)
            await private.setup()
            await web.TCPSite(private, "127.0.0.1", 0).start()
            siblings.publish(index, _bound_port(private.addresses, 0))
        log.info("gateway listening on http://%s:%d", host, bound)
        if on_ready is not None:
            on_ready(bound)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("gateway stopping")
    finally:
        if private is not None:
            await private.cleanup()
        await runner.cleanup()


def run_loop(main: Coroutine[Any, Any, None], loop: str = "uvloop") -> None:
    """Run ``main`` to its end on a new event loop of the kind named."""
    if loop == "uvloop":
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main)
    else:
        asyncio.run(main)


def _bound_port(addresses: Iterable[Any], asked: int) -> int:
    for address in addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return asked


def give_back_large_buffers() -> None:
    """Have glibc serve every allocation of 1 MiB or more straight from mmap.

    Request bodies are such allocations. By default glibc raises its mmap threshold each time a
    large block is freed, so later bodies come from the heap, which fragments and is rarely
    returned: after a burst of large calls the process would stay at its peak. A fixed
    threshold keeps it where it is, and a freed body goes back to the system at once.
    """
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 1 << 20)


_M_MMAP_THRESHOLD: Final = -3


def main(argv: list[str] | None = None) -> int:
    """``python -m opsbot.serving.gateway``: run the gateway for one $OPSBOT_HOME."""
    from opsbot.core.config import default_home, load_config
    from opsbot.core.errors import OpsbotError

    defaults = GatewayOptions()
    parser = argparse.ArgumentParser(
        prog="python -m opsbot.serving.gateway", description="The opsbot inference gateway."
    )
    parser.add_argument(
        "--home", type=Path, default=None, help="OPSBOT_HOME (default: $OPSBOT_HOME)"
    )
    parser.add_argument("--host", default=None, help="address to listen on (config: gateway_host)")
    parser.add_argument("--port", type=int, default=None, help="port (config: gateway_port)")
    parser.add_argument("--max-body-mb", type=float, default=defaults.max_body_mb)
    parser.add_argument("--timeout-s", type=float, default=defaults.timeout_s)
    parser.add_argument("--attempts", type=int, default=defaults.attempts)
    parser.add_argument(
        "--max-buffered-mb",
        type=float,
        default=defaults.max_buffered_mb,
        help="request bytes held at once across all calls; beyond them 503 (default: %(default)s)",
    )
    parser.add_argument(
        "--read-timeout-s",
        type=float,
        default=defaults.read_timeout_s,
        help="time for a request's head, and for its body, to arrive (default: %(default)s)",
    )
    parser.add_argument(
        "--upstream-client",
        choices=["raw", "aiohttp"],
        default=defaults.client,
        help="HTTP client for the hop to instances (default: raw, the lean asyncio one)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes on the one port (config: gateway_workers; default: one per core)",
    )
    parser.add_argument(
        "--loop",
        choices=["uvloop", "asyncio"],
        default="uvloop",
        help="event loop: uvloop (libuv; less CPU per call) or the standard library's",
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    home: Path = args.home if args.home is not None else default_home()
    host, port = args.host, args.port
    if host is None or port is None:
        try:
            config = load_config(home)
        except OpsbotError as exc:
            print(f"opsbot gateway: {exc}", file=sys.stderr)
            return 2
        host = host if host is not None else config.gateway_host
        port = port if port is not None else config.gateway_port
    workers = args.workers if args.workers is not None else default_workers()
    if workers < 1:
        parser.error("--workers must be at least 1")
    positive = (args.max_body_mb, args.timeout_s, args.max_buffered_mb, args.read_timeout_s)
    if min(positive) <= 0 or args.attempts < 1:
        parser.error(
            "--max-body-mb, --timeout-s, --max-buffered-mb and --read-timeout-s must be "
            "positive, --attempts at least 1"
        )
    secret = home / INTERNAL_SECRET
    options = GatewayOptions(
        max_body_mb=args.max_body_mb,
        timeout_s=args.timeout_s,
        attempts=args.attempts,
        client=args.upstream_client,
        max_buffered_mb=args.max_buffered_mb,
        read_timeout_s=args.read_timeout_s,
        internal_token_hash=(
            sha256(secret.read_text().strip().encode()).hexdigest() if secret.exists() else None
        ),
        instance_key=secret.read_text().strip() if secret.exists() else None,
    )
    give_back_large_buffers()
    if workers == 1:
        try:
            run_loop(serve(home / DB_NAME, host, port, options), args.loop)
        except OSError as exc:
            print(f"opsbot gateway: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
            return 1
        return 0
    try:
        sock = listen(host, port)
    except OSError as exc:
        print(f"opsbot gateway: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return 1
    shared, siblings = SharedBuckets(), Siblings(workers)

    def work(index: int) -> None:
        run_loop(
            serve(
                home / DB_NAME,
                host,
                port,
                options,
                sock=sock,
                shared=shared,
                siblings=siblings,
                index=index,
            ),
            args.loop,
        )

    log.info("gateway: %d workers on %s:%d", workers, host, sock.getsockname()[1])
    return supervise(workers, work)


if __name__ == "__main__":
    raise SystemExit(main())
