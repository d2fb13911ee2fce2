"""The candidates for decoding from compressed weights, side by side on one matrix-vector product.

    python benchmarks/bench_kernels.py [--threads 1,2] [--repeat 200]

One token of decode is a few hundred matrix-vector products; this times one of them for SmolLM2's MLP
(1536 x 576) and its lm_head (49152 x 576), and Gemma 3 270M's head (262144 x 640), with:
  numpy fp32       BLAS on an fp32 copy (the reference path: 4 bytes read per weight)
  numpy fp16       numpy widening the fp16 weights per call, then BLAS (what "no copy" costs without a kernel)
  numba f16/lut/int8   anechat's kernels (anechat/runtime/milexec/jit.py) on the bytes as stored (fp16 converted
                   by F16C, LUT6 and LUT4 looked up in AVX-512 registers where the CPU has them, else as AVX2
                   byte tables), and the versions
                   every CPU runs (fp16 by integer arithmetic, a LUT by one load per weight)
  onnxruntime      MatMul in fp32 and fp16, MatMulNBits (4- and 8-bit blockwise affine, com.microsoft) and
                   DynamicQuantizeMatMul (int8 weights, the activation quantized too): its CPU kernels for
                   compressed weights; it has none for a lookup table (LUT), which Core ML models use most.
Best of --repeat calls, in microseconds, and each candidate's time over numpy fp32 in the same run (the only
figure that means anything on a shared machine). onnxruntime is optional here (pip install onnxruntime onnx).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SHAPES = {"smollm2 mlp": (1536, 576), "smollm2 head": (49152, 576), "gemma3 head": (262144, 640)}


def best(f, repeat: int) -> float:
    f()
    t_best = float("inf")
    deadline = time.perf_counter() + 5.0  # the big heads: enough calls for a minimum, not minutes
    for _ in range(repeat):
        t = time.perf_counter()
        f()
        t_best = min(t_best, time.perf_counter() - t)
        if time.perf_counter() > deadline:
            break
    return t_best * 1e6


def ort_candidates(n: int, k: int, w16: np.ndarray, threads: int) -> dict:
    try:
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return {}
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    out: dict = {}

    def session(nodes, inits, name):
        graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
        model.ir_version = 9
        try:
            return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - a missing CPU kernel is a result to print, not a crash
            return str(e).splitlines()[0][:60]

    wt = np.ascontiguousarray(w16.T)
    out["ort fp32 MatMul"] = session([helper.make_node("MatMul", ["x", "w"], ["y"])],
                                     [numpy_helper.from_array(wt.astype(np.float32), "w")], "f32")
    out["ort fp16 MatMul"] = session([helper.make_node("Cast", ["x"], ["xh"], to=TensorProto.FLOAT16),
                                      helper.make_node("MatMul", ["xh", "w"], ["yh"]),
                                      helper.make_node("Cast", ["yh"], ["y"], to=TensorProto.FLOAT)],
                                     [numpy_helper.from_array(wt, "w")], "f16")
    rng = np.random.default_rng(0)
    block = 32
    for bits in (4, 8):
        blob = block * bits // 8
        packed = rng.integers(0, 256, (n, k // block, blob), dtype=np.uint8)
        scales = (rng.random(n * (k // block)) * 0.01).astype(np.float32)
        node = helper.make_node("MatMulNBits", ["x", "b", "s"], ["y"], domain="com.microsoft", K=k, N=n, bits=bits,
                                block_size=block)
        out[f"ort MatMulNBits {bits}-bit"] = session([node], [numpy_helper.from_array(packed, "b"),
                                                              numpy_helper.from_array(scales, "s")], f"nbits{bits}")
    q = rng.integers(-127, 128, (k, n), dtype=np.int8)
    node = helper.make_node("DynamicQuantizeMatMul", ["x", "b", "bs", "bz"], ["y"], domain="com.microsoft")
    out["ort int8 DynamicQuantizeMatMul"] = session(
        [node], [numpy_helper.from_array(q, "b"), numpy_helper.from_array(np.full(n, 0.01, np.float32), "bs"),
                 numpy_helper.from_array(np.zeros(n, np.int8), "bz")], "dq")
    del onnx
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeat", type=int, default=200)
    ap.add_argument("--shapes", default=",".join(SHAPES))
    args = ap.parse_args()

    from threadpoolctl import threadpool_limits

    from anechat.runtime.milexec import jit
    from anechat.runtime.milexec.packed import PackedWeight
    from anechat.runtime.threads import POLICY

    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; numba {'on' if jit.AVAILABLE else 'OFF'}")
    rng = np.random.default_rng(0)
    for name in args.shapes.split(","):
        n, k = SHAPES[name]
        w16 = (rng.standard_normal((n, k)) * 0.05).astype(np.float16)
        w32 = w16.astype(np.float32)
        x = rng.standard_normal(k).astype(np.float32)
        packed = {
            "numba f16": PackedWeight.f16(w16),
            # palettes of fp16 values, as Core ML stores them (what the AVX2 byte tables need)
            "numba lut6": PackedWeight.lut_rows(rng.integers(0, 64, (n, k)).astype(np.uint8),
                                                rng.standard_normal((n, 64)).astype(np.float16).astype(np.float32), 1),
            "numba lut4": PackedWeight.lut_rows(rng.integers(0, 16, (n, k)).astype(np.uint8),
                                                rng.standard_normal((n, 16)).astype(np.float16).astype(np.float32), 1),
            "numba int8": PackedWeight.int8(rng.integers(-127, 128, (n, k)).astype(np.int8),
                                            np.full((n, 1), 0.01, np.float32), None),
        }
        for threads in [int(t) for t in args.threads.split(",")]:
            os.environ["ANECHAT_THREADS"] = str(threads)
            POLICY.fixed = threads
            rows: dict[str, float | str] = {}
            with threadpool_limits(threads, user_api="blas"):
                rows["numpy fp32 (reference)"] = best(lambda w32=w32, x=x: w32 @ x, args.repeat)
                rows["numpy fp16 widened per call"] = best(lambda w16=w16, x=x: w16.astype(np.float32) @ x,
                                                             max(3, args.repeat // 20))
                if jit.AVAILABLE:
                    for label, w in packed.items():
                        how = "" if w.kind != "lut" else " (AVX-512 registers)" if w.lut_padded is not None else \
                            " (AVX2 byte tables)" if w.lut_planes is not None else " (a load per weight)"
                        rows[label + how] = best(lambda w=w, x=x: w.matvec(x), args.repeat)
                    # what runs on CPUs without F16C / AVX-512 (and what ran before them here)
                    out = np.empty(n, np.float32)
                    bits = packed["numba f16"].data
                    rows["numba f16, integer conversion"] = best(lambda b=bits, x=x, o=out: jit.mv_f16_int(b, x, o), args.repeat)
                    lut = packed["numba lut6"]
                    rows["numba lut6, a load per weight"] = best(
                        lambda w=lut, x=x, o=out: jit.mv_lut(w.data, w.lut, w.rows_per_group, x, o), args.repeat)
                xs = x[None, :]
                for label, sess in ort_candidates(n, k, w16, threads).items():
                    rows[label] = sess if isinstance(sess, str) else best(lambda s=sess, xs=xs: s.run(None, {"x": xs}),
                                                                                  args.repeat)
            ref = rows["numpy fp32 (reference)"]
            print(f"\n{name} ({n} x {k}), {threads} thread(s)")
            for label, us in rows.items():
                if isinstance(us, str):
                    print(f"  {label:32} not available: {us}")
                else:
                    print(f"  {label:32} {us:10.0f} us  {us / ref:6.2f}x the fp32 reference")  # type: ignore[operator]


if __name__ == "__main__":
    main()
