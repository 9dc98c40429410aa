"""The inference gateway over real loopback sockets: a real store, fake model server instances."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import math
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import ClientResponse, ClientSession, web
from prometheus_client.parser import text_string_to_metric_families

from opsbot.core.address import unix_address
from opsbot.core.keys import METRICS_TOKEN_FILE, hash_key, key_prefix
from opsbot.core.store import DB_NAME, Store
from opsbot.serving import MODEL_NAME_HEADER
from opsbot.serving.gateway import INTERNAL_HEADER, GatewayOptions, TokenBucket, make_app
from opsbot.serving.gateway.http import Serving, start_serving

KEY = "ob_the-right-key"
HOST = "127.0.0.1"
#: The scrape token of the in-process gateways' /metrics (each home's metrics-token file).
SCRAPE_TOKEN = "obm_the-scrape-token"
SCRAPE = {"Authorization": f"Bearer {SCRAPE_TOKEN}"}


class Client:
    """A client session on one in-process gateway, and what serves it (``server``)."""

    def __init__(self, server: Serving) -> None:
        self.server = server
        self.session = ClientSession(base_url=f"http://{server.host}:{server.port}")

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.session.get(path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.session.post(path, **kwargs)


class FakeInstance:
    """A model server stand-in: answers /predict and v2 infer with its tag, records each call."""

    def __init__(self, tag: str, *, status: int = 200, delay: float = 0.0) -> None:
        self.tag = tag
        self.status = status
        self.delay = delay
        self.hold: asyncio.Event | None = None
        self.calls: list[tuple[str, bytes, dict[str, str]]] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self, unix: str | None = None) -> None:
        """Listen on a loopback port, or on the unix socket ``unix`` (as a process-runtime
        instance does)."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/predict", self._answer)
        app.router.add_post("/v2/models/{name}/infer", self._answer)
        self._runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0
        )
        await self._runner.setup()
        if unix is not None:
            await web.UnixSite(self._runner, unix).start()
            return
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = _port(self._runner)

    async def close(self) -> None:
        if self.hold is not None:
            self.hold.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _answer(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.calls.append((request.path, body, dict(request.headers)))
        if self.hold is not None:
            await self.hold.wait()
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.status != 200:
            return web.json_response({"error": f"{self.tag} refuses"}, status=self.status)
        return web.json_response({"predictions": [self.tag]})


def _port(runner: web.AppRunner) -> int:
    return int(runner.addresses[0][1])


class Home:
    """A temporary OPSBOT_HOME whose store the tests fill by hand, as the controller would."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.store = Store(path / DB_NAME)
        self._services = 0

    def add_service(
        self,
        versions: list[tuple[str, int, list[int | str]]],
        *,
        name: str | None = None,
        key: str = KEY,
        traffic_limit: int = 100_000,
        status: str = "running",
        state: str = "ready",
        model: str = "iris",
    ) -> str:
        """A service with (version, traffic ratio, instance ports) entries; returns its uid.
        An instance given as a str is on that unix socket (a process-runtime instance).

        A version may be written "model:version" to take another model than ``model``.
        """
        self._services += 1
        name = name or f"svc{self._services}"
        uid = f"uid{self._services:04d}"
        now = time.time()
        with self.store.write() as db:
            conn = db.conn
            sid = conn.execute(
                "INSERT INTO services (uid, owner, name, status, spec, resource_pool, "
                "traffic_limit, created_at, updated_at) "
                "VALUES (?, 'alice', ?, ?, '{}', 'public', ?, ?, ?)",
                (uid, name, status, traffic_limit, now, now),
            ).lastrowid
            for idx, (entry, ratio, ports) in enumerate(versions):
                # "model:version" names another model than the service's default one.
                name_of_model, _, version = entry.rpartition(":")
                model_id = _model_id(conn, name_of_model or model, now)
                row = conn.execute(
                    "SELECT id FROM model_versions WHERE model_id = ? AND version = ?",
                    (model_id, version),
                ).fetchone()
                mv = (
                    row[0]
                    if row
                    else conn.execute(
                        "INSERT INTO model_versions (model_id, version, format, status, path, "
                        "created_at, updated_at) VALUES (?, ?, 'sklearn', 'normal', '', ?, ?)",
                        (model_id, version, now, now),
                    ).lastrowid
                )
                conn.execute(
                    "INSERT INTO service_versions (service_id, idx, model_version_id, "
                    "traffic_ratio, flavor, instances) VALUES (?, ?, ?, ?, 'cpu', ?)",
                    (sid, idx, mv, ratio, len(ports)),
                )
                for n, port in enumerate(ports):
                    host, number = (
                        unix_address(port) if isinstance(port, str) else ("127.0.0.1", port)
                    )
                    conn.execute(
                        "INSERT INTO instances (service_id, idx, n, runtime, host, port, state, "
                        "updated_at) VALUES (?, ?, ?, 'process', ?, ?, ?, ?)",
                        (sid, idx, n, host, number, state, now),
                    )
            conn.execute(
                "INSERT INTO api_keys (service_id, key_hash, prefix, created_at) "
                "VALUES (?, ?, ?, ?)",
                (sid, hash_key(key), key_prefix(key), now),
            )
        return uid

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        """Commit one statement, as another process (the controller) would."""
        with self.store.write() as db:
            db.conn.execute(sql, params)


def _model_id(conn: sqlite3.Connection, name: str, now: float) -> int:
    row = conn.execute(
        "SELECT id FROM models WHERE owner = 'alice' AND name = ?", (name,)
    ).fetchone()
    if row:
        return int(row[0])
    cursor = conn.execute(
        "INSERT INTO models (owner, name, created_at) VALUES ('alice', ?, ?)", (name, now)
    )
    return int(cursor.lastrowid or 0)


@pytest.fixture
def store_home(tmp_path: Path) -> Iterator[Home]:
    made = Home(tmp_path)
    yield made
    made.store.close()


@pytest_asyncio.fixture
async def instance() -> AsyncIterator[Callable[..., Awaitable[FakeInstance]]]:
    made: list[FakeInstance] = []

    async def start(tag: str, unix: str | None = None, **kwargs: Any) -> FakeInstance:
        fake = FakeInstance(tag, **kwargs)
        await fake.start(unix)
        made.append(fake)
        return fake

    yield start
    for fake in made:
        await fake.close()


@pytest_asyncio.fixture(params=[("raw", "fast"), ("aiohttp", "aiohttp")], ids=["raw", "aiohttp"])
async def gateway(
    store_home: Home, request: pytest.FixtureRequest
) -> AsyncIterator[Callable[..., Awaitable[Client]]]:
    """Starts the gateway in process, served as ``python -m opsbot.serving.gateway`` serves it;
    every test runs twice: the raw upstream client behind the fast front, and aiohttp's client
    behind aiohttp's server alone."""
    started: list[Client] = []
    client_kind, front = request.param

    scrape_file = store_home.path / METRICS_TOKEN_FILE
    scrape_file.write_text(SCRAPE_TOKEN + "\n")

    async def start(**options: Any) -> Client:
        options.setdefault("client", client_kind)
        options.setdefault("front", front)
        options.setdefault("metrics_token_file", str(scrape_file))
        opts = GatewayOptions(**options)
        serving = await start_serving(make_app(store_home.path / DB_NAME, opts), opts, HOST, 0)
        client = Client(serving)
        started.append(client)
        return client

    yield start
    for client in started:
        await client.session.close()
        await client.server.close()


@pytest.fixture
def dead_port() -> Iterator[int]:
    """A port bound but not listening: connecting to it is refused, and nobody else gets it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    yield int(sock.getsockname()[1])
    sock.close()


AUTH = {"X-Auth-Token": KEY}
BODY = {"instances": [[5.1, 3.5, 1.4, 0.2]]}


async def _call(client: Client, uid: str, headers: dict[str, str] | None = None) -> ClientResponse:
    return await client.post(
        f"/v1/infers/{uid}", json=BODY, headers=AUTH if headers is None else headers
    )


# -- keys, unknown services, unavailable services ------------------------------------------------


@pytest.mark.asyncio
async def test_key_accepted_as_x_auth_token_or_bearer(
    store_home: Home, instance: Any, gateway: Any
) -> None:
    up = await instance("v1")
    uid = store_home.add_service([("1.0.0", 100, [up.port])])
    client = await gateway()
    for headers in ({"X-Auth-Token": KEY}, {"Authorization": f"Bearer {KEY}"}):
        resp = await _call(client, uid, headers)
        assert resp.status == 200
        assert await resp.json() == {"predictions": ["v1"]}
        assert resp.headers["X-Model-Version"] == "1.0.0"
    # The instance gets the body, never the key.
    assert len(up.calls) == 2
    for path, body, headers in up.calls:
        assert path == "/predict"
        assert json.loads(body) == BODY
        assert "X-Auth-Token" not in headers and "Authorization" not in headers


@pytest.mark.asyncio
async def test_a_forwarded_header_reaches_the_instance_as_the_caller_sent_it(
    store_home: Home, instance: Any, gateway: Any
) -> None:
    """Not ASCII either: a request id in UTF-8 arrives as it left, through either client."""
    up = await instance("v1")
    uid = store_home.add_service([("1.0.0", 100, [up.port])])
    client = await gateway()
    resp = await _call(client, uid, {"X-Auth-Token": KEY, "X-Request-Id": "req-é-1"})
    assert resp.status == 200
    ((_, _, headers),) = up.calls
    assert {k.lower(): v for k, v in headers.items()}["x-request-id"] == "req-é-1"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-Auth-Token": "ob_wrong"},
        {"Authorization": "Bearer ob_wrong"},
        {"Authorization": KEY},
        {"Authorization": f"Basic {KEY}"},
    ],
    ids=["missing", "wrong-token", "wrong-bearer", "no-scheme", "basic"],
)
@pytest.mark.asyncio
async def test_wrong_or_missing_key_is_401(
    store_home: Home, instance: Any, gateway: Any, headers: dict[str, str]
) -> None:
    up = await instance("v1")
    uid = store_home.add_service([("1.0.0", 100, [up.port])])
    client = await gateway()
    resp = await _call(client, uid, headers)
    assert resp.status == 401
    assert "key" in (await resp.json())["error"]
    assert up.calls == []


@pytest.mark.asyncio
async def test_the_daemon_token_passes_for_any_service(
    store_home: Home, instance: Any, gateway: Any
) -> None:
    up = await instance("v1")
    uid = store_home.add_service([("1.0.0", 100, [up.port])])
    digest = hashlib.sha256(b"daemon-secret").hexdigest()
    client = await gateway(internal_token_hash=digest)
    assert (await _call(client, uid, {INTERNAL_HEADER: "daemon-secret"})).status == 200
    assert (await _call(client, uid, {INTERNAL_HEADER: "guess"})).status == 401
    # without a configured token the header means nothing
    plain = await gateway()
    assert (await _call(plain, uid, {INTERNAL_HEADER: "daemon-secret"})).status == 401
    assert len(up.calls) == 1
    assert all(INTERNAL_HEADER not in headers for _, _, headers in up.calls)


@pytest.mark.asyncio
async def test_unknown_service_is_404(store_home: Home, gateway: Any) -> None:
    client = await gateway()
    resp = await _call(client, "nosuchservice")
    assert resp.status == 404
    assert "nosuchservice" in (await resp.json())["error"]


@pytest.mark.asyncio
async def test_stopped_service_is_404(store_home: Home, instance: Any, gateway: Any) -> None:
    up = await instance("v1")
    uid = store_home.add_service([("1.0.0", 100, [up.port])], status="stopped")
    client = await gateway()
    assert (await _call(client, uid)).status == 404


@pytest.mark.asyncio
async def test_no_ready_instance_is_503_with_retry_after(
    store_home: Home, instance: Any, gateway: Any
) -> None:
    up = await instance("v1")
    uid = store_home.add_service([("1.0.0", 100, [up.port])], status="deploying", state="starting")
    client = await gateway()
    resp = await _call(client, uid)
    assert resp.status == 503
    assert int(resp.headers["Retry-After"]) >= 1
    assert "no ready instance" in (await resp.json())["error"]


# -- traffic limit --------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_over_the_traffic_limit_is_429_with_retry_after(
    store_home: Home, instance: Any, gateway: Any
) -> None:
    up = await instance("v1")
    uid = store_home.add_service([("1.0.0", 100, [up.port])], traffic_limit=5)
    client = await gateway()
    # All at once, so that (almost) nothing refills while they arrive.
    replies = await asyncio.gather(*(_call(client, uid) for _ in range(20)))
    statuses = [resp.status for resp in replies]
    assert 5 <= statuses.count(200) <= 7
    assert statuses.count(200) + statuses.count(429) == 20
    for resp in replies:
        if resp.status == 429:
            retry_after = resp.headers["Retry-After"]
            assert retry_after.isdigit() and int(retry_after) >= 1
            assert "5 calls per second" in (await resp.json())["error"]
    await asyncio.sleep(0.25)
    assert (await _call(client, uid)).status == 200


@pytest.mark.asyncio
async def test_unauthorized_calls_spend_no_tokens(
    store_home: Home, instance: Any, gateway: Any
) -> None:
    up = await instance("v1")
    uid = store_home.add_service([("1.0.0", 100, [up.port])], traffic_limit=2)
    client = await gateway()
    for _ in range(5):
        assert (await _call(client, uid, {"X-Auth-Token": "ob_wrong"})).status == 401
    assert [(await _call(client, uid)).status for _ in range(2)] == [200, 200]


def test_token_bucket_burst_refill_and_wait() -> None:
    bucket = TokenBucket(4, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [0.0] * 4
    assert bucket.take(0.0) == pytest.approx(0.25)
    assert bucket.take(0.5) == 0.0  # two tokens came back, one spent
    assert bucket.take(0.5) == 0.0
    assert bucket.take(0.5) == pytest.approx(0.25)
    assert bucket.take(100.0) == 0.0  # never more than the burst saved up
    assert sum(bucket.take(100.0) == 0.0 for _ in range(10)) == 3
    bucket.configure(1)
    assert bucket.burst == 1.0 and bucket.tokens <= 1.0
    assert TokenBucket(0.5, now=0.0).take(0.0) == 0.0  # a burst of at least one call


# -- versions and instances -----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_split_by_traffic_ratio_within_binomial_interval(
    store_home: Home, instance: Any, gateway: Any
) -> None:
    random.seed(20)  # the draw is the gateway's own; seeded, the test cannot flake
    old, new = await instance("v1"), await instance("v2")
    uid = store_home.add_service([("1.0.0", 90, [old.port]), ("2.0.0", 10, [new.port])])
    client = await gateway()
    calls = 2000
    semaphore = asyncio.Semaphore(16)

    async def one() -> str:
        async with semaphore:
            resp = await _call(client, uid)
            assert resp.status == 200
            body = await resp.json()
            assert body["predictions"] == [
                "v1" if resp.headers["X-Model-Version"] == "1.0.0" else "v2"
            ]
            return resp.headers["X-Model-Version"]

    seen = Counter(await asyncio.gather(*(one() for _ in range(calls))))
    assert set(seen) == {"1.0.0", "2.0.0"}
    # 99.9 % two-sided normal interval of Binomial(2000, 0.1): z = 3.2905.
    spread = 3.2905 * math.sqrt(calls * 0.1 * 0.9)
    assert abs(seen["2.0.0"] - calls * 0.1) <= spread, seen
    assert len(new.calls) == seen["2.0.0"] and len(old.calls) == seen["1.0.0"]


@pytest.mark.asyncio
async def test_version_without_ready_instance_gives_its_share_away(
    store_home: Home, instance: Any, gateway: Any
) -> None:
    up = await instance("v2")
    uid = store_home.add_service([("1.0.0", 50, []), ("2.0.0", 50, [up.port])])
    client = await gateway()
    for _ in range(20):
        resp = await _call(client, uid)
        assert resp.status == 200
        assert resp.headers["X-Model-Version"] == "2.0.0"


@pytest.mark.asyncio
async def test_only_zero_ratio_versions_ready_still_answer(
    store_home: Home, instance: Any, gateway: Any
) -> None:
    up = await instance("v1")
    uid = store_home.add_service([("1.0.0", 0, [up.port]), ("2.0.0", 100, [])])
    client = await gateway()
    resp = await _call(client, uid)
    assert resp.status == 200 and resp.headers["X-Model-Version"] == "1.0.0"


@pytest.mark.asyncio
async def test_versions_of_two_models_are_told_apart(
    store_home: Home, instance: Any, gateway: Any
) -> None:
    iris, wine = await instance("iris"), await instance("wine")
    uid = store_home.add_service([("iris:1.0.0", 50, [iris.port]), ("wine:1.0.0", 50, [wine.port])])
    client = await gateway()
    seen = set()
    for _ in range(40):
        resp = await client.post(f"/v2/models/{uid}/infer", json={"inputs": []}, headers=AUTH)
        assert resp.status == 200
        answered = (await resp.json())["predictions"][0]
        assert resp.headers["X-Model-Version"] == f"{answered}@1.0.0"
        seen.add(answered)
    assert seen == {"iris", "wine"}
    assert {path for path, _, _ in iris.calls} == {"/v2/models/iris/infer"}
    assert {path for path, _, _ in wine.calls} == {"/v2/models/wine/infer"}


@pytest.mark.asyncio
async def test_instance_with_fewest_outstanding_calls_is_chosen(
    store_home: Home, instance: Any, gateway: Any
) -> None:
    slow, fast = await instance("slow"), await instance("fast")
    slow.hold = asyncio.Event()
    uid = store_home.add_service([("1.0.0", 100, [slow.port, fast.port])])
    client = await gateway()
    # Calls go in turn while both are idle; once one waits on the slow instance, it is busier.
    pending: list[asyncio.Task[Any]] = []
    try:
        while not slow.calls:
            pending.append(asyncio.create_task(_call(client, uid)))
            for _ in range(100):
                await asyncio.sleep(0.005)
                if slow.calls or pending[-1].done():
                    break
        answered_fast = len(fast.calls)
        for _ in range(30):
            resp = await _call(client, uid)
            assert resp.status == 200 and (await resp.json())["predictions"] == ["fast"]
        assert len(slow.calls) == 1 and len(fast.calls) == answered_fast + 30
    finally:
        slow.hold.set()
    for resp in await asyncio.gather(*pending):
        assert resp.status == 200


@pytest.mark.asyncio
async def test_concurrent_calls_spread_evenly_over_busy_instances(
    store_home: Home, instance: Any, gateway: Any
) -> None:
    ups = [await instance(f"i{n}") for n in range(3)]
    hold = asyncio.Event()
    for up in ups:
        up.hold = hold
    uid = store_home.add_service([("1.0.0", 100, [up.port for up in ups])])
    client = await gateway()
    tasks = [asyncio.create_task(_call(client, uid)) for _ in range(12)]
    try:
        deadline = time.monotonic() + 5
        while sum(len(up.calls) for up in ups) < 12 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert [len(up.calls) for up in ups] == [4, 4, 4]
    finally:
        hold.set()
    assert all(resp.status == 200 for resp in await asyncio.gather(*tasks))


@pytest.mark.asyncio
async def test_refused_connection_is_retried_on_another_instance(
    store_home: Home, instance: Any, gateway: Any, dead_port: int
) -> None:
    live = await instance("live")
    uid = store_home.add_service([("1.0.0", 100, [dead_port, live.port])])
    client = await gateway()
    for _ in range(10):
        resp = await _call(client, uid)
        assert resp.status == 200
        assert (await resp.json())["predictions"] == ["live"]
    assert len(live.calls) == 10
    metrics = await _metrics(client)
    assert metrics[("opsbot_gateway_upstream_errors_total", uid, "1.0.0")] >= 1
    assert metrics[("opsbot_gateway_failures_total", uid, "1.0.0")] == 0
    stats = await (await client.get("/stats")).json()
    instances = stats["services"][0]["versions"][0]["instances"]
    assert {i["address"]: i["ejected"] for i in instances}[f"127.0.0.1:{dead_port}"] is True


@pytest.mark.asyncio
async def test_an_instance_on_a_unix_socket_is_routed_and_named_so(
    store_home: Home, instance: Any, gateway: Any, tmp_path: Path
) -> None:
    """A process-runtime instance: the gateway reaches it on its socket, as both clients do,
    says Host: localhost, and names it unix:PATH in its statistics; one whose socket went is
    ejected and its calls go to the one still there."""
    path, gone = str(tmp_path / "a.sock"), str(tmp_path / "gone.sock")
    on_socket = await instance("socket", unix=path)
    uid = store_home.add_service([("1.0.0", 100, [gone, path])])
    client = await gateway()
    for _ in range(4):
        resp = await _call(client, uid)
        assert resp.status == 200
        assert (await resp.json())["predictions"] == ["socket"]
    assert len(on_socket.calls) == 4
    assert {headers["Host"] for _, _, headers in on_socket.calls} == {"localhost"}
    stats = await (await client.get("/stats")).json()
    instances = stats["services"][0]["versions"][0]["instances"]
    assert {i["address"]: i["ejected"] for i in instances} == {
        f"unix:{path}": False,
        f"unix:{gone}": True,
    }


@pytest.mark.asyncio
async def test_an_instance_that_answers_503_passes_the_call_to_another(
    store_home: Home, instance: Any, gateway: Any
) -> None:
    busy = await instance("busy", status=503)
    live = await instance("live")
    uid = store_home.add_service([("1.0.0", 100, [busy.port, live.port])])
    client = await gateway()
    for _ in range(6):
        resp = await _call(client, uid)
        assert resp.status == 200
        assert (await resp.json())["predictions"] == ["live"]
    # Calls alternate between the two: the busy one saw some and passed each on.
    assert busy.calls and len(live.calls) == 6
    # With no other instance left, the instance's own 503 is the answer.
    only = store_home.add_service([("1.0.0", 100, [busy.port])], key="ob_only-key")
    deadline = time.monotonic() + 10
    while (resp := await _call(client, only, {"X-Auth-Token": "ob_only-key"})).status == 404:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert resp.status == 503
    assert (await resp.json())["error"] == "busy refuses"


@pytest.mark.asyncio
async def test_refused_connection_falls_back_to_another_version(
    store_home: Home, instance: Any, gateway: Any, dead_port: int
) -> None:
    live = await instance("v2")
    uid = store_home.add_service([("1.0.0", 100, [dead_port]), ("2.0.0", 0, [live.port])])
    client = await gateway()
    for _ in range(5):
        resp = await _call(client, uid)
        assert resp.status == 200
        assert resp.headers["X-Model-Version"] == "2.0.0"


@pytest.mark.asyncio
async def test_no_instance_answering_is_502(store_home: Home, gateway: Any, dead_port: int) -> None:
    uid = store_home.add_service([("1.0.0", 100, [dead_port])])
    client = await gateway(attempts=2)
    resp = await _call(client, uid)
    assert resp.status == 502
    assert "after 2 attempts" in (await resp.json())["error"]
    metrics = await _metrics(client)
    assert metrics[("opsbot_gateway_failures_total", uid, "1.0.0")] == 1


# -- route changes --------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_route_changes_reach_the_gateway_within_a_second(
    store_home: Home, instance: Any, gateway: Any
) -> None:
    old, new = await instance("v1"), await instance("v2")
    uid = store_home.add_service([("1.0.0", 100, [old.port]), ("2.0.0", 0, [new.port])])
    client = await gateway()
    assert (await _call(client, uid)).headers["X-Model-Version"] == "1.0.0"

    async def seconds_until(check: Callable[[], Awaitable[bool]]) -> float:
        started = time.monotonic()
        while not await check():
            assert time.monotonic() - started < 2.0, "the change did not reach the gateway"
            await asyncio.sleep(0.01)
        return time.monotonic() - started

    async def answered_by_v2() -> bool:
        return (await _call(client, uid)).headers["X-Model-Version"] == "2.0.0"

    store_home.execute("UPDATE service_versions SET traffic_ratio = 100 - traffic_ratio")
    assert await seconds_until(answered_by_v2) < 1.0
    for _ in range(20):
        assert await answered_by_v2()

    async def unavailable() -> bool:
        return (await _call(client, uid)).status == 503

    store_home.execute("UPDATE instances SET state = 'stopped'")
    assert await seconds_until(unavailable) < 1.0

    other = store_home.add_service([("1.0.0", 100, [old.port])], key="ob_second")

    async def other_served() -> bool:
        return (await _call(client, other, {"X-Auth-Token": "ob_second"})).status == 200

    assert await seconds_until(other_served) < 1.0

    async def old_key_refused() -> bool:
        return (await _call(client, other, {"X-Auth-Token": "ob_second"})).status == 401

    store_home.execute(
        "UPDATE api_keys SET key_hash = ? WHERE key_hash = ?",
        (hash_key("ob_third"), hash_key("ob_second")),
    )
    assert await seconds_until(old_key_refused) < 1.0
    assert (await _call(client, other, {"X-Auth-Token": "ob_third"})).status == 200


async def reloaded_to(client: Client, reloads: int, headers: dict[str, str] | None = None) -> None:
    """Wait until the gateway has applied new routes ``reloads`` times in all (its poll)."""
    deadline = time.monotonic() + 5
    while (
        seen := (await (await client.get("/stats", headers=headers)).json())["reloads"]
    ) < reloads:
        assert time.monotonic() < deadline, f"{seen} route reloads in 5 s, not {reloads}"
        await asyncio.sleep(0.01)


@pytest.mark.asyncio
async def test_commits_that_leave_routes_alone_change_nothing(
    store_home: Home, instance: Any, gateway: Any
) -> None:
    up = await instance("v1")
    uid = store_home.add_service([("1.0.0", 100, [up.port])])
    digest = hashlib.sha256(b"daemon-secret").hexdigest()
    client = await gateway(poll_s=0.05, internal_token_hash=digest)
    daemon = {INTERNAL_HEADER: "daemon-secret"}

    async def reloads() -> int:
        return int((await (await client.get("/stats", headers=daemon)).json())["reloads"])

    assert await reloads() == 1
    store_home.execute(
        "INSERT INTO events (time, level, kind, message, actor) "
        "VALUES (0, 'normal', 'test', 'nothing to route', 'test')"
    )
    store_home.execute("UPDATE instances SET updated_at = updated_at + 1")
    # Read the store now, past both commits: the routes it finds are the ones it has.
    assert (await client.post("/-/routes", headers=daemon)).status == 200
    assert await reloads() == 1
    store_home.execute("UPDATE services SET traffic_limit = 7 WHERE uid = ?", (uid,))
    await reloaded_to(client, 2, daemon)  # the poll finds the change
    assert await reloads() == 2


@pytest.mark.asyncio
async def test_new_traffic_limit_applies_without_refilling(
    store_home: Home, instance: Any, gateway: Any
) -> None:
    up = await instance("v1")
    uid = store_home.add_service([("1.0.0", 100, [up.port])], traffic_limit=1000)
    client = await gateway()
    store_home.execute("UPDATE services SET traffic_limit = 2")
    await reloaded_to(client, 2)
    statuses = [(await _call(client, uid)).status for _ in range(6)]
    assert statuses[:2] == [200, 200] and statuses[-1] == 429


# -- limits, timeouts and upstream errors ---------------------------------------------------------


@pytest.mark.asyncio
async def test_body_over_the_cap_is_413(store_home: Home, instance: Any, gateway: Any) -> None:
    up = await instance("v1")
    uid = store_home.add_service([("1.0.0", 100, [up.port])])
    client = await gateway(max_body_mb=0.01)
    big = b'{"instances": ["' + b"x" * 20_000 + b'"]}'
    resp = await client.post(f"/v1/infers/{uid}", data=big, headers=AUTH)
    assert resp.status == 413
    assert "0.01 MB" in (await resp.json())["error"]

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(big), 4096):
            yield big[start : start + 4096]

    resp = await client.post(f"/v1/infers/{uid}", data=chunks(), headers=AUTH)
    assert resp.status == 413
    small = b'{"instances": ["' + b"x" * 5_000 + b'"]}'
    resp = await client.post(f"/v1/infers/{uid}", data=small, headers=AUTH)
    assert resp.status == 200
    assert len(up.calls) == 1 and up.calls[0][1] == small


@pytest.mark.asyncio
async def test_upstream_too_slow_is_504(store_home: Home, instance: Any, gateway: Any) -> None:
    up = await instance("v1", delay=5.0)
    uid = store_home.add_service([("1.0.0", 100, [up.port])])
    client = await gateway(timeout_s=0.3)
    started = time.monotonic()
    resp = await _call(client, uid)
    assert resp.status == 504
    assert time.monotonic() - started < 2.0
    assert resp.headers["X-Model-Version"] == "1.0.0"
    assert "within 0.3 s" in (await resp.json())["error"]
    assert len(up.calls) == 1  # never sent twice


@pytest.mark.parametrize("status", [400, 422, 500, 503])
@pytest.mark.asyncio
async def test_upstream_errors_pass_through(
    store_home: Home, instance: Any, gateway: Any, status: int
) -> None:
    up = await instance("v1", status=status)
    uid = store_home.add_service([("1.0.0", 100, [up.port])])
    client = await gateway()
    resp = await _call(client, uid)
    assert resp.status == status
    assert await resp.json() == {"error": "v1 refuses"}
    metrics = await _metrics(client)
    assert metrics[("opsbot_gateway_failures_total", uid, "1.0.0")] == (1 if status >= 500 else 0)


# -- Open Inference Protocol v2 -------------------------------------------------------------------


@pytest.mark.asyncio
async def test_v2_infer_goes_to_the_instance_model_name(
    store_home: Home, instance: Any, gateway: Any
) -> None:
    up = await instance("v1")
    uid = store_home.add_service([("1.0.0", 100, [up.port])], model="iris")
    client = await gateway()
    v2_body = {
        "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]
    }
    resp = await client.post(f"/v2/models/{uid}/infer", json=v2_body, headers=AUTH)
    assert resp.status == 200
    assert resp.headers["X-Model-Version"] == "1.0.0"
    path, body, headers = up.calls[0]
    assert path == "/v2/models/iris/infer"
    assert json.loads(body) == v2_body
    assert headers["Content-Type"].startswith("application/json")
    assert (await client.post(f"/v2/models/{uid}/infer", json=v2_body)).status == 401


@pytest.mark.asyncio
@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_compressed_body_is_decoded_once_and_forwarded_plain(
    store_home: Home, instance: Any, gateway: Any, encoding: str
) -> None:
    up = await instance("v1")
    uid = store_home.add_service([("1.0.0", 100, [up.port])], model="iris", name="flowers")
    client = await gateway(max_body_mb=0.5)
    plain = json.dumps({"instances": [[1, 2, 3, 4]] * 100}).encode()
    packed = gzip.compress(plain) if encoding == "gzip" else zlib.compress(plain)
    headers = {**AUTH, "Content-Encoding": encoding, "Content-Type": "application/json"}
    resp = await client.post("/v2/models/flowers/infer", data=packed, headers=headers)
    assert resp.status == 200
    path, body, seen = up.calls[0]
    assert body == plain
    assert "Content-Encoding" not in seen
    # The instance is told the name the caller used, and never a caller's own say on it.
    assert seen[MODEL_NAME_HEADER] == "flowers"
    assert path == "/v2/models/iris/infer"
    forged = {**headers, MODEL_NAME_HEADER: "forged"}
    assert (await client.post(f"/v2/models/{uid}/infer", data=packed, headers=forged)).ok
    assert up.calls[1][2][MODEL_NAME_HEADER] == uid
    # The cap is on the decoded size: 600 kB of zeros pack into a few hundred bytes.
    bomb = gzip.compress(b"0" * 600_000) if encoding == "gzip" else zlib.compress(b"0" * 600_000)
    resp = await client.post(f"/v1/infers/{uid}", data=bomb, headers=headers)
    assert resp.status == 413
    assert len(up.calls) == 2


# -- numbers --------------------------------------------------------------------------------------


async def _metrics(client: Client) -> dict[tuple[str, ...], float]:
    resp = await client.get("/metrics", headers=SCRAPE)
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    found: dict[tuple[str, ...], float] = {}
    for family in text_string_to_metric_families(await resp.text()):
        for sample in family.samples:
            key = (sample.name, *sample.labels.values())
            found[key] = sample.value
    return found


@pytest.mark.asyncio
async def test_metrics_count_calls_failures_latency_and_refusals(
    store_home: Home, instance: Any, gateway: Any
) -> None:
    up = await instance("v1")
    uid = store_home.add_service([("1.0.0", 100, [up.port])], traffic_limit=3)
    client = await gateway()
    statuses = [(await _call(client, uid)).status for _ in range(5)]
    assert statuses.count(200) >= 3
    await _call(client, uid, {"X-Auth-Token": "ob_wrong"})
    await _call(client, "unknown")
    metrics = await _metrics(client)
    ok = statuses.count(200)
    assert metrics[("opsbot_gateway_requests_total", uid, "1.0.0", "200")] == ok
    assert metrics[("opsbot_gateway_failures_total", uid, "1.0.0")] == 0
    assert metrics[("opsbot_gateway_request_seconds_count", uid, "1.0.0")] == ok
    assert metrics[("opsbot_gateway_request_seconds_bucket", uid, "1.0.0", "+Inf")] == ok
    assert 0 < metrics[("opsbot_gateway_request_seconds_sum", uid, "1.0.0")] < ok
    # Every answer is in the one family: refusals with an empty version, or service too.
    assert metrics[("opsbot_gateway_requests_total", uid, "", "429")] == 5 - ok
    assert metrics[("opsbot_gateway_requests_total", uid, "", "401")] == 1
    assert metrics[("opsbot_gateway_requests_total", "", "", "404")] == 1
    answered = sum(v for k, v in metrics.items() if k[0] == "opsbot_gateway_requests_total")
    assert answered == 5 + 1 + 1
    assert metrics[("process_resident_memory_bytes",)] > 0
    assert metrics[("process_cpu_seconds_total",)] > 0
    assert metrics[("opsbot_gateway_upstreams_ready", uid, "1.0.0")] == 1
    assert metrics[("opsbot_gateway_service_info", uid, "svc1", "alice")] == 1


@pytest.mark.asyncio
async def test_stats_give_calls_failures_and_recent_latency(
    store_home: Home, instance: Any, gateway: Any
) -> None:
    up = await instance("v1")
    uid = store_home.add_service([("1.0.0", 100, [up.port])], name="iris-svc")
    client = await gateway()
    for _ in range(4):
        assert (await _call(client, uid)).status == 200
    stats = await (await client.get("/stats")).json()
    (service,) = stats["services"]
    assert (service["id"], service["name"], service["owner"]) == (uid, "iris-svc", "alice")
    (version,) = service["versions"]
    assert version["version"] == "1.0.0" and version["model"] == "alice/iris"
    assert (version["calls"], version["failures"], version["inflight"]) == (4, 0, 0)
    assert version["codes"] == {"200": 4}
    assert 0 < version["latency_ms"]["p50"] <= version["latency_ms"]["p99"]
    assert len(version["calls_per_s"]) == 60 and sum(version["calls_per_s"]) == 4
    health = await (await client.get("/healthz")).json()
    assert health["status"] == "ok" and health["services"] == 1


# -- the process ----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def gateway_popen(cmd: list[str], **popen: Any) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``python -m opsbot.serving.gateway`` with ``cmd`` (its options but where it
    listens) on a loopback port bound here and handed over (``--listen-fd``), as the daemon
    does: a port picked as free and bound later by the gateway could be another test's by
    then, and that test's gateway would answer this one's calls. Returns the process and its
    base URL."""
    from opsbot.serving.workers import listen

    sock = listen("127.0.0.1", 0)
    port = int(sock.getsockname()[1])
    where = ["--host", "127.0.0.1", "--port", str(port), "--listen-fd", str(sock.fileno())]
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "opsbot.serving.gateway", *cmd, *where],
            pass_fds=(sock.fileno(),),
            **popen,
        )
    finally:
        sock.close()  # the gateway holds it now
    return proc, f"http://127.0.0.1:{port}"


@pytest.mark.asyncio
async def test_gateway_process_serves_and_stops_on_sigterm(store_home: Home, instance: Any) -> None:
    up = await instance("v1")
    uid = store_home.add_service([("1.0.0", 100, [up.port])])
    proc, url = gateway_popen(
        ["--home", str(store_home.path), "--timeout-s", "5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        async with ClientSession() as session:
            deadline = time.monotonic() + 20
            while True:
                assert proc.poll() is None, proc.communicate()
                try:
                    async with session.get(f"{url}/healthz") as resp:
                        if resp.status == 200:
                            break
                except OSError:
                    pass
                assert time.monotonic() < deadline, "the gateway did not come up"
                await asyncio.sleep(0.05)
            async with session.post(f"{url}/v1/infers/{uid}", json=BODY, headers=AUTH) as resp:
                assert resp.status == 200
                assert await resp.json() == {"predictions": ["v1"]}
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.to_thread(proc.communicate, timeout=20)
        assert proc.returncode == 0, stderr
        assert f"listening on {url}" in stderr.decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.asyncio
async def test_the_daemon_learns_the_routes_read_afresh(
    store_home: Home, instance: Any, gateway: Any
) -> None:
    """``POST /-/routes`` reads the store now, not at the next poll, and names what is routed:
    what the controller waits on before it calls a service Running."""
    first, second = await instance("v1"), await instance("v2")
    store_home.add_service([("1.0.0", 100, [first.port])])
    digest = hashlib.sha256(b"daemon-secret").hexdigest()
    # A poll far beyond the test's length: only the call itself can have read the change.
    client = await gateway(internal_token_hash=digest, poll_s=3600)
    uid = store_home.add_service([("1.0.0", 100, [second.port])], key=KEY + "2")
    resp = await client.post("/-/routes", headers={INTERNAL_HEADER: "daemon-secret"})
    assert resp.status == 200
    routed = (await resp.json())["routed"]
    assert sorted(routed) == sorted(f"127.0.0.1:{p}" for p in (first.port, second.port))
    assert (await _call(client, uid, {"X-Auth-Token": KEY + "2"})).status == 200
    for headers in ({}, {INTERNAL_HEADER: "guess"}):
        refused = await client.post("/-/routes", headers=headers)
        assert refused.status == 403
        assert INTERNAL_HEADER in (await refused.json())["error"]
