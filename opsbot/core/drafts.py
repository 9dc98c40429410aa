"""Forms being filled in by a front, kept in the store so a daemon restart loses none.

A draft is an opaque text (the front's serialized form) under a short key, owned by the user
who opened it: only they may read, change or drop it. Drafts unused for ``ttl`` seconds (wall
clock: the time survives a restart) are forgotten, and past ``limit`` the least recently used.
Every read touches the draft, so each is a write transaction (:meth:`Store.write`): threads
never see half a draft nor lose one's change to another's.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from opsbot.core.errors import PermissionDenied
from opsbot.core.store import Store


class DraftNotYours(PermissionDenied):
    """A draft opened by another user: neither read nor changed."""

    title = "Not your form"


class DraftStore:
    """The ``form_drafts`` table: save, load, update and drop drafts by key, as their owner."""

    def __init__(self, store: Store, *, limit: int, ttl: float):
        self.store = store
        self.limit = limit
        self.ttl = ttl

    def save(self, key: str, owner: str, state: str, now: float) -> None:
        """Keep ``state`` under ``key`` for ``owner``, as the most recently used; DraftNotYours
        when another user's draft has that key."""
        with self.store.write() as db:
            self._expire(db.conn, now)
            self._check(db.conn, key, owner)
            db.conn.execute(
                """INSERT INTO form_drafts (key, owner, state, used_at, seq)
                   VALUES (?, ?, ?, ?, (SELECT coalesce(max(seq), 0) + 1 FROM form_drafts))
                   ON CONFLICT (key) DO UPDATE
                   SET state = excluded.state, used_at = excluded.used_at, seq = excluded.seq""",
                (key, owner, state, now),
            )
            self._over_limit(db.conn)

    def load(self, key: str, owner: str, now: float) -> str | None:
        """Draft ``key``'s state, now the most recently used; None when it is unknown or
        expired; DraftNotYours when another user owns it."""
        with self.store.write() as db:
            self._expire(db.conn, now)
            if not self._check(db.conn, key, owner):
                return None
            db.conn.execute(
                """UPDATE form_drafts SET used_at = ?,
                   seq = (SELECT max(seq) + 1 FROM form_drafts) WHERE key = ?""",
                (now, key),
            )
            row = db.conn.execute("SELECT state FROM form_drafts WHERE key = ?", (key,)).fetchone()
            return str(row[0])

    def update(self, key: str, owner: str, change: Callable[[str], str]) -> bool:
        """Replace draft ``key``'s state by ``change(state)`` in one transaction (nothing is
        written between the read and the write); False when there is no such draft. Its use
        (time and order) is left as it was."""
        with self.store.write() as db:
            if not self._check(db.conn, key, owner):
                return False
            row = db.conn.execute("SELECT state FROM form_drafts WHERE key = ?", (key,)).fetchone()
            db.conn.execute(
                "UPDATE form_drafts SET state = ? WHERE key = ?", (change(str(row[0])), key)
            )
            return True

    def drop(self, key: str, owner: str) -> None:
        """Forget ``owner``'s draft ``key`` (another user's is left alone)."""
        with self.store.write() as db:
            db.conn.execute("DELETE FROM form_drafts WHERE key = ? AND owner = ?", (key, owner))

    def count(self) -> int:
        row = self.store.db.conn.execute("SELECT count(*) FROM form_drafts").fetchone()
        return int(row[0])

    @staticmethod
    def _check(conn: sqlite3.Connection, key: str, owner: str) -> bool:
        """Whether draft ``key`` exists; DraftNotYours when it is not ``owner``'s."""
        row = conn.execute("SELECT owner FROM form_drafts WHERE key = ?", (key,)).fetchone()
        if row is None:
            return False
        if row[0] != owner:
            raise DraftNotYours(f"draft {key} was opened by another user")
        return True

    def _expire(self, conn: sqlite3.Connection, now: float) -> None:
        conn.execute("DELETE FROM form_drafts WHERE used_at <= ?", (now - self.ttl,))

    def _over_limit(self, conn: sqlite3.Connection) -> None:
        conn.execute(
            """DELETE FROM form_drafts WHERE seq <=
               (SELECT seq FROM form_drafts ORDER BY seq DESC LIMIT 1 OFFSET ?)""",
            (self.limit,),
        )
