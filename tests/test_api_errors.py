"""The control API's error boundary: every failure is a JSON Error document with the right
status, storage failures included (507 disk full, 503 read-only), never text/plain or a 500
that hides what happened."""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from opsbot.core.app import Core
from opsbot.core.errors import OpsbotError, StorageFull, StorageUnavailable, storage_error
from opsbot.daemon.api import json_errors, make_app

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


class RecordingDaemon:
    """What the control API asks of the daemon for a services listing, over TCP with a token."""

    def __init__(self, core: Core):
        self.core = core
        self.gateway_url = "http://gw.example:8780"
        self.store_failure: OpsbotError | None = None

    def user_for_token(self, token: str) -> str | None:
        return "alice" if token == "alices-token" else None


async def test_no_status_is_shown_that_the_store_could_not_record(home: Path) -> None:
    core = Core(home)
    daemon = RecordingDaemon(core)
    app = make_app(daemon)  # type: ignore[arg-type]
    headers = {"Authorization": "Bearer alices-token"}
    try:
        async with TestClient(TestServer(app)) as client:
            assert (await client.get("/v1/services", headers=headers)).status == 200
            # The controller's last pass could not be recorded (see Daemon._controller_pass).
            daemon.store_failure = storage_error(
                sqlite3.OperationalError("database or disk is full")
            )
            for path in ("/v1/services", "/v1/services/any"):
                resp = await client.get(path, headers=headers)
                assert resp.status == 507, path
                doc = await resp.json()
                assert (
                    "statuses cannot be shown" in doc["message"] and "free space" in doc["message"]
                )
            daemon.store_failure = None
            assert (await client.get("/v1/services", headers=headers)).status == 200
    finally:
        core.store.close()
