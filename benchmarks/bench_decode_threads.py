"""One token's layer products on one thread and on two, with the kernels' OpenMP workers sleeping at once or
spinning briefly between kernels: why a layer's matrix-vector products take a second core (threads.py).

    python benchmarks/bench_decode_threads.py [--kinds f16,int8,lut6] [--tokens 20] [--rounds 3]

A token of SmolLM2 is, per layer, four products (960x576 q/k/v, 576x576 o, 3072x576 gate/up, 576x1536 down)
with a few small numpy steps between them; this runs 30 such layers of random weights in the form the
converter writes (fp16, int8 in blocks of 32 with offsets, LUT6 with a palette per 16 rows) through
anechat's PackedWeight.matvec, each configuration in its own process (OpenMP reads its settings once):
  1 thread          ANECHAT_THREADS=1
  2 threads, sleep  ANECHAT_THREADS=2 OMP_WAIT_POLICY=PASSIVE (the workers sleep after every kernel)
  2 threads, spin   ANECHAT_THREADS=2 and anechat's default (GOMP_SPINCOUNT=10000: ~0.1 ms of spinning)
Rounds are interleaved; it prints the median ms per token and each over one thread (only the ratios within
one run mean anything on a shared machine).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {
    "1 thread": {"ANECHAT_THREADS": "1"},
    "2 threads, sleep": {"ANECHAT_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"},
    "2 threads, spin": {"ANECHAT_THREADS": "2"},
}
LAYER = [(960, 576), (576, 576), (3072, 576), (576, 1536)]


def worker(kind: str, tokens: int) -> float:
    import numpy as np

    from anechat.runtime.milexec.packed import PackedWeight

    rng = np.random.default_rng(0)

    def weight(n: int, k: int) -> PackedWeight:
        if kind == "f16":
            return PackedWeight.f16((rng.standard_normal((n, k)) * 0.05).astype(np.float16))
        if kind == "int8":
            blocks = (n, k // 32)
            return PackedWeight.int8(rng.integers(-128, 128, (n, k)).astype(np.int8),
                                     (rng.random(blocks) * 0.01).astype(np.float32), rng.random(blocks).astype(np.float32))
        return PackedWeight.lut_rows(rng.integers(0, 64, (n, k)).astype(np.uint8),
                                     rng.standard_normal((n // 16, 64)).astype(np.float32), 16)

    layers = [[weight(n, k) for n, k in LAYER] for _ in range(30)]
    xs = {k: rng.standard_normal(k).astype(np.float32) for k in (576, 1536)}

    def token() -> None:
        for layer in layers:
            for w in layer:
                y = w.matvec(xs[w.k])
                for _ in range(10):  # the small numpy steps between a token's products
                    y = y * np.float32(1.0)

    for _ in range(3):
        token()
    t = time.perf_counter()
    for _ in range(tokens):
        token()
    return (time.perf_counter() - t) / tokens * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kinds", default="f16,int8,lut6")
    ap.add_argument("--tokens", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--worker")
    args = ap.parse_args()
    if args.worker:
        print(worker(args.worker, args.tokens))
        return
    results: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for kind in args.kinds.split(","):
            for name, env in CONFIGS.items():
                proc = subprocess.run([sys.executable, __file__, "--worker", kind, "--tokens", str(args.tokens)],
                                      capture_output=True, text=True, check=True, cwd=ROOT,
                                      env={**os.environ, "PYTHONPATH": str(ROOT), **env})
                results.setdefault((kind, name), []).append(float(proc.stdout.strip().splitlines()[-1]))
    print(f"{'weights':8s} {'configuration':18s} {'ms/token':>9s} {'/ 1 thread':>11s}")
    for kind in args.kinds.split(","):
        one = statistics.median(results[(kind, "1 thread")])
        for name in CONFIGS:
            ms = statistics.median(results[(kind, name)])
            print(f"{kind:8s} {name:18s} {ms:9.2f} {ms / one:11.2f}")


if __name__ == "__main__":
    main()
