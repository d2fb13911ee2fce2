"""Full-text search over messages with SQLite FTS5.

Users type words and "quoted phrases", not FTS5 syntax: every word becomes a quoted FTS5 string (so
punctuation such as `c++` or `don't` cannot break the query), `word*` stays a prefix search, and bare
AND / OR / NOT pass through as operators. All words must match (FTS5's implicit AND)."""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass

from anechat.sessions.errors import BadSearchQuery

_TERM = re.compile(r'"([^"]*)"|(\S+)')
_OPERATORS = {"AND", "OR", "NOT"}


@dataclass(frozen=True)
class SearchHit:
    session_id: int
    message_id: int
    role: str
    session_title: str | None
    snippet: str
    created_at: float


def _quoted(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def fts_query(text: str) -> str:
    """Translate a user's search text into an FTS5 MATCH expression."""
    terms: list[str] = []
    for m in _TERM.finditer(text):
        phrase, word = m.groups()
        if phrase is not None:
            if phrase.strip():
                terms.append(_quoted(phrase))
        elif word in _OPERATORS:
            terms.append(word)
        elif word.endswith("*") and len(word) > 1:
            terms.append(_quoted(word.rstrip("*")) + "*")
        else:
            terms.append(_quoted(word))
    if not any(t not in _OPERATORS for t in terms):
        raise BadSearchQuery("search: give at least one word or \"quoted phrase\"")
    return " ".join(terms)


def search(conn: sqlite3.Connection, text: str, limit: int, marks: tuple[str, str]) -> list[SearchHit]:
    try:
        rows = conn.execute(
            "SELECT m.session_id, m.id, m.role, s.title, snippet(messages_fts, 0, ?, ?, '…', 12), m.created_at"
            " FROM messages_fts"
            " JOIN messages m ON m.id = messages_fts.rowid"
            " JOIN sessions s ON s.id = m.session_id"
            " WHERE messages_fts MATCH ? ORDER BY rank LIMIT ?",
            (marks[0], marks[1], fts_query(text), limit),
        ).fetchall()
    except sqlite3.OperationalError as e:
        if "fts5" not in str(e):
            raise
        raise BadSearchQuery(f"search: cannot use {text!r}: {e}") from None
    return [SearchHit(*tuple(r)) for r in rows]
