"""Per-version numbers: calls, failures, p50/p99 latency and rule hits in ``/stats`` and in
``/metrics``, which must parse with prometheus_client's own text parser."""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from opsbot.core.keys import METRICS_TOKEN_FILE, rotate_metrics_token
from opsbot.serving.gateway import INTERNAL_HEADER
from serving.test_gateway import AUTH, KEY, SCRAPE, SCRAPE_TOKEN, Home, _call
from serving.test_gateway_rules import BETA, set_rules

# Families the gateway exposes per service and version, and their Prometheus types.
PER_VERSION = {
    "opsbot_gateway_requests": "counter",
    "opsbot_gateway_failures": "counter",
    "opsbot_gateway_upstream_errors": "counter",
    "opsbot_gateway_request_seconds": "histogram",
    "opsbot_gateway_inflight": "gauge",
    "opsbot_gateway_latency_recent_seconds": "gauge",
    "opsbot_gateway_rule_hits": "counter",
    "opsbot_gateway_rule_fallbacks": "counter",
    "opsbot_gateway_upstream_inflight": "gauge",
    "opsbot_gateway_upstreams_ready": "gauge",
}


@pytest.mark.asyncio
async def test_per_version_numbers_in_metrics_and_stats_match_the_calls_made(
    store_home: Home, instance: Any, gateway: Any
) -> None:
    good = await instance("v1", delay=0.02)
    bad = await instance("v2", status=500)
    ratios = [("1.0.0", 100), ("2.0.0", 0)]
    uid = store_home.add_service([("1.0.0", 100, [good.port]), ("2.0.0", 0, [bad.port])])
    # The rule makes the split exact: 7 calls to 1.0.0, 3 to 2.0.0 (which answers 500).
    set_rules(store_home, uid, ratios, [BETA])
    client = await gateway()
    for _ in range(7):
        assert (await _call(client, uid)).status == 200
    for _ in range(3):
        assert (await _call(client, uid, {**AUTH, "X-Group": "beta"})).status == 500

    resp = await client.get("/metrics", headers=SCRAPE)
    text = await resp.text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, kind in PER_VERSION.items():
        assert families[name].type == kind, name
    samples: dict[tuple[str, ...], float] = {}
    for family in families.values():
        for sample in family.samples:
            samples[(sample.name, *sample.labels.values())] = sample.value

    assert samples[("opsbot_gateway_requests_total", uid, "1.0.0", "200")] == 7
    assert samples[("opsbot_gateway_requests_total", uid, "2.0.0", "500")] == 3
    assert samples[("opsbot_gateway_failures_total", uid, "1.0.0")] == 0
    assert samples[("opsbot_gateway_failures_total", uid, "2.0.0")] == 3
    assert samples[("opsbot_gateway_request_seconds_count", uid, "1.0.0")] == 7
    assert samples[("opsbot_gateway_request_seconds_count", uid, "2.0.0")] == 3
    # 1.0.0 answers after 20 ms: no call of it lands in a bucket below 10 ms.
    assert samples[("opsbot_gateway_request_seconds_bucket", uid, "1.0.0", "0.01")] == 0
    assert samples[("opsbot_gateway_request_seconds_bucket", uid, "1.0.0", "+Inf")] == 7
    assert samples[("opsbot_gateway_request_seconds_sum", uid, "1.0.0")] >= 7 * 0.02
    assert samples[("opsbot_gateway_rule_hits_total", uid, "2.0.0")] == 3
    assert samples[("opsbot_gateway_rule_hits_total", uid, "1.0.0")] == 0
    assert samples[("opsbot_gateway_inflight", uid, "1.0.0")] == 0
    p50 = samples[("opsbot_gateway_latency_recent_seconds", uid, "1.0.0", "50")]
    p99 = samples[("opsbot_gateway_latency_recent_seconds", uid, "1.0.0", "99")]
    # "quantile" is a summary's own label: a gauge that carried it would confuse PromQL.
    assert not any(
        "quantile" in s.labels for f in families.values() if f.type != "summary" for s in f.samples
    )
    assert 0.02 <= p50 <= p99 < 5
    address = f"127.0.0.1:{good.port}"
    assert samples[("opsbot_gateway_upstream_inflight", uid, "1.0.0", address, "true")] == 0

    document = await (await client.get("/stats")).json()
    (service,) = document["services"]
    versions = {v["version"]: v for v in service["versions"]}
    one, two = versions["1.0.0"], versions["2.0.0"]
    assert (one["idx"], two["idx"]) == (0, 1)
    assert (one["calls"], one["failures"], two["calls"], two["failures"]) == (7, 0, 3, 3)
    assert two["codes"] == {"500": 3} and one["codes"] == {"200": 7}
    assert (one["rule_hits"], two["rule_hits"]) == (0, 3)
    # /stats and /metrics give the same percentiles (milliseconds there, seconds here).
    assert one["latency_ms"]["p50"] == pytest.approx(p50 * 1000, abs=0.001)
    assert one["latency_ms"]["p99"] == pytest.approx(p99 * 1000, abs=0.001)
    assert two["latency_ms"]["p50"] <= two["latency_ms"]["p99"]
    assert one["instances"] == [
        {"address": address, "inflight": 0, "outstanding": 0, "ejected": False}
    ]
    assert one["draining"] == []
    assert document["upstreams"][address] == {
        "service": uid,
        "version": "1.0.0",
        "inflight": 0,
        "routed": True,
    }


@pytest.mark.asyncio
async def test_metrics_of_a_version_never_called_still_parse(
    store_home: Home, instance: Any, gateway: Any
) -> None:
    up = await instance("v1")
    uid = store_home.add_service([("1.0.0", 100, [up.port]), ("2.0.0", 0, [])])
    client = await gateway()
    text = await (await client.get("/metrics", headers=SCRAPE)).text()
    samples = {
        (s.name, *s.labels.values()): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("opsbot_gateway_request_seconds_count", uid, "2.0.0")] == 0
    assert samples[("opsbot_gateway_upstreams_ready", uid, "2.0.0")] == 0
    # No latency yet: no percentile sample rather than a made-up one.
    assert not any(key[0] == "opsbot_gateway_latency_recent_seconds" for key in samples)
    stats = await (await client.get("/stats")).json()
    assert stats["services"][0]["versions"][1]["latency_ms"] == {
        "p50": None,
        "p99": None,
        "mean": None,
    }


@pytest.mark.asyncio
async def test_series_leave_with_their_service(
    store_home: Home, instance: Any, gateway: Any
) -> None:
    up = await instance("v1")
    gone = store_home.add_service([("1.0.0", 100, [up.port])], name="gone")
    kept = store_home.add_service([("1.0.0", 100, [up.port])], name="kept", key="ob_kept-key")
    client = await gateway()
    assert (await _call(client, gone)).status == 200
    assert (await _call(client, kept, {"X-Auth-Token": "ob_kept-key"})).status == 200
    assert (await _call(client, gone, {"X-Auth-Token": "ob_wrong"})).status == 401

    def services_in(text: str) -> set[str]:
        return {
            s.labels["service"]
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if "service" in s.labels
        }

    assert {gone, kept} <= services_in(await (await client.get("/metrics", headers=SCRAPE)).text())
    reloads = (await (await client.get("/stats")).json())["reloads"]
    with store_home.store.write() as db:
        db.execute("DELETE FROM services WHERE uid = ?", (gone,))
    deadline = time.monotonic() + 10
    while (await (await client.get("/stats")).json())["reloads"] == reloads:
        assert time.monotonic() < deadline, "the gateway never saw the service go"
        await asyncio.sleep(0.05)
    left = services_in(await (await client.get("/metrics", headers=SCRAPE)).text())
    assert gone not in left
    assert kept in left


# -- who may read /metrics -------------------------------------------------------------------


def _families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


async def _refused(resp: Any) -> str:
    """The 401 of a /metrics call without the credential: what it says to send."""
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    body = await resp.json()
    assert body["reason"] == "unauthorized"
    message: str = body["error"]
    assert "Authorization: Bearer" in message and "opsbot token metrics" in message
    assert INTERNAL_HEADER in message
    return message


@pytest.mark.asyncio
async def test_metrics_need_the_scrape_token_or_the_daemon_s(
    store_home: Home, instance: Any, gateway: Any
) -> None:
    up = await instance("v1")
    uid = store_home.add_service([("1.0.0", 100, [up.port])], name="secret-project")
    digest = hashlib.sha256(b"daemon-secret").hexdigest()
    client = await gateway(internal_token_hash=digest)
    assert (await _call(client, uid)).status == 200
    for headers in (
        {},
        {"Authorization": "Bearer obm_a-guess"},
        {"Authorization": SCRAPE_TOKEN},  # not a Bearer credential
        AUTH,  # a service key is no scrape token
        {"Authorization": f"Bearer {KEY}"},
        {INTERNAL_HEADER: "a-guess"},
        {INTERNAL_HEADER: SCRAPE_TOKEN},
    ):
        resp = await client.get("/metrics", headers=headers)
        message = await _refused(resp)
        assert uid not in message and "secret-project" not in message
    for headers in (
        SCRAPE,
        {"authorization": f"bearer {SCRAPE_TOKEN}"},
        {INTERNAL_HEADER: "daemon-secret"},
    ):
        resp = await client.get("/metrics", headers=headers)
        assert resp.status == 200
        families = _families(await resp.text())
        (info,) = families["opsbot_gateway_service_info"].samples
        assert info.labels["name"] == "secret-project"
        (calls,) = families["opsbot_gateway_requests"].samples
        assert (calls.labels["service"], calls.value) == (uid, 1)


@pytest.mark.asyncio
async def test_a_rotated_scrape_token_applies_from_the_next_scrape(
    store_home: Home, gateway: Any
) -> None:
    client = await gateway()
    assert (await client.get("/metrics", headers=SCRAPE)).status == 200
    new = rotate_metrics_token(store_home.path)
    assert new.startswith("obm_") and new != SCRAPE_TOKEN
    assert (store_home.path / METRICS_TOKEN_FILE).stat().st_mode & 0o777 == 0o600
    await _refused(await client.get("/metrics", headers=SCRAPE))
    assert (await client.get("/metrics", headers={"Authorization": f"Bearer {new}"})).status == 200
    # A removed file lets no scraper in (the daemon makes it again at its next start).
    (store_home.path / METRICS_TOKEN_FILE).unlink()
    await _refused(await client.get("/metrics", headers={"Authorization": f"Bearer {new}"}))


@pytest.mark.asyncio
async def test_without_a_scrape_token_only_the_daemon_reads_metrics(
    store_home: Home, gateway: Any
) -> None:
    plain = await gateway(metrics_token_file=None)
    await _refused(await plain.get("/metrics", headers=SCRAPE))
    await _refused(await plain.get("/metrics"))
    digest = hashlib.sha256(b"daemon-secret").hexdigest()
    daemon = await gateway(metrics_token_file=None, internal_token_hash=digest)
    assert (await daemon.get("/metrics", headers={INTERNAL_HEADER: "daemon-secret"})).status == 200
