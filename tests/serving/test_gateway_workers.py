"""The gateway as several worker processes on one port: one traffic limit across them, numbers
added up, routes acknowledged only once every worker has them, and stopping together."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from time import perf_counter
from typing import Any

import pytest
from aiohttp import ClientSession, TCPConnector
from prometheus_client.parser import text_string_to_metric_families

from opsbot.core.keys import METRICS_TOKEN_FILE, metrics_token, rotate_metrics_token
from opsbot.serving.gateway import INTERNAL_HEADER, INTERNAL_SECRET
from opsbot.serving.workers import SharedBuckets, merge_metrics, merge_stats
from serving.test_gateway import AUTH, BODY, KEY, FakeInstance, Home, gateway_popen
from serving.test_gateway_drain import add_instance, address, set_state, until

SECRET = "daemon-secret"


def _take_for(buckets: SharedBuckets, seconds: float, out: Any) -> None:
    bucket = buckets.bucket("svc", 0, 0.0)
    assert bucket is not None
    begin = perf_counter()
    end = begin + seconds
    taken = 0
    while (now := perf_counter()) < end:
        if bucket.take(now) == 0.0:
            taken += 1
    out.put((taken, begin, now))


def test_a_shared_bucket_holds_its_rate_across_processes() -> None:
    """Two processes taking as fast as they can get, together, the rate plus the burst."""
    rate, seconds = 2000, 1.0
    buckets = SharedBuckets(slots=8)
    start = perf_counter()
    bucket = buckets.bucket("svc", rate, start)
    assert bucket is not None
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_take_for, args=(buckets, seconds, out)) for _ in range(2)]
    for p in procs:
        p.start()
    reports = [out.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(10)
    counts = [taken for taken, _, _ in reports]
    # The bucket is full (one burst) when the first process begins, however late a loaded
    # machine starts it; then it refills at the rate until the last one stops taking.
    window = max(end for _, _, end in reports) - min(begin for _, begin, _ in reports)
    expected = rate + rate * window
    assert all(c > 0 for c in counts)
    assert abs(sum(counts) - expected) <= 0.05 * expected, (counts, expected)


def test_a_shared_bucket_is_found_again_by_name_and_keeps_its_tokens() -> None:
    buckets = SharedBuckets(slots=2)
    first = buckets.bucket("a", 1, 0.0)
    assert first is not None and first.take(0.0) == 0.0
    again = buckets.bucket("a", 1, 0.0)  # another worker meets the service
    assert again is not None and again.take(0.0) > 0  # the token is gone for it too
    assert buckets.bucket("b", 1, 0.0) is not None
    assert buckets.bucket("c", 1, 0.0) is None  # full: the caller limits alone


def test_merged_metrics_add_counts_and_take_shared_facts_once() -> None:
    one = (
        "# HELP opsbot_gateway_requests_total Answers.\n"
        "# TYPE opsbot_gateway_requests_total counter\n"
        'opsbot_gateway_requests_total{service="s",code="200"} 3\n'
        "# HELP opsbot_gateway_upstreams_ready Ready.\n"
        "# TYPE opsbot_gateway_upstreams_ready gauge\n"
        'opsbot_gateway_upstreams_ready{service="s"} 2\n'
    )
    two = one.replace("} 3", "} 4")
    merged = {
        s.name: s.value
        for f in text_string_to_metric_families(merge_metrics([one, two]))
        for s in f.samples
    }
    assert merged == {"opsbot_gateway_requests_total": 7, "opsbot_gateway_upstreams_ready": 2}


@asynccontextmanager
async def _gateway(home: Path, workers: int, *extra: str) -> AsyncIterator[tuple[str, Any]]:
    (home / INTERNAL_SECRET).write_text(SECRET)
    proc, url = gateway_popen(
        ["--home", str(home), "--workers", str(workers), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        async with ClientSession() as session:
            deadline = time.monotonic() + 30
            while True:
                assert proc.poll() is None, proc.communicate()
                try:
                    async with session.get(f"{url}/stats", headers=DAEMON) as resp:
                        if resp.status == 200:
                            break
                except OSError:
                    pass
                assert time.monotonic() < deadline, "the gateway did not come up"
                await asyncio.sleep(0.05)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.communicate, timeout=20)
            except subprocess.TimeoutExpired:  # calls still held by a failed test
                proc.kill()
                proc.communicate()


async def _fresh_calls(url: str, uid: str, n: int, width: int = 16) -> list[int]:
    """``n`` calls, each on a new connection, so the kernel hands them to either worker."""
    statuses: list[int] = []
    queue = list(range(n))

    async def one_by_one() -> None:
        async with ClientSession(connector=TCPConnector(force_close=True)) as session:
            while queue:
                queue.pop()
                async with session.post(f"{url}/v1/infers/{uid}", json=BODY, headers=AUTH) as r:
                    statuses.append(r.status)

    await asyncio.gather(*(one_by_one() for _ in range(width)))
    return statuses


#: The daemon's token: these gateways have one, so their /stats answers only it.
DAEMON = {INTERNAL_HEADER: SECRET}


async def _json(url: str, path: str, method: str = "GET", **kw: Any) -> tuple[int, Any]:
    kw.setdefault("headers", DAEMON)
    async with ClientSession() as session, session.request(method, url + path, **kw) as resp:
        return resp.status, await resp.json()


@pytest.mark.asyncio
async def test_two_workers_serve_one_port_and_count_together(
    store_home: Home, instance: Callable[..., Awaitable[FakeInstance]]
) -> None:
    up = await instance("v1")
    uid = store_home.add_service([("1.0.0", 100, [up.port])])
    async with _gateway(store_home.path, 2) as (url, proc):
        statuses = await _fresh_calls(url, uid, 200)
        assert statuses == [200] * 200
        status, stats = await _json(url, "/stats")
        assert status == 200 and stats["workers"] == 2
        assert all(n > 0 for n in stats["worker_calls"]), stats["worker_calls"]
        (version,) = stats["services"][0]["versions"]
        assert version["calls"] == 200 == sum(stats["worker_calls"])
        assert version["latency_ms"]["p50"] is not None
        assert stats["upstreams"][f"127.0.0.1:{up.port}"]["routed"] is True
        scrape = {"Authorization": f"Bearer {metrics_token(store_home.path)}"}
        async with ClientSession() as session, session.get(f"{url}/metrics", headers=scrape) as r:
            text = await r.text()
        counted = sum(
            s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == "opsbot_gateway_requests_total" and s.labels["service"] == uid
        )
        assert counted == 200
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.to_thread(proc.communicate, timeout=20)
        assert proc.returncode == 0, stderr
        assert stderr.decode().count("gateway listening on") == 2


async def _metrics_statuses(url: str, headers: dict[str, str], n: int) -> list[int]:
    """``n`` reads of /metrics, each on a new connection, so every worker answers some."""
    async with ClientSession(connector=TCPConnector(force_close=True)) as session:
        statuses = []
        for _ in range(n):
            async with session.get(f"{url}/metrics", headers=headers) as resp:
                statuses.append(resp.status)
                if resp.status == 200:
                    assert text_string_to_metric_families(await resp.text())
        return statuses


@pytest.mark.asyncio
@pytest.mark.parametrize("workers", [1, 2])
async def test_every_worker_asks_metrics_for_the_scrape_token(
    store_home: Home, instance: Callable[..., Awaitable[FakeInstance]], workers: int
) -> None:
    up = await instance("v1")
    uid = store_home.add_service([("1.0.0", 100, [up.port])])
    async with _gateway(store_home.path, workers) as (url, _proc):
        # The gateway started by hand made the home's token, as the daemon does at its start.
        token = metrics_token(store_home.path)
        assert token.startswith("obm_")
        assert (store_home.path / METRICS_TOKEN_FILE).stat().st_mode & 0o777 == 0o600
        assert await _fresh_calls(url, uid, 8) == [200] * 8
        assert set(await _metrics_statuses(url, {}, 8)) == {401}
        wrong = {"Authorization": "Bearer obm_a-guess"}
        assert set(await _metrics_statuses(url, wrong, 8)) == {401}
        scrape = {"Authorization": f"Bearer {token}"}
        assert set(await _metrics_statuses(url, scrape, 8)) == {200}
        async with ClientSession() as session, session.get(f"{url}/metrics", headers=scrape) as r:
            families = {f.name: f for f in text_string_to_metric_families(await r.text())}
        (calls,) = families["opsbot_gateway_requests"].samples
        assert (calls.labels["service"], calls.value) == (uid, 8)  # every worker's, added up
        assert set(await _metrics_statuses(url, DAEMON, 8)) == {200}
        # A rotation reaches every worker at the next scrape.
        new = {"Authorization": f"Bearer {rotate_metrics_token(store_home.path)}"}
        assert set(await _metrics_statuses(url, scrape, 8)) == {401}
        assert set(await _metrics_statuses(url, new, 8)) == {200}


@pytest.mark.asyncio
async def test_the_traffic_limit_holds_across_workers(
    store_home: Home, instance: Callable[..., Awaitable[FakeInstance]]
) -> None:
    """A limit of 40 calls/s with calls spread over two workers: the burst, then the rate over
    the time taken, to 5 %, as from one process."""
    up = await instance("v1")
    limit = 40
    uid = store_home.add_service([("1.0.0", 100, [up.port])], traffic_limit=limit)
    async with _gateway(store_home.path, 2) as (url, _):
        # The bucket starts full: the burst takes its one second's worth (and what refills
        # meanwhile). Measured after it, with the bucket empty, a pause of a loaded machine
        # shorter than a second costs no call (what refills is kept for after it).
        began = perf_counter()
        burst = (await _fresh_calls(url, uid, 2 * limit, width=8)).count(200)
        burst_s = perf_counter() - began
        assert limit <= burst <= limit + limit * burst_s + 1, (burst, burst_s)
        started = perf_counter()
        statuses = await _fresh_calls(url, uid, 1500, width=8)
        elapsed = perf_counter() - started
        _, stats = await _json(url, "/stats")
    served = statuses.count(200)
    assert statuses.count(429) == len(statuses) - served
    expected = limit * elapsed
    assert abs(served - expected) <= 0.05 * expected + 1, (served, expected, elapsed)
    assert all(n > 0 for n in stats["worker_calls"]), stats["worker_calls"]


@pytest.mark.asyncio
async def test_routes_are_acknowledged_once_every_worker_has_them(
    store_home: Home, instance: Callable[..., Awaitable[FakeInstance]]
) -> None:
    first, second = await instance("v1"), await instance("v2")
    store_home.add_service([("1.0.0", 100, [first.port])])
    async with _gateway(store_home.path, 2) as (url, _):
        store_home.add_service([("1.0.0", 100, [second.port])], key=KEY + "2")
        status, body = await _json(url, "/-/routes", "POST", headers={INTERNAL_HEADER: SECRET})
        assert status == 200
        assert body["routed"] == sorted(f"127.0.0.1:{p}" for p in (first.port, second.port))
        status, _ = await _json(url, "/-/routes", "POST", headers={})
        assert status == 403


@pytest.mark.asyncio
async def test_a_worker_that_dies_takes_the_gateway_down_whole(store_home: Home) -> None:
    async with _gateway(store_home.path, 2) as (_, proc):
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert len(children) == 2
        os.kill(int(children[0]), signal.SIGKILL)
        await asyncio.to_thread(proc.wait, 20)
        assert proc.returncode == 1
        # It stopped the other worker and waited for it before it ended.
        assert not Path(f"/proc/{children[1]}").exists()


def test_workers_must_be_at_least_one(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "opsbot.serving.gateway", "--home", str(tmp_path),
         "--host", "127.0.0.1", "--port", "0", "--workers", "0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "--workers must be at least 1" in done.stderr


@pytest.mark.asyncio
async def test_workers_end_with_a_supervisor_killed_outright(store_home: Home) -> None:
    async with _gateway(store_home.path, 2) as (_, proc):
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        proc.kill()
        await asyncio.to_thread(proc.wait, 20)
        deadline = time.monotonic() + 20
        while any(Path(f"/proc/{pid}").exists() for pid in children):
            assert time.monotonic() < deadline, "a worker outlived its supervisor"
            await asyncio.sleep(0.05)


@pytest.mark.asyncio
async def test_an_instance_drains_on_every_worker_before_it_is_safe_to_stop(
    store_home: Home, instance: Callable[..., Awaitable[FakeInstance]]
) -> None:
    """Calls held on an instance through both workers: once it leaves the routes, /stats says
    it is not routed while any worker still has calls on it, and every call finishes there."""
    old, new = await instance("old"), await instance("new")
    old.hold = asyncio.Event()
    uid = store_home.add_service([("1.0.0", 100, [old.port])])
    async with _gateway(store_home.path, 2) as (url, _):
        held = asyncio.create_task(_fresh_calls(url, uid, 8, width=8))

        async def all_held() -> bool:
            _, doc = await _json(url, "/stats")
            return bool(doc["upstreams"][address(old)]["inflight"] == 8)

        await until(all_held, "the held calls did not reach the instance", 10)
        _, doc = await _json(url, "/stats")
        assert all(n == 0 for n in doc["worker_calls"])  # none answered yet
        add_instance(store_home, uid, 0, 1, new.port)
        set_state(store_home, old.port, "draining")

        async def drained_out() -> bool:
            _, doc = await _json(url, "/stats")
            return address(old) not in {
                i["address"] for i in doc["services"][0]["versions"][0]["instances"]
            }

        await until(drained_out, "a worker kept routing to the draining instance", 10)
        _, doc = await _json(url, "/stats")
        assert doc["upstreams"][address(old)] == {
            "service": uid,
            "version": "1.0.0",
            "inflight": 8,
            "routed": False,
        }
        assert (await _fresh_calls(url, uid, 10)) == [200] * 10
        assert len(old.calls) == 8 and len(new.calls) == 10
        old.hold.set()
        assert await held == [200] * 8
        _, doc = await _json(url, "/stats")
        assert address(old) not in doc["upstreams"]
        assert sum(doc["worker_calls"]) == 18


def _doc(calls: int, recent: list[float], upstreams: dict[str, Any]) -> dict[str, Any]:
    version = {
        "idx": 0, "version": "1.0.0", "model": "alice/iris", "ratio": 100, "calls": calls,
        "failures": 0, "upstream_errors": 0, "inflight": 1, "codes": {"200": calls},
        "latency_ms": {}, "calls_per_s": [calls, 0], "failures_per_s": [0, 0], "rule_hits": 0,
        "rule_fallbacks": 0, "recent_s": recent,
        "instances": [{"address": "h:1", "inflight": 1, "outstanding": 1, "ejected": False}],
        "draining": [],
    }  # fmt: skip
    service = {
        "id": "u", "name": "s", "owner": "alice", "status": "running", "traffic_limit": 5,
        "unauthorized": 1, "rate_limited": 0, "too_large": 0, "unavailable": 0,
        "refused": {"401": 1}, "versions": [version],
    }  # fmt: skip
    return {
        "loaded_at": 1.0, "reloads": 1, "buffered_bytes": 10, "unrouted": {"404": 1},
        "services": [service], "upstreams": upstreams,
    }  # fmt: skip


def test_merged_stats_add_counts_and_route_only_what_every_worker_routes() -> None:
    up = {"service": "u", "version": "1.0.0", "inflight": 1, "routed": True}
    leaving = {**up, "routed": False}
    merged = merge_stats(
        [
            _doc(2, [0.001, 0.003], {"h:1": up, "h:2": up}),
            _doc(1, [0.002], {"h:1": up, "h:2": leaving, "h:3": up}),
        ]
    )
    (service,) = merged["services"]
    (version,) = service["versions"]
    assert version["calls"] == 3 and version["codes"] == {"200": 3}
    assert version["calls_per_s"] == [3, 0] and "recent_s" not in version
    assert version["latency_ms"] == {"p50": 2.0, "p99": 3.0, "mean": 2.0}
    assert version["instances"] == [
        {"address": "h:1", "inflight": 2, "outstanding": 2, "ejected": False}
    ]
    assert service["unauthorized"] == 2 and service["refused"] == {"401": 2}
    assert merged["worker_calls"] == [2, 1] and merged["unrouted"] == {"404": 2}
    assert merged["upstreams"]["h:1"] == {**up, "inflight": 2}
    # One worker lets h:2 drain; h:3 only one worker has read yet: neither is routed.
    assert merged["upstreams"]["h:2"]["routed"] is False
    assert merged["upstreams"]["h:3"]["routed"] is False


@pytest.mark.asyncio
async def test_one_worker_answers_the_same_stats_document(
    store_home: Home, instance: Callable[..., Awaitable[FakeInstance]], gateway: Any
) -> None:
    up = await instance("v1")
    uid = store_home.add_service([("1.0.0", 100, [up.port])])
    client = await gateway()
    for _ in range(3):
        resp = await client.post(f"/v1/infers/{uid}", json=BODY, headers=AUTH)
        assert resp.status == 200
    doc = await (await client.get("/stats")).json()
    assert doc["workers"] == 1 and doc["worker_calls"] == [3]
    (version,) = doc["services"][0]["versions"]
    assert "recent_s" not in version and version["latency_ms"]["p50"] is not None
