"""The admin's config file ($OPSBOT_HOME/config.toml): defaults, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from core_support import message_for

from opsbot.core.app import Core
from opsbot.core.config import Config, default_home, load_config
from opsbot.core.errors import ConfigInvalid

FULL = """
admins = ["carol"]
quota = 5
runtime = "docker"
deploy_timeout_s = 600

[public_pool]
cpu_overcommit = 2.0
memory_overcommit = 1.5

[[pools]]
name = "team-a"
cpus = 16
memory_gib = 64
accelerators = { nvidia = 2 }
flavors = ["cpu.2u8g", "gpu.v100"]
members = ["alice", "bob"]
nodes = ["gpu-1"]
"""


def config_error(home: Path, text: str) -> ConfigInvalid:
    (home / "config.toml").write_text(text)
    with pytest.raises(ConfigInvalid) as info:
        load_config(home)
    return info.value


def test_no_file_means_every_default(home: Path) -> None:
    config = load_config(home)
    assert config == Config()
    assert config.quota == 20
    assert config.admins == []
    assert config.runtime == "process"
    assert (config.public_pool.cpu_overcommit, config.public_pool.memory_overcommit) == (4.0, 2.0)
    assert config.pools == []


def test_full_file(home: Path) -> None:
    (home / "config.toml").write_text(FULL)
    config = load_config(home)
    assert config.admins == ["carol"]
    assert config.quota == 5
    assert config.runtime == "docker"
    assert config.public_pool.cpu_overcommit == 2.0
    pool = config.pool("team-a")
    assert pool is not None
    assert (pool.cpus, pool.memory_gib, pool.accelerators) == (16, 64, {"nvidia": 2})
    assert pool.members == ["alice", "bob"]
    assert config.pool("nope") is None
    assert config.is_admin("carol") and not config.is_admin("alice")


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        ("quota = 0", "config.toml: quota", ["greater than or equal to 1"]),
        ('quota = "many"', "config.toml: quota", ["integer"]),
        ('colour = "blue"', "config.toml: colour", ["unknown key", "README"]),
        ('runtime = "kubernetes"', "config.toml: runtime", ["process"]),
        ('admins = "carol"', "config.toml: admins", ["list"]),
        ("[public_pool]\ncpu_overcommit = 0", "config.toml: public_pool.cpu_overcommit", ["0"]),
        ("[public_pool]\nram = 2", "config.toml: public_pool.ram", ["unknown key"]),
        (
            '[[pools]]\nname = "public"\ncpus = 1\nmemory_gib = 1',
            "config.toml: pools.0.name",
            ["shared pool", "another name"],
        ),
        (
            '[[pools]]\nname = "team"\nmemory_gib = 1',
            "config.toml: pools.0",
            ["declare both cpus and memory_gib", "or neither", "labelled nodes"],
        ),
        (
            '[[pools]]\nname = "team"\nlabel = "team a"',
            "config.toml: pools.0.label",
            ["no node label", "KEY=VALUE", "--label-add"],
        ),
        (
            '[[pools]]\nname = "a"\n[[pools]]\nname = "b"\nlabel = "opsbot.pool=a"',
            "config.toml: pools",
            ["its own node label", "opsbot.pool=a names more than one pool"],
        ),
        (
            '[[pools]]\nname = "bad name"\ncpus = 1\nmemory_gib = 1',
            "config.toml: pools.0.name",
            ["pattern"],
        ),
        (
            '[[pools]]\nname = "t"\ncpus = 1\nmemory_gib = 1\n'
            '[[pools]]\nname = "t"\ncpus = 2\nmemory_gib = 2',
            "config.toml: pools",
            ["unique", "t repeats"],
        ),
    ],
)
def test_errors_name_the_key(home: Path, text: str, field: str, words: list[str]) -> None:
    error = config_error(home, text)
    assert field in [e.field for e in error.errors]
    message_for(error, field, *words)
    assert error.title == "Invalid configuration"


def test_every_bad_key_at_once(home: Path) -> None:
    error = config_error(home, 'quota = 0\nrating = 5\nruntime = "vm"')
    assert {e.field for e in error.errors} == {
        "config.toml: quota",
        "config.toml: rating",
        "config.toml: runtime",
    }


def test_not_toml(home: Path) -> None:
    error = config_error(home, "admins = [carol")
    (only,) = error.errors
    assert only.field.endswith("config.toml")
    assert "not valid TOML" in only.message


def test_not_utf8(home: Path) -> None:
    (home / "config.toml").write_bytes(b"admins = ['\xff']\n")
    with pytest.raises(ConfigInvalid) as info:
        load_config(home)
    assert info.value.errors[0].field.endswith("config.toml")
    assert "cannot read" in info.value.errors[0].message


def test_core_refuses_a_bad_config_and_creates_nothing(home: Path) -> None:
    (home / "config.toml").write_text("quota = -3")
    with pytest.raises(ConfigInvalid):
        Core(home)
    assert sorted(p.name for p in home.iterdir()) == ["config.toml"]


def test_default_home_follows_opsbot_home(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_home() == home
    monkeypatch.delenv("OPSBOT_HOME")
    assert default_home().name == "opsbot"
    assert default_home() != home
