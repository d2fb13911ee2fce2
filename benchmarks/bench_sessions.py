"""Session store at scale: 1,000 sessions × 50 messages (built through the public Store API), then the
latency of what a user waits for — opening the store (with its quick_check), `sessions list`, `search`
(common word, rare word, phrase, prefix), loading a session, exporting it — in process and as a whole
`anechat sessions ...` command. Also the cost of one write-ahead commit of a streamed answer.

    python benchmarks/bench_sessions.py [--sessions 1000] [--messages 50] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

WORDS = ["the", "a", "of", "to", "and", "in", "is", "it", "you", "that", "for", "on", "with", "as", "are", "this", "be", "at", "or", "have", "from", "not", "by", "but", "python", "list", "sort", "reverse", "function", "class", "return", "value", "error", "file", "data", "model", "token", "answer", "question", "code", "loop", "string", "number", "memory", "cache", "thread", "process", "queue", "socket", "request", "server", "paris", "france", "capital", "river", "mountain", "history", "music", "science", "energy", "light", "water", "garden"]


def message_text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


def build(path: Path, sessions: int, messages: int) -> float:
    from anechat.sessions.store import Store

    rng = random.Random(0)
    t0 = time.perf_counter()
    with Store.open(path) as store:
        for s in range(sessions):
            sid = store.create_session("smollm2-135m", "Be brief.", {"temperature": 0.7})
            for _m in range(messages // 2):
                store.add_user_message(sid, message_text(rng, rng.randint(5, 40)))
                store.add_message(sid, "assistant", message_text(rng, rng.randint(30, 200)),
                                  model="smollm2-135m", stats={"tokens": 100, "tok_per_s": 30.0, "ttft_s": 0.2})
            if s == sessions // 2:  # one rare word, in the middle
                store.add_user_message(sid, "Where do axolotls live?")
    return time.perf_counter() - t0


def median_ms(fn: Callable[[], object], repeat: int = 15) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def in_process(path: Path) -> dict[str, float]:
    from anechat.sessions.export import to_markdown
    from anechat.sessions.store import Store

    out = {"open_ms": median_ms(lambda: Store.open(path).close(), repeat=7)}
    with Store.open(path) as store:
        sid = store.last_session_id()
        out["list_50_ms"] = median_ms(lambda: store.list_sessions(limit=50))
        out["list_all_ms"] = median_ms(lambda: store.list_sessions(limit=None), repeat=5)
        for name, query in (("common", "python"), ("rare", "axolotls"), ("phrase", '"capital of"'),
                            ("prefix", "mount*"), ("two_words", "paris river")):
            out[f"search_{name}_ms"] = median_ms(lambda q=query: store.search(q, limit=20))
        out["load_session_ms"] = median_ms(lambda: store.messages(sid))
        out["export_md_ms"] = median_ms(lambda: to_markdown(store.session(sid), store.messages(sid)))
        out["flush_ms"] = flush_cost(store, sid)
    return out


def flush_cost(store, sid: int, tokens: int = 400) -> float:
    """One commit of a growing streamed answer (flush every append: the worst case; real streams commit
    about once a second)."""
    writer = store.begin_answer(sid, "bench", flush_interval=0)
    t0 = time.perf_counter()
    for i in range(tokens):
        writer.append(f"tok{i} ")
    writer.finish()
    return (time.perf_counter() - t0) * 1000 / tokens


def command_ms(home: Path, *argv: str, repeat: int = 5) -> float:
    env = {**os.environ, "ANECHAT_HOME": str(home)}

    def run() -> None:
        subprocess.run([sys.executable, "-m", "anechat", *argv], env=env, check=True, capture_output=True)

    return median_ms(run, repeat=repeat)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=1000)
    ap.add_argument("--messages", type=int, default=50)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        path = home / "data" / "sessions.db"
        result: dict[str, float] = {"sessions": args.sessions, "messages": args.messages}
        result["build_s"] = build(path, args.sessions, args.messages)
        result["db_mb"] = path.stat().st_size / 1e6
        result.update(in_process(path))
        result["cmd_version_ms"] = command_ms(home, "--version")
        result["cmd_list_ms"] = command_ms(home, "sessions", "list")
        result["cmd_search_ms"] = command_ms(home, "sessions", "search", "paris", "river")
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:22} {value:10.2f}" if isinstance(value, float) else f"{key:22} {value:>10}")


if __name__ == "__main__":
    main()
