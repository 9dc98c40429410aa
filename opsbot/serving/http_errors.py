"""aiohttp's own errors (no route, wrong method), put in words a caller can act on: the one
wording both servers of the data plane, the gateway and the model server, answer with."""

from __future__ import annotations

from aiohttp import web


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
