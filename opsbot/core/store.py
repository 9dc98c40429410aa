"""The store: SQLite through sqlite-utils, the single source of truth.

WAL mode, one connection per thread, versioned migrations (``PRAGMA user_version``), and
``BEGIN IMMEDIATE`` for every read-then-write (:meth:`Store.write`), so two writers never both
pass a check such as the quota before either inserts.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlite_utils
from sqlite_utils.db import Table

BUSY_TIMEOUT_MS = 30_000
#: The store's file under $OPSBOT_HOME.
DB_NAME = "opsbot.db"

# Each entry moves the schema one version up. Never edit a released entry: append a new one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE users (
        name TEXT PRIMARY KEY,
        slack_id TEXT UNIQUE,
        created_at REAL NOT NULL
    );
    CREATE TABLE models (
        id INTEGER PRIMARY KEY,
        owner TEXT NOT NULL,
        name TEXT NOT NULL,
        description TEXT NOT NULL DEFAULT '',
        public INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        UNIQUE (owner, name)
    );
    CREATE TABLE model_versions (
        id INTEGER PRIMARY KEY,
        model_id INTEGER NOT NULL REFERENCES models(id),
        version TEXT NOT NULL,
        format TEXT NOT NULL,
        origin TEXT NOT NULL DEFAULT 'custom',
        status TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        path TEXT NOT NULL,
        entry TEXT,
        image TEXT,
        manifest TEXT NOT NULL DEFAULT '{}',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        UNIQUE (model_id, version)
    );
    CREATE TABLE subscriptions (
        user TEXT NOT NULL,
        model_id INTEGER NOT NULL REFERENCES models(id),
        created_at REAL NOT NULL,
        PRIMARY KEY (user, model_id)
    );
    CREATE TABLE services (
        id INTEGER PRIMARY KEY,
        uid TEXT NOT NULL UNIQUE,
        owner TEXT NOT NULL,
        name TEXT NOT NULL,
        status TEXT NOT NULL,
        progress INTEGER NOT NULL DEFAULT 0,
        reason TEXT NOT NULL DEFAULT '',
        spec TEXT NOT NULL,
        resource_pool TEXT NOT NULL,
        traffic_limit INTEGER NOT NULL,
        auto_stop_minutes INTEGER,
        due_time REAL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        UNIQUE (owner, name)
    );
    CREATE TABLE service_versions (
        service_id INTEGER NOT NULL REFERENCES services(id) ON DELETE CASCADE,
        idx INTEGER NOT NULL,
        model_version_id INTEGER NOT NULL REFERENCES model_versions(id),
        traffic_ratio INTEGER NOT NULL,
        flavor TEXT NOT NULL,
        instances INTEGER NOT NULL,
        env TEXT NOT NULL DEFAULT '{}',
        PRIMARY KEY (service_id, idx)
    );
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        time REAL NOT NULL,
        service_id INTEGER,
        service TEXT,
        owner TEXT,
        level TEXT NOT NULL,
        kind TEXT NOT NULL,
        message TEXT NOT NULL,
        actor TEXT NOT NULL
    );
    CREATE INDEX events_by_service ON events (service_id, time);
    CREATE INDEX events_by_time ON events (time);
    CREATE TABLE config_snapshots (
        id INTEGER PRIMARY KEY,
        service_id INTEGER NOT NULL REFERENCES services(id) ON DELETE CASCADE,
        n INTEGER NOT NULL,
        spec TEXT NOT NULL,
        actor TEXT NOT NULL,
        created_at REAL NOT NULL,
        UNIQUE (service_id, n)
    );
    CREATE TABLE api_keys (
        id INTEGER PRIMARY KEY,
        service_id INTEGER NOT NULL REFERENCES services(id) ON DELETE CASCADE,
        key_hash TEXT NOT NULL UNIQUE,
        prefix TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    """,
    # 2: the instances the runtime runs for each service version. The controller writes them;
    # the gateway reads the ready ones as its routes.
    """
    CREATE TABLE instances (
        id INTEGER PRIMARY KEY,
        service_id INTEGER NOT NULL REFERENCES services(id) ON DELETE CASCADE,
        idx INTEGER NOT NULL,
        n INTEGER NOT NULL,
        runtime TEXT NOT NULL,
        handle TEXT NOT NULL DEFAULT '',
        host TEXT NOT NULL DEFAULT '127.0.0.1',
        port INTEGER,
        state TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        gpus TEXT NOT NULL DEFAULT '',
        log_path TEXT NOT NULL DEFAULT '',
        restarts INTEGER NOT NULL DEFAULT 0,
        next_try REAL NOT NULL DEFAULT 0,
        started_at REAL,
        updated_at REAL NOT NULL,
        UNIQUE (service_id, idx, n)
    );
    """,
    # 3: who moved a service to its status and since when; tokens for the TCP control listener.
    """
    ALTER TABLE services ADD COLUMN status_since REAL;
    ALTER TABLE services ADD COLUMN status_actor TEXT NOT NULL DEFAULT '';
    CREATE TABLE user_tokens (
        id INTEGER PRIMARY KEY,
        user TEXT NOT NULL,
        token_hash TEXT NOT NULL UNIQUE,
        prefix TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    """,
    # 4: the deadline a reminder was last recorded for, so it is recorded once per deadline.
    """
    ALTER TABLE services ADD COLUMN reminded_due REAL;
    """,
    # 5: Slack messages a front keeps updating (the deploy DM), so a restart does not lose them.
    """
    CREATE TABLE slack_messages (
        service_id INTEGER NOT NULL REFERENCES services(id) ON DELETE CASCADE,
        kind TEXT NOT NULL,
        channel TEXT NOT NULL,
        ts TEXT NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (service_id, kind)
    );
    """,
    # 6: the configuration an instance was started with, so a modified version's instances are
    # told apart from the current ones and replaced without a gap.
    """
    ALTER TABLE instances ADD COLUMN config TEXT NOT NULL DEFAULT '';
    """,
    # 7: the uid opsbot manages for each owner who has no local account to run model code as.
    """
    CREATE TABLE runtime_accounts (
        owner TEXT PRIMARY KEY,
        uid INTEGER NOT NULL UNIQUE
    );
    """,
    # 8: forms being filled in by a front (the Slack modals' drafts), so a restart loses none:
    # the user who owns each, when it was last used (wall clock: it outlives the process) and
    # the order of use (``seq``), which drops the least recently used past a limit.
    """
    CREATE TABLE form_drafts (
        key TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        state TEXT NOT NULL,
        used_at REAL NOT NULL,
        seq INTEGER NOT NULL
    );
    CREATE INDEX form_drafts_by_seq ON form_drafts (seq);
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)


class Store:
    """The SQLite database under $OPSBOT_HOME, with one connection per thread."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._local = threading.local()
        self._migrate_lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._migrate()
        self._private()

    def _private(self) -> None:
        """The database and its WAL hold every service's env values: the owner's alone (SQLite
        gives the WAL and shared-memory files the database's mode when it makes them)."""
        for suffix in ("", "-wal", "-shm"):
            path = self.path.with_name(self.path.name + suffix)
            with contextlib.suppress(FileNotFoundError, PermissionError):
                if path.stat().st_uid == os.geteuid():
                    os.chmod(path, 0o600)

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: transactions are ours (BEGIN IMMEDIATE), never implicit.
        conn = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    @property
    def db(self) -> sqlite_utils.Database:
        """This thread's connection, wrapped by sqlite-utils."""
        db: sqlite_utils.Database | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite_utils.Database(self._connect())
            self._local.db = db
        return db

    def _migrate(self) -> None:
        with self._migrate_lock:
            conn = self._connect()
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("BEGIN IMMEDIATE")
                try:
                    current = conn.execute("PRAGMA user_version").fetchone()[0]
                    if current > SCHEMA_VERSION:
                        raise RuntimeError(
                            f"{self.path} has schema version {current}, newer than this opsbot "
                            f"({SCHEMA_VERSION}): upgrade opsbot"
                        )
                    for number in range(current, SCHEMA_VERSION):
                        for statement in _statements(MIGRATIONS[number]):
                            conn.execute(statement)
                        conn.execute(f"PRAGMA user_version = {number + 1}")
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            finally:
                conn.close()

    @contextmanager
    def write(self) -> Iterator[sqlite_utils.Database]:
        """A write transaction taken with BEGIN IMMEDIATE: checks inside it see no race.

        sqlite-utils' own ``atomic()`` blocks nest inside it as savepoints.
        """
        db = self.db
        db.conn.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.rollback()
            raise
        db.conn.execute("COMMIT")

    def close(self) -> None:
        db: sqlite_utils.Database | None = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None


def table(db: sqlite_utils.Database, name: str) -> Table:
    """A table by name, typed as a table (``db[name]`` may also be a view)."""
    return db.table(name)


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]
