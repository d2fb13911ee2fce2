"""Session store: schema and migrations, round trips, write-ahead commits, FTS5 search, bad files."""

import sqlite3
import time

import pytest

from anechat.paths import sessions_db
from anechat.sessions.errors import BadSearchQuery, NewerSchemaError, SessionNotFound, StoreUnavailable
from anechat.sessions.migrations import SCHEMA_VERSION, migrate
from anechat.sessions.store import Store, title_from


@pytest.fixture
def store():
    with Store.open() as s:
        yield s


def raw(path=None):
    """An independent connection, as another process would see the file."""
    return sqlite3.connect(path or sessions_db())


def columns(conn, table):
    return [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]


def test_fresh_database_has_current_schema_wal_and_foreign_keys(store):
    assert store.path == sessions_db() and store.path.exists()
    c = raw()
    assert c.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert {"id", "title", "model", "system_prompt", "settings", "created_at", "updated_at"} <= set(columns(c, "sessions"))
    assert {"role", "content", "model", "tokens", "tok_per_s", "ttft_s", "cut_short", "created_at"} <= set(columns(c, "messages"))
    assert store._conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1


def test_migration_from_version_1_keeps_rows_and_indexes_them(tmp_path):
    path = tmp_path / "old.db"
    c = sqlite3.connect(path, isolation_level=None)
    migrate(c, path, target=1)
    c.execute("INSERT INTO sessions (title, model, settings, created_at, updated_at) VALUES ('old', 'm', '{}', 1, 2)")
    c.execute("INSERT INTO messages (session_id, role, content, created_at) VALUES (1, 'user', 'ancient zebra', 1)")
    c.close()
    assert "cut_short" not in columns(raw(path), "messages")

    with Store.open(path) as s:
        assert raw(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        [m] = s.messages(1)
        assert (m.content, m.tokens, m.cut_short) == ("ancient zebra", None, False)
        assert [h.message_id for h in s.search("zebra")] == [m.id]
        assert s.add_user_message(1, "new words") == m.id + 1


def test_round_trip_sessions_and_messages(store):
    sid = store.create_session("smollm2", "Be brief.", {"temperature": 0.2, "top_k": 40})
    uid = store.add_user_message(sid, "  \n  What is   the capital\tof France?\nsecond line")
    aid = store.add_message(sid, "assistant", "Paris.", model="smollm2",
                            stats={"tokens": 3, "tok_per_s": 31.5, "ttft_s": 0.25, "unrelated": 1})
    s = store.session(sid)
    assert (s.title, s.model, s.system_prompt, s.settings, s.message_count) == (
        "What is the capital of France?", "smollm2", "Be brief.", {"temperature": 0.2, "top_k": 40}, 2)
    assert s.created_at <= s.updated_at
    user, answer = store.messages(sid)
    assert (user.id, user.role, user.content, user.model) == (uid, "user", "  \n  What is   the capital\tof France?\nsecond line", None)
    assert (answer.id, answer.model, answer.tokens, answer.tok_per_s, answer.ttft_s, answer.cut_short) == (
        aid, "smollm2", 3, 31.5, 0.25, False)
    assert store.chat_messages(sid) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": user.content},
        {"role": "assistant", "content": "Paris."},
    ]
    store.rename(sid, "Geography")
    store.add_user_message(sid, "And Spain?")  # a later user message does not retitle
    assert store.session(sid).title == "Geography"


def test_title_is_first_line_cut_to_sixty_chars():
    assert title_from("\n\n  hello   world \nmore") == "hello world"
    long = title_from("x" * 100)
    assert len(long) == 60 and long.endswith("…")
    assert title_from("  \n ") is None


def test_list_orders_by_last_activity_and_resolves_ids(store):
    a = store.create_session("m")
    b = store.create_session("m")
    store.add_user_message(a, "later activity")
    assert [s.id for s in store.list_sessions()] == [a, b]
    assert store.last_session_id() == a
    assert store.resolve("last") == a and store.resolve(str(b)) == b
    assert [s.id for s in store.list_sessions(limit=1, offset=1)] == [b]
    with pytest.raises(SessionNotFound, match="no session 99"):
        store.resolve("99")
    with pytest.raises(SessionNotFound, match="not a session id"):
        store.resolve("abc")
    with pytest.raises(SessionNotFound):
        store.add_user_message(99, "into nowhere")


def test_delete_cascades_to_messages_and_search(store):
    sid = store.create_session("m")
    store.add_user_message(sid, "unique platypus")
    keep = store.create_session("m")
    store.add_user_message(keep, "other platypus")
    store.delete(sid)
    assert raw().execute("SELECT count(*) FROM messages WHERE session_id = ?", (sid,)).fetchone()[0] == 0
    assert [h.session_id for h in store.search("platypus")] == [keep]
    with pytest.raises(SessionNotFound):
        store.delete(sid)


def test_user_message_is_committed_before_add_returns(store):
    sid = store.create_session("m")
    mid = store.add_user_message(sid, "on disk already")
    assert raw().execute("SELECT content FROM messages WHERE id = ?", (mid,)).fetchone() == ("on disk already",)


def test_answer_row_exists_flagged_before_any_text_and_is_cleared_by_finish(store):
    sid = store.create_session("m")
    w = store.begin_answer(sid, "m", flush_interval=3600)
    assert raw().execute("SELECT content, cut_short FROM messages WHERE id = ?", (w.message_id,)).fetchone() == ("", 1)
    w.append("Hello")
    w.append(", world")
    assert raw().execute("SELECT content FROM messages WHERE id = ?", (w.message_id,)).fetchone() == ("",)
    w.finish({"decode_tokens": 4, "decode_tok_s": 20.0, "ttft_s": 0.5})
    assert raw().execute("SELECT content, cut_short, tokens, tok_per_s, ttft_s FROM messages WHERE id = ?",
                         (w.message_id,)).fetchone() == ("Hello, world", 0, 4, 20.0, 0.5)
    with pytest.raises(RuntimeError):
        w.append("more")


def test_append_commits_once_the_interval_has_passed(store):
    sid = store.create_session("m")
    w = store.begin_answer(sid, "m", flush_interval=0)
    for i, part in enumerate(["a", "b", "c"], 1):
        w.append(part)
        assert w.flushed_chars == i
        assert raw().execute("SELECT content FROM messages WHERE id = ?", (w.message_id,)).fetchone()[0] == "abc"[:i]


def test_timer_commits_text_when_the_stream_pauses(store):
    sid = store.create_session("m")
    w = store.begin_answer(sid, "m", flush_interval=0.05)
    w.append("waiting for the next token")
    deadline = time.monotonic() + 10  # generous: only bounds a hang, not a speed claim
    while w.flushed_chars == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert raw().execute("SELECT content FROM messages WHERE id = ?", (w.message_id,)).fetchone()[0] == w.text


def test_writer_as_context_manager_flags_an_interrupted_answer(store):
    sid = store.create_session("m")
    with pytest.raises(KeyboardInterrupt), store.begin_answer(sid, "m") as w:
        w.append("half an ans")
        raise KeyboardInterrupt
    [m] = store.messages(sid)
    assert (m.content, m.cut_short) == ("half an ans", True)
    with store.begin_answer(sid, "m") as w:
        w.append("whole")
    assert store.messages(sid)[-1].cut_short is False


@pytest.fixture
def corpus(store):
    a = store.create_session("m")
    store.add_user_message(a, "How do I sort a list in Python?")
    store.add_message(a, "assistant", "Use sorted(items) or items.sort(); the capital letters sort first.")
    b = store.create_session("m")
    store.add_user_message(b, "Quelle est la capitale de la France ? Café crème.")
    store.add_message(b, "assistant", "The capital of France is Paris. C++ and don't are fine words.")
    return store, a, b


def hits(store, query):
    return [(h.session_id, h.role) for h in store.search(query)]


def test_search_words_phrases_prefixes_and_operators(corpus):
    store, a, b = corpus
    assert hits(store, "python") == [(a, "user")]
    assert set(hits(store, "capital")) == {(a, "assistant"), (b, "assistant")}
    assert hits(store, '"capital of France"') == [(b, "assistant")]
    assert hits(store, '"France capital"') == []
    assert hits(store, "capital paris") == [(b, "assistant")]  # all words must match
    assert set(hits(store, "capit*")) == {(a, "assistant"), (b, "user"), (b, "assistant")}
    assert set(hits(store, "python OR paris")) == {(a, "user"), (b, "assistant")}
    assert hits(store, "capital NOT paris") == [(a, "assistant")]
    assert hits(store, "cafe creme") == [(b, "user")]  # diacritics folded
    assert hits(store, "C++ don't") == [(b, "assistant")]  # punctuation cannot break the query


def test_search_snippet_marks_and_bad_queries(corpus):
    store, a, b = corpus
    [hit] = store.search("paris", marks=("[", "]"))
    assert "[Paris]" in hit.snippet and hit.message_id == store.messages(b)[1].id
    for bad in ("", "   ", '""', "OR"):
        with pytest.raises(BadSearchQuery):
            store.search(bad)
    with pytest.raises(BadSearchQuery, match="cannot use"):
        store.search("NOT paris")


def test_search_follows_streamed_answers(store):
    sid = store.create_session("m")
    w = store.begin_answer(sid, "m", flush_interval=0)
    w.append("first draft")
    assert hits(store, "draft") == [(sid, "assistant")]
    w.append(" becomes final")
    w.finish()
    assert hits(store, "final") == [(sid, "assistant")]
    assert store.integrity_check() == "ok"
    assert raw().execute("INSERT INTO messages_fts(messages_fts) VALUES ('integrity-check')").fetchall() == []


# -- bad files and places -------------------------------------------------------------------------------


def test_non_sqlite_file_is_moved_aside_and_user_told(tmp_path):
    path = tmp_path / "sessions.db"
    path.write_bytes(b"this is not a database, just some text\n" * 200)
    notices = []
    with Store.open(path, notify=notices.append) as s:
        s.create_session("m")
    [aside] = list(tmp_path.glob("sessions.db.corrupt-*"))
    assert aside.read_bytes().startswith(b"this is not a database")
    assert len(notices) == 1 and str(path) in notices[0] and aside.name in notices[0]
    assert raw(path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_sqlite_file_with_damaged_pages_is_moved_aside(tmp_path):
    path = tmp_path / "sessions.db"
    with Store.open(path) as s:
        for i in range(200):
            s.add_user_message(s.create_session("m"), f"message number {i} " * 20)
    c = raw(path)
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    c.close()
    data = bytearray(path.read_bytes())
    page = 4096
    data[page * 3: page * 6] = b"\xa5" * (page * 3)  # trash interior pages, keep the header valid
    path.write_bytes(bytes(data))
    notices = []
    with Store.open(path, notify=notices.append) as s:
        assert s.list_sessions() == []
    assert len(list(tmp_path.glob("sessions.db.corrupt-*"))) == 1 and notices


def test_newer_schema_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "sessions.db"
    c = sqlite3.connect(path)
    c.execute("CREATE TABLE future (x)")
    c.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    c.commit()
    c.close()
    before = path.read_bytes()
    with pytest.raises(NewerSchemaError, match=f"schema version {SCHEMA_VERSION + 1}.*upgrade anechat"):
        Store.open(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sessions.db"]


def test_unusable_data_dir_is_a_clear_error_and_chat_goes_on_in_memory(tmp_path):
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the data dir should be")
    with pytest.raises(StoreUnavailable, match="cannot use session database .*not-a-dir"):
        Store.open(blocked / "sessions.db")
    notices = []
    with Store.open_for_chat(blocked / "sessions.db", notify=notices.append) as s:
        assert not s.persistent
        sid = s.create_session("m")
        s.add_user_message(sid, "still works")
        assert [m.content for m in s.messages(sid)] == ["still works"]
    assert len(notices) == 1 and "will not be saved" in notices[0]


def test_newer_schema_in_chat_warns_and_does_not_touch_the_file(tmp_path):
    path = tmp_path / "sessions.db"
    c = sqlite3.connect(path)
    c.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    c.close()
    notices = []
    with Store.open_for_chat(path, notify=notices.append) as s:
        assert not s.persistent
    assert "upgrade anechat" in notices[0]
    assert raw(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 5


def test_pending_timer_after_close_does_nothing(monkeypatch):
    import threading

    errors = []
    monkeypatch.setattr(threading, "excepthook", errors.append)
    store = Store.open()
    w = store.begin_answer(store.create_session("m"), "m", flush_interval=0.5)
    w.append("never committed")  # the timer is armed, and fires after close
    timer = w._timer
    store.close()
    timer.join(timeout=10)
    assert errors == []
    with Store.open() as again:
        [m] = again.messages(again.last_session_id())
        assert (m.content, m.cut_short) == ("", True)
