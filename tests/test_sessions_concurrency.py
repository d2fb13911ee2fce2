"""Two processes appending to the same database at the same moment lose nothing."""

import subprocess
import sys
import textwrap
import time

from anechat.sessions.store import Store

TURNS = 150

CHILD = textwrap.dedent(
    f"""
    import sys, time
    from anechat.sessions.store import Store

    path, shared, name, start = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
    store = Store.open(path)
    own = store.create_session(name)
    while time.time() < start:  # both children begin writing together
        time.sleep(0.001)
    for turn in range({TURNS}):
        store.add_user_message(shared, f"{{name}} shared {{turn}}")
        store.add_user_message(own, f"{{name}} own {{turn}}")
        writer = store.begin_answer(shared, name, flush_interval=0)
        for word in ("streamed ", "by ", name):
            writer.append(word)
        writer.finish()
    print(own)
    """
)


def test_two_writers_at_once_lose_nothing(tmp_path):
    db = tmp_path / "sessions.db"
    with Store.open(db) as store:
        shared = store.create_session("both")
    start = time.time() + 1.0
    children = [
        subprocess.Popen([sys.executable, "-c", CHILD, str(db), str(shared), name, str(start)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for name in ("alpha", "beta")
    ]
    results = [c.communicate(timeout=120) for c in children]
    for child, (out, err) in zip(children, results):
        assert child.returncode == 0, err.decode()
    own = {name: int(out) for name, (out, _) in zip(("alpha", "beta"), results)}

    with Store.open(db) as store:
        assert store.integrity_check() == "ok"
        shared_msgs = store.messages(shared)
        for name in ("alpha", "beta"):
            mine = [m for m in shared_msgs if m.role == "user" and m.content.startswith(name)]
            assert [m.content for m in mine] == [f"{name} shared {t}" for t in range(TURNS)]
            answers = [m for m in shared_msgs if m.role == "assistant" and m.model == name]
            assert len(answers) == TURNS
            assert all(m.content == f"streamed by {name}" and not m.cut_short for m in answers)
            assert [m.content for m in store.messages(own[name])] == [f"{name} own {t}" for t in range(TURNS)]
        assert len(shared_msgs) == 4 * TURNS
        authors = [m.content.split()[0] for m in shared_msgs if m.role == "user"]
        switches = sum(a != b for a, b in zip(authors, authors[1:]))
        assert switches >= 2, "the writers did not overlap, so nothing was tested"
        assert len(store.search("shared")) == min(20, 2 * TURNS)
