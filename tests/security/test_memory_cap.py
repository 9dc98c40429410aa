"""The memory cap where no cgroup holds an instance, as real accounts: the instance sets
``RLIMIT_DATA`` itself before it takes its owner's account (a root daemon without
``CAP_SYS_RESOURCE`` cannot set it on another account's process afterwards), soft and hard, and
the account cannot lift it."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from homes import python_model_spec

from opsbot.core.accounts import Account
from opsbot.core.instance_auth import INSTANCE_HEADER, daemon_secret, instance_secret
from opsbot.core.logcap import tail_lines
from opsbot.core.runtimes.process import CgroupLimiter, ProcessRuntime

from .conftest import People

LIFT_PY = """
import os
import resource


class Model:
    sample = [1]

    def load(self, path):
        pass

    def predict(self, instances):
        before = resource.getrlimit(resource.RLIMIT_DATA)
        try:
            resource.setrlimit(resource.RLIMIT_DATA, (before[1], before[1] + 1))
            lifted = "lifted"
        except (ValueError, OSError) as exc:
            lifted = type(exc).__name__
        return [{"uid": os.getuid(), "before": list(before), "lifted": lifted}]
"""


class _RlimitOnly(CgroupLimiter):
    """As on a machine whose cgroups the daemon cannot write."""

    def _detect(self) -> str:
        return "rlimit"


@pytest.fixture(params=["cold", "forked"])
def runtime(
    request: pytest.FixtureRequest, tmp_path: Path, people: People
) -> Iterator[ProcessRuntime]:
    home = tmp_path / "home"
    home.mkdir()
    alice = Account(people.alice.uid, people.alice.gid, people.alice.name)
    preload = ["opsbot.serving.server"] if request.param == "forked" else []
    rt = ProcessRuntime(home, accounts={"alice": alice}.get, preload=preload, limiter=_RlimitOnly())
    try:
        yield rt
    finally:
        for owned in rt.owned():
            rt.stop(owned.handle, grace_s=2)
        rt.close()


def test_an_instance_runs_under_its_flavor_s_memory_cap_and_cannot_lift_it(
    runtime: ProcessRuntime, people: People, tmp_path: Path
) -> None:
    model = tmp_path / "lift"
    model.mkdir()
    (model / "model.py").write_text(LIFT_PY)
    spec = python_model_spec(model, "memsvc", "alice")
    started = runtime.start(spec)
    secret = instance_secret(daemon_secret(runtime.home), spec.service_uid, spec.idx)
    ask = urllib.request.Request(
        f"http://{started.host}:{started.port}/predict",
        data=json.dumps({"instances": [1]}).encode(),
        headers={"Content-Type": "application/json", INSTANCE_HEADER: secret},
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(ask, timeout=30) as resp:
                answer: dict[str, Any] = json.loads(resp.read())["predictions"][0]
                break
        except OSError:
            assert time.monotonic() < deadline, "the instance never answered"
            time.sleep(0.05)

    memory = spec.flavor.memory_bytes
    assert answer["uid"] == people.alice.uid
    assert answer["before"] == [memory, memory]  # soft and hard: the hard one lowered
    assert answer["lifted"] == "ValueError"  # "not allowed to raise maximum limit"
    lines = tail_lines(runtime.log_path(spec.key), 50)
    assert any(f"rlimit: data {spec.flavor.memory_gib:g} GiB" in line for line in lines), lines
