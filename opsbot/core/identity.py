"""Who is calling: a local account name, or a Slack user linked to one.

A Slack user who is not linked is a user of their own, named ``slack:<ID>``. Admins are listed
in the config file.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass

from opsbot.core.clock import Clock
from opsbot.core.config import Config
from opsbot.core.errors import FieldError, InvalidInput
from opsbot.core.store import Store

SLACK_PREFIX = "slack:"


@dataclass(frozen=True)
class User:
    name: str
    is_admin: bool = False

    def can_act_on(self, owner: str) -> bool:
        """Only the owner or an admin may change a service or a model."""
        return self.is_admin or self.name == owner


def local_user_name(uid: int | None = None) -> str:
    """The account name of a local uid (the caller's own by default)."""
    uid = os.geteuid() if uid is None else uid
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid{uid}"


def user(name: str, config: Config) -> User:
    return User(name=name, is_admin=config.is_admin(name))


def link_slack(store: Store, clock: Clock, local_name: str, slack_id: str) -> None:
    """Make a Slack user act as a local account: same quota, same services."""
    if not slack_id or not slack_id.isalnum():
        raise InvalidInput([FieldError("slack_user_id", "a Slack user ID looks like U012AB3CD")])
    if not local_name or local_name.startswith(SLACK_PREFIX):
        raise InvalidInput([FieldError("local_name", "give a local account name")])
    with store.write() as db:
        db.execute("UPDATE users SET slack_id = NULL WHERE slack_id = ?", (slack_id,))
        db.execute(
            """INSERT INTO users (name, slack_id, created_at) VALUES (?, ?, ?)
               ON CONFLICT(name) DO UPDATE SET slack_id = excluded.slack_id""",
            (local_name, slack_id, clock.now()),
        )


def slack_user_name(store: Store, slack_id: str) -> str:
    """The local name a Slack user acts as: the linked account, else ``slack:<ID>``."""
    row = store.db.execute("SELECT name FROM users WHERE slack_id = ?", (slack_id,)).fetchone()
    return str(row[0]) if row else f"{SLACK_PREFIX}{slack_id}"
