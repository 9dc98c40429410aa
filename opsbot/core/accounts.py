"""The unix account model code runs as: its owner's, never the daemon's.

When the daemon runs as root, the registry's check and every process instance of an owner's
model run as that owner's unix account (its primary group, no supplementary groups). An owner
with no usable local account (a Slack-only user ``slack:U123``, ``root`` itself, a name unknown
to the system) gets a uid of its own that opsbot manages: allocated once from
``managed_uid_base`` upwards, recorded in the store, with no passwd entry, no home and no
groups, so it can read nothing that is not world-readable.

When the daemon is not root it cannot change user: :func:`runtime_account` answers None and
model code runs as the daemon's own account (the README says what that does and does not
isolate).
"""

from __future__ import annotations

import os
import pwd
import threading
from dataclasses import dataclass

from opsbot.core.store import Store

#: The first uid opsbot hands out to owners without a local account: above the ranges that
#: useradd (1000-60000) and systemd's dynamic users (61184-65519) use.
MANAGED_UID_BASE = 620_000
MANAGED_UID_COUNT = 100_000

_lock = threading.Lock()


@dataclass(frozen=True)
class Account:
    """A unix identity to run model code as."""

    uid: int
    gid: int
    name: str
    #: True for a uid opsbot allocated (no passwd entry).
    managed: bool = False


def privileged() -> bool:
    """Whether this process may run others as another user."""
    return os.geteuid() == 0


def local_account(name: str) -> Account | None:
    """The owner's own unix account, when it is one model code may run as: it exists and is not
    root (nor the daemon's own account, which holds the store)."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    if entry.pw_uid in (0, os.geteuid()):
        return None
    return Account(entry.pw_uid, entry.pw_gid, entry.pw_name)


def managed_account(store: Store, owner: str, base: int = MANAGED_UID_BASE) -> Account:
    """The uid opsbot manages for ``owner``, allocated on first use and kept in the store."""
    with _lock, store.write() as db:
        row = db.execute("SELECT uid FROM runtime_accounts WHERE owner = ?", (owner,)).fetchone()
        if row is None:
            taken = {r[0] for r in db.execute("SELECT uid FROM runtime_accounts").fetchall()}
            uid = next(
                (
                    u
                    for u in range(base, base + MANAGED_UID_COUNT)
                    if u not in taken and not _has_passwd_entry(u)
                ),
                None,
            )
            if uid is None:
                raise RuntimeError(
                    f"no free managed uid in {base}..{base + MANAGED_UID_COUNT}; "
                    "remove owners who left, or raise managed_uid_base"
                )
            db.execute(
                "INSERT INTO runtime_accounts (owner, uid) VALUES (?, ?)",
                (owner, uid),
            )
        else:
            uid = int(row[0])
    return Account(uid, uid, f"opsbot-{uid}", managed=True)


def _has_passwd_entry(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def runtime_account(store: Store, owner: str) -> Account | None:
    """Who ``owner``'s model code runs as; None when the daemon cannot change user (not root),
    and model code then runs as the daemon's own account."""
    if not privileged():
        return None
    return local_account(owner) or managed_account(store, owner)
