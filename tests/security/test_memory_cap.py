"""The memory cap where no cgroup holds an instance, as real accounts: the instance sets
``RLIMIT_DATA`` itself before it takes its owner's account (a root daemon without
``CAP_SYS_RESOURCE`` cannot set it on another account's process afterwards), soft and hard, and
the account cannot lift it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from homes import RlimitOnly, ask_instance, python_model_spec

from opsbot.core.logcap import tail_lines
from opsbot.core.runtimes.process import ProcessRuntime

from .conftest import People, alice_runtime

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


@pytest.fixture(params=["cold", "forked"])
def runtime(
    request: pytest.FixtureRequest, tmp_path: Path, people: People
) -> Iterator[ProcessRuntime]:
    with alice_runtime(tmp_path, people, request.param, RlimitOnly()) as made:
        yield made


def test_an_instance_runs_under_its_flavor_s_memory_cap_and_cannot_lift_it(
    runtime: ProcessRuntime, people: People, tmp_path: Path
) -> None:
    model = tmp_path / "lift"
    model.mkdir()
    (model / "model.py").write_text(LIFT_PY)
    spec = python_model_spec(model, "memsvc", "alice")
    answer = ask_instance(runtime.home, spec, runtime.start(spec))

    memory = spec.flavor.memory_bytes
    assert answer["uid"] == people.alice.uid
    assert answer["before"] == [memory, memory]  # soft and hard: the hard one lowered
    assert answer["lifted"] == "ValueError"  # "not allowed to raise maximum limit"
    lines = tail_lines(runtime.log_path(spec.key), 50)
    assert any(f"rlimit: data {spec.flavor.memory_gib:g} GiB" in line for line in lines), lines
