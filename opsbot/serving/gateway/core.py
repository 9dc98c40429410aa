"""The gateway's calls: routes read from the store and applied, a call admitted (service, key,
version, readiness), its body read within the caps, limited, and forwarded to an instance with
retries elsewhere when a connection fails before an answer.

Routes come from the store through :func:`opsbot.core.routes.load_routes`; a poll of ``PRAGMA
data_version`` every 200 ms notices any commit by another connection, so a route change takes
effect within a fraction of a second (at once on ``POST /-/routes``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import sqlite3
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from time import perf_counter, time
from typing import Any

import sqlite_utils
from aiohttp import web
from aiohttp.web import RequestPayloadError

from opsbot.core.routes import ServiceRoute, load_routes
from opsbot.serving import MODEL_NAME_HEADER
from opsbot.serving.gateway import metrics
from opsbot.serving.gateway.answers import closing, error, too_large
from opsbot.serving.gateway.drain import Drain, TargetKey
from opsbot.serving.gateway.limits import (
    InstanceSecrets,
    carries_internal,
    carries_key,
    make_bucket,
)
from opsbot.serving.gateway.metrics import ServiceCounters, VersionStats
from opsbot.serving.gateway.options import (
    ENCODINGS,
    FORWARDED,
    PREDICT,
    UNAVAILABLE_RETRY_S,
    V2_METADATA,
    GatewayOptions,
)
from opsbot.serving.gateway.routing import Service, Target, Version, labels
from opsbot.serving.upstream import (
    BrokenReply,
    ConnectFailed,
    Disconnected,
    Reply,
    UpstreamClient,
    header_lines,
    make_client,
    resolve,
)
from opsbot.serving.workers import SharedBuckets

log = logging.getLogger("opsbot.serving.gateway")

DatabaseOpener = Callable[[], sqlite_utils.Database]
#: What a call is answered with: an instance's reply, or the gateway's own answer.
Answer = Reply | web.Response


class _Way:
    """One call's way to an instance: the attempt now out, and those before it."""

    __slots__ = (
        "attempt",
        "body",
        "deadline",
        "done",
        "forwarded",
        "kind",
        "method",
        "now",
        "pinned",
        "service",
        "started",
        "target",
        "tried",
        "tried_labels",
        "version",
    )

    def __init__(
        self,
        service: Service,
        version: Version,
        target: Target,
        kind: int,
        body: bytes,
        forwarded: bytes,
        started: float,
        pinned: Version | None,
        method: str,
        done: Callable[[Answer], None],
    ):
        self.service = service
        self.version = version
        self.target = target
        self.kind = kind
        self.body = body
        self.forwarded = forwarded
        self.started = started
        self.pinned = pinned
        self.method = method
        self.done = done
        self.deadline = 0.0
        self.now = started
        self.attempt = 0
        self.tried: list[Target] = []
        self.tried_labels: list[str] = []


async def _awaited(
    posted: Awaitable[Reply], settled: Callable[[Reply | BaseException], None]
) -> None:
    """An attempt over a new connection: its outcome to ``settled``, as a started one's is."""
    try:
        reply = await posted
    except BaseException as exc:
        settled(exc)
        if not isinstance(exc, Exception):
            raise
        return
    settled(reply)


def forwarded_lines(headers: Mapping[str, str], kind: int, named: str) -> bytes:
    """What of a call's headers goes on to the instance, as header lines: those in FORWARDED,
    and for the v2 protocol the model's name as the caller named the service."""
    pairs = [(name, value) for name in FORWARDED if (value := headers.get(name)) is not None]
    if kind != PREDICT:
        pairs.append((MODEL_NAME_HEADER, named))
    return header_lines(pairs)


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
        self._instance_secrets = InstanceSecrets(options.instance_key)
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
        self._targets: dict[TargetKey, Target] = {}
        self._drain = Drain()
        self._db: sqlite_utils.Database | None = None
        self._data_version: int | None = None
        # One thread owns the store connection: reading never blocks the event loop.
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-routes")
        self._client: UpstreamClient | None = None
        self._watcher: asyncio.Task[None] | None = None
        # Attempts awaiting a new connection to an instance (see _attempt): held until done.
        self._tasks: set[asyncio.Task[None]] = set()
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
        for task in list(self._tasks):
            task.cancel()
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
        targets: dict[TargetKey, Target] = {}
        services: dict[str, Service] = {}
        for uid, route in routes.items():
            versions = []
            for vroute, label in zip(route.versions, labels(route.versions), strict=True):
                model_name = vroute.model.rpartition("/")[2]
                found = []
                for up in vroute.upstreams:
                    key = (up.host, up.port, model_name)
                    # The same Target again, so outstanding counts carry over the change.
                    target = targets.get(key) or old_targets.get(key) or self._drain.get(key)
                    if target is None:
                        target = Target(up.host, up.port, model_name)
                    target.uid, target.label = uid, label
                    targets[key] = target
                    found.append(target)
                stats = self.stats.get((uid, label))
                if stats is None:
                    stats = self.stats[(uid, label)] = VersionStats()
                secret = self._instance_secrets.line(uid, vroute.idx)
                versions.append(Version(vroute, label, tuple(found), stats, secret))
            counters = self.counters.get(uid)
            if counters is None:
                counters = self.counters[uid] = ServiceCounters()
            # The bucket outlives the reload, so a route change never refills it.
            previous = self.services.get(uid)
            if previous is None:
                bucket = make_bucket(self._shared, uid, route.traffic_limit, now)
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
        self._drain.update(old_targets, targets)
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

    def internal(self, headers: Mapping[str, str]) -> bool:
        """Whether the caller holds the daemon's token (what ``/stats`` asks for)."""
        return carries_internal(headers, self.options.internal_token_hash)

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
        return carries_key(headers, service.key_hashes) or self.internal(headers)

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
        return error(status, reason, message, headers)

    def admit(
        self, named: str, label: str | None, headers: Mapping[str, str]
    ) -> tuple[Service, Version | None] | web.Response:
        """The service (and version, when the path names one) a call may go to, or the
        refusal: 404 unknown, 401 without the key, 503 with no ready instance."""
        found = self.lookup(named)
        if isinstance(found, str):
            return self.refuse(None, 404, "not_found", found)
        service = found
        if not self.authorized(service, headers):
            return self.refuse(
                service,
                401,
                "unauthorized",
                "missing or wrong API key: send the service key as X-Auth-Token or "
                "Authorization: Bearer",
            )
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
                {"Retry-After": str(UNAVAILABLE_RETRY_S)},
            )
        return service, version

    def reserve(
        self, service: Service, headers: Mapping[str, str], length: int | None
    ) -> int | web.Response:
        """Before a body is read: the bytes it may take held against the buffered-bytes budget
        (hand them back with :meth:`release`), or the refusal: 415 for an encoding not taken,
        413 over the body cap, 503 over the budget. Refusals close the connection."""
        encoding = headers.get("Content-Encoding")
        if encoding is not None and encoding.strip().lower() not in ENCODINGS:
            return closing(
                self.refuse(
                    service,
                    415,
                    "unsupported_encoding",
                    f"Content-Encoding {encoding!r} is not taken here: send the body as is, "
                    "or with gzip or deflate",
                )
            )
        cap = self.options.max_body_bytes
        if length is not None and length > cap:
            return self.too_large(service)
        # A compressed body may decode to more than it carries: reserve the cap for it.
        reserve = cap if length is None or encoding is not None else length
        budget = self.options.max_buffered_bytes
        if self.buffered + reserve > budget and self.buffered > 0:
            return closing(
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
        return reserve

    def release(self, reserved: int) -> None:
        """Hand back what :meth:`reserve` held, once the call is answered."""
        self.buffered -= reserved

    def too_large(self, service: Service) -> web.Response:
        return closing(
            self.refuse(service, 413, "too_large", too_large(self.options.max_body_bytes))
        )

    def dispatch(
        self,
        service: Service,
        kind: int,
        body: bytes,
        headers: Mapping[str, str],
        started: float,
        named: str,
        pinned: Version | None,
        done: Callable[[Answer], None],
        forwarded: bytes | None = None,
    ) -> Answer | None:
        """A call whose body arrived whole: its token taken, then forwarded. The answer when
        there is one at once (429 without a token); else None, and ``done`` gets the answer
        later, from the event loop's callbacks. ``forwarded``: :func:`forwarded_lines` of the
        call, when the caller has them already."""
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
        self._forward(service, kind, body, headers, started, named, pinned, done, forwarded)
        return None

    async def call(
        self,
        service: Service,
        kind: int,
        body: bytes,
        headers: Mapping[str, str],
        started: float,
        named: str,
        pinned: Version | None,
    ) -> Answer:
        """:meth:`dispatch`, awaited."""
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        answer = self.dispatch(
            service, kind, body, headers, started, named, pinned, partial(resolve, future)
        )
        return answer if answer is not None else await future

    async def infer(self, request: web.Request, kind: int) -> web.Response:
        """An inference call through aiohttp's server: admitted, its body read within the caps
        and the read timeout (decoded when gzip or deflate), limited and forwarded."""
        started = perf_counter()
        named = request.match_info["service"]
        headers = request.headers
        admitted = self.admit(named, request.match_info.get("version"), headers)
        if isinstance(admitted, web.Response):
            return admitted
        service, pinned = admitted
        reserved = self.reserve(service, headers, request.content_length)
        if isinstance(reserved, web.Response):
            return reserved
        try:
            try:
                if request.content.is_eof():  # all here already (most small calls): no timer
                    body = await request.read()
                else:
                    async with asyncio.timeout(self.options.read_timeout_s):
                        body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                return self.too_large(service)
            except TimeoutError:
                return self.body_timeout(service)
            except RequestPayloadError as exc:
                return closing(
                    self.refuse(
                        service,
                        400,
                        "bad_body",
                        f"the request body could not be read ({exc.args[0] if exc.args else exc}"
                        "): send it as is, or gzip or deflate compressed as Content-Encoding says",
                    )
                )
            return as_response(
                await self.call(service, kind, body, headers, started, named, pinned)
            )
        finally:
            self.release(reserved)

    def body_timeout(self, service: Service) -> web.Response:
        return closing(
            self.refuse(
                service,
                408,
                "timeout",
                f"the request body did not arrive within {self.options.read_timeout_s:g}"
                " s: send it whole and at once",
            )
        )

    async def metadata(self, request: web.Request) -> web.Response:
        """``GET /v2/models/{service}[/versions/{v}]``: the model's metadata from an instance,
        named as the caller named the service, with the service's versions."""
        started = perf_counter()
        named = request.match_info["service"]
        admitted = self.admit(named, request.match_info.get("version"), request.headers)
        if isinstance(admitted, web.Response):
            return admitted
        service, pinned = admitted
        reply = as_response(
            await self._forwarded(
                service, V2_METADATA, b"", request.headers, started, named, pinned, method="GET"
            )
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
        named = request.match_info["service"]
        admitted = self.admit(named, request.match_info.get("version"), request.headers)
        if isinstance(admitted, web.Response):
            if admitted.status != 503:
                return admitted
            return web.json_response({"name": named, "ready": False}, status=503)
        service = admitted[0]
        service.counters.count(200)
        return web.json_response({"name": named, "ready": True})

    async def _forwarded(
        self,
        service: Service,
        kind: int,
        body: bytes,
        headers: Mapping[str, str],
        started: float,
        named: str,
        pinned: Version | None,
        method: str,
    ) -> Answer:
        """:meth:`_forward`, awaited."""
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._forward(
            service,
            kind,
            body,
            headers,
            started,
            named,
            pinned,
            partial(resolve, future),
            method=method,
        )
        return await future

    def _forward(
        self,
        service: Service,
        kind: int,
        body: bytes,
        headers: Mapping[str, str],
        started: float,
        named: str,
        pinned: Version | None,
        done: Callable[[Answer], None],
        forwarded: bytes | None = None,
        method: str = "POST",
    ) -> None:
        """Send the call to an instance (of ``pinned``, when the path named a version); ``done``
        gets the answer. Over an idle keep-alive connection the whole way runs in the event
        loop's callbacks; only a new connection is awaited, in a task."""
        if forwarded is None:
            forwarded = forwarded_lines(headers, kind, named)
        version = pinned if pinned is not None else service.first(headers)
        target = version.pick(started)
        assert target is not None  # a version chosen from live ones has targets
        way = _Way(service, version, target, kind, body, forwarded, started, pinned, method, done)
        way.deadline = started + self._timeout
        self._attempt(way)

    def _attempt(self, way: _Way) -> None:
        """Send the call to ``way.target``; :meth:`_settled` takes the outcome."""
        client = self._client
        assert client is not None, "the gateway is not started"
        target, version = way.target, way.version
        way.attempt += 1
        target.outstanding += 1
        version.stats.inflight += 1
        # each version's instances want their own secret (a retry may change version)
        fields = way.forwarded + version.secret_line
        path = target.paths[way.kind]
        timeout = max(way.deadline - way.now, 0.001)
        settled = partial(self._settled, way)
        if client.start(
            target.host, target.port, path, fields, way.body, timeout, settled, method=way.method
        ):
            return
        # No idle connection to it: a new one is awaited.
        posted = client.post(
            target.host, target.port, path, fields, way.body, timeout, method=way.method
        )
        task = asyncio.get_running_loop().create_task(_awaited(posted, settled))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _settled(self, way: _Way, outcome: Reply | BaseException) -> None:
        """An attempt's outcome: the call answered, or sent on to its next attempt."""
        try:
            answer = self._outcome(way, outcome)
            if answer is None:
                self._attempt(way)
                return
        except Exception:
            log.exception("a call failed in the gateway")
            answer = self.refuse(
                way.service, 500, "internal", "the gateway failed on this call: see its log"
            )
        try:
            way.done(answer)
        except Exception:
            log.exception("answering a call failed in the gateway")
        if isinstance(answer, Reply):
            # Counted once the caller has its answer: off the path a call waits on.
            way.version.stats.record(answer.status, way.now - way.started, way.now)

    def _outcome(self, way: _Way, outcome: Reply | BaseException) -> Answer | None:
        """The answer an attempt's outcome makes, or None when ``way`` now points at the
        instance the next attempt goes to."""
        service, version, target = way.service, way.version, way.target
        stats = version.stats
        target.outstanding -= 1
        stats.inflight -= 1
        if isinstance(outcome, Reply):
            if target.ejected_until:
                target.ejected_until = 0.0
            now = perf_counter()
            if outcome.status == 503 and way.attempt < self._attempts and now < way.deadline:
                # A model server answers 503 only for a call it did not run (its queue is full,
                # or its model is not loaded): another instance of the version may take it.
                way.tried.append(target)
                other = version.pick(now, way.tried)
                if other is not None:
                    stats.upstream_errors += 1
                    way.target, way.now = other, now
                    return None
            way.now = now
            outcome.extra = version.label_line
            return outcome  # _settled counts it
        if isinstance(outcome, TimeoutError):
            # The instance may still be working on it: never send the call twice.
            return self._failed(
                service,
                version,
                way.started,
                504,
                "timeout",
                f"service {service.route.name} version {version.label} did not answer "
                f"within {self._timeout:g} s",
            )
        if isinstance(outcome, (ConnectFailed, Disconnected)):
            return self._retry(way, outcome)
        if isinstance(outcome, BrokenReply):
            # The instance answered, then broke off: the call may have run, so no retry.
            return self._failed(
                service,
                version,
                way.started,
                502,
                "bad_gateway",
                f"an instance of service {service.route.name} version {version.label} "
                f"broke off its answer: {outcome}",
            )
        # Cancelled (the gateway stopping) or failed in a way the client does not name.
        return self._failed(
            service,
            version,
            way.started,
            502,
            "bad_gateway",
            f"the call to service {service.route.name} version {version.label} failed: {outcome!r}",
        )

    def _retry(self, way: _Way, exc: ConnectFailed | Disconnected) -> web.Response | None:
        """After a connection failed before any answer: the next instance to try (``way``
        pointed at it, None returned), or the 502 when none is left."""
        service, version, target = way.service, way.version, way.target
        now = perf_counter()
        version.stats.upstream_errors += 1
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
        tried = way.tried
        tried.append(target)
        # The routes may have changed while this call was out (an instance stopping is why
        # connections fail during an update): go on with the current ones.
        current = self.services.get(service.uid)
        pinned = way.pinned
        if current is not None and current is not service:
            service = way.service = current
            same = current.version(version.label)
            if same is not None:
                version = way.version = same
            elif current.ready and pinned is None:
                version = way.version = current.choose()
        found: tuple[Version, Target] | None = None
        if now < way.deadline:
            if pinned is None:
                found = service.next_target(version, tried, way.tried_labels, now)
            elif (again := version.pick(now, tried)) is not None:
                found = (version, again)
        # A refused connection never reached the instance, so every other ready instance may
        # be tried; other failures are retried ``attempts`` times in all.
        if found is not None and (
            way.attempt < self._attempts or (refused and found[1] not in tried)
        ):
            way.version, way.target = found
            way.now = now
            return None
        return self._failed(
            service,
            version,
            way.started,
            502,
            "bad_gateway",
            f"no instance of service {service.route.name} answered after {way.attempt} "
            f"attempts (last: {exc}); retry shortly",
        )

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
        response = error(status, reason, message)
        response.headers["X-Model-Version"] = version.label
        return response

    # -- numbers -----------------------------------------------------------------------------

    def draining(self) -> list[Target]:
        """Instances out of the routes that still have calls outstanding on them."""
        return self._drain.current()

    def stats_document(self, *, recent: bool = False) -> dict[str, Any]:
        """What ``GET /stats`` answers (see :func:`metrics.stats_document`)."""
        return metrics.stats_document(self, recent=recent)

    def metrics_text(self) -> str:
        """The Prometheus text exposition of every counter (see :func:`metrics.metrics_text`)."""
        return metrics.metrics_text(self)


def as_response(answer: Reply | web.Response) -> web.Response:
    """An instance's reply as aiohttp's response (the gateway's own answers already are)."""
    if isinstance(answer, web.Response):
        return answer
    return web.Response(body=answer.body, status=answer.status, headers=answer.headers)
