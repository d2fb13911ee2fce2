"""Forward-only schema migrations, tracked in SQLite's `PRAGMA user_version`.

MIGRATIONS[i] takes a database from version i to i+1. Never edit a shipped step: append a new one, so
every older file upgrades along the same path a fresh one was built on."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from anechat.sessions.errors import NewerSchemaError

V1 = (
    """CREATE TABLE sessions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        title TEXT,
        model TEXT,
        system_prompt TEXT,
        settings TEXT NOT NULL DEFAULT '{}',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    )""",
    """CREATE TABLE messages (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        session_id INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
        role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
        content TEXT NOT NULL,
        model TEXT,
        created_at REAL NOT NULL
    )""",
    "CREATE INDEX messages_by_session ON messages(session_id, id)",
)

# v2: per-message statistics, the cut-short flag, recency index, and FTS5 over message text.
V2 = (
    "ALTER TABLE messages ADD COLUMN tokens INTEGER",
    "ALTER TABLE messages ADD COLUMN tok_per_s REAL",
    "ALTER TABLE messages ADD COLUMN ttft_s REAL",
    "ALTER TABLE messages ADD COLUMN cut_short INTEGER NOT NULL DEFAULT 0",
    "CREATE INDEX sessions_by_update ON sessions(updated_at DESC, id DESC)",
    # External-content table: the text lives once, in messages; triggers keep the index in step.
    """CREATE VIRTUAL TABLE messages_fts USING fts5(
        content, content='messages', content_rowid='id', tokenize='unicode61 remove_diacritics 2'
    )""",
    """CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
        INSERT INTO messages_fts(rowid, content) VALUES (new.id, new.content);
    END""",
    """CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
        INSERT INTO messages_fts(messages_fts, rowid, content) VALUES ('delete', old.id, old.content);
    END""",
    """CREATE TRIGGER messages_fts_update AFTER UPDATE OF content ON messages BEGIN
        INSERT INTO messages_fts(messages_fts, rowid, content) VALUES ('delete', old.id, old.content);
        INSERT INTO messages_fts(rowid, content) VALUES (new.id, new.content);
    END""",
    "INSERT INTO messages_fts(messages_fts) VALUES ('rebuild')",
)

MIGRATIONS: tuple[tuple[str, ...], ...] = (V1, V2)
SCHEMA_VERSION = len(MIGRATIONS)


def user_version(conn: sqlite3.Connection) -> int:
    return conn.execute("PRAGMA user_version").fetchone()[0]


def check_not_newer(conn: sqlite3.Connection, path: Path | str) -> int:
    """Read-only: refuse a file written by a newer anechat before anything writes to it."""
    version = user_version(conn)
    if version > SCHEMA_VERSION:
        raise NewerSchemaError(
            f"{path}: session database has schema version {version}, this anechat knows up to "
            f"{SCHEMA_VERSION}; upgrade anechat (the file was left untouched)"
        )
    return version


def migrate(conn: sqlite3.Connection, path: Path | str, target: int = SCHEMA_VERSION) -> None:
    """Apply the missing steps, one transaction each. The version is re-read under the write lock, so two
    processes opening an old file at once do not both run the same step."""
    while check_not_newer(conn, path) < target:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = user_version(conn)
            if version < target:
                for statement in MIGRATIONS[version]:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {version + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
