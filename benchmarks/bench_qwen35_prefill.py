"""Qwen 3.5's `prefill`: the delta rule as one chunk in WY form ("chunked") against the recurrence unrolled token
after token ("unrolled"), on the tiny reference model (tests/data/qwen35-tiny) at --context 256 --batch 64.

    python benchmarks/bench_qwen35_prefill.py [--runs 3] [--batch 64]

For each form: ops of the `prefill` function (and per DeltaNet layer, over what `infer` has), conversion time,
portable prefill speed of the 150 reference ids (a ratio within one run is the number to compare) and the largest
|logit error| after the prefill against transformers' fp32 logits, in units of their standard deviation.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"


def prefill_ops(path: Path) -> tuple[int, int]:
    from anechat.inspect import inspect_model_dir

    fns = inspect_model_dir(path)["parts"]["chunk 1"]["functions"]
    return fns["prefill"]["ops"], fns["infer"]["ops"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()

    from anechat.arch.qwen3_5 import LINEAR, Qwen3_5
    from anechat.convert.build import ConvertOptions, convert
    from anechat.convert.checkpoint import load_checkpoint
    from anechat.engine.lm import LanguageModel
    from anechat.runtime.modeldir import open_model_dir
    from anechat.runtime.portable import PortableBackend

    ref = np.load(DATA / "qwen35_tiny_reference.npz")
    ids, logits = [int(t) for t in ref["ids"]], ref["logits"]
    ckpt = load_checkpoint(DATA / "qwen35-tiny")
    n_delta = ckpt.config.layer_types.count(LINEAR)
    work = Path(tempfile.mkdtemp(prefix="bench-qwen35-"))
    results = {}
    try:
        for form in ("chunked", "unrolled"):
            Qwen3_5.prefill_form = form
            path = work / form
            t = time.perf_counter()
            convert(ckpt, path, ConvertOptions(context=256, batch=args.batch))
            convert_s = time.perf_counter() - t
            ops, infer_ops = prefill_ops(path)
            lm = LanguageModel(open_model_dir(path), PortableBackend())
            times, err = [], 0.0
            for _ in range(args.runs):
                lm.reset()
                t = time.perf_counter()
                out = lm.prefill(ids)
                times.append(time.perf_counter() - t)
                err = float(np.abs(out - logits[-1]).max() / logits.std())
            tok_s = len(ids) / statistics.median(times)
            results[form] = tok_s
            print(f"{form:9s} prefill ops {ops:5d} ({(ops - infer_ops) / n_delta:6.1f} more than infer per DeltaNet layer) · "
                  f"convert {convert_s:5.1f}s · portable prefill {tok_s:6.0f} tok/s · last-token |err| {err:.4f}·std")
        print(f"chunked / unrolled prefill speed: {results['chunked'] / results['unrolled']:.2f}×")
    finally:
        Qwen3_5.prefill_form = "chunked"
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
