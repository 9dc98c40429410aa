"""Routing rules in the gateway: "header H equals (or matches) V -> version X", checked in order
before the traffic ratios, through a real gateway and fake instances."""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from typing import Any

import pytest

from opsbot.core.spec import parse_spec
from serving.test_gateway import AUTH, BODY, KEY, Client, Home, _call, _metrics

BETA = {"header": "X-Group", "equals": "beta", "version": "2.0.0"}


def set_rules(
    home: Home, uid: str, ratios: list[tuple[str, int]], rules: list[dict[str, Any]]
) -> None:
    """Store a spec with these (version, ratio) entries and rules, validated as the core would."""
    spec = parse_spec(
        {
            "name": "ruled",
            "models": [
                {"model": "iris", "version": version, "traffic_ratio": ratio}
                for version, ratio in ratios
            ],
            "rules": rules,
        }
    )
    home.execute("UPDATE services SET spec = ? WHERE uid = ?", (spec.model_dump_json(), uid))


async def versions_of(
    client: Client, uid: str, headers: dict[str, str] | None, n: int
) -> Counter[str]:
    seen: Counter[str] = Counter()
    for _ in range(n):
        resp = await _call(client, uid, {**AUTH, **(headers or {})})
        assert resp.status == 200, await resp.text()
        seen[resp.headers["X-Model-Version"]] += 1
    return seen


async def stats_versions(client: Client) -> dict[str, dict[str, Any]]:
    document = await (await client.get("/stats")).json()
    (service,) = document["services"]
    return {v["version"]: v for v in service["versions"]}


async def reloaded(client: Client, reloads: int) -> None:
    """Wait until the gateway has loaded routes more than ``reloads`` times."""
    for _ in range(200):
        if (await (await client.get("/stats")).json())["reloads"] > reloads:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the gateway did not reload its routes")


@pytest.mark.asyncio
async def test_equals_rule_sends_matching_calls_to_a_zero_ratio_version(
    store_home: Home, instance: Any, gateway: Any
) -> None:
    old, new = await instance("v1"), await instance("v2")
    ratios = [("1.0.0", 100), ("2.0.0", 0)]
    uid = store_home.add_service([("1.0.0", 100, [old.port]), ("2.0.0", 0, [new.port])])
    set_rules(store_home, uid, ratios, [BETA])
    client = await gateway()
    # Header names are case-insensitive, as HTTP says; the value must be exactly equal.
    for name in ("X-Group", "x-group", "X-GROUP"):
        assert await versions_of(client, uid, {name: "beta"}, 5) == {"2.0.0": 5}
    for value in ("Beta", "beta2", " beta-", ""):
        assert await versions_of(client, uid, {"X-Group": value}, 3) == {"1.0.0": 3}
    assert await versions_of(client, uid, None, 5) == {"1.0.0": 5}
    assert len(new.calls) == 15 and len(old.calls) == 17
    # The body reaches the ruled version as sent.
    assert all(json.loads(body) == BODY for _, body, _ in new.calls)
    stats = await stats_versions(client)
    assert (stats["2.0.0"]["rule_hits"], stats["1.0.0"]["rule_hits"]) == (15, 0)
    assert (stats["2.0.0"]["calls"], stats["1.0.0"]["calls"]) == (15, 17)
    metrics = await _metrics(client)
    assert metrics[("opsbot_gateway_rule_hits_total", uid, "2.0.0")] == 15
    assert metrics[("opsbot_gateway_rule_hits_total", uid, "1.0.0")] == 0


@pytest.mark.asyncio
async def test_matches_rule_needs_the_whole_value_to_match(
    store_home: Home, instance: Any, gateway: Any
) -> None:
    old, new = await instance("v1"), await instance("v2")
    ratios = [("1.0.0", 100), ("2.0.0", 0)]
    uid = store_home.add_service([("1.0.0", 100, [old.port]), ("2.0.0", 0, [new.port])])
    set_rules(
        store_home,
        uid,
        ratios,
        [{"header": "X-User", "matches": r"[a-z]+@example\.com", "version": "2.0.0"}],
    )
    client = await gateway()
    for user in ("ann@example.com", "bob@example.com"):
        assert await versions_of(client, uid, {"x-user": user}, 2) == {"2.0.0": 2}
    for user in ("ann@example.com.evil", "Ann@example.com", "ann@exampleXcom", "x ann@example.com"):
        assert await versions_of(client, uid, {"X-User": user}, 2) == {"1.0.0": 2}


@pytest.mark.asyncio
async def test_first_matching_rule_wins_and_a_new_order_applies_at_once(
    store_home: Home, instance: Any, gateway: Any
) -> None:
    ups = [await instance(f"v{n}") for n in (1, 2, 3)]
    ratios = [("1.0.0", 100), ("2.0.0", 0), ("3.0.0", 0)]
    uid = store_home.add_service(
        [(version, ratio, [up.port]) for (version, ratio), up in zip(ratios, ups, strict=True)]
    )
    to_two = {"header": "X-Group", "matches": "beta.*", "version": "2.0.0"}
    to_three = {"header": "X-Tier", "equals": "gold", "version": "3.0.0"}
    set_rules(store_home, uid, ratios, [to_two, to_three])
    client = await gateway(poll_s=0.02)
    both = {"X-Group": "beta-1", "X-Tier": "gold"}
    assert await versions_of(client, uid, both, 4) == {"2.0.0": 4}
    assert await versions_of(client, uid, {"X-Tier": "gold"}, 4) == {"3.0.0": 4}
    assert await versions_of(client, uid, {"X-Group": "beta"}, 4) == {"2.0.0": 4}
    reloads = (await (await client.get("/stats")).json())["reloads"]
    set_rules(store_home, uid, ratios, [to_three, to_two])
    await reloaded(client, reloads)
    assert await versions_of(client, uid, both, 4) == {"3.0.0": 4}
    assert await versions_of(client, uid, {"X-Group": "beta"}, 4) == {"2.0.0": 4}
    # Rules removed: the ratios alone decide again.
    reloads = (await (await client.get("/stats")).json())["reloads"]
    set_rules(store_home, uid, ratios, [])
    await reloaded(client, reloads)
    assert await versions_of(client, uid, both, 4) == {"1.0.0": 4}


@pytest.mark.asyncio
async def test_calls_no_rule_matches_are_split_by_ratio(
    store_home: Home, instance: Any, gateway: Any
) -> None:
    random.seed(8)  # the ratio draw is the gateway's own; seeded, the test cannot flake
    old, new, third = await instance("v1"), await instance("v2"), await instance("v3")
    ratios = [("1.0.0", 50), ("2.0.0", 50), ("3.0.0", 0)]
    uid = store_home.add_service(
        [("1.0.0", 50, [old.port]), ("2.0.0", 50, [new.port]), ("3.0.0", 0, [third.port])]
    )
    set_rules(store_home, uid, ratios, [{"header": "X-Group", "equals": "qa", "version": "3.0.0"}])
    client = await gateway()
    split = await versions_of(client, uid, {"X-Group": "dev"}, 200)
    # Binomial(200, 0.5): 99.9 % of draws fall in [77, 123]; 3.0.0 (0 %) gets nothing.
    assert set(split) == {"1.0.0", "2.0.0"} and 77 <= split["1.0.0"] <= 123, split
    assert await versions_of(client, uid, {"X-Group": "qa"}, 20) == {"3.0.0": 20}


@pytest.mark.asyncio
async def test_rule_for_a_version_without_ready_instance_falls_back_to_the_ratios(
    store_home: Home, instance: Any, gateway: Any
) -> None:
    old = await instance("v1")
    ratios = [("1.0.0", 100), ("2.0.0", 0)]
    uid = store_home.add_service([("1.0.0", 100, [old.port]), ("2.0.0", 0, [])])
    set_rules(store_home, uid, ratios, [BETA])
    client = await gateway()
    # The call is answered, by a version the ratios chose, and the answer says which.
    assert await versions_of(client, uid, {"X-Group": "beta"}, 5) == {"1.0.0": 5}
    stats = await stats_versions(client)
    assert stats["2.0.0"]["rule_fallbacks"] == 5 and stats["2.0.0"]["rule_hits"] == 0
    metrics = await _metrics(client)
    assert metrics[("opsbot_gateway_rule_fallbacks_total", uid, "2.0.0")] == 5


@pytest.mark.asyncio
async def test_ruled_version_refusing_connections_is_retried_elsewhere(
    store_home: Home, instance: Any, gateway: Any, dead_port: int
) -> None:
    old, new = await instance("v1"), await instance("v2")
    ratios = [("1.0.0", 100), ("2.0.0", 0)]
    uid = store_home.add_service([("1.0.0", 100, [old.port]), ("2.0.0", 0, [dead_port, new.port])])
    set_rules(store_home, uid, ratios, [BETA])
    client = await gateway()
    # The dead instance of the ruled version is passed over for its live sibling.
    assert await versions_of(client, uid, {"X-Group": "beta"}, 6) == {"2.0.0": 6}
    assert len(new.calls) == 6 and old.calls == []


@pytest.mark.asyncio
async def test_rules_apply_to_v2_calls_and_wrong_keys_still_fail(
    store_home: Home, instance: Any, gateway: Any
) -> None:
    old, new = await instance("v1"), await instance("v2")
    ratios = [("1.0.0", 100), ("2.0.0", 0)]
    uid = store_home.add_service([("1.0.0", 100, [old.port]), ("2.0.0", 0, [new.port])])
    set_rules(store_home, uid, ratios, [BETA])
    client = await gateway()
    resp = await client.post(
        f"/v2/models/{uid}/infer", json={"inputs": []}, headers={**AUTH, "X-Group": "beta"}
    )
    assert resp.status == 200 and resp.headers["X-Model-Version"] == "2.0.0"
    assert new.calls[0][0] == "/v2/models/iris/infer"
    resp = await _call(client, uid, {"X-Auth-Token": KEY + "x", "X-Group": "beta"})
    assert resp.status == 401
    assert len(new.calls) == 1
