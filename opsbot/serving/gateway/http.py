"""The gateway's HTTP front: the aiohttp application (inference routes, health, metadata,
``/metrics``, ``/stats``, ``POST /-/routes``), the private one its worker siblings call, and
:func:`serve`, which runs it until SIGTERM and then lets the calls in flight finish."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, Final

import sqlite_utils
from aiohttp import web

from opsbot import __version__
from opsbot.core.store import Store
from opsbot.serving.gateway.answers import error, starting
from opsbot.serving.gateway.core import DatabaseOpener, Gateway
from opsbot.serving.gateway.fast import Connections, FastFront
from opsbot.serving.gateway.limits import ScrapeToken
from opsbot.serving.gateway.options import INTERNAL_HEADER, PREDICT, V2_INFER, GatewayOptions
from opsbot.serving.http_errors import allow_header, json_errors
from opsbot.serving.workers import (
    SIBLING_HEADER,
    SharedBuckets,
    Siblings,
    merge_metrics,
    merge_stats,
)

log = logging.getLogger("opsbot.serving.gateway")

#: Where an application made by make_app keeps its Gateway.
GATEWAY: Final = web.AppKey("gateway", Gateway)
SERVER_NAME: Final = "opsbot-gateway"
#: The answer to a /metrics call without a credential, and how to get one.
METRICS_REFUSED: Final = (
    "/metrics needs the scrape token as `Authorization: Bearer TOKEN` (an admin prints it "
    "with `opsbot token metrics`; in Prometheus, `authorization: {credentials_file: ...}`), "
    f"or the daemon's token in {INTERNAL_HEADER}"
)
METRICS_CHALLENGE: Final = {"WWW-Authenticate": 'Bearer realm="opsbot metrics"'}
_ROUTES_HINT: Final = (
    "POST /v1/infers/{service}, POST /v1/models/{service}:predict, "
    "POST /v2/models/{service}[/versions/{version}]/infer, GET /v2/models/{service}"
)


def _render_error(
    request: web.Request, exc: web.HTTPException, message: str | None
) -> web.StreamResponse:
    """aiohttp's own errors (no route, wrong method) as ``{"error": ..., "reason": ...}``."""
    headers = allow_header(exc)
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return error(405, "method_not_allowed", message or "", headers)
    if isinstance(exc, web.HTTPNotFound):
        return error(404, "no_route", message or "")
    return error(exc.status, "bad_request", exc.text or exc.reason, headers)


_json_errors = json_errors(_render_error, _ROUTES_HINT)


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

    scrape = ScrapeToken(options.metrics_token_file)

    async def metrics(request: web.Request) -> web.Response:
        # It names every service and its owner: a scraper with the token, or the daemon.
        if not (scrape.carried(request.headers) or gateway.internal(request.headers)):
            return error(401, "unauthorized", METRICS_REFUSED, METRICS_CHALLENGE)
        text = gateway.metrics_text()
        if siblings is not None:
            if not siblings.ready():
                return starting()
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
            return error(
                401,
                "unauthorized",
                f"/stats needs the daemon's token in {INTERNAL_HEADER}; ask the daemon "
                "(`opsbot show NAME` with stats) instead",
            )
        if siblings is None:  # one worker: the same document, from its numbers alone
            return web.json_response(merge_stats([gateway.stats_document(recent=True)]))
        if not siblings.ready():
            return starting()
        others = await siblings.gather("GET", "/-/local/stats")
        docs = [gateway.stats_document(recent=True), *(json.loads(o) for o in others)]
        return web.json_response(merge_stats(docs))

    async def routes(request: web.Request) -> web.Response:
        if not gateway.internal(request.headers):
            return error(
                403,
                "forbidden",
                f"only the daemon reads the routes: send its token in {INTERNAL_HEADER}",
            )
        routed = set(await gateway.refresh())
        if siblings is not None:
            if not siblings.ready():
                return starting()
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


def sibling_app(gateway: Gateway, siblings: Siblings) -> web.Application:
    """What one worker answers the others on its private loopback port: its own numbers, and
    the routes it has after reading the store afresh."""

    @web.middleware
    async def only_siblings(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.headers.get(SIBLING_HEADER) != siblings.secret:
            return error(403, "forbidden", "this port is for the gateway's own workers")
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
    serving = await start_serving(app, options, host, port, sock)
    private: web.AppRunner | None = None
    try:
        if siblings is not None:
            private = web.AppRunner(sibling_app(app[GATEWAY], siblings), access_log=None)
            await private.setup()
            await web.TCPSite(private, "127.0.0.1", 0).start()
            siblings.publish(index, _bound_port(private.addresses, 0))
        log.info("gateway listening on http://%s:%d", host, serving.port)
        if on_ready is not None:
            on_ready(serving.port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("gateway stopping")
    finally:
        if private is not None:
            await private.cleanup()
        await serving.close()


class Serving:
    """A gateway application listening: through the fast front, or aiohttp's server alone."""

    def __init__(
        self,
        runner: web.AppRunner,
        host: str,
        port: int,
        fast: asyncio.Server | None = None,
        connections: Connections | None = None,
    ):
        self.runner = runner
        self.host = host
        self.port = port
        self._fast = fast
        self._connections = connections

    async def close(self) -> None:
        """Stop listening, let the calls in flight finish, then close every connection."""
        if self._fast is not None:
            self._fast.close()
        if self._connections is not None:
            await self._connections.finish(_SHUTDOWN_S)
        await self.runner.cleanup()


async def start_serving(
    app: web.Application,
    options: GatewayOptions,
    host: str,
    port: int,
    sock: socket.socket | None = None,
) -> Serving:
    """Listen on ``host``:``port`` (or on ``sock``, a listening socket other workers accept on
    too) with the front ``options`` names."""
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        # aiohttp closes a connection whose next request head has not arrived whole by then:
        # the head read timeout (a slow sender's trickle does not extend it).
        keepalive_timeout=options.read_timeout_s,
    )
    await runner.setup()
    if options.front == "aiohttp":
        site: web.BaseSite = (
            web.TCPSite(runner, host, port, backlog=1024)
            if sock is None
            else web.SockSite(runner, sock)
        )
        await site.start()
        return Serving(runner, host, _bound_port(runner.addresses, port))
    # Inference calls below aiohttp; every other request handed to aiohttp's protocol.
    gateway, fallback = app[GATEWAY], runner.server
    assert fallback is not None
    connections = Connections()

    def front() -> FastFront:
        return FastFront(gateway, fallback, connections)

    loop = asyncio.get_running_loop()
    if sock is None:
        fast = await loop.create_server(front, host, port, backlog=1024)
    else:
        fast = await loop.create_server(front, sock=sock)
    bound = _bound_port((s.getsockname() for s in fast.sockets), port)
    return Serving(runner, host, bound, fast, connections)


#: How long a stopping gateway waits for the calls in flight (aiohttp's own shutdown timeout).
_SHUTDOWN_S: Final = 60.0


def _bound_port(addresses: Iterable[Any], asked: int) -> int:
    for address in addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return asked
