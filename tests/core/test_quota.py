"""The quota: at most 20 services per user, checked and inserted in one BEGIN IMMEDIATE
transaction, so 50 concurrent creations end with exactly 20 services and 30 refusals. Also what
creation records: the service, its versions, a hashed key, a snapshot and an event."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from pathlib import Path

import pytest
from core_support import big_probe, count, entry, make_core, spec

from opsbot.core.app import DB_NAME, Core
from opsbot.core.config import Config
from opsbot.core.errors import Conflict, QuotaExceeded
from opsbot.core.services import Created

ATTEMPTS = 50


def race(core: Core, user: str, n: int) -> tuple[list[Created], list[Exception]]:
    """n threads create one service each, all released at the same moment."""
    actor = core.user(user)
    start = threading.Barrier(n)
    created: list[Created] = []
    refused: list[Exception] = []
    lock = threading.Lock()

    def create(i: int) -> None:
        start.wait()
        try:
            result = core.create_service(actor, spec(name=f"svc-{i:02d}"))
        except Exception as exc:  # collected and asserted on below
            with lock:
                refused.append(exc)
        else:
            with lock:
                created.append(result)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    return created, refused


def test_fifty_concurrent_creations_leave_exactly_twenty(examples_home: Path, me: str) -> None:
    core = make_core(examples_home, big_probe())
    created, refused = race(core, me, ATTEMPTS)

    assert len(created) == 20
    assert len(refused) == 30
    assert all(type(e) is QuotaExceeded for e in refused), {type(e).__name__ for e in refused}
    for error in refused:
        assert isinstance(error, QuotaExceeded)
        assert error.field == "name"
        assert f"{me} holds 20 of 20 services" in error.message
        assert "delete one" in error.message
    assert count(examples_home, "SELECT COUNT(*) FROM services WHERE owner = ?", me) == 20
    assert core.quota_used(core.user(me)) == (20, 20)
    assert len({c.service.uid for c in created}) == 20
    assert len({c.api_key for c in created}) == 20
    assert count(examples_home, "SELECT COUNT(*) FROM events WHERE kind = 'quota_refused'") == 30
    assert count(examples_home, "SELECT COUNT(*) FROM events WHERE kind = 'created'") == 20


def test_another_user_is_not_affected(examples_home: Path, me: str) -> None:
    core = make_core(examples_home, big_probe())
    created, _ = race(core, me, 25)
    assert len(created) == 20
    bob = core.user("bob")
    core.subscribe(bob, f"{me}/iris")
    mine = spec(models=[entry(source="subscribed", model=f"{me}/iris")])
    result = core.create_service(bob, mine)
    assert (result.service.owner, result.service.name) == ("bob", "svc")
    assert core.quota_used(bob) == (1, 20)
    with pytest.raises(QuotaExceeded):
        core.create_service(core.user(me), spec(name="one-more"))


def test_quota_is_configurable(examples_home: Path, me: str) -> None:
    core = make_core(examples_home, big_probe(), Config(quota=2))
    actor = core.user(me)
    core.create_service(actor, spec(name="a"))
    core.create_service(actor, spec(name="b"))
    with pytest.raises(QuotaExceeded) as info:
        core.create_service(actor, spec(name="c"))
    assert "holds 2 of 2 services" in info.value.message
    assert [s.name for s in core.services(actor)] == ["a", "b"]


def test_every_state_counts_until_deleted(examples_home: Path, me: str) -> None:
    core = make_core(examples_home, big_probe(), Config(quota=1))
    actor = core.user(me)
    core.create_service(actor, spec(name="a"))
    conn = sqlite3.connect(examples_home / DB_NAME)
    with conn:
        conn.execute("UPDATE services SET status = 'stopped'")
    conn.close()
    with pytest.raises(QuotaExceeded):
        core.create_service(actor, spec(name="b"))


def test_a_name_is_unique_per_owner(examples_home: Path, me: str) -> None:
    core = make_core(examples_home, big_probe())
    core.create_service(core.user(me), spec(name="prod"))
    with pytest.raises(Conflict) as info:
        core.create_service(core.user(me), spec(name="prod"))
    assert info.value.field == "name"
    assert "choose another name" in info.value.message
    core.subscribe(core.user("bob"), f"{me}/iris")
    other = core.create_service(
        core.user("bob"),
        spec(name="prod", models=[entry(source="subscribed", model=f"{me}/iris")]),
    )
    assert other.service.name == "prod"


def test_what_creation_records(examples_home: Path, me: str) -> None:
    core = make_core(examples_home, big_probe())
    data = spec(
        name="canary",
        auto_stop="2h",
        models=[
            entry(
                version="1.0.0", traffic_ratio=90, instances=2, env={"API_TOKEN": "t0k3n-abc123"}
            ),
            entry(version="2.0.0", traffic_ratio=10),
        ],
    )
    result = core.create_service(core.user(me), data)
    service = result.service
    assert service.status.value == "deploying"
    assert core.service(core.user(me), "canary") == service
    shown = service.as_dict()
    assert shown["models"][0]["env"] == {"API_TOKEN": "t0****23"}  # masked wherever shown
    assert service.spec.models[0].env == {"API_TOKEN": "t0k3n-abc123"}  # kept for the runtime
    assert shown["auto_stop"] == "2h"
    assert shown["url"] == f"/v1/infers/{service.uid}"

    conn = sqlite3.connect(examples_home / DB_NAME)
    try:
        versions = conn.execute(
            "SELECT idx, traffic_ratio, flavor, instances FROM service_versions ORDER BY idx"
        ).fetchall()
        assert versions == [(0, 90, "cpu.2u8g", 2), (1, 10, "cpu.2u8g", 1)]
        (key_hash,) = conn.execute("SELECT key_hash FROM api_keys").fetchone()
        assert key_hash == hashlib.sha256(result.api_key.encode()).hexdigest()
        # The key itself is stored nowhere.
        dump = "\n".join(conn.iterdump())
        assert result.api_key not in dump
        assert conn.execute("SELECT n, actor FROM config_snapshots").fetchall() == [(1, me)]
    finally:
        conn.close()
