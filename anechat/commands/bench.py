"""`anechat bench`: prefill and decode speed, time to first token, host overhead and memory of a model."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def add_parser(sub) -> None:
    from anechat.cli import add_model_arguments

    p = sub.add_parser("bench", help="measure prefill/decode speed of a model", description=__doc__)
    add_model_arguments(p)
    p.add_argument("--prompt-tokens", type=int, default=128, help="prompt length (default 128)")
    p.add_argument("--gen", type=int, default=64, help="tokens to decode (default 64)")
    p.add_argument("--runs", type=int, default=3, help="runs; min/median/max are reported (default 3)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def peak_rss_mb() -> float:
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1 << 20) if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


def one_run(lm, clock, prompt: list[int], gen: int) -> dict[str, float]:
    import numpy as np

    lm.reset()
    t0 = time.perf_counter()
    logits = lm.prefill(prompt)
    token = int(np.argmax(logits))
    t1 = time.perf_counter()
    p0 = clock.seconds
    for _ in range(gen):
        token = int(np.argmax(lm.step(token)))
    t2 = time.perf_counter()
    decode_s = t2 - t1
    return {
        "prefill_tok_s": len(prompt) / (t1 - t0),
        "ttft_ms": (t1 - t0) * 1000,
        "decode_tok_s": gen / decode_s,
        "host_overhead_ms_per_token": (decode_s - (clock.seconds - p0)) * 1000 / gen,
    }


def summarize(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    return {
        key: {"min": min(v), "median": statistics.median(v), "max": max(v)}
        for key in runs[0]
        for v in [[r[key] for r in runs]]
    }


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from anechat.chat.model import ModelProvider, model_directory
    from anechat.commands.chat import stderr_say
    from anechat.engine.loader import load_model
    from anechat.errors import UsageError
    from anechat.runtime.select import backend_label
    from anechat.runtime.timing import TimedBackend

    if args.runs < 1 or args.gen < 1 or args.prompt_tokens < 1:
        raise UsageError("--runs, --gen and --prompt-tokens must be at least 1")
    path = model_directory(args.model_dir) if args.model_dir else ModelProvider().resolve(args.model, stderr_say())
    # Loaded as a chat loads it (the first Core ML run checked in a child process, the same fallbacks under
    # auto), on a backend that times its predictions.
    t = time.perf_counter()
    loaded = load_model(path, backend=args.backend, compute_units=args.compute_units, strict_fp16=args.strict_fp16,
                        wrap=TimedBackend)
    load_s = time.perf_counter() - t
    md, lm, backend = loaded.model_dir, loaded.lm, loaded.backend
    assert isinstance(backend, TimedBackend)
    if args.prompt_tokens + args.gen > lm.context_length:
        raise UsageError(
            f"--prompt-tokens + --gen = {args.prompt_tokens + args.gen} exceeds the model's context of {lm.context_length}"
        )
    rng = np.random.default_rng(0)
    prompt = [int(x) for x in rng.integers(100, min(lm.vocab_size, 30000), size=args.prompt_tokens)]
    one_run(lm, backend.clock, prompt[: min(8, len(prompt))], 2)  # warm-up: first-touch of weights and buffers
    runs = [one_run(lm, backend.clock, prompt, args.gen) for _ in range(args.runs)]
    result = {
        "model": str(md.path),
        "backend": backend_label(backend._backend),
        "prompt_tokens": args.prompt_tokens,
        "gen_tokens": args.gen,
        "runs": args.runs,
        "load_s": round(load_s, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    stats = summarize(runs)
    for key, s in stats.items():
        result[key] = round(s["median"], 4)
        result[key + "_min"] = round(s["min"], 4)
        result[key + "_max"] = round(s["max"], 4)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"model {result['model']} on {result['backend']} (loaded in {load_s:.1f}s)")
    print(f"{args.prompt_tokens}-token prompt, {args.gen} decoded tokens, {args.runs} run{'' if args.runs == 1 else 's'}: median [min … max]")
    labels = {
        "prefill_tok_s": "prefill tok/s",
        "ttft_ms": "time to first token ms",
        "decode_tok_s": "decode tok/s",
        "host_overhead_ms_per_token": "host overhead ms/token",
    }
    for key, label in labels.items():
        s = stats[key]
        print(f"  {label:24s} {s['median']:9.3f}  [{s['min']:.3f} … {s['max']:.3f}]")
    print(f"  {'peak RSS MB':24s} {result['peak_rss_mb']:9.1f}")
    return 0
