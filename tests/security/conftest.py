"""Real unix accounts for the security tests: two members of the socket group, an admin and an
outsider, made with ``useradd`` for the session and removed after it.

The tests run as root, as CI does: that is the only way to run model code as its owner's
account, so a run without root is a failure here, never a skip.
"""

from __future__ import annotations

import grp
import os
import pwd
import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from opsbot.core.accounts import Account
from opsbot.core.runtimes.process import CgroupLimiter, ProcessRuntime


@dataclass(frozen=True)
class Person:
    name: str
    uid: int
    gid: int


@dataclass(frozen=True)
class People:
    group: str
    alice: Person  # a member: owns models and services
    bob: Person  # another member
    admin: Person  # a member listed in admins
    eve: Person  # an outsider: a local account not in the socket group


def _add_user(name: str, groups: list[str]) -> Person:
    cmd = ["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group"]
    if groups:
        cmd += ["--groups", ",".join(groups)]
    subprocess.run([*cmd, name], check=True, capture_output=True)
    entry = pwd.getpwnam(name)
    return Person(name, entry.pw_uid, entry.pw_gid)


@pytest.fixture(scope="session", name="people")
def people_fixture() -> Iterator[People]:
    assert os.geteuid() == 0, "the security tests create accounts: run them as root (CI does)"
    tag = secrets.token_hex(3)
    group = f"obsock{tag}"
    subprocess.run(["groupadd", group], check=True, capture_output=True)
    made: list[str] = []
    try:
        alice = _add_user(f"oba{tag}", [group])
        made.append(alice.name)
        bob = _add_user(f"obb{tag}", [group])
        made.append(bob.name)
        admin = _add_user(f"obr{tag}", [group])
        made.append(admin.name)
        eve = _add_user(f"obe{tag}", [])
        made.append(eve.name)
        yield People(group, alice, bob, admin, eve)
    finally:
        for name in made:
            subprocess.run(["userdel", name], capture_output=True)
        subprocess.run(["groupdel", group], capture_output=True)
        assert not any(n in made for n in (g.gr_name for g in grp.getgrall()))


@contextmanager
def alice_runtime(
    tmp_path: Path, people: People, kind: str, limiter: CgroupLimiter | None = None
) -> Iterator[ProcessRuntime]:
    """A process runtime on a new home under ``tmp_path`` that runs alice's instances as her
    account: ``kind`` "forked" from a preloader of the model server, "cold" as new
    interpreters. Its instances are stopped after."""
    home = tmp_path / "home"
    home.mkdir()
    alice = Account(people.alice.uid, people.alice.gid, people.alice.name)
    preload = ["opsbot.serving.server"] if kind == "forked" else []
    extra = {} if limiter is None else {"limiter": limiter}
    runtime = ProcessRuntime(home, accounts={"alice": alice}.get, preload=preload, **extra)
    try:
        yield runtime
    finally:
        for owned in runtime.owned():
            runtime.stop(owned.handle, grace_s=2)
        runtime.close()
