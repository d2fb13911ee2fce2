"""Matrix-vector kernels that read compressed weights as stored (fp16 bits, LUT indices, int8), compiled by
numba. Optional: where numba cannot be imported (or ANECHAT_JIT=0), AVAILABLE is False and the packed
weights use their plain numpy path, which is also the reference these kernels are tested against.

Every kernel computes out[o] = Σ_i W[o, i] · x[i] in fp32 from one row of compressed weights at a time, so a
token reads 2 bytes per fp16 weight and 1 per LUT or int8 weight instead of 4 for an fp32 copy. numba has no
float16 on the CPU: fp16 bits are moved into fp32 position with integer arithmetic and scaled by 2**112, which LLVM
vectorizes."""

from __future__ import annotations

import os
import sys
import threading
from typing import Any, Callable

import numpy as np

AVAILABLE = False
KERNELS: dict[str, Callable[..., Any]] = {}

if os.environ.get("ANECHAT_JIT", "1") != "0":
    # numba's OpenMP layer: threads that spin-wait after a parallel kernel take the core the next serial op
    # needs (the same collapse as OpenBLAS's under load); sleeping at once costs a wake-up per big kernel.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import numba
        from numba import njit, prange

        AVAILABLE = True
    except Exception:  # noqa: BLE001 - missing, or broken by its llvmlite/numpy: the plain numpy path runs instead
        AVAILABLE = False

# numba's workqueue threading layer (where neither OpenMP nor TBB is installed) aborts the process when two
# threads launch parallel kernels at once (a TUI tab loading while another generates, `serve`): a parallel
# kernel runs only for the thread holding this lock; the others take the one-thread kernel meanwhile.
PARALLEL = threading.Lock()


_READY: bool | None = None  # numba's CPU target started (None: not tried yet)
_START = threading.Lock()
# Optional dependencies of numba that its CPU target imports when it starts (scipy for np.dot inside kernels,
# cffi for calling C through it; these kernels use neither): scipy.linalg alone is ~16 MB resident and 250
# modules.
_UNUSED_BY_KERNELS = ("scipy.linalg.cython_blas", "scipy.linalg.cython_lapack", "cffi")


def ensure_ready() -> bool:
    """Start numba's CPU target (what the first kernel call would do) with the modules above hidden, so
    numba takes its "scipy not installed" path; they are visible again afterwards. False where numba cannot
    start (then the plain numpy path runs, as where it does not import)."""
    global _READY
    if not AVAILABLE:
        return False
    with _START:
        if _READY is not None:
            return _READY
        hidden = [m for m in _UNUSED_BY_KERNELS if m not in sys.modules]
        for m in hidden:
            sys.modules[m] = None  # type: ignore[assignment]  # an import of it raises ImportError
        try:
            from numba.core.registry import cpu_target

            cpu_target.target_context.refresh()
            _READY = True
        except Exception:  # noqa: BLE001 - a broken LLVM or numba: fall back to numpy, do not fail the load
            _READY = False
        finally:
            for m in hidden:
                if sys.modules.get(m, 0) is None:
                    del sys.modules[m]
    return _READY


def set_threads(n: int) -> None:
    if AVAILABLE:
        numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))  # type: ignore[attr-defined]


if AVAILABLE:
    _opts: dict[str, Any] = dict(cache=True, fastmath=True, nogil=True, boundscheck=False)
    _ROWS = 64  # rows per parallel task: enough work to amortise handing it to a thread

    # fp16 → fp32 by moving the bits into place and scaling by 2**112: exact for normal and subnormal halves
    _F16_SCALE = np.float32(2.0**112)

    @njit(**_opts)
    def _f16_rows(w, x, out, start, stop, tmp):
        f = tmp.view(np.float32)
        k = w.shape[1]
        for r in range(start, stop):
            row = w[r]
            for i in range(k):
                h = np.uint32(row[i])
                tmp[i] = ((h & np.uint32(0x8000)) << np.uint32(16)) | ((h & np.uint32(0x7FFF)) << np.uint32(13))
            acc = np.float32(0.0)
            for i in range(k):
                acc += (f[i] * _F16_SCALE) * x[i]
            out[r] = acc

    @njit(**_opts)
    def _lut_rows(idx, lut, rows_per_group, x, out, start, stop, tmp):
        # look the row up first, then a dot product that vectorizes: fused, the lookups held the multiply-adds
        # back (2x slower on a 49152x576 head)
        k = idx.shape[1]
        for r in range(start, stop):
            table = lut[r // rows_per_group]
            row = idx[r]
            for i in range(k):
                tmp[i] = table[row[i]]
            acc = np.float32(0.0)
            for i in range(k):
                acc += tmp[i] * x[i]
            out[r] = acc

    @njit(**_opts)
    def _int8_rows(q, scale, offset, x, xsum, out, start, stop):
        # scale/offset: (n, blocks); xsum: Σx per block, so an offset costs one multiply per block
        k = q.shape[1]
        blocks = scale.shape[1]
        width = k // blocks
        for r in range(start, stop):
            row = q[r]
            total = np.float32(0.0)
            for b in range(blocks):
                acc = np.float32(0.0)
                s = b * width
                # range(width) from an offset, not range(s, s + width): LLVM vectorizes only this form (25x)
                for i in range(width):
                    acc += np.float32(row[s + i]) * x[s + i]
                total += scale[r, b] * (acc - offset[r, b] * xsum[b])
            out[r] = total

    @njit(**_opts)
    def mv_f16(w, x, out):
        _f16_rows(w, x, out, 0, w.shape[0], np.empty(w.shape[1], np.uint32))

    @njit(parallel=True, **_opts)
    def mv_f16_par(w, x, out):
        n, k = w.shape
        for b in prange((n + _ROWS - 1) // _ROWS):
            _f16_rows(w, x, out, b * _ROWS, min(n, (b + 1) * _ROWS), np.empty(k, np.uint32))

    @njit(**_opts)
    def mv_lut(idx, lut, rows_per_group, x, out):
        _lut_rows(idx, lut, rows_per_group, x, out, 0, idx.shape[0], np.empty(idx.shape[1], np.float32))

    @njit(parallel=True, **_opts)
    def mv_lut_par(idx, lut, rows_per_group, x, out):
        n, k = idx.shape
        for b in prange((n + _ROWS - 1) // _ROWS):
            _lut_rows(idx, lut, rows_per_group, x, out, b * _ROWS, min(n, (b + 1) * _ROWS), np.empty(k, np.float32))

    @njit(**_opts)
    def mv_int8(q, scale, offset, x, xsum, out):
        _int8_rows(q, scale, offset, x, xsum, out, 0, q.shape[0])

    @njit(parallel=True, **_opts)
    def mv_int8_par(q, scale, offset, x, xsum, out):
        n = q.shape[0]
        for b in prange((n + _ROWS - 1) // _ROWS):
            _int8_rows(q, scale, offset, x, xsum, out, b * _ROWS, min(n, (b + 1) * _ROWS))

    # Widening a band of rows into an fp32 buffer for BLAS (prefill): numpy's fp16→fp32 cast is several
    # times slower than these loops, and a LUT or int8 band would otherwise take three numpy passes.
    @njit(**_opts)
    def widen_f16(w, start, stop, out):
        k = w.shape[1]
        bits = out.view(np.uint32)
        for r in range(start, stop):
            row = w[r]
            o = r - start
            for i in range(k):
                h = np.uint32(row[i])
                bits[o, i] = ((h & np.uint32(0x8000)) << np.uint32(16)) | ((h & np.uint32(0x7FFF)) << np.uint32(13))
            for i in range(k):
                out[o, i] *= _F16_SCALE

    @njit(**_opts)
    def widen_lut(idx, lut, rows_per_group, start, stop, out):
        k = idx.shape[1]
        for r in range(start, stop):
            table = lut[r // rows_per_group]
            row = idx[r]
            for i in range(k):
                out[r - start, i] = table[row[i]]

    @njit(**_opts)
    def widen_int8(q, scale, offset, start, stop, out):
        k = q.shape[1]
        width = k // scale.shape[1]
        for r in range(start, stop):
            row = q[r]
            for b in range(k // width):
                s = b * width
                sc = scale[r, b]
                off = offset[r, b]
                for i in range(width):
                    out[r - start, s + i] = (np.float32(row[s + i]) - off) * sc

    KERNELS = {
        "widen_f16": widen_f16, "widen_lut": widen_lut, "widen_int8": widen_int8,
        "f16": mv_f16, "f16_par": mv_f16_par,
        "lut": mv_lut, "lut_par": mv_lut_par,
        "int8": mv_int8, "int8_par": mv_int8_par,
    }
