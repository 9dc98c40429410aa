"""The gateway's own answers: JSON errors like the model server's."""

from __future__ import annotations

import json
from collections.abc import Mapping

from aiohttp import web


def error(
    status: int, reason: str, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    """A gateway error: ``{"error": message, "reason": reason}``, like the model server's."""
    return web.Response(
        status=status,
        body=json.dumps({"error": message, "reason": reason}).encode(),
        content_type="application/json",
        headers=headers,
    )


def too_large(cap: int) -> str:
    return (
        f"the request body is over the gateway's cap of {cap / 1_000_000:g} MB: send fewer "
        "instances per call"
    )


def closing(response: web.Response) -> web.Response:
    """The answer to a call whose body was not read whole: the connection closes after it,
    rather than the gateway reading (and holding) a body it has refused."""
    response.force_close()
    return response


def starting() -> web.Response:
    return error(
        503,
        "starting",
        "the gateway's workers are still starting: retry in a moment",
        {"Retry-After": "1"},
    )
