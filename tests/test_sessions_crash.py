"""Crash safety: a child process chats into the store (synthetic streamed answers) and is SIGKILLed at
random points, 24 times, into the same file. The child reports on stdout what the store has confirmed;
afterwards the file must be intact and hold everything confirmed, with unfinished answers flagged."""

import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

from anechat.sessions.store import Store

KILLS = 24
WORDS_PER_ANSWER = 300

CHILD = textwrap.dedent(
    f"""
    import sys, time
    from anechat.sessions.store import Store

    def answer_text(aid):
        return "".join(f"w{{aid}}-{{i}} " for i in range(2000))[: {WORDS_PER_ANSWER} * 8]

    def say(*parts):
        print(*parts, flush=True)

    store = Store.open(sys.argv[1])
    turn = 0
    while True:
        if turn % 3 == 0:
            sid = store.create_session("synthetic")
        uid = store.add_user_message(sid, f"question {{sid}}/{{turn}}")
        say("U", uid, sid, turn)
        writer = store.begin_answer(sid, "synthetic", flush_interval=0.02)
        say("B", writer.message_id)
        text, flushed = answer_text(writer.message_id), 0
        for i in range(0, len(text), 8):
            writer.append(text[i:i + 8])
            if writer.flushed_chars > flushed:
                flushed = writer.flushed_chars
                say("F", writer.message_id, flushed)
            time.sleep(0.0005)
        writer.finish({{"tokens": len(text) // 8}})
        say("D", writer.message_id)
        turn += 1
    """
)


def answer_text(aid: int) -> str:
    return "".join(f"w{aid}-{i} " for i in range(2000))[: WORDS_PER_ANSWER * 8]


def complete_lines(out: bytes) -> list[list[str]]:
    # The kill may cut the last line short; only newline-terminated reports count.
    text = out.decode()
    lines = text.split("\n")[:-1]
    return [line.split() for line in lines]


def test_sigkill_at_random_points_loses_no_confirmed_text(tmp_path):
    db = tmp_path / "sessions.db"
    rng = random.Random(20261124)
    users: dict[int, str] = {}
    begun: set[int] = set()
    done: set[int] = set()
    flushed: dict[int, int] = {}
    for _ in range(KILLS):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(db)], stdout=subprocess.PIPE)
        # The random point is counted from the child's first confirmed message, not from its start: on a
        # loaded machine, interpreter start-up alone can outlast a fixed delay.
        first = child.stdout.readline()
        time.sleep(rng.uniform(0.0, 0.25))
        child.send_signal(signal.SIGKILL)
        rest, _ = child.communicate(timeout=60)
        out = first + rest
        assert child.returncode == -signal.SIGKILL, "the child ended before it was killed"
        for kind, *rest in complete_lines(out):
            if kind == "U":
                uid, sid, turn = map(int, rest)
                users[uid] = f"question {sid}/{turn}"
            elif kind == "B":
                begun.add(int(rest[0]))
            elif kind == "F":
                flushed[int(rest[0])] = int(rest[1])
            elif kind == "D":
                done.add(int(rest[0]))

    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.execute("INSERT INTO messages_fts(messages_fts) VALUES ('integrity-check')")
    rows = {r[0]: r[1:] for r in conn.execute("SELECT id, role, content, cut_short FROM messages")}

    assert len(users) >= KILLS  # the children got far enough to matter
    for uid, text in users.items():
        assert rows[uid] == ("user", text, 0)

    partial_with_text = 0
    for aid in begun:
        role, content, cut_short = rows[aid]
        full = answer_text(aid)
        assert role == "assistant" and full.startswith(content)
        assert len(content) >= flushed.get(aid, 0), "confirmed text was lost"
        if aid in done:
            assert (content, cut_short) == (full, 0)
        elif cut_short == 0:  # finish() committed, the kill came before the report
            assert content == full
        else:
            partial_with_text += bool(content)
    # Every assistant row, reported or not (a kill can land between commit and report), is consistent.
    for aid, (role, content, cut_short) in rows.items():
        if role == "assistant":
            assert answer_text(aid).startswith(content)
            assert cut_short == 1 or content == answer_text(aid)
    assert done and partial_with_text >= 3  # both outcomes really happened

    with Store.open(db) as store:  # and the file still opens as a store and searches
        assert store.search("question")
