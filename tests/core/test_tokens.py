"""The daemon's token files (its own token, the gateway's /metrics scrape token): private,
made whole once, replaced whole; and who may read or rotate the scrape token."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from opsbot.core.app import Core
from opsbot.core.errors import PermissionDenied
from opsbot.core.identity import User, local_user_name
from opsbot.core.instance_auth import DAEMON_SECRET_FILE, daemon_secret
from opsbot.core.keys import (
    METRICS_TOKEN_FILE,
    metrics_token,
    rotate_metrics_token,
    token_file,
)


def test_a_token_file_is_private_and_made_once(tmp_path: Path) -> None:
    token = metrics_token(tmp_path)
    path = tmp_path / METRICS_TOKEN_FILE
    assert path.stat().st_mode & 0o777 == 0o600
    assert token.startswith("obm_") and len(token) > 40
    assert metrics_token(tmp_path) == token
    assert daemon_secret(tmp_path) == (tmp_path / DAEMON_SECRET_FILE).read_text().strip()
    assert sorted(p.name for p in tmp_path.iterdir()) == [DAEMON_SECRET_FILE, METRICS_TOKEN_FILE]


def test_first_uses_at_once_agree_on_one_token(tmp_path: Path) -> None:
    path = tmp_path / "token"
    start = threading.Barrier(8)
    seen: list[str] = []

    def first_use() -> None:
        start.wait()
        seen.append(token_file(path))

    threads = [threading.Thread(target=first_use) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(seen)) == 1 and seen[0]
    assert [p.name for p in tmp_path.iterdir()] == ["token"]  # nothing left aside


def test_a_rotation_replaces_the_token_whole(tmp_path: Path) -> None:
    old = metrics_token(tmp_path)
    new = rotate_metrics_token(tmp_path)
    assert new != old and new.startswith("obm_")
    assert metrics_token(tmp_path) == new
    assert (tmp_path / METRICS_TOKEN_FILE).stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [METRICS_TOKEN_FILE]


def test_only_an_admin_or_the_daemon_s_account_reads_the_scrape_token(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('admins = ["root-of-all"]\n')
    core = Core(tmp_path)
    token = core.metrics_token(User("root-of-all", is_admin=True))
    assert token == metrics_token(tmp_path)
    assert core.metrics_token(User(local_user_name())) == token
    with pytest.raises(PermissionDenied, match="only an admin"):
        core.metrics_token(User("someone-else"))
    with pytest.raises(PermissionDenied):
        core.metrics_token(User("someone-else"), rotate=True)
    assert metrics_token(tmp_path) == token  # a refusal changes nothing
    rotated = core.metrics_token(User("root-of-all", is_admin=True), rotate=True)
    assert rotated != token and metrics_token(tmp_path) == rotated
