"""The control API: HTTP over the daemon's unix socket (and optionally TCP with user tokens).

The caller is whoever the socket's peer credentials say (``SO_PEERCRED``), never what the request
claims. Handlers parse, call the core in a worker thread, and render; every rule is the core's.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import ClientError, ClientSession, ClientTimeout, web
from pydantic import BaseModel

from opsbot.core import update
from opsbot.core.autostop import format_auto_stop
from opsbot.core.errors import (
    Conflict,
    FieldError,
    InvalidInput,
    OpsbotError,
    PermissionDenied,
    storage_error,
)
from opsbot.core.events import Event
from opsbot.core.identity import User, local_user_name
from opsbot.core.services import Service
from opsbot.core.status import Status
from opsbot.core.timefmt import parse_duration_s
from opsbot.daemon.bodies import (
    LEVELS,
    MAX_ID,
    MAX_TAIL,
    SOURCES,
    AutoStopBody,
    ExtendBody,
    ModelCreateBody,
    PublishBody,
    RollbackBody,
    UpdateBody,
    parse,
    query_choice,
    query_int,
)
from opsbot.daemon.openapi import openapi_document
from opsbot.serving.gateway import INTERNAL_HEADER

if TYPE_CHECKING:
    from opsbot.daemon.server import Daemon

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
log = logging.getLogger(__name__)
#: Statuses in which a service takes no predictions, and what to do about each.
NOT_SERVING = {
    Status.STOPPED: "start it with `opsbot start {name}`",
    Status.STOPPING: "it is stopping; start it again with `opsbot start {name}` once Stopped",
    Status.FAILED: "see why with `opsbot show {name}`, then `opsbot start {name}`",
    Status.DELETING: "it is being deleted; deploy it again under a new name",
}
DAEMON: web.AppKey[Daemon] = web.AppKey("daemon")
#: The queues of the open event streams. At shutdown each gets ``None`` and its stream ends: an
#: open stream would otherwise hold the daemon's shutdown until aiohttp's 60 s grace runs out.
STREAMS: web.AppKey[set[asyncio.Queue[Event | None]]] = web.AppKey("streams")
#: An event stream with nothing to send writes a comment this often, so proxies keep it open.
STREAM_KEEPALIVE_S = 15.0
#: How often a quiet event stream checks that its client is still there: one that went away
#: leaves ``event_streams`` on /healthz within this time.
STREAM_CHECK_S = 1.0
USER: web.RequestKey[User] = web.RequestKey("opsbot.user", User)


def peer_uid(request: web.Request) -> int | None:
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


class Unauthorized(OpsbotError):
    """No credentials, or credentials the daemon does not know (TCP listener only)."""

    title = "Not authenticated"
    status = 401


#: Titles of the errors aiohttp raises itself (no route, wrong method, body too large).
HTTP_ERROR_KINDS = {404: "NotFound", 405: "MethodNotAllowed", 413: "BodyTooLarge"}


def error_response(exc: OpsbotError) -> web.Response:
    response = web.json_response(exc.as_dict(), status=exc.status)
    if exc.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="opsbot"'
    return response


@web.middleware
async def json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every error is a JSON Error document: the core's, aiohttp's own (no such route, wrong
    method) and the unexpected (500, logged with its traceback)."""
    try:
        return await handler(request)
    except OpsbotError as exc:
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        kind = HTTP_ERROR_KINDS.get(exc.status, "HTTPError")
        response = web.json_response(
            {
                "error": kind,
                "title": exc.reason,
                "message": _http_message(request, exc),
                "errors": [],
            },
            status=exc.status,
        )
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except Exception as exc:
        known = storage_error(exc)
        if known is None:
            log.exception("control API: %s %s failed", request.method, request.path)
            known = OpsbotError(
                f"the daemon failed ({type(exc).__name__}: {exc}); nothing more was done; see "
                "its log (logs/daemon.log) and report it",
                title="Internal error",
            )
            known.status = 500
        return error_response(known)


def _http_message(request: web.Request, exc: web.HTTPException) -> str:
    if exc.status == 404:
        return f"no such endpoint: {request.method} {request.path}; see /openapi.json"
    if exc.status == 405:
        return f"{request.path} does not take {request.method}; it takes {exc.headers.get('Allow')}"
    return exc.text or exc.reason


@web.middleware
async def identity(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    daemon = request.app[DAEMON]
    if request.path in ("/openapi.json", "/healthz"):
        return await handler(request)
    uid = peer_uid(request)
    if uid is not None:
        request[USER] = daemon.core.user(local_user_name(uid))
    else:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        name = (
            await asyncio.to_thread(daemon.user_for_token, token)
            if scheme.lower() == "bearer" and token
            else None
        )
        if name is None:
            raise Unauthorized(
                "this listener needs `Authorization: Bearer TOKEN` with a token it knows; "
                "create one with `opsbot token create` on the machine"
            )
        request[USER] = daemon.core.user(name)
    return await handler(request)


@functools.cache
def query_names(path: str, method: str) -> frozenset[str] | None:
    """The query parameters the document declares for an operation (None: not documented)."""
    operation = openapi_document()["paths"].get(path, {}).get(method.lower())
    if operation is None:
        return None
    return frozenset(p["name"] for p in operation.get("parameters", []) if p["in"] == "query")


@web.middleware
async def known_query(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """A query parameter the endpoint does not take is refused, not ignored: a misspelt
    ``?onwer=`` must not act on the caller's own service instead."""
    route = request.match_info.route
    path = route.resource.canonical if route.resource is not None else None
    known = query_names(path, request.method) if path else None
    if known is not None:
        unknown = sorted(set(request.query) - known)
        if unknown:
            takes = ", ".join(sorted(known)) or "none"
            raise InvalidInput(
                [
                    FieldError(name, f"unknown query parameter; this endpoint takes: {takes}")
                    for name in unknown
                ],
                title="Invalid request",
            )
    return await handler(request)


def user(request: web.Request) -> User:
    return request[USER]


async def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a core call off the event loop (SQLite and processes block)."""
    return await asyncio.to_thread(fn, *args, **kwargs)


async def body(request: web.Request) -> Any:
    try:
        return json.loads(await request.read() or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(
            [FieldError("body", f"not JSON ({exc}); send a JSON object")], title="Invalid request"
        ) from None


async def body_as(request: web.Request, model: type[M]) -> M:
    """The JSON body as ``model`` (an empty body is an empty object)."""
    data = await body(request)
    return parse(model, {} if data is None else data)


async def spec_body(request: web.Request) -> dict[str, Any]:
    """A deploy spec: a JSON object, checked field by field by the core."""
    data = await body(request)
    if not isinstance(data, dict):
        raise InvalidInput(
            [FieldError("body", "send the deploy spec as a JSON object")], title="Invalid spec"
        )
    return data


def flag(request: web.Request, name: str) -> bool:
    """A boolean query parameter: true/1/yes or false/0/no (absent: false)."""
    value = request.query.get(name, "false").lower()
    if value in ("0", "false", "no"):
        return False
    if value in ("1", "true", "yes"):
        return True
    raise InvalidInput([FieldError(name, f"{value!r}: use true or false")], title="Invalid request")


def statuses_recorded(request: web.Request) -> None:
    """Refuse to report statuses while the store cannot record what the controller sees (an
    instance died, and the disk is full): a status shown then could be one it never wrote."""
    failure = request.app[DAEMON].store_failure
    if failure is not None:
        raise type(failure)(
            f"statuses cannot be shown: the store cannot record them now ({failure.message})"
        )


def service_view(request: web.Request, service: Service) -> dict[str, Any]:
    daemon = request.app[DAEMON]
    out = service.as_dict(gateway_url=daemon.gateway_url)
    out["remaining_s"] = (
        max(0.0, service.due_time - daemon.core.clock.now()) if service.due_time else None
    )
    return out


# -- handlers --------------------------------------------------------------------------------


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


async def healthz(request: web.Request) -> web.Response:
    """Liveness, how many reconciliations the controller has finished (a count to wait on: it
    grows by one per service per pass) and how many event streams are open (a follower counts
    from the moment it hears every new event, and no more within STREAM_CHECK_S of leaving)."""
    return web.json_response(
        {
            "ok": True,
            "reconciled": request.app[DAEMON].controller.reconciled,
            "event_streams": len(request.app[STREAMS]),
        }
    )


async def whoami(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    me = user(request)
    used, quota = await call(daemon.core.quota_used, me)
    return web.json_response(
        {
            "user": me.name,
            "admin": me.is_admin,
            "quota_used": used,
            "quota": quota,
            "runtime": daemon.runtime.name,
            "gateway_url": daemon.gateway_url,
        }
    )


async def flavors(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    pool = request.query.get("pool", "public")
    rows = await call(daemon.core.flavor_statuses, pool)
    return web.json_response([f.as_dict() for f in rows])


async def models(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    source = query_choice(request.query.get("source"), "source", SOURCES)
    rows = await call(daemon.core.models, user(request), source)
    return web.json_response([mv.as_dict(src) for src, mv in rows])


async def create_model(request: web.Request) -> web.Response:
    """Register a model version from a directory on this machine (``opsbot model create``):
    Building while it is loaded once and predicts its sample, then Normal or Failed."""
    daemon = request.app[DAEMON]
    data = await body_as(request, ModelCreateBody)
    me = user(request)
    path = Path(data.path)
    if not path.is_absolute():
        raise InvalidInput(
            [FieldError("path", f"{path} is relative; give the directory's absolute path")],
            title="Invalid model",
        )
    mv = await call(
        daemon.core.create_model,
        me,
        data.name,
        data.version,
        path,
        data.format,
        origin=data.origin,
        entry=data.entry or None,
        description=data.description,
    )
    return web.json_response(mv.as_dict("mine"), status=201)


async def publish_model(request: web.Request) -> web.Response:
    """Body (optional): {"public": false} makes the model private again."""
    daemon = request.app[DAEMON]
    name = request.match_info["name"]
    public = (await body_as(request, PublishBody)).public
    me = user(request)
    await call(daemon.core.publish_model, me, name, public)
    return web.json_response({"owner": me.name, "name": name, "public": public})


async def subscribe_model(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    ref = f"{request.match_info['owner']}/{request.match_info['name']}"
    await call(daemon.core.subscribe, user(request), ref)
    return web.json_response({"model": ref, "subscribed": True})


async def pools(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    rows = await call(daemon.core.pool_statuses, user(request))
    return web.json_response([p.as_dict() for p in rows])


async def nodes(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    return web.json_response(await call(daemon.core.node_report, user(request)))


async def gateway_numbers(request: web.Request) -> web.Response:
    """The gateway's numbers (calls, failures, latency per version) of the services the caller
    may read: the gateway's own ``/stats`` is the daemon's alone, since it names every owner."""
    daemon = request.app[DAEMON]
    me = user(request)
    document = await call(daemon.gateway_stats)
    if document is None:
        raise web.HTTPServiceUnavailable(
            text=json.dumps({"error": "the gateway does not answer; is the daemon starting?"}),
            content_type="application/json",
        )
    services = [s for s in document.get("services", []) if me.is_admin or s.get("owner") == me.name]
    return web.json_response({"services": services})


async def validate(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    data = await spec_body(request)
    result = await call(daemon.core.validate, user(request), data, use_registry=True)
    return web.json_response(result.as_dict())


async def list_services(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    everyone = flag(request, "all")
    statuses_recorded(request)
    rows = await call(daemon.core.services, user(request), everyone=everyone)
    return web.json_response([service_view(request, s) for s in rows])


async def create_service(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    data = await spec_body(request)
    created = await call(daemon.core.create_service, user(request), data)
    daemon.changed()
    out = service_view(request, created.service)
    out["api_key"] = created.api_key
    out["warnings"] = [w.as_dict() for w in created.warnings]
    return web.json_response(out, status=201)


def _target(request: web.Request) -> tuple[str, str | None]:
    return request.match_info["name"], request.query.get("owner")


async def show_service(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    name, owner = _target(request)
    statuses_recorded(request)
    service = await call(daemon.core.service, user(request), name, owner)
    out = service_view(request, service)
    # ?stats=1: CPU and memory from the runtime (about a second: two samples) and the
    # per-version numbers, which also read the gateway's /stats. Pollers leave it off.
    with_stats = flag(request, "stats")
    out["instances"] = await call(daemon.instances, service, with_stats)
    if with_stats:
        out["versions"] = await call(daemon.version_numbers, service, out["instances"])
    out["auto_stop_text"] = format_auto_stop(service.spec.auto_stop)
    return web.json_response(out)


async def _act(
    request: web.Request, operation: Callable[..., Service], status: int = 200
) -> web.Response:
    """Run a life-cycle operation of the core on the named service and wake the daemon."""
    name, owner = _target(request)
    service = await call(operation, user(request), name, owner)
    request.app[DAEMON].changed()
    return web.json_response(service_view(request, service), status=status)


async def stop_service(request: web.Request) -> web.Response:
    return await _act(request, request.app[DAEMON].core.stop_service)


async def start_service(request: web.Request) -> web.Response:
    return await _act(request, request.app[DAEMON].core.start_service)


async def delete_service(request: web.Request) -> web.Response:
    return await _act(request, request.app[DAEMON].core.delete_service, status=202)


async def extend_service(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    name, owner = _target(request)
    hours = (await body_as(request, ExtendBody)).hours
    service = await call(daemon.core.extend_auto_stop, user(request), name, hours, owner)
    daemon.changed()
    return web.json_response(service_view(request, service))


async def extend_plan(request: web.Request) -> web.Response:
    """What Extend would do (time left, new deadline), so a front can show it first."""
    daemon = request.app[DAEMON]
    name, owner = _target(request)
    data = await body(request)
    hours = data.get("hours") if isinstance(data, dict) else None
    plan = await call(daemon.core.extend_plan, user(request), name, hours, owner)
    return web.json_response(plan.as_dict())


async def auto_stop(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    name, owner = _target(request)
    value = (await body_as(request, AutoStopBody)).auto_stop
    service = await call(daemon.core.set_auto_stop, user(request), name, value, owner)
    daemon.changed()
    return web.json_response(service_view(request, service))


async def rotate_key(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    name, owner = _target(request)
    key = await call(daemon.core.rotate_key, user(request), name, owner)
    # Answer once the gateway takes the new key (and refuses the old one), so a script can
    # use the key it is handed at once. The key is shown once, so a gateway slow to follow is
    # a warning, not an error.
    routed = await call(daemon.wait_for_routes)
    out: dict[str, Any] = {"name": name, "api_key": key, "routed": routed}
    if not routed:
        out["warning"] = (
            f"the gateway at {daemon.gateway_url} did not answer; the new key works once it "
            "reads the store again (see the daemon's log)"
        )
    return web.json_response(out)


async def update_service(request: web.Request) -> web.Response:
    """Body: {"spec": {...whole new spec...}} or {"changes": {...}} (see update.Changes)."""
    daemon = request.app[DAEMON]
    name, owner = _target(request)
    data = await body_as(request, UpdateBody)
    if (data.spec is None) == (data.changes is None):
        raise InvalidInput(
            [FieldError("spec", 'send {"spec": {...}} (a whole spec) or {"changes": {...}}')],
            title="Invalid request",
        )
    wanted = data.spec if data.spec is not None else update.parse_changes(data.changes)
    result = await call(daemon.core.update_service, user(request), name, wanted, owner)
    return _updated(request, result)


async def update_plan(request: web.Request) -> web.Response:
    """Body as for update; answers what it would change and restart, changing nothing."""
    daemon = request.app[DAEMON]
    name, owner = _target(request)
    data = await body(request)
    if not isinstance(data, dict) or ("spec" in data) == ("changes" in data):
        raise InvalidInput(
            [FieldError("spec", 'send {"spec": {...}} (a whole spec) or {"changes": {...}}')]
        )
    wanted = data["spec"] if "spec" in data else update.parse_changes(data["changes"])
    plan = await call(daemon.core.update_plan, user(request), name, wanted, owner)
    return web.json_response(plan.as_dict())


async def service_history(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    name, owner = _target(request)
    rows = await call(daemon.core.history, user(request), name, owner)
    return web.json_response(
        [
            {
                "n": r.n,
                "actor": r.actor,
                "created_at": r.created_at,
                "spec": r.spec,
                "changes": list(r.changes),
            }
            for r in rows
        ]
    )


async def rollback_service(request: web.Request) -> web.Response:
    """Body: {"to": N, "dry_run": false}; answers the changes (and, unless a dry run, the
    service as modified)."""
    daemon = request.app[DAEMON]
    name, owner = _target(request)
    data = await body_as(request, RollbackBody)
    to = data.to
    if data.dry_run:
        changes = await call(daemon.core.rollback_preview, user(request), name, to, owner)
        return web.json_response({"changes": changes, "snapshot": None})
    result = await call(daemon.core.rollback, user(request), name, to, owner)
    return _updated(request, result)


def _updated(request: web.Request, result: update.Updated) -> web.Response:
    """A modification's answer: the service, the change lines and the snapshot made."""
    request.app[DAEMON].changed()
    out = service_view(request, result.service)
    out["changes"] = list(result.changes)
    out["snapshot"] = result.snapshot
    return web.json_response(out)


def _since(text: str | None) -> float | None:
    if text is None:
        return None
    return time.time() - parse_duration_s(text, field="since")


async def list_events(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    q = request.query
    filters: dict[str, Any] = {
        "service": request.match_info.get("name") or q.get("service") or None,
        "level": query_choice(q.get("level"), "level", LEVELS),
        "since": _since(q.get("since")),
        "after_id": query_int(q.get("after_id"), "after_id", 0, 0, MAX_ID),
    }
    if q.get("owner"):
        filters["owner"] = q["owner"]
    rows = await call(daemon.core.events, user(request), **filters)
    return web.json_response([e.as_dict() for e in rows])


class _StreamNotifier:
    """Hands events from the dispatcher's thread to one streaming client's queue."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Event | None]):
        self.loop = loop
        self.queue = queue

    def notify(self, event: Event) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, event)


async def stream_events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: one ``data: {event}`` per event the caller may see, as it happens.

    Events since ``after_id`` are sent first, so a client that reconnects misses nothing.
    """
    daemon = request.app[DAEMON]
    me = user(request)
    q = request.query
    service = q.get("service") or None
    owner = q.get("owner") or None
    level = query_choice(q.get("level"), "level", LEVELS)
    after = query_int(q.get("after_id"), "after_id", 0, 0, MAX_ID)

    def visible(e: Event) -> bool:
        return (
            (me.is_admin or e.owner == me.name)
            and (owner is None or e.owner == owner)
            and (service is None or e.service == service)
            and (level is None or e.level == level)
        )

    queue: asyncio.Queue[Event | None] = asyncio.Queue()
    listener = _StreamNotifier(asyncio.get_running_loop(), queue)
    daemon.dispatcher.subscribe(listener)
    streams = request.app[STREAMS]
    streams.add(queue)
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await resp.prepare(request)
    try:
        backlog = (
            await call(
                daemon.core.events,
                me,
                service=service,
                level=level,
                after_id=after,
                **({"owner": owner} if owner else {}),
            )
            if after
            else []
        )
        sent = after
        for e in backlog:
            await resp.write(f"id: {e.id}\ndata: {json.dumps(e.as_dict())}\n\n".encode())
            sent = e.id
        quiet_since = time.monotonic()
        while True:
            try:
                got = await asyncio.wait_for(queue.get(), timeout=STREAM_CHECK_S)
            except TimeoutError:
                if request.transport is None or request.transport.is_closing():
                    break  # the client went away: stop counting it among the open streams
                if time.monotonic() - quiet_since >= STREAM_KEEPALIVE_S:
                    await resp.write(b": keep-alive\n\n")
                    quiet_since = time.monotonic()
                continue
            if got is None:  # the daemon is stopping: end the stream, the client reconnects
                break
            if got.id > sent and visible(got):
                await resp.write(f"id: {got.id}\ndata: {json.dumps(got.as_dict())}\n\n".encode())
                sent = got.id
                quiet_since = time.monotonic()
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        streams.discard(queue)
        daemon.dispatcher.unsubscribe(listener)
    return resp


async def end_streams(app: web.Application) -> None:
    """``on_shutdown``: end every open event stream, so none holds the daemon's shutdown."""
    streams: set[asyncio.Queue[Event | None]] = app[STREAMS]
    for queue in list(streams):
        queue.put_nowait(None)


async def service_logs(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    name, owner = _target(request)
    tail = query_int(request.query.get("tail"), "tail", 100, 1, MAX_TAIL)
    service = await call(daemon.core.service, user(request), name, owner)
    lines = await call(daemon.instance_logs, service, tail)
    return web.json_response(lines)


async def predict(request: web.Request) -> web.Response:
    """Call the service through the gateway for its owner, who need not hold the key."""
    daemon = request.app[DAEMON]
    name, owner = _target(request)
    if not isinstance(await body(request), dict):
        raise InvalidInput(
            [FieldError("body", 'send a JSON object, e.g. {"instances": [[5.1, 3.5, 1.4, 0.2]]}')],
            title="Invalid request",
        )
    service = await call(daemon.core.service, user(request), name, owner)
    if not user(request).can_act_on(service.owner):
        raise PermissionDenied(
            f"{service.name} belongs to {service.owner}; call it through the gateway with its key"
        )
    if service.status in NOT_SERVING:
        hint = NOT_SERVING[service.status].format(name=service.name)
        raise Conflict(f"{service.name} is {service.status.label}; {hint}", title="Not serving")
    payload = await request.read()
    url = f"{daemon.gateway_url}/v1/infers/{service.uid}"
    headers = {INTERNAL_HEADER: daemon.internal_token, "Content-Type": "application/json"}
    started = time.perf_counter()
    try:
        async with (
            ClientSession(timeout=ClientTimeout(total=60)) as session,
            session.post(
                url,
                data=payload,
                headers=headers,
            ) as resp,
        ):
            text = await resp.text()
            status = resp.status
            version = resp.headers.get("X-Model-Version", "")
    except ClientError as exc:
        raise OpsbotError(
            f"the gateway at {daemon.gateway_url} did not answer ({exc}); is `opsbot up` running?"
        ) from None
    try:
        answer: Any = json.loads(text)
    except json.JSONDecodeError:
        answer = text
    return web.json_response(
        {
            "status": status,
            "version": version,
            "latency_ms": round((time.perf_counter() - started) * 1000, 2),
            "response": answer,
        }
    )


async def create_token(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    me = user(request)
    token = await call(daemon.create_token, me.name)
    return web.json_response({"user": me.name, "token": token}, status=201)


async def metrics_token(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    token = await call(daemon.core.metrics_token, user(request))
    return web.json_response({"token": token})


async def rotate_metrics_token(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    token = await call(daemon.core.metrics_token, user(request), rotate=True)
    return web.json_response({"token": token})


def make_app(daemon: Daemon) -> web.Application:
    app = web.Application(
        middlewares=[json_errors, identity, known_query], client_max_size=16 * 1024**2
    )
    app[DAEMON] = daemon
    app[STREAMS] = set()
    app.on_shutdown.append(end_streams)
    r = app.router
    r.add_get("/openapi.json", openapi)
    r.add_get("/healthz", healthz)
    r.add_get("/v1/whoami", whoami)
    r.add_get("/v1/flavors", flavors)
    r.add_get("/v1/models", models)
    r.add_post("/v1/models", create_model)
    r.add_post("/v1/models/{name}/publish", publish_model)
    r.add_post("/v1/models/{owner}/{name}/subscribe", subscribe_model)
    r.add_get("/v1/pools", pools)
    r.add_get("/v1/nodes", nodes)
    r.add_get("/v1/stats", gateway_numbers)
    r.add_post("/v1/validate", validate)
    r.add_get("/v1/services", list_services)
    r.add_post("/v1/services", create_service)
    r.add_get("/v1/services/{name}", show_service)
    r.add_delete("/v1/services/{name}", delete_service)
    r.add_post("/v1/services/{name}/stop", stop_service)
    r.add_post("/v1/services/{name}/start", start_service)
    r.add_post("/v1/services/{name}/key", rotate_key)
    r.add_post("/v1/services/{name}/extend", extend_service)
    r.add_post("/v1/services/{name}/extend/plan", extend_plan)
    r.add_post("/v1/services/{name}/autostop", auto_stop)
    r.add_post("/v1/services/{name}/update", update_service)
    r.add_post("/v1/services/{name}/update/plan", update_plan)
    r.add_get("/v1/services/{name}/history", service_history)
    r.add_post("/v1/services/{name}/rollback", rollback_service)
    r.add_get("/v1/services/{name}/events", list_events)
    r.add_get("/v1/services/{name}/logs", service_logs)
    r.add_post("/v1/services/{name}/predict", predict)
    r.add_get("/v1/events", list_events)
    r.add_get("/v1/events/stream", stream_events)
    r.add_post("/v1/tokens", create_token)
    r.add_get("/v1/metrics-token", metrics_token)
    r.add_post("/v1/metrics-token/rotate", rotate_metrics_token)
    return app
