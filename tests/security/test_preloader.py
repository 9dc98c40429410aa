"""Forks of the preloader, as real accounts: each runs as its owner, and the process they are
all copied from never holds what one of them was given (its secret, its environment)."""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from homes import ask_instance, python_model_spec

from opsbot.core.accounts import Account
from opsbot.core.runtimes.process import ProcessRuntime

from .conftest import People

WHOAMI_PY = """
import os

class Model:
    sample = [1]

    def load(self, path):
        pass

    def predict(self, instances):
        status = open("/proc/self/status").read()
        return [{"uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(),
                 "groups": os.getgroups(), "env": dict(os.environ),
                 "caps": [ln for ln in status.splitlines() if ln.startswith("CapEff")]}]
"""


@pytest.fixture
def forking(tmp_path: Path, people: People) -> Iterator[ProcessRuntime]:
    home = tmp_path / "home"
    home.mkdir()
    accounts = {
        "alice": Account(people.alice.uid, people.alice.gid, people.alice.name),
        "bob": Account(people.bob.uid, people.bob.gid, people.bob.name),
    }
    runtime = ProcessRuntime(home, accounts=accounts.get, preload=["json"])
    try:
        yield runtime
    finally:
        for owned in runtime.owned():
            runtime.stop(owned.handle, grace_s=2)
        runtime.close()


def _memory_holds(pid: int, needles: list[bytes]) -> set[bytes]:
    """Which of ``needles`` appear anywhere in the readable memory of process ``pid``."""
    found: set[bytes] = set()
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            fields = line.split()
            if not fields[1].startswith("r"):
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            try:
                mem.seek(start)
                chunk = mem.read(end - start)
            except (OSError, ValueError, OverflowError):
                continue  # [vvar] and the like
            found |= {n for n in needles if n in chunk}
    return found


def test_forks_run_as_their_owners_and_the_preloader_keeps_none_of_their_secrets(
    forking: ProcessRuntime, people: People, tmp_path: Path
) -> None:
    model = tmp_path / "whoami"
    model.mkdir()
    (model / "model.py").write_text(WHOAMI_PY)
    token = secrets.token_hex(16)
    alice_spec = python_model_spec(model, "alicesvc", "alice", API_TOKEN=token)
    bob_spec = python_model_spec(model, "bobsvc", "bob")
    alice = ask_instance(forking.home, alice_spec, forking.start(alice_spec))
    bob = ask_instance(forking.home, bob_spec, forking.start(bob_spec))

    assert "forked from the preloader" in forking.log_path(alice_spec.key).read_text()
    assert (alice["uid"], alice["euid"], alice["gid"]) == (people.alice.uid,) * 2 + (
        people.alice.gid,
    )
    assert alice["groups"] == []  # no supplementary group, root's or anyone's
    assert (bob["uid"], bob["gid"], bob["groups"]) == (people.bob.uid, people.bob.gid, [])
    assert re.fullmatch(r"CapEff:\s+0+", alice["caps"][0])  # no capability left from root
    assert alice["env"]["API_TOKEN"] == token and "API_TOKEN" not in bob["env"]

    (zygote,) = forking._zygotes.values()
    assert zygote.pid is not None
    alice_secret = alice["env"]["OPSBOT_INSTANCE_SECRET"].encode()
    assert len(alice_secret) >= 32
    held = _memory_holds(zygote.pid, [token.encode(), alice_secret, b"opsbot.serving.zygote"])
    assert b"opsbot.serving.zygote" in held  # the scan reads the preloader's memory
    assert token.encode() not in held and alice_secret not in held
    assert os.stat(f"/proc/{zygote.pid}").st_uid == 0  # the preloader itself stays root
