"""The control API's error boundary: every failure is a JSON Error document with the right
status, storage failures included (507 disk full, 503 read-only), never text/plain or a 500
that hides what happened."""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from opsbot.core.errors import StorageFull, StorageUnavailable, storage_error
from opsbot.daemon.api import json_errors

Raiser = Callable[[web.Request], Awaitable[web.Response]]


def raising(exc: BaseException) -> Raiser:
    async def handler(request: web.Request) -> web.Response:
        raise exc

    return handler


FAILURES = [
    (sqlite3.OperationalError("database or disk is full"), 507, "Disk full"),
    (OSError(errno.ENOSPC, "No space left on device", "/home/x/logs"), 507, "Disk full"),
    (sqlite3.OperationalError("attempt to write a readonly database"), 503, "not writable"),
    (OSError(errno.EROFS, "Read-only file system", "/home/x"), 503, "not writable"),
    (RuntimeError("a bug"), 500, "Internal error"),
]


@pytest.mark.parametrize(("exc", "status", "title"), FAILURES, ids=lambda v: str(v)[:30])
async def test_failures_are_json_with_their_status(
    exc: BaseException, status: int, title: str
) -> None:
    app = web.Application(middlewares=[json_errors])
    app.router.add_post("/write", raising(exc))
    async with TestClient(TestServer(app)) as client:
        resp = await client.post("/write")
        assert resp.status == status
        assert resp.content_type == "application/json"
        doc = await resp.json()
        assert title in doc["title"] and doc["message"]
        if status != 500:
            assert "nothing was changed" in doc["message"]


async def test_unknown_routes_and_methods_are_json() -> None:
    app = web.Application(middlewares=[json_errors])
    app.router.add_get("/here", raising(RuntimeError("unused")))
    async with TestClient(TestServer(app)) as client:
        missing = await client.get("/elsewhere")
        assert missing.status == 404 and (await missing.json())["error"] == "NotFound"
        wrong = await client.delete("/here")
        assert wrong.status == 405 and wrong.headers["Allow"]
        assert (await wrong.json())["error"] == "MethodNotAllowed"


def test_other_errors_are_not_storage_errors() -> None:
    assert storage_error(OSError(errno.ECONNREFUSED, "refused")) is None
    assert storage_error(sqlite3.OperationalError("no such table: x")) is None
    assert isinstance(storage_error(OSError(errno.EDQUOT, "quota")), StorageFull)
    assert isinstance(storage_error(PermissionError(errno.EACCES, "no")), StorageUnavailable)
