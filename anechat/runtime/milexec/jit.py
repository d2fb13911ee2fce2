"""Matrix-vector kernels that read compressed weights as stored (fp16 bits, LUT indices, int8), compiled by
numba. Optional: where numba cannot be imported (or ANECHAT_JIT=0), AVAILABLE is False and the packed
weights use their plain numpy path, which is also the reference these kernels are tested against.

Every kernel computes out[o] = Σ_i W[o, i] · x[i] in fp32 from one row of compressed weights at a time, so a
token reads 2 bytes per fp16 weight and 1 per LUT or int8 weight instead of 4 for an fp32 copy. numba has no
float16 on the CPU: fp16 bits are moved into fp32 position with integer arithmetic and scaled by 2**112, which LLVM
vectorizes; where the CPU converts halves itself (x86 F16C, every 64-bit ARM) an LLVM `fpext half` does it
instead (`_h2f`: one vcvtph2ps per 16 weights), 2.4x faster again on a row that is in the cache."""

from __future__ import annotations

import os
import sys
import threading
from typing import Any, Callable

import numpy as np

AVAILABLE = False
KERNELS: dict[str, Callable[..., Any]] = {}

def _x86_has(*features: str) -> bool:
    """Whether this is an x86-64 CPU that LLVM reports every one of `features` for (what numba compiles to)."""
    import platform

    import llvmlite.binding as llvm

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    host = llvm.get_host_cpu_features()
    return all(host.get(f) for f in features)


def _cpu_converts_halves() -> bool:
    """Whether LLVM lowers fp16→fp32 to one instruction here. Elsewhere it would call a runtime helper
    (__extendhfsf2) that numba's JIT does not link, so the integer version runs instead."""
    import platform

    return platform.machine().lower() in ("arm64", "aarch64") or _x86_has("f16c")


AVX512 = False  # whether LUT palettes are looked up in registers (see _lut_in_registers)
AVX2 = False  # whether fp16 palettes of up to 64 entries are looked up a byte at a time (see _lut_by_bytes)
F16C = False  # whether the fp16 kernels convert with the CPU's own instruction (see _h2f)

if os.environ.get("ANECHAT_JIT", "1") != "0":
    # numba's OpenMP layer: how long a worker spin-waits for the next parallel kernel before it sleeps. Sleeping
    # at once (OMP_WAIT_POLICY=PASSIVE) costs a wake-up per kernel, more than a layer's matrix-vector product
    # gains from a second core (SmolLM2 decode: 2 threads ran slower than 1); spinning forever takes a core
    # from whatever else runs. A short spin (GOMP_SPINCOUNT 10,000, about 0.1 ms; KMP_BLOCKTIME 1 ms for LLVM's
    # OpenMP) bridges the few Python steps between one token's kernels and lets go between tokens. Under load
    # the thread policy runs the one-thread kernels and the workers stay asleep.
    # A user's own OMP_WAIT_POLICY stands (libgomp would let GOMP_SPINCOUNT override it).
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", "10000")
        os.environ.setdefault("KMP_BLOCKTIME", "1")
    try:
        import numba
        from numba import njit, prange

        AVAILABLE = True
        F16C = _cpu_converts_halves() if os.environ.get("ANECHAT_F16C", "1") != "0" else False
        AVX512 = _x86_has("avx512f") if os.environ.get("ANECHAT_AVX512", "1") != "0" else False
        AVX2 = _x86_has("avx2", "f16c") if os.environ.get("ANECHAT_AVX2", "1") != "0" else False
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


_THREADS_SET = threading.local()  # numba's thread count is per calling thread: what this thread last set


def set_threads(n: int) -> None:
    """numba.set_num_threads, skipped when this thread already set n: the call costs ~8 µs (a lock and a check
    of the pool), 123 times a SmolLM2 token."""
    if AVAILABLE:
        n = max(1, min(n, numba.config.NUMBA_NUM_THREADS))  # type: ignore[attr-defined]
        if getattr(_THREADS_SET, "n", None) != n:
            numba.set_num_threads(n)
            _THREADS_SET.n = n


if AVAILABLE:
    _opts: dict[str, Any] = dict(cache=True, fastmath=True, nogil=True, boundscheck=False)
    # Rows per parallel task. numba splits the tasks evenly between the threads, so a layer's 576 rows (SmolLM2)
    # in 64s were 5 tasks against 4; in 32s 9 against 9. 30 SmolLM2 layers' int8 products on 2 threads, 3
    # interleaved pairs: 12.6 / 13.1 / 13.9 ms at 64 rows, 12.4 / 11.1 / 12.9 at 32.
    _ROWS = 32

    # fp16 → fp32 by moving the bits into place and scaling by 2**112: exact for normal and subnormal halves
    _F16_SCALE = np.float32(2.0**112)

    from llvmlite import ir
    from numba import types
    from numba.extending import intrinsic

    @intrinsic
    def _h2f(typingctx, h):
        """fp16 bits (uint16) → float32 as the hardware converts them (vcvtph2ps, fcvt)."""
        def codegen(context, builder, signature, args):
            return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

        return types.float32(types.uint16), codegen

    @njit(**_opts)
    def _f16_rows_cvt(w, x, out, start, stop):
        k = w.shape[1]
        for r in range(start, stop):
            row = w[r]
            acc = np.float32(0.0)
            for i in range(k):
                acc += _h2f(row[i]) * x[i]  # type: ignore[call-arg]
            out[r] = acc

    @njit(**_opts)
    def _f16_rows_int(w, x, out, start, stop, tmp):
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

    from numba.core import cgutils

    def _lut_in_registers(entries: int, store: bool):
        """An intrinsic over the first `count` (a multiple of 16) indices of a row, its palette of `entries`
        floats (64 or 256, padded) held in AVX-512 registers: 16 lookups are one vpermi2ps per pair of
        registers (bit 4 of an index picks the register of a pair) and a tree of blends on bits 5, 6, 7 (two
        permutes and a blend for 64 entries: 9x the scalar loads of a LUT6 row; eight and seven for 256: 1.5x).
        store=False: Σ table[row[i]] · x[i] (decode); store=True: out[i] = table[row[i]] (prefill's widening).
        LLVM emits no such lookup from a loop, hence the IR; only built where the CPU has AVX-512."""
        regs_n = entries // 16

        def codegen(context, builder, signature, args):
            count = args[3]
            tptr, rptr, vec_ptr = (context.make_array(ty)(context, builder, v).data for ty, v in zip(signature.args[:3], args[:3]))
            i32, i8 = ir.IntType(32), ir.IntType(8)
            v16f, v16i, v16b = ir.VectorType(ir.FloatType(), 16), ir.VectorType(i32, 16), ir.VectorType(i8, 16)
            perm = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v16f, [v16f, v16i, v16f]),
                                                  "llvm.x86.avx512.vpermi2var.ps.512")
            vptr = ir.PointerType(v16f)
            regs = [builder.load(builder.bitcast(builder.gep(tptr, [ir.Constant(count.type, 16 * j)]), vptr), align=4)
                    for j in range(regs_n)]
            zero = ir.Constant(v16f, [0.0] * 16)
            accs = [] if store else [cgutils.alloca_once_value(builder, zero) for _ in range(2)]

            def sixteen(i, acc):
                idx = builder.zext(builder.load(builder.bitcast(builder.gep(rptr, [i]), ir.PointerType(v16b)), align=1), v16i)
                level = [builder.call(perm, [regs[2 * p], idx, regs[2 * p + 1]]) for p in range(regs_n // 2)]
                bit = 32
                while len(level) > 1:
                    upper = builder.icmp_unsigned("!=", builder.and_(idx, ir.Constant(v16i, [bit] * 16)), ir.Constant(v16i, [0] * 16))
                    level = [builder.select(upper, level[2 * q + 1], level[2 * q]) for q in range(len(level) // 2)]
                    bit *= 2
                at = builder.bitcast(builder.gep(vec_ptr, [i]), vptr)
                if store:
                    builder.store(level[0], at, align=4)
                else:
                    product = builder.fmul(level[0], builder.load(at, align=4), flags=["fast"])
                    builder.store(builder.fadd(builder.load(acc), product, flags=["fast"]), acc)

            # 32 weights a turn into two accumulators: each add waits on its own chain only (one chain held a
            # LUT6 row to a third of the lookups' throughput)
            sixteens = builder.udiv(count, ir.Constant(count.type, 16))
            with cgutils.for_range(builder, builder.udiv(sixteens, ir.Constant(count.type, 2))) as loop:
                i = builder.mul(loop.index, ir.Constant(count.type, 32))
                sixteen(i, accs[0] if accs else None)
                sixteen(builder.add(i, ir.Constant(count.type, 16)), accs[1] if accs else None)
            with builder.if_then(builder.icmp_unsigned("!=", builder.urem(sixteens, ir.Constant(count.type, 2)), ir.Constant(count.type, 0))):
                sixteen(builder.mul(builder.sub(sixteens, ir.Constant(count.type, 1)), ir.Constant(count.type, 16)), accs[0] if accs else None)
            if store:
                return context.get_dummy_value()
            total = builder.fadd(builder.load(accs[0]), builder.load(accs[1]), flags=["fast"])
            out = builder.extract_element(total, ir.Constant(i32, 0))
            for j in range(1, 16):
                out = builder.fadd(out, builder.extract_element(total, ir.Constant(i32, j)))
            return out

        def typer(typingctx, table, row, vec, count):
            return (types.none if store else types.float32)(table, row, vec, types.intp), codegen

        return intrinsic(typer)

    _lut64_dot, _lut64_widen = _lut_in_registers(64, False), _lut_in_registers(64, True)
    _lut256_dot, _lut256_widen = _lut_in_registers(256, False), _lut_in_registers(256, True)

    def _sum_lanes(builder, vec):
        """Σ of a float vector's lanes as a tree of halves (5 dependent adds for 32 lanes, not 31): the sum
        ends every row, and a chain of scalar adds there cost as much as the row's lookups."""
        i32 = ir.IntType(32)
        n = vec.type.count
        while n > 1:
            n //= 2
            low = builder.shuffle_vector(vec, vec, ir.Constant(ir.VectorType(i32, n), list(range(n))))
            high = builder.shuffle_vector(vec, vec, ir.Constant(ir.VectorType(i32, n), list(range(n, 2 * n))))
            vec = builder.fadd(low, high, flags=["fast"])
        return builder.extract_element(vec, ir.Constant(i32, 0))

    LUT_PLANE_BYTES = 256  # a palette as byte tables: 2 bytes of a half x 4 tables of 16 entries x 2 lanes

    def _lut_by_bytes(tables: int, store: bool):
        """An intrinsic over the first `count` (a multiple of 32) indices of a row whose palette (fp16 values,
        up to 16 entries for tables=1, up to 64 for tables=4) is given as byte tables (`lut_planes`): the low
        and the high byte of each half, 16 entries per table, repeated for both 128-bit lanes. 32 lookups are
        one vpshufb per table and byte (bits 0-3 of an index; the tables an index's bits 4-5 do not name read
        0) OR-ed together, an interleave of the two bytes into halves and vcvtph2ps (a blend tree on bits 4-5
        instead of the zeroing ran ~10 % slower). For CPUs with AVX2 but no AVX-512, where a
        float palette cannot sit in registers (AVX2's vpermps takes 8 entries: 8 permutes and 7 blends per 8
        LUT6 weights ran no faster than the scalar loads, nor did vgatherdps). Needs F16C for the halves.
        store=False: Σ table[row[i]] · x[i] (decode); store=True: out[i] = table[row[i]] (prefill)."""

        def codegen(context, builder, signature, args):
            count = args[3]
            tptr, rptr, vec_ptr = (context.make_array(ty)(context, builder, v).data for ty, v in zip(signature.args[:3], args[:3]))
            i8, i32 = ir.IntType(8), ir.IntType(32)
            v32b, v32f = ir.VectorType(i8, 32), ir.VectorType(ir.FloatType(), 32)
            shuffle = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v32b, [v32b, v32b]), "llvm.x86.avx2.pshuf.b")
            add_sat = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v32b, [v32b, v32b]), "llvm.uadd.sat.v32i8")

            def const(v: int):
                return ir.Constant(count.type, v)

            regs = [[builder.load(builder.bitcast(builder.gep(tptr, [const(32 * (4 * p + t))]), ir.PointerType(v32b)), align=1)
                     for t in range(tables)] for p in range(2)]
            # bytes (lo0, hi0, lo1, hi1, ...): the halves in the order of the indices
            interleave = ir.Constant(ir.VectorType(i32, 64), [j for i in range(32) for j in (i, 32 + i)])
            zero = ir.Constant(v32f, [0.0] * 32)
            acc = None if store else cgutils.alloca_once_value(builder, zero)
            with cgutils.for_range(builder, builder.udiv(count, const(32))) as loop:
                i = builder.mul(loop.index, const(32))
                idx = builder.load(builder.bitcast(builder.gep(rptr, [i]), ir.PointerType(v32b)), align=1)
                # table t's lookup of index i gives 0 unless i's bits 4-5 are t: vpshufb zeroes a byte whose index
                # has bit 7 set, and (i ^ 16t) +sat 0x70 sets it exactly when i ^ 16t >= 16
                if tables == 1:
                    picks = [idx]
                else:
                    picks = [builder.call(add_sat, [builder.xor(idx, ir.Constant(v32b, [16 * t] * 32)), ir.Constant(v32b, [0x70] * 32)])
                             for t in range(tables)]
                planes = []
                for p in range(2):
                    looked = [builder.call(shuffle, [regs[p][t], picks[t]]) for t in range(tables)]
                    while len(looked) > 1:
                        looked = [builder.or_(looked[2 * q], looked[2 * q + 1]) for q in range(len(looked) // 2)]
                    planes.append(looked[0])
                halves = builder.bitcast(builder.shuffle_vector(planes[0], planes[1], interleave), ir.VectorType(ir.HalfType(), 32))
                values = builder.fpext(halves, v32f)
                at = builder.bitcast(builder.gep(vec_ptr, [i]), ir.PointerType(v32f))
                if store:
                    builder.store(values, at, align=4)
                else:
                    builder.store(builder.fadd(builder.load(acc), builder.fmul(values, builder.load(at, align=4), flags=["fast"]), flags=["fast"]), acc)
            if store:
                return context.get_dummy_value()
            return _sum_lanes(builder, builder.load(acc))

        def typer(typingctx, planes, row, vec, count):
            return (types.none if store else types.float32)(planes, row, vec, types.intp), codegen

        return intrinsic(typer)

    _lutb16_dot, _lutb64_dot = _lut_by_bytes(1, False), _lut_by_bytes(4, False)
    _lutb16_widen, _lutb64_widen = _lut_by_bytes(1, True), _lut_by_bytes(4, True)

    def _int8_blocks(fixed: int | None):
        """An intrinsic: Σ_b scales[b] · Σ_i row[b·width + i] · x[b·width + i], width a multiple of 32 — given
        here as `fixed` (the straight-line body for the blocks of 32 the converter writes), or else read at run
        time. The loop numba writes for it sums each block to a scalar (a horizontal add per block, 3.5x slower
        on SmolLM2's blocks of 32); this keeps 16 lanes per block and scales them with one broadcast multiply,
        each 32 weights summed in two halves and alternate blocks into two accumulators, so no add waits on the
        one before it. Generic LLVM vectors: any CPU."""

        def codegen(context, builder, signature, args):
            rptr, xptr, sptr = (context.make_array(ty)(context, builder, v).data for ty, v in zip(signature.args[:3], args[:3]))
            blocks = args[3]
            i32, intp = ir.IntType(32), blocks.type
            width = ir.Constant(intp, fixed) if fixed else args[4]
            v16f, v16b = ir.VectorType(ir.FloatType(), 16), ir.VectorType(ir.IntType(8), 16)
            zero = ir.Constant(v16f, [0.0] * 16)
            fast = ["fast"]

            def const(v: int):
                return ir.Constant(intp, v)

            def product(i):
                q = builder.load(builder.bitcast(builder.gep(rptr, [i]), ir.PointerType(v16b)), align=1)
                xv = builder.load(builder.bitcast(builder.gep(xptr, [i]), ir.PointerType(v16f)), align=4)
                return builder.fmul(builder.sitofp(q, v16f), xv, flags=fast)

            halves = [] if fixed == 32 else [cgutils.alloca_once_value(builder, zero) for _ in range(2)]

            def block(b):
                base = builder.mul(b, width)
                if fixed == 32:
                    part = builder.fadd(product(base), product(builder.add(base, const(16))), flags=fast)
                else:
                    for h in halves:
                        builder.store(zero, h)
                    with cgutils.for_range(builder, builder.udiv(width, const(32))) as inner:
                        at = builder.add(base, builder.mul(inner.index, const(32)))
                        for lane, h in zip((0, 16), halves):
                            builder.store(builder.fadd(builder.load(h), product(builder.add(at, const(lane))), flags=fast), h)
                    part = builder.fadd(builder.load(halves[0]), builder.load(halves[1]), flags=fast)
                s = builder.insert_element(ir.Constant(v16f, ir.Undefined), builder.load(builder.gep(sptr, [b])), ir.Constant(i32, 0))
                s = builder.shuffle_vector(s, s, ir.Constant(ir.VectorType(i32, 16), [0] * 16))
                return builder.fmul(part, s, flags=fast)

            accs = [cgutils.alloca_once_value(builder, zero) for _ in range(2)]
            with cgutils.for_range(builder, builder.udiv(blocks, const(2))) as pair:
                b = builder.mul(pair.index, const(2))
                for j, acc in enumerate(accs):
                    builder.store(builder.fadd(builder.load(acc), block(builder.add(b, const(j))), flags=fast), acc)
            with builder.if_then(builder.icmp_unsigned("!=", builder.urem(blocks, const(2)), const(0))):
                builder.store(builder.fadd(builder.load(accs[0]), block(builder.sub(blocks, const(1))), flags=fast), accs[0])
            return _sum_lanes(builder, builder.fadd(builder.load(accs[0]), builder.load(accs[1]), flags=fast))

        def typer(typingctx, row, x, scales, blocks, width):
            return types.float32(row, x, scales, types.intp, types.intp), codegen

        return intrinsic(typer)

    _int8_dot32, _int8_dot = _int8_blocks(32), _int8_blocks(None)

    @njit(**_opts)
    def _lut64_rows(idx, lut, rows_per_group, x, out, start, stop):
        # lut (groups, 64): palettes of up to 64 entries, padded
        k = idx.shape[1]
        whole = k - k % 16
        for r in range(start, stop):
            table = lut[r // rows_per_group]
            row = idx[r]
            acc: float = _lut64_dot(table, row, x, whole)
            for i in range(whole, k):
                acc += table[row[i]] * x[i]
            out[r] = acc

    @njit(**_opts)
    def _lut256_rows(idx, lut, rows_per_group, x, out, start, stop):
        # lut (groups, 256): palettes of 65 to 256 entries, padded
        k = idx.shape[1]
        whole = k - k % 16
        for r in range(start, stop):
            table = lut[r // rows_per_group]
            row = idx[r]
            acc: float = _lut256_dot(table, row, x, whole)
            for i in range(whole, k):
                acc += table[row[i]] * x[i]
            out[r] = acc

    @njit(**_opts)
    def _lutb_rows(idx, planes, lut, rows_per_group, x, out, start, stop):
        # planes (groups, LUT_PLANE_BYTES): byte tables of palettes of up to 16 (lut.shape[1] <= 16) or 64 entries
        k = idx.shape[1]
        whole = k - k % 32
        small = lut.shape[1] <= 16
        for r in range(start, stop):
            g = r // rows_per_group
            row = idx[r]
            if small:
                acc: float = _lutb16_dot(planes[g], row, x, whole)
            else:
                acc = _lutb64_dot(planes[g], row, x, whole)
            table = lut[g]
            for i in range(whole, k):
                acc += table[row[i]] * x[i]
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
    def _int8_rows(q, scale, offset, x, xsum, offsets, out, start, stop):
        # scale/offset: (n, blocks); xsum: Σx per block, so an offset costs one multiply per block
        k = q.shape[1]
        blocks = scale.shape[1]
        width = k // blocks
        if width % 32 == 0:
            for r in range(start, stop):
                corr = np.float32(0.0)
                if offsets:
                    for b in range(blocks):
                        corr += scale[r, b] * offset[r, b] * xsum[b]
                if width == 32:
                    out[r] = _int8_dot32(q[r], x, scale[r], blocks, width) - corr
                else:
                    out[r] = _int8_dot(q[r], x, scale[r], blocks, width) - corr
            return
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

    # One kernel per conversion (not one choosing at run time): numba's cache keeps each compiled body.
    @njit(**_opts)
    def mv_f16_cvt(w, x, out):
        _f16_rows_cvt(w, x, out, 0, w.shape[0])

    @njit(parallel=True, **_opts)
    def mv_f16_cvt_par(w, x, out):
        n = w.shape[0]
        for b in prange((n + _ROWS - 1) // _ROWS):
            _f16_rows_cvt(w, x, out, b * _ROWS, min(n, (b + 1) * _ROWS))

    @njit(**_opts)
    def mv_f16_int(w, x, out):
        _f16_rows_int(w, x, out, 0, w.shape[0], np.empty(w.shape[1], np.uint32))

    @njit(parallel=True, **_opts)
    def mv_f16_int_par(w, x, out):
        n, k = w.shape
        for b in prange((n + _ROWS - 1) // _ROWS):
            _f16_rows_int(w, x, out, b * _ROWS, min(n, (b + 1) * _ROWS), np.empty(k, np.uint32))

    @njit(**_opts)
    def mv_lut(idx, lut, rows_per_group, x, out):
        _lut_rows(idx, lut, rows_per_group, x, out, 0, idx.shape[0], np.empty(idx.shape[1], np.float32))

    @njit(parallel=True, **_opts)
    def mv_lut_par(idx, lut, rows_per_group, x, out):
        n, k = idx.shape
        for b in prange((n + _ROWS - 1) // _ROWS):
            _lut_rows(idx, lut, rows_per_group, x, out, b * _ROWS, min(n, (b + 1) * _ROWS), np.empty(k, np.float32))

    @njit(**_opts)
    def mv_lut64(idx, lut, rows_per_group, x, out):
        _lut64_rows(idx, lut, rows_per_group, x, out, 0, idx.shape[0])

    @njit(parallel=True, **_opts)
    def mv_lut64_par(idx, lut, rows_per_group, x, out):
        n = idx.shape[0]
        for b in prange((n + _ROWS - 1) // _ROWS):
            _lut64_rows(idx, lut, rows_per_group, x, out, b * _ROWS, min(n, (b + 1) * _ROWS))

    @njit(**_opts)
    def mv_lut256(idx, lut, rows_per_group, x, out):
        _lut256_rows(idx, lut, rows_per_group, x, out, 0, idx.shape[0])

    @njit(parallel=True, **_opts)
    def mv_lut256_par(idx, lut, rows_per_group, x, out):
        n = idx.shape[0]
        for b in prange((n + _ROWS - 1) // _ROWS):
            _lut256_rows(idx, lut, rows_per_group, x, out, b * _ROWS, min(n, (b + 1) * _ROWS))

    @njit(**_opts)
    def mv_lutb(idx, planes, lut, rows_per_group, x, out):
        _lutb_rows(idx, planes, lut, rows_per_group, x, out, 0, idx.shape[0])

    @njit(parallel=True, **_opts)
    def mv_lutb_par(idx, planes, lut, rows_per_group, x, out):
        n = idx.shape[0]
        for b in prange((n + _ROWS - 1) // _ROWS):
            _lutb_rows(idx, planes, lut, rows_per_group, x, out, b * _ROWS, min(n, (b + 1) * _ROWS))

    @njit(**_opts)
    def _block_sums(x, blocks, offsets):
        """Σx per block where the weights have offsets (an offset costs one multiply per block), else zeros:
        summed here, not by numpy before the call (a reshape and a reduction: 4 µs, 120 times a SmolLM2 token)."""
        xsum = np.zeros(blocks, np.float32)
        if offsets:
            width = x.size // blocks
            for b in range(blocks):
                acc = np.float32(0.0)
                for i in range(width):
                    acc += x[b * width + i]
                xsum[b] = acc
        return xsum

    @njit(**_opts)
    def mv_int8(q, scale, offset, x, offsets, out):
        _int8_rows(q, scale, offset, x, _block_sums(x, scale.shape[1], offsets), offsets, out, 0, q.shape[0])

    @njit(parallel=True, **_opts)
    def mv_int8_par(q, scale, offset, x, offsets, out):
        n = q.shape[0]
        xsum = _block_sums(x, scale.shape[1], offsets)
        for b in prange((n + _ROWS - 1) // _ROWS):
            _int8_rows(q, scale, offset, x, xsum, offsets, out, b * _ROWS, min(n, (b + 1) * _ROWS))

    # Widening a band of rows into an fp32 buffer for BLAS (prefill): numpy's fp16→fp32 cast is several
    # times slower than these loops, and a LUT or int8 band would otherwise take three numpy passes.
    @njit(**_opts)
    def widen_f16_cvt(w, start, stop, out):
        k = w.shape[1]
        for r in range(start, stop):
            row = w[r]
            o = r - start
            for i in range(k):
                out[o, i] = _h2f(row[i])  # type: ignore[call-arg]

    @njit(**_opts)
    def widen_f16_int(w, start, stop, out):
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
    def widen_lut64(idx, lut, rows_per_group, start, stop, out):
        k = idx.shape[1]
        whole = k - k % 16
        for r in range(start, stop):
            table = lut[r // rows_per_group]
            row = idx[r]
            dest = out[r - start]
            _lut64_widen(table, row, dest, whole)
            for i in range(whole, k):
                dest[i] = table[row[i]]

    @njit(**_opts)
    def widen_lut256(idx, lut, rows_per_group, start, stop, out):
        k = idx.shape[1]
        whole = k - k % 16
        for r in range(start, stop):
            table = lut[r // rows_per_group]
            row = idx[r]
            dest = out[r - start]
            _lut256_widen(table, row, dest, whole)
            for i in range(whole, k):
                dest[i] = table[row[i]]

    @njit(**_opts)
    def widen_lutb(idx, planes, lut, rows_per_group, start, stop, out):
        k = idx.shape[1]
        whole = k - k % 32
        small = lut.shape[1] <= 16
        for r in range(start, stop):
            g = r // rows_per_group
            row = idx[r]
            dest = out[r - start]
            if small:
                _lutb16_widen(planes[g], row, dest, whole)
            else:
                _lutb64_widen(planes[g], row, dest, whole)
            table = lut[g]
            for i in range(whole, k):
                dest[i] = table[row[i]]

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

    @njit(**_opts)
    def rms_rows(x, gamma, eps, out):
        """out[r] = x[r] / sqrt(mean(x[r]²) + eps) · gamma for x, out (rows, d); an empty gamma: none."""
        rows, d = x.shape
        for r in range(rows):
            acc = np.float32(0.0)
            for i in range(d):
                acc += x[r, i] * x[r, i]
            scale = np.float32(1.0) / np.sqrt(acc / np.float32(d) + np.float32(eps))
            if gamma.size == 0:
                for i in range(d):
                    out[r, i] = x[r, i] * scale
            else:
                for i in range(d):
                    out[r, i] = x[r, i] * scale * gamma[i]

    @njit(**_opts)
    def rms_cols(x, gamma, eps, out):
        """The same over the middle axis of x, out (outer, d, inner): prefill's (1, hidden, 1, positions),
        every position's sum of squares gathered in one pass down the channels instead of five numpy passes."""
        outer, d, inner = x.shape
        acc = np.empty(inner, np.float32)
        for o in range(outer):
            acc[:] = 0.0
            for c in range(d):
                for p in range(inner):
                    acc[p] += x[o, c, p] * x[o, c, p]
            for p in range(inner):
                acc[p] = np.float32(1.0) / np.sqrt(acc[p] / np.float32(d) + np.float32(eps))
            for c in range(d):
                g = np.float32(1.0) if gamma.size == 0 else gamma[c]
                for p in range(inner):
                    out[o, c, p] = x[o, c, p] * acc[p] * g

    @njit(**_opts)
    def rope4(x, cos, sin, src, sign, out):
        """out[b, h, p, d] = x[b, h, p, d]·cos[p, d] + x[b, h, p, src[d]]·sin[p, d]·sign[d] for x (B, H, P, D) in
        any layout (prefill's is a transposed view) and cos, sin (P, D): one pass instead of five numpy ones
        and their temporaries."""
        nb, nh, npos, dim = x.shape
        for b in range(nb):
            for h in range(nh):
                for p in range(npos):
                    for d in range(dim):
                        out[b, h, p, d] = x[b, h, p, d] * cos[p, d] + x[b, h, p, src[d]] * (sin[p, d] * sign[d])

    # Attention for one query position (decode): the scores, softmax and weighted sum of one kv head's rows
    # in one pass over its keys and values, instead of a dozen numpy calls on (heads, group, n) arrays. Not
    # fastmath's "no infinities": a mask holds -inf.
    @njit(cache=True, nogil=True, boundscheck=False, fastmath={"contract", "reassoc", "arcp", "nsz", "afn"})
    def attend_one(q, k, v, mask, n, out):
        """out[h, g] = softmax(q[h, g] · k[h, :n]ᵀ + mask[:n]) · v[h, :n] for q, out (H, G, D)."""
        heads, group, dim = q.shape
        s = np.empty((group, n), np.float32)
        for h in range(heads):
            for j in range(n):
                for g in range(group):
                    acc = np.float32(0.0)
                    for d in range(dim):
                        acc += q[h, g, d] * k[h, j, d]
                    s[g, j] = acc + mask[j]
            for g in range(group):
                top = s[g, 0]
                for j in range(1, n):
                    top = max(top, s[g, j])
                total = np.float32(0.0)
                for j in range(n):
                    e = np.exp(s[g, j] - top)
                    s[g, j] = e
                    total += e
                inv = np.float32(1.0) / total
                for j in range(n):
                    s[g, j] *= inv
                for d in range(dim):
                    out[h, g, d] = 0.0
            for j in range(n):
                for g in range(group):
                    p = s[g, j]
                    for d in range(dim):
                        out[h, g, d] += p * v[h, j, d]

    KERNELS = {
        "widen_f16": widen_f16_cvt if F16C else widen_f16_int, "widen_lut": widen_lut, "widen_int8": widen_int8,
        "f16": mv_f16_cvt if F16C else mv_f16_int, "f16_par": mv_f16_cvt_par if F16C else mv_f16_int_par,
        "lut": mv_lut, "lut_par": mv_lut_par,
        # only called where AVX512 is True: compiled lazily, so elsewhere the intrinsic is never built
        "lut64": mv_lut64, "lut64_par": mv_lut64_par, "widen_lut64": widen_lut64,
        "lut256": mv_lut256, "lut256_par": mv_lut256_par, "widen_lut256": widen_lut256,
        # only called where AVX2 is True (and AVX512 is not), on fp16 palettes of up to 64 entries
        "lutb": mv_lutb, "lutb_par": mv_lutb_par, "widen_lutb": widen_lutb,
        "int8": mv_int8, "int8_par": mv_int8_par,
        "attend_one": attend_one, "rms_rows": rms_rows, "rms_cols": rms_cols, "rope4": rope4,
    }
