"""The store: SQLite in WAL mode, versioned migrations (PRAGMA user_version), one connection per
thread, BEGIN IMMEDIATE for every read-then-write."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from opsbot.core.store import MIGRATIONS, SCHEMA_VERSION, Store, _statements

TABLES = {
    "users",
    "models",
    "model_versions",
    "subscriptions",
    "services",
    "service_versions",
    "events",
    "config_snapshots",
    "api_keys",
}


def tables(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        conn.close()


def user_version(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


def test_new_store_is_wal_and_fully_migrated(tmp_path: Path) -> None:
    store = Store(tmp_path / "data" / "opsbot.db")
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert SCHEMA_VERSION == len(MIGRATIONS) >= 2
    assert user_version(store.path) == SCHEMA_VERSION
    assert tables(store.path) >= TABLES


def test_api_keys_are_stored_hashed_only(tmp_path: Path) -> None:
    store = Store(tmp_path / "opsbot.db")
    columns = {r[1] for r in store.db.execute("PRAGMA table_info(api_keys)").fetchall()}
    assert "key_hash" in columns
    assert not {"key", "api_key", "secret"} & columns


def test_reopening_migrates_nothing_twice(tmp_path: Path) -> None:
    path = tmp_path / "opsbot.db"
    first = Store(path)
    with first.write() as db:
        db.execute("INSERT INTO users (name, created_at) VALUES ('alice', 1)")
    first.close()
    again = Store(path)
    assert user_version(path) == SCHEMA_VERSION
    assert again.db.execute("SELECT name FROM users").fetchall() == [("alice",)]


def test_an_old_database_is_migrated_up_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "opsbot.db"
    conn = sqlite3.connect(path)
    for statement in _statements(MIGRATIONS[0]):
        conn.execute(statement)
    conn.execute("INSERT INTO users (name, created_at) VALUES ('alice', 1)")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    assert "instances" not in tables(path)

    store = Store(path)
    assert user_version(path) == SCHEMA_VERSION
    assert "instances" in tables(path)
    assert store.db.execute("SELECT name FROM users").fetchall() == [("alice",)]


def test_a_database_from_a_newer_opsbot_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "opsbot.db"
    Store(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(RuntimeError, match="upgrade opsbot"):
        Store(path)
    assert user_version(path) == SCHEMA_VERSION + 1


def test_one_connection_per_thread(tmp_path: Path) -> None:
    store = Store(tmp_path / "opsbot.db")
    here = store.db
    assert store.db is here  # the same thread gets the same connection
    seen: list[object] = []
    thread = threading.Thread(target=lambda: seen.append(store.db.conn))
    thread.start()
    thread.join()
    assert seen and seen[0] is not here.conn
    store.close()
    assert store.db is not here  # a closed connection is replaced on next use


def test_write_rolls_back_on_error(tmp_path: Path) -> None:
    store = Store(tmp_path / "opsbot.db")
    with pytest.raises(ZeroDivisionError), store.write() as db:
        db.execute("INSERT INTO users (name, created_at) VALUES ('alice', 1)")
        db.table("users").insert({"name": "bob", "created_at": 2})
        _ = 1 / 0
    assert store.db.execute("SELECT COUNT(*) FROM users").fetchone()[0] == 0
    assert not store.db.conn.in_transaction


def test_writes_are_serialised(tmp_path: Path) -> None:
    """A second writer waits for the first: its read-then-write sees the first one's row."""
    store = Store(tmp_path / "opsbot.db")
    inside = threading.Event()
    trying = threading.Event()
    order: list[str] = []

    def first() -> None:
        with store.write() as db:
            db.execute("INSERT INTO users (name, created_at) VALUES ('first', 1)")
            inside.set()
            # once the second's BEGIN IMMEDIATE runs, it cannot get past this write
            if not trying.wait(10):
                order.append("the second never began its transaction")
            order.append("first commits")

    def began(sql: str) -> None:
        if sql.startswith("BEGIN IMMEDIATE"):
            trying.set()

    def second() -> None:
        inside.wait()
        store.db.conn.set_trace_callback(began)  # this thread's own connection
        with store.write() as db:
            n = db.execute("SELECT COUNT(*) FROM users").fetchone()[0]
            order.append(f"second saw {n}")
            db.execute("INSERT INTO users (name, created_at) VALUES ('second', 2)")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert order == ["first commits", "second saw 1"]
