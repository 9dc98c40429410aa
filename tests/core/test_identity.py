"""Identity: a local account, or a Slack user linked to one (else ``slack:<ID>``); admins come
from the config file."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest
from core_support import make_core, message_for

from opsbot.core.app import Core
from opsbot.core.config import Config
from opsbot.core.errors import InvalidInput, PermissionDenied
from opsbot.core.identity import User, local_user_name


@pytest.fixture
def core(home: Path) -> Core:
    (home / "config.toml").write_text('admins = ["carol"]\n')
    return make_core(home)


def test_admins_come_from_the_config(core: Core) -> None:
    assert core.user("carol") == User("carol", is_admin=True)
    assert core.user("alice") == User("alice", is_admin=False)


def test_no_admins_by_default(home: Path) -> None:
    assert not make_core(home).user("root").is_admin


def test_who_may_act_on_what() -> None:
    assert User("alice").can_act_on("alice")
    assert not User("alice").can_act_on("bob")
    assert User("carol", is_admin=True).can_act_on("bob")


def test_unlinked_slack_user_is_a_user_of_their_own(core: Core) -> None:
    stranger = core.slack_user("U0NOBODY")
    assert stranger == User("slack:U0NOBODY", is_admin=False)


def test_linked_slack_user_acts_as_the_local_account(core: Core) -> None:
    core.link_slack(core.user("alice"), "alice", "U012AB3CD")
    assert core.slack_user("U012AB3CD") == User("alice", is_admin=False)


def test_slack_user_linked_to_an_admin_is_an_admin(core: Core) -> None:
    core.link_slack(core.user("carol"), "carol", "UADMIN1")
    assert core.slack_user("UADMIN1").is_admin


def test_only_an_admin_links_someone_else(core: Core) -> None:
    with pytest.raises(PermissionDenied) as info:
        core.link_slack(core.user("bob"), "alice", "U012AB3CD")
    assert "admin" in info.value.message
    assert core.slack_user("U012AB3CD").name == "slack:U012AB3CD"
    core.link_slack(core.user("carol"), "alice", "U012AB3CD")
    assert core.slack_user("U012AB3CD").name == "alice"


def test_relinking_moves_the_slack_user(core: Core) -> None:
    admin = core.user("carol")
    core.link_slack(admin, "alice", "U1")
    core.link_slack(admin, "bob", "U1")
    assert core.slack_user("U1").name == "bob"
    # One Slack user per account: linking alice to another ID replaces the first.
    core.link_slack(admin, "alice", "U2")
    core.link_slack(admin, "alice", "U3")
    assert core.slack_user("U2").name == "slack:U2"
    assert core.slack_user("U3").name == "alice"


@pytest.mark.parametrize(
    ("local", "slack_id", "field"),
    [
        ("alice", "", "slack_user_id"),
        ("alice", "U1 2", "slack_user_id"),
        ("alice", "<@U1>", "slack_user_id"),
        ("", "U1", "local_name"),
        ("slack:U9", "U1", "local_name"),
    ],
)
def test_link_errors(core: Core, local: str, slack_id: str, field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        core.link_slack(core.user("carol"), local, slack_id)
    message_for(info.value, field)


def test_local_user_name() -> None:
    assert local_user_name() == pwd.getpwuid(os.geteuid()).pw_name
    unused = next(uid for uid in range(60000, 70000) if not _exists(uid))
    assert local_user_name(unused) == f"uid{unused}"


def _exists(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def test_config_object_decides_admins(home: Path) -> None:
    core = make_core(home, config=Config(admins=["dave"]))
    assert core.user("dave").is_admin
    assert not core.user("carol").is_admin
