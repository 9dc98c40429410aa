"""aiohttp's own errors (no route, wrong method), put in words a caller can act on: the one
wording both servers of the data plane, the gateway and the model server, answer with."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: How a server words an aiohttp error as its own JSON answer: the request, the error, and the
#: routing message (None unless it is a wrong method or an unknown path).
Render = Callable[[web.Request, web.HTTPException, "str | None"], web.StreamResponse]


def routing_message(request: web.Request, exc: web.HTTPException, routes_hint: str) -> str | None:
    """What to say for a wrong method or an unknown path (naming what to use instead); None for
    any other error."""
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        return f"{request.method} is not allowed on {request.path}: use {allowed}"
    if isinstance(exc, web.HTTPNotFound):
        return f"no route {request.method} {request.path}: use {routes_hint}"
    return None


def allow_header(exc: web.HTTPException) -> dict[str, str] | None:
    """The ``Allow`` header of a 405, kept on the JSON answer that replaces it."""
    return {k: v for k, v in exc.headers.items() if k.lower() == "allow"} or None


def json_errors(render: Render, routes_hint: str) -> Callable[..., Awaitable[web.StreamResponse]]:
    """A middleware answering aiohttp's own errors (4xx and 5xx it raises: no route, wrong
    method, body too large) with ``render``'s JSON instead of text; redirects pass through."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return render(request, exc, routing_message(request, exc, routes_hint))

    return middleware
