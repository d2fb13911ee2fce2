"""The session store: SQLite (WAL, foreign keys, forward migrations) at paths.sessions_db().

Write-ahead contract for front ends (pipe, REPL, TUI):
- `add_user_message` commits before it returns, so generation starts only after the user turn is on disk;
- `begin_answer` commits an empty assistant row flagged cut_short, `AnswerWriter.append` commits the text
  at least every `flush_interval` seconds (a timer covers pauses in the stream), and `finish` writes the
  final text, the statistics and the real flag. A kill -9 loses at most the last interval of text; a
  crashed or cancelled answer stays flagged.
WAL with synchronous=NORMAL survives process crashes; a power cut may drop the last commits, never corrupt.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from anechat.sessions.errors import BadSessionId, SessionNotFound, StoreUnavailable
from anechat.sessions.migrations import check_not_newer, migrate
from anechat.sessions.search import SearchHit, search

BUSY_TIMEOUT_S = 5.0  # sqlite waits this long for another writer before it reports "locked"
LOCKED_RETRIES = 3  # then we retry the whole transaction this many times
FLUSH_INTERVAL_S = 1.0
TITLE_CHARS = 60
_CORRUPTION_CODES = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB
_SESSION_FIELDS = {"title", "model", "system_prompt", "settings"}
# Accepted names for per-message statistics: our column names and the engine's GenerationStats names.
_STATS_ALIASES = {"tokens": "tokens", "decode_tokens": "tokens", "tok_per_s": "tok_per_s",
                  "decode_tok_s": "tok_per_s", "ttft_s": "ttft_s"}

Notify = Callable[[str], None]


def warn_on_stderr(message: str) -> None:
    print(f"anechat: warning: {message}", file=sys.stderr)


@dataclass(frozen=True)
class Session:
    id: int
    title: str | None
    model: str | None
    system_prompt: str | None
    settings: dict[str, Any]
    created_at: float
    updated_at: float
    message_count: int


@dataclass(frozen=True)
class Message:
    id: int
    session_id: int
    role: str
    content: str
    model: str | None
    created_at: float
    tokens: int | None
    tok_per_s: float | None
    ttft_s: float | None
    cut_short: bool
    # Still being streamed by this process (an answer exported mid-stream is partial, not cut short).
    writing: bool = False


class _Corrupt(Exception):
    pass


def title_from(text: str) -> str | None:
    """First non-blank line, whitespace collapsed, cut to TITLE_CHARS."""
    line = next((ln for ln in text.splitlines() if ln.strip()), "")
    line = " ".join(line.split())
    if len(line) > TITLE_CHARS:
        line = line[: TITLE_CHARS - 1].rstrip() + "…"
    return line or None


def _stats_columns(stats: Mapping[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"tokens": None, "tok_per_s": None, "ttft_s": None}
    for key, value in (stats or {}).items():
        if key in _STATS_ALIASES and value is not None:
            out[_STATS_ALIASES[key]] = value
    return out


def _connect(target: str) -> sqlite3.Connection:
    # Autocommit mode: every transaction below is explicit (BEGIN IMMEDIATE), so the write lock is taken
    # up front and a reader never has to upgrade (which in WAL fails at once instead of waiting).
    conn = sqlite3.connect(target, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    return conn


def _prepare(conn: sqlite3.Connection, label: str | Path, on_disk: bool) -> None:
    check_not_newer(conn, label)  # first read; garbage files fail here, before any write
    if on_disk:
        verdict = conn.execute("PRAGMA quick_check").fetchone()[0]
        if verdict != "ok":
            raise _Corrupt(verdict)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    migrate(conn, label)


def _unavailable(path: Path, e: BaseException) -> StoreUnavailable:
    reason = getattr(e, "strerror", None) or str(e)
    return StoreUnavailable(f"cannot use session database {path}: {reason}")


def _open_file(path: Path) -> sqlite3.Connection:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _unavailable(path, e) from None
    conn = _connect(str(path))
    try:
        _prepare(conn, path, on_disk=True)
    except BaseException:
        conn.close()
        raise
    return conn


def _is_corruption(e: BaseException) -> bool:
    if isinstance(e, _Corrupt):
        return True
    code = getattr(e, "sqlite_errorcode", None)
    return isinstance(e, sqlite3.DatabaseError) and code is not None and code & 0xFF in _CORRUPTION_CODES


def _is_environmental(e: BaseException) -> bool:
    """Locked, read-only, disk full, I/O error or damage — the user's problem to hear about, not a bug
    (IntegrityError and ProgrammingError stay exceptions: they are ours)."""
    return isinstance(e, sqlite3.OperationalError) or _is_corruption(e)


def _move_aside(path: Path) -> Path:
    """Keep the unreadable file (and its WAL) for recovery under a timestamped name."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    os.replace(path, aside)
    wal = path.with_name(path.name + "-wal")
    if wal.exists():
        os.replace(wal, aside.with_name(aside.name + "-wal"))
    path.with_name(path.name + "-shm").unlink(missing_ok=True)
    return aside



def _row_id(cur: sqlite3.Cursor) -> int:
    assert cur.lastrowid is not None  # set by every INSERT
    return cur.lastrowid

class Store:
    """One connection, shared by the caller's thread and AnswerWriter timers under one lock."""

    def __init__(self, conn: sqlite3.Connection, path: Path | None) -> None:
        self._conn = conn
        self._lock = threading.RLock()
        self.path = path
        self.closed = False
        self.unavailable: str | None = None  # why the database could not be opened (open_for_chat's stand-in)

    # -- opening ---------------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path | str | None = None, *, notify: Notify | None = None) -> Store:
        """Open (creating or migrating) the database. A corrupt or non-SQLite file is moved aside with a
        timestamp and a new database is created; `notify` tells the user. Raises StoreUnavailable
        (NewerSchemaError for a file from a newer anechat, which is left untouched)."""
        from anechat.paths import sessions_db

        path = Path(path) if path is not None else sessions_db()
        try:
            return cls(_open_file(path), path)
        except (sqlite3.DatabaseError, _Corrupt) as e:
            if not _is_corruption(e):
                raise _unavailable(path, e) from None
            reason = str(e)
        try:
            aside = _move_aside(path)
        except OSError as e:
            raise _unavailable(path, e) from None
        (notify or warn_on_stderr)(f"{path} is not a readable session database ({reason}); "
                                   f"moved it to {aside.name} and started a new one")
        try:
            return cls(_open_file(path), path)
        except sqlite3.DatabaseError as e:
            raise _unavailable(path, e) from None

    @classmethod
    def memory(cls) -> Store:
        conn = _connect(":memory:")
        _prepare(conn, ":memory:", on_disk=False)
        return cls(conn, None)

    @classmethod
    def open_for_chat(cls, path: Path | str | None = None, *, notify: Notify | None = None) -> Store:
        """For chat front ends: if the database cannot be used, warn and keep chatting with an in-memory
        store (same API, nothing persisted)."""
        notify = notify or warn_on_stderr
        try:
            return cls.open(path, notify=notify)
        except StoreUnavailable as e:
            notify(f"{e}; this chat will not be saved")
            store = cls.memory()
            store.unavailable = str(e)
            return store

    @property
    def persistent(self) -> bool:
        return self.path is not None

    def close(self) -> None:
        with self._lock:
            self._conn.close()
            self.closed = True

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transactions ----------------------------------------------------------------------------------

    def _where(self) -> str:
        return str(self.path) if self.path else "in-memory session store"

    def _begin(self) -> None:
        for attempt in range(LOCKED_RETRIES + 1):
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or attempt == LOCKED_RETRIES:
                    raise StoreUnavailable(f"cannot write {self._where()}: {e}") from None
                time.sleep(0.05 * 2**attempt)

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._begin()
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException as e:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                if _is_environmental(e):
                    raise StoreUnavailable(f"cannot write {self._where()}: {e}") from None
                raise

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._conn
            except sqlite3.DatabaseError as e:
                if _is_environmental(e):
                    raise StoreUnavailable(f"cannot read {self._where()}: {e}") from None
                raise

    def _read(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        with self._reading() as c:
            return c.execute(sql, params).fetchall()

    @staticmethod
    def _touch(c: sqlite3.Connection, session_id: int, now: float) -> None:
        if c.execute("UPDATE sessions SET updated_at = ? WHERE id = ?", (now, session_id)).rowcount == 0:
            raise SessionNotFound(f"no session {session_id} (anechat sessions list shows them)")

    # -- sessions --------------------------------------------------------------------------------------

    def create_session(self, model: str | None, system: str | None = None,
                       settings: Mapping[str, Any] | None = None, title: str | None = None) -> int:
        now = time.time()
        with self._write() as c:
            cur = c.execute(
                "INSERT INTO sessions (title, model, system_prompt, settings, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (title, model, system, json.dumps(dict(settings or {}), sort_keys=True), now, now),
            )
        return _row_id(cur)

    def update_session(self, session_id: int, **changes: Any) -> None:
        """Change any of title, model, system_prompt, settings (None clears a text field)."""
        unknown = set(changes) - _SESSION_FIELDS
        if unknown:
            raise TypeError(f"update_session: unknown fields {sorted(unknown)}")
        if "settings" in changes:
            changes["settings"] = json.dumps(dict(changes["settings"] or {}), sort_keys=True)
        with self._write() as c:
            self._touch(c, session_id, time.time())
            for key, value in changes.items():
                c.execute(f"UPDATE sessions SET {key} = ? WHERE id = ?", (value, session_id))

    def rename(self, session_id: int, title: str) -> None:
        self.update_session(session_id, title=title)

    def delete(self, session_id: int) -> None:
        with self._write() as c:
            if c.execute("DELETE FROM sessions WHERE id = ?", (session_id,)).rowcount == 0:
                raise SessionNotFound(f"no session {session_id} (anechat sessions list shows them)")

    def _sessions(self, where: str, params: tuple) -> list[Session]:
        rows = self._read(
            "SELECT s.*, (SELECT count(*) FROM messages m WHERE m.session_id = s.id) AS message_count"
            f" FROM sessions s {where}",
            params,
        )
        return [Session(**{**dict(r), "settings": json.loads(r["settings"])}) for r in rows]

    def session(self, session_id: int) -> Session:
        found = self._sessions("WHERE s.id = ?", (session_id,))
        if not found:
            raise SessionNotFound(f"no session {session_id} (anechat sessions list shows them)")
        return found[0]

    def list_sessions(self, limit: int | None = 50, offset: int = 0) -> list[Session]:
        """Most recently updated first; limit None = all."""
        return self._sessions("ORDER BY s.updated_at DESC, s.id DESC LIMIT ? OFFSET ?",
                              (-1 if limit is None else limit, offset))

    def last_session_id(self) -> int | None:
        rows = self._read("SELECT id FROM sessions ORDER BY updated_at DESC, id DESC LIMIT 1")
        return int(rows[0]["id"]) if rows else None

    def resolve(self, ref: str) -> int:
        """A user-typed session reference: a number or `last`."""
        if self.unavailable is not None and self.last_session_id() is None:
            # an in-memory stand-in for a database that could not be opened: it knows no sessions
            raise StoreUnavailable(f"cannot resume session {ref}: {self.unavailable}")
        if ref == "last":
            last = self.last_session_id()
            if last is None:
                raise SessionNotFound("there are no saved sessions yet")
            return last
        ref = ref.strip()
        if not (ref.isascii() and ref.isdigit()) or len(ref) > 18:  # SQLite's integers end at 2**63
            raise BadSessionId(f"{ref!r} is not a session id (a number, or 'last')")
        return self.session(int(ref)).id

    # -- messages --------------------------------------------------------------------------------------

    def add_message(self, session_id: int, role: str, content: str, *, model: str | None = None,
                    stats: Mapping[str, Any] | None = None, cut_short: bool = False) -> int:
        """Append one message and commit before returning. The first user message titles an untitled
        session."""
        now = time.time()
        cols = _stats_columns(stats)
        with self._write() as c:
            self._touch(c, session_id, now)
            cur = c.execute(
                "INSERT INTO messages (session_id, role, content, model, created_at, tokens, tok_per_s,"
                " ttft_s, cut_short) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (session_id, role, content, model, now, cols["tokens"], cols["tok_per_s"], cols["ttft_s"],
                 int(cut_short)),
            )
            if role == "user":
                c.execute("UPDATE sessions SET title = ? WHERE id = ? AND title IS NULL",
                          (title_from(content), session_id))
        return _row_id(cur)

    def add_user_message(self, session_id: int, text: str) -> int:
        return self.add_message(session_id, "user", text)

    def begin_answer(self, session_id: int, model: str | None, *,
                     flush_interval: float = FLUSH_INTERVAL_S) -> AnswerWriter:
        # The row starts flagged: until finish() says otherwise, the answer counts as cut short.
        message_id = self.add_message(session_id, "assistant", "", model=model, cut_short=True)
        return AnswerWriter(self, session_id, message_id, flush_interval)

    def _save_answer(self, session_id: int, message_id: int, content: str,
                     stats: Mapping[str, Any] | None = None, cut_short: bool | None = None) -> None:
        with self._write() as c:
            self._touch(c, session_id, time.time())
            c.execute("UPDATE messages SET content = ? WHERE id = ?", (content, message_id))
            if cut_short is not None:
                cols = _stats_columns(stats)
                c.execute(
                    "UPDATE messages SET tokens = ?, tok_per_s = ?, ttft_s = ?, cut_short = ? WHERE id = ?",
                    (cols["tokens"], cols["tok_per_s"], cols["ttft_s"], int(cut_short), message_id),
                )

    def delete_messages(self, session_id: int, message_ids: Iterator[int] | list[int]) -> int:
        """Remove messages of one session (for /undo and /retry); how many were removed."""
        ids = list(message_ids)
        if not ids:
            return 0
        marks = ",".join("?" * len(ids))
        with self._write() as c:
            self._touch(c, session_id, time.time())
            cur = c.execute(f"DELETE FROM messages WHERE session_id = ? AND id IN ({marks})", (session_id, *ids))
        return cur.rowcount

    def messages(self, session_id: int) -> list[Message]:
        rows = self._read(
            "SELECT id, session_id, role, content, model, created_at, tokens, tok_per_s, ttft_s, cut_short"
            " FROM messages WHERE session_id = ? ORDER BY id",
            (session_id,),
        )
        return [Message(**{**dict(r), "cut_short": bool(r["cut_short"])}) for r in rows]

    def chat_messages(self, session_id: int) -> list[dict[str, str]]:
        """The conversation as chat-template messages (system prompt first), for --resume."""
        session = self.session(session_id)
        system = [{"role": "system", "content": session.system_prompt}] if session.system_prompt else []
        return system + [{"role": m.role, "content": m.content} for m in self.messages(session_id)]

    def search(self, query: str, limit: int = 20, marks: tuple[str, str] = ("", "")) -> list[SearchHit]:
        """Full-text search over all messages, best match first; `marks` wrap the matched words."""
        with self._reading() as c:
            return search(c, query, limit, marks)

    def integrity_check(self) -> str:
        return self._read("PRAGMA integrity_check")[0][0]


class AnswerWriter:
    """Streams one assistant answer into its row. Use as a context manager to mark the answer cut short
    when the block raises (Ctrl-C, engine error) without calling finish()."""

    def __init__(self, store: Store, session_id: int, message_id: int, flush_interval: float) -> None:
        self.store = store
        self.session_id = session_id
        self.message_id = message_id
        self._interval = flush_interval
        self._parts: list[str] = []
        self._flushed_chars = 0
        self._last_flush = time.monotonic()
        self._timer: threading.Timer | None = None
        self._timer_error: StoreUnavailable | None = None
        self._finished = False

    @property
    def text(self) -> str:
        return "".join(self._parts)

    @property
    def flushed_chars(self) -> int:
        """How many characters of the answer are committed."""
        return self._flushed_chars

    def append(self, text: str) -> None:
        with self.store._lock:
            self._check_open()
            self._parts.append(text)
            due = self._last_flush + self._interval - time.monotonic()
            if due <= 0:
                self._flush_locked()
            elif self._timer is None:
                self._timer = threading.Timer(due, self._flush_from_timer)
                self._timer.daemon = True
                self._timer.start()

    def flush(self) -> None:
        with self.store._lock:
            self._check_open()
            self._flush_locked()

    def finish(self, stats: Mapping[str, Any] | None = None, cut_short: bool = False) -> None:
        with self.store._lock:
            self._check_open()
            self._cancel_timer()
            text = self.text
            self.store._save_answer(self.session_id, self.message_id, text, stats, cut_short)
            self._flushed_chars = len(text)
            self._finished = True

    def __enter__(self) -> AnswerWriter:
        return self

    def __exit__(self, exc_type: type | None, *rest: object) -> None:
        if not self._finished:
            self.finish(cut_short=exc_type is not None)

    def _check_open(self) -> None:
        if self._finished:
            raise RuntimeError("AnswerWriter: the answer is already finished")
        if self._timer_error is not None:
            raise self._timer_error

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _flush_locked(self) -> None:
        self._cancel_timer()
        text = self.text
        if len(text) != self._flushed_chars:
            self.store._save_answer(self.session_id, self.message_id, text)
            self._flushed_chars = len(text)
        self._last_flush = time.monotonic()

    def _flush_from_timer(self) -> None:
        with self.store._lock:
            stale = self._timer is not threading.current_thread()
            if self._finished or stale or self.store.closed:
                return
            self._timer = None
            try:
                self._flush_locked()
            except StoreUnavailable as e:  # surfaced on the caller's next append/finish
                self._timer_error = e

