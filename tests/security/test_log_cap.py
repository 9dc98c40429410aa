"""The log cap as real accounts: an instance cannot lift its file size backstop, nor reach its
log's rotated copies to plant a link there."""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from homes import ask_instance, python_model_spec

from opsbot.core.accounts import Account
from opsbot.core.logcap import LOG_CAP, MIN_BACKSTOP_BYTES, rotated
from opsbot.core.runtimes.process import ProcessRuntime
from opsbot.core.sandbox import clean_env, release, spawn

from .conftest import People, alice_runtime

LIFT_PY = """
import os
import resource


class Model:
    sample = [1]

    def load(self, path):
        pass

    def predict(self, instances):
        logs = os.path.join(os.environ["OPSBOT_HOME_ID"], "logs")
        key = os.environ["OPSBOT_INSTANCE"].replace("/", "-")
        before = resource.getrlimit(resource.RLIMIT_FSIZE)
        tries = {}
        for name, limits in [
            ("unlimited", (resource.RLIM_INFINITY, resource.RLIM_INFINITY)),
            ("hard_up", (before[1], before[1] + 1)),
        ]:
            try:
                resource.setrlimit(resource.RLIMIT_FSIZE, limits)
                tries[name] = "lifted"
            except (ValueError, OSError) as exc:
                tries[name] = type(exc).__name__
        try:
            os.symlink("/etc/shadow", os.path.join(logs, key + ".log.1"))
            tries["plant"] = "planted"
        except OSError as exc:
            tries["plant"] = type(exc).__name__
        return [{
            "uid": os.getuid(),
            "before": list(before),
            "after": list(resource.getrlimit(resource.RLIMIT_FSIZE)),
            "tries": tries,
        }]
"""


@pytest.fixture(params=["cold", "forked"])
def runtime(
    request: pytest.FixtureRequest, tmp_path: Path, people: People
) -> Iterator[ProcessRuntime]:
    with alice_runtime(tmp_path, people, request.param) as made:
        yield made


def test_an_instance_cannot_lift_its_file_size_cap(
    runtime: ProcessRuntime, people: People, tmp_path: Path
) -> None:
    model = tmp_path / "lift"
    model.mkdir()
    (model / "model.py").write_text(LIFT_PY)
    spec = python_model_spec(model, "liftsvc", "alice")
    answer = ask_instance(runtime.home, spec, runtime.start(spec))

    cap = LOG_CAP.backstop_bytes
    assert answer["uid"] == people.alice.uid
    assert answer["before"] == [cap, cap]  # the hard limit lowered, not only the soft one
    assert answer["tries"]["unlimited"] == "ValueError"  # "not allowed to raise maximum limit"
    assert answer["tries"]["hard_up"] == "ValueError"
    assert answer["after"] == [cap, cap]
    # Nor can it reach the log's copies: the logs directory is the daemon's alone.
    assert answer["tries"]["plant"] == "PermissionError"
    assert not os.path.lexists(rotated(runtime.log_path(spec.key), 1))
    assert resource.getrlimit(resource.RLIMIT_FSIZE)[1] == resource.RLIM_INFINITY  # the daemon's


def test_the_gate_takes_the_account_before_any_of_the_instance_s_environment_applies(
    people: People, tmp_path: Path
) -> None:
    """The gate may start as root, and an instance's environment is partly its owner's to
    choose (LD_PRELOAD, say): none of it applies to the gate, only to what it executes."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    os.chown(scratch, people.alice.uid, people.alice.gid)
    alice = Account(people.alice.uid, people.alice.gid, people.alice.name)
    env = clean_env({"LD_PRELOAD": str(tmp_path / "evil.so"), "MARK": "applied"})
    command = ["/bin/sh", "-c", 'echo "$MARK $(id -u) $(ulimit -H -f)"']
    with open(tmp_path / "out", "wb") as out:
        proc = spawn(
            command,
            account=alice,
            env=env,
            cwd=scratch,
            stdout=out,
            stderr=out,
            held=True,
            file_size=MIN_BACKSTOP_BYTES,
        )
        try:
            status = Path(f"/proc/{proc.pid}/status")
            deadline = time.monotonic() + 30
            while f"Uid:\t{people.alice.uid}\t" not in status.read_text():  # it became alice
                assert time.monotonic() < deadline, "the gate never took the account"
                time.sleep(0.01)
            # Held as alice, still the gate: its environment is empty, the instance's unread.
            assert Path(f"/proc/{proc.pid}/environ").read_bytes() == b""
            limits = Path(f"/proc/{proc.pid}/limits").read_text()
            assert f"Max file size             {MIN_BACKSTOP_BYTES}" in limits
        finally:
            release(proc)
            assert proc.wait(timeout=30) == 0
    said = (tmp_path / "out").read_text().splitlines()
    blocks = MIN_BACKSTOP_BYTES // 512  # sh counts the file size limit in 512-byte blocks
    assert said[-1] == f"applied {people.alice.uid} {blocks}"
