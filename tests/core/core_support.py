"""Helpers for the core tests: spec builders, fake nodes, assertions on field errors."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from opsbot.core.app import DB_NAME, Core
from opsbot.core.clock import FakeClock
from opsbot.core.config import Config
from opsbot.core.controller import Controller, instance_rows
from opsbot.core.errors import OpsbotError, SpecInvalid
from opsbot.core.hardware import GIB, Device, FakeProbe, Node
from opsbot.core.identity import local_user_name
from opsbot.core.runtime import FakeRuntime
from opsbot.core.spec import DeploySpec, parse_spec
from opsbot.core.status import Status

#: The ExeML model the ``examples_home`` fixture registers (tests/conftest.py).
EXEML_MODEL = "flowers"


def entry(**fields: Any) -> dict[str, Any]:
    """One model entry of a spec: iris 1.0.0 unless told otherwise."""
    return {"model": "iris", "version": "1.0.0", **fields}


def spec(**fields: Any) -> dict[str, Any]:
    """A valid spec with one entry, the given fields replacing the defaults."""
    return {"name": "svc", "models": [entry()], **fields}


def gated(**fields: Any) -> dict[str, Any]:
    """A valid gated launch: iris 1.0.0 takes 70 %, 2.0.0 takes 30 %."""
    models = [
        entry(version="1.0.0", traffic_ratio=70),
        entry(version="2.0.0", traffic_ratio=30),
    ]
    return {"name": "gated", "models": models, **fields}


def ok(data: Any) -> DeploySpec:
    return parse_spec(data)


def refused(data: Any) -> SpecInvalid:
    with pytest.raises(SpecInvalid) as info:
        parse_spec(data)
    return info.value


def fields_of(error: OpsbotError) -> list[str]:
    return [e.field for e in error.errors]


def message_for(error: OpsbotError, field: str, *words: str) -> str:
    """The message of the error on ``field``: it must exist, read as a sentence, and contain
    each of ``words`` (case-insensitive), so it says what is wrong and what to do."""
    found = [e.message for e in error.errors if e.field == field]
    assert found, f"no error on {field!r}; errors: {[e.as_dict() for e in error.errors]}"
    message = found[0]
    assert len(message.split()) >= 3, f"{field}: {message!r} does not say what to do"
    for word in words:
        assert word.lower() in message.lower(), f"{field}: {word!r} not in {message!r}"
    return message


# -- nodes ----------------------------------------------------------------------------------


def node(
    name: str = "node-1",
    cpus: int = 8,
    memory_gib: float = 32,
    arch: str = "x86_64",
    devices: Sequence[Device] = (),
) -> Node:
    return Node(
        name=name,
        cpus=cpus,
        memory_bytes=int(memory_gib * GIB),
        arch=arch,
        devices=tuple(devices),
    )


def nvidia(model: str, index: int = 0) -> Device:
    return Device("nvidia", model, index)


def ascend(model: str, index: int = 0) -> Device:
    return Device("ascend", model, index)


def cpu_probe(cpus: int = 8, memory_gib: float = 32) -> FakeProbe:
    """One x86 node without accelerators."""
    return FakeProbe([node("cpu-1", cpus, memory_gib)])


def big_probe() -> FakeProbe:
    """One node so large that capacity never limits a test."""
    return FakeProbe([node("big", 4096, 65536)])


def make_core(home: Path, probe: FakeProbe | None = None, config: Config | None = None) -> Core:
    return Core(home, probe=probe or cpu_probe(), config=config)


# -- the store ------------------------------------------------------------------------------


def snapshot(home: Path) -> tuple[dict[str, list[tuple[Any, ...]]], list[str]]:
    """Every row of every table, and every file under models/: to prove nothing changed."""
    rows: dict[str, list[tuple[Any, ...]]] = {}
    db = home / DB_NAME
    if db.exists():
        conn = sqlite3.connect(db)
        try:
            names = [
                r[0]
                for r in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
                )
            ]
            for name in names:
                rows[name] = sorted(conn.execute(f"SELECT * FROM {name}").fetchall(), key=repr)
        finally:
            conn.close()
    models = home / "models"
    files = sorted(str(p.relative_to(home)) for p in models.rglob("*")) if models.exists() else []
    return rows, files


def count(home: Path, sql: str, *params: Any) -> int:
    conn = sqlite3.connect(home / DB_NAME)
    try:
        return int(conn.execute(sql, params).fetchone()[0])
    finally:
        conn.close()


class World:
    """A core, a controller over a fake runtime, and the instances' readiness by port."""

    def __init__(self, home: Path, probe: FakeProbe | None = None, timeout_s: float = 600):
        self.clock = FakeClock()
        self.core = Core(home, probe=probe or big_probe(), clock=self.clock)
        self.me = self.core.user(local_user_name())
        self.runtime = FakeRuntime()
        self.not_ready: set[int] = set()
        self.controller = Controller(
            self.core.store,
            self.runtime,
            {f.id: f for f in self.core.flavors},
            self.core.probe,
            self.clock,
            deploy_timeout_s=timeout_s,
            route_settle_s=0,  # the fake clock stands still; the settle test sets its own
            ready=lambda host, port: port not in self.not_ready,
        )

    def restarted_controller(self) -> Controller:
        """A second controller over the same store and runtime: what a restarted daemon makes
        (every instance it asks is ready)."""
        return Controller(
            self.core.store,
            self.runtime,
            {f.id: f for f in self.core.flavors},
            self.core.probe,
            self.clock,
            ready=lambda host, port: True,
        )

    def deploy(self, **spec: object) -> str:
        data = {"name": "svc", "models": [entry()], **spec}
        self.core.create_service(self.me, data)
        return str(data["name"])

    def status(self, name: str = "svc") -> Status:
        return self.core.service(self.me, name).status

    def kinds(self, name: str = "svc") -> list[str]:
        return [e.kind for e in self.core.events(self.me, service=name)]

    def handles(self, name: str = "svc") -> list[str]:
        service = self.core.service(self.me, name)
        return [r.handle for r in instance_rows(self.core.store, service.id)]
