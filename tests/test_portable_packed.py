"""Packed weights (fp16 / LUT / int8 kept as stored, multiplied by numba kernels) against the plain numpy path
(every weight widened to fp32 at load, BLAS), and the thread policy.

The numpy path is the reference: the same converted models run both ways must give the same top-1 and logits
within a bound set by fp32 summation order. Models are converted as users convert them (anechat's converter,
LUT and int8 through coremltools' constexpr ops); the tiny models' matrices are small, so the size below which
constants stay fp32 is lowered to zero here to pack every matrix."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tiny import tiny_chat_checkpoint

from anechat.engine.lm import LanguageModel
from anechat.runtime.milexec import jit
from anechat.runtime.milexec import packed as packing
from anechat.runtime.milexec.packed import PackedWeight
from anechat.runtime.modeldir import open_model_dir
from anechat.runtime.portable import PortableBackend
from anechat.runtime.threads import SMALL_MACS, ThreadPolicy

ROOT = Path(__file__).resolve().parent.parent
needs_jit = pytest.mark.skipif(not jit.AVAILABLE, reason="numba is not importable here: only the numpy path exists")


# --- kernels against the numpy reference ---------------------------------------------------------------
def _weights(rng, n=300, k=96):
    w16 = (rng.standard_normal((n, k)) * 0.05).astype(np.float16)
    # the corners of fp16: zeros of both signs, subnormals, the largest finite value
    w16[0, :6] = np.array([0.0, -0.0, 6e-8, -3e-6, 65504.0, -1e-4], np.float16)
    idx = rng.integers(0, 64, (n, k)).astype(np.uint8)
    lut = rng.standard_normal((n // 4, 64)).astype(np.float32)
    q = rng.integers(-128, 128, (n, k)).astype(np.int8)
    scale = (rng.random((n, 3)) * 0.01).astype(np.float32)
    offset = rng.integers(-4, 4, (n, 3)).astype(np.float32)
    return [
        PackedWeight.f16(w16),
        PackedWeight.lut_rows(idx, lut, rows_per_group=4),
        PackedWeight.int8(q, scale, offset),
        PackedWeight.int8(q, scale[:, :1], None),
    ]


def test_reference_values_are_the_stored_ones():
    rng = np.random.default_rng(1)
    f16, lut, int8, _ = _weights(rng)
    assert np.array_equal(f16.dense(), f16.data.view(np.float16).astype(np.float32))
    assert lut.dense()[5, 7] == lut.lut[5 // 4, lut.data[5, 7]]
    assert np.isclose(int8.dense()[9, 40], (int8.data[9, 40] - int8.offset[9, 1]) * int8.scale[9, 1])
    assert np.array_equal(f16.take(np.array([[3, 0]])), f16.dense()[[3, 0]][None])


@needs_jit
@pytest.mark.parametrize("threads", [1, 2])
def test_kernels_match_the_numpy_reference(threads, monkeypatch):
    monkeypatch.setenv("ANECHAT_THREADS", str(threads))
    monkeypatch.setattr(packing, "POLICY", ThreadPolicy())
    monkeypatch.setattr(packing, "_BAND_BYTES", 16 * 4 * 96)  # bands of 16 rows: several, and a short last one
    monkeypatch.setattr(packing, "_BAND_BYTES_THREADED", 16 * 4 * 96)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(96).astype(np.float32)
    xs = rng.standard_normal((96, 5)).astype(np.float32)
    for w in _weights(rng):
        ref = w.dense().reshape(w.n, w.k).astype(np.float64)
        bound = 1e-5 * (np.abs(ref) @ np.abs(x.astype(np.float64))).max() + 1e-6
        assert np.abs(w.matvec(x) - ref @ x).max() <= bound, w
        buf = np.empty((w.n, w.k), np.float32)
        assert np.array_equal(w.widen_into(0, w.n, buf), w.dense().reshape(w.n, w.k)), w  # widening is exact
        assert np.allclose(w.matmul(xs), ref @ xs, rtol=1e-5, atol=1e-4), w


@needs_jit
def test_both_fp16_conversions_give_the_stored_values():
    """The hardware conversion (F16C/ARM, where the CPU has it) and the integer one (everywhere else) are
    both compiled and held to numpy's: every one of the 65,536 halves, and a product over them."""
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).reshape(512, 128)
    finite = np.isfinite(bits.view(np.float16)).all(axis=1)
    want = bits.view(np.float16).astype(np.float32)
    x = np.random.default_rng(0).standard_normal(128).astype(np.float32)
    kernels = [(jit.widen_f16_int, jit.mv_f16_int, jit.mv_f16_int_par)]
    if jit.F16C:
        kernels.append((jit.widen_f16_cvt, jit.mv_f16_cvt, jit.mv_f16_cvt_par))
    for widen, mv, mv_par in kernels:
        got = np.empty_like(want)
        widen(bits, 0, 512, got)
        # every value, including infinities and NaNs (the integer version keeps only finite ones exact)
        ok = np.isfinite(want) | (widen is jit.widen_f16_cvt)
        assert np.array_equal(got[ok], want[ok], equal_nan=True), widen
        ref = want[finite].astype(np.float64) @ x
        bound = 1e-5 * (np.abs(want[finite]).astype(np.float64) @ np.abs(x)).max()
        for kernel in (mv, mv_par):
            out = np.empty(512, np.float32)
            kernel(bits, x, out)
            assert np.abs(out[finite] - ref).max() <= bound, kernel


@needs_jit
@pytest.mark.parametrize("k,blocks,offsets", [(128, 4, True), (96, 3, False), (576, 18, True), (576, 1, False),
                                              (192, 3, True), (96, 2, True), (100, 4, False), (40, 1, True)])
def test_int8_block_kernels_agree_with_numpy(k, blocks, offsets):
    """Blocks of 32 (the converter's) take the straight-line vector body, other multiples of 32 its loop (even and
    odd block counts, with and without offsets), any other width the plain loop: all held to numpy."""
    rng = np.random.default_rng(k * 100 + blocks)
    n = 70
    q = rng.integers(-128, 128, (n, k)).astype(np.int8)
    scale = (rng.random((n, blocks)) * 0.01).astype(np.float32)
    offset = rng.integers(-4, 4, (n, blocks)).astype(np.float32) if offsets else None
    w = PackedWeight.int8(q, scale, offset)
    x = rng.standard_normal(k).astype(np.float32)
    ref = w.dense().astype(np.float64) @ x
    bound = 1e-5 * (np.abs(w.dense()).astype(np.float64) @ np.abs(x)).max() + 1e-6
    assert np.abs(w.matvec(x) - ref).max() <= bound
    for name in ("int8", "int8_par"):
        out = np.empty(n, np.float32)
        jit.set_threads(2)
        jit.KERNELS[name](w.data, w.scale, w.offset, x, offsets, out)
        assert np.abs(out - ref).max() <= bound, name


@needs_jit
@pytest.mark.parametrize("transposed", [False, True])
def test_the_rope_kernel_matches_the_numpy_formula(transposed):
    """Rotary embedding as one pass (decode's contiguous (1, H, 1, D), prefill's transposed view (1, H, P, D))
    against x·cos + (x·P)·sin with P the signed permutation the converter writes (rotate_half)."""
    from anechat.runtime.milexec.ops.nn import signed_permutation

    rng = np.random.default_rng(7)
    dim, heads, pos = 8, 3, 5
    half = dim // 2
    perm = np.zeros((dim, dim), np.float32)  # (x·P)[i] = -x[i + half] for i < half, x[i - half] above
    perm[np.arange(half) + half, np.arange(half)] = -1.0
    perm[np.arange(half), np.arange(half) + half] = 1.0
    src, sign = signed_permutation(perm)
    x = rng.standard_normal((1, pos, heads, dim)).astype(np.float32).transpose(0, 2, 1, 3) if transposed else \
        rng.standard_normal((1, heads, pos, dim)).astype(np.float32)
    cos, sin = (rng.standard_normal((pos, dim)).astype(np.float32) for _ in range(2))
    out = np.empty(x.shape, np.float32)
    jit.rope4(x, cos, sin, src.astype(np.intp), sign.astype(np.float32), out)
    np.testing.assert_allclose(out, x * cos + (x @ perm) * sin, rtol=1e-6, atol=1e-6)


@needs_jit
@pytest.mark.parametrize("palette,k", [(64, 96), (16, 100), (2, 7), (40, 576), (256, 40), (100, 71), (64, 33)])
@pytest.mark.parametrize("values", ["fp16", "fp32"])
def test_lut_kernels_in_registers_by_bytes_and_by_loads_agree(palette, k, values):
    """Palettes (padded to 64 or 256 entries) are looked up in AVX-512 registers where the CPU has them (a
    tail of fewer than 16 weights by loads); on AVX2 CPUs fp16 palettes of up to 64 entries are looked up as
    byte tables (a tail of fewer than 32 by loads); elsewhere, and for fp32 palettes there, by a load per
    weight. Every path that runs on this CPU is held to numpy, and the widening for prefill is exact."""
    rng = np.random.default_rng(palette + k)
    lut = rng.standard_normal((65, palette)).astype(np.float32)
    if values == "fp16":
        lut = lut.astype(np.float16).astype(np.float32)
    w = PackedWeight.lut_rows(rng.integers(0, palette, (130, k)).astype(np.uint8), lut, rows_per_group=2)
    assert (w.lut_padded is not None) == jit.AVX512
    assert (w.lut_planes is not None) == (jit.AVX2 and not jit.AVX512 and values == "fp16" and palette <= 64)
    x = rng.standard_normal(k).astype(np.float32)
    ref = w.dense().astype(np.float64) @ x
    bound = 1e-5 * (np.abs(w.dense()).astype(np.float64) @ np.abs(x)).max()
    buf = np.empty((130, k), np.float32)
    while True:
        assert np.abs(w.matvec(x) - ref).max() <= bound
        assert np.array_equal(w.widen_into(1, 129, buf), w.dense()[1:129])  # prefill's widening: exact
        if w.lut_padded is None and w.lut_planes is None:
            break
        w.lut_padded = w.lut_planes = None  # then the kernel by loads


def test_lut_byte_tables_only_for_palettes_fp16_holds(recwarn):
    """Byte tables are built only where every palette value is an fp16 value (what Core ML stores) and a
    palette has at most 64 entries; a value beyond fp16's range is refused quietly, not with numpy's warning."""
    from anechat.runtime.milexec.packed import lut_planes

    assert lut_planes(np.array([[0.5, -2.0, 65504.0]], np.float32)).shape == (1, 256)
    assert lut_planes(np.array([[0.1, 1.0]], np.float32)) is None  # 0.1 is not a half
    assert lut_planes(np.array([[1e6, 1.0]], np.float32)) is None
    assert lut_planes(np.zeros((2, 65), np.float32)) is None
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


@needs_jit
@pytest.mark.skipif(not jit.AVAILABLE or not jit.AVX2, reason="x86 with AVX2 and F16C")
def test_lut_byte_tables_in_a_parallel_kernel_match_one_thread(monkeypatch):
    """The AVX2 lookup split between threads gives what one thread gives (row blocks of _ROWS, a tail)."""
    monkeypatch.setattr(jit, "AVX512", False)
    rng = np.random.default_rng(11)
    w = PackedWeight.lut_rows(rng.integers(0, 64, (1000, 160)).astype(np.uint8),
                              rng.standard_normal((250, 64)).astype(np.float16).astype(np.float32), rows_per_group=4)
    assert w.lut_planes is not None
    x = rng.standard_normal(160).astype(np.float32)
    one, par = np.empty(1000, np.float32), np.empty(1000, np.float32)
    jit.KERNELS["lutb"](w.data, w.lut_planes, w.lut, w.rows_per_group, x, one)
    jit.KERNELS["lutb_par"](w.data, w.lut_planes, w.lut, w.rows_per_group, x, par)
    assert np.array_equal(one, par)
    assert np.abs(one - w.dense() @ x).max() <= 1e-5 * (np.abs(w.dense()) @ np.abs(x)).max()


@needs_jit
def test_threads_that_multiply_at_once_share_the_parallel_kernels_safely(monkeypatch):
    """numba's workqueue layer aborts the process on two concurrent parallel launches: while one thread holds
    the parallel kernels, another gets the one-thread kernel, with the same result."""
    import threading

    from anechat.runtime.milexec import jit as jitmod

    monkeypatch.setenv("ANECHAT_THREADS", "2")
    monkeypatch.setattr(packing, "POLICY", ThreadPolicy())
    rng = np.random.default_rng(5)
    w = PackedWeight.f16((rng.standard_normal((512, 256)) * 0.05).astype(np.float16))
    x = rng.standard_normal(256).astype(np.float32)
    alone = w.matvec(x)
    with jitmod.PARALLEL:  # another thread is in a parallel kernel
        assert np.allclose(w.matvec(x), alone, rtol=1e-6, atol=1e-6)
    results: list[np.ndarray] = []

    def work():
        for _ in range(50):
            results.append(w.matvec(x))

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 150 and all(np.allclose(r, alone, rtol=1e-6, atol=1e-6) for r in results)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 6])
def test_sub_byte_weights_unpack_the_same_in_chunks(bits, monkeypatch):
    """Sub-byte blobs are unpacked a chunk at a time (the whole-blob temporaries were 8x the indices)."""
    from anechat.runtime.milexec import weights

    rng = np.random.default_rng(bits)
    count = 5 * 1024 + 3
    values = rng.integers(0, 1 << bits, count).astype(np.uint8)
    raw = np.packbits(((values[:, None] >> np.arange(bits)) & 1).astype(np.uint8).reshape(-1), bitorder="little")
    monkeypatch.setattr(weights, "_UNPACK_CHUNK", 1024)
    assert np.array_equal(weights.unpack_bits(raw, bits, count), values)
    signed = np.where(values >= 1 << (bits - 1), values.astype(np.int16) - (1 << bits), values).astype(np.int8)
    assert np.array_equal(weights.unpack_bits(raw, bits, count, signed=True), signed)


# --- whole models, packed vs the numpy path ------------------------------------------------------------
@pytest.fixture(scope="module")
def compressed_dirs(tmp_path_factory):
    from anechat.convert.build import ConvertOptions, convert

    root = tmp_path_factory.mktemp("packed")
    variants = {
        "fp16": ConvertOptions(context=64, batch=8),
        "lut6": ConvertOptions(context=64, batch=8, lut_ffn=6, lut_lmhead=8),
        "lut4-per-row": ConvertOptions(context=64, batch=8, lut_ffn="4,1", lut_embeddings=8),
        "int8": ConvertOptions(context=64, batch=8, int8=True),
    }
    out = {}
    for name, options in variants.items():
        out[name] = root / name
        convert(tiny_chat_checkpoint("llama"), out[name], options)
    return out


def _run(model_dir: Path, packed: bool) -> tuple[list[np.ndarray], PortableBackend]:
    backend = PortableBackend(packed=packed)
    lm = LanguageModel(open_model_dir(model_dir), backend)
    ids = [int(t) for t in np.random.default_rng(3).integers(5, 300, size=19)]
    out = [np.asarray(lm.prefill(ids))]
    token = int(np.argmax(out[0]))
    for _ in range(6):
        out.append(np.asarray(lm.step(token)))
        token = int(np.argmax(out[-1]))
    return out, backend


def _packed_kinds(backend: PortableBackend) -> set[str]:
    return {v.kind for v in backend.pool._converted.values() if isinstance(v, PackedWeight)} | {
        v.kind for v in backend.pool._folded.values() if isinstance(v, PackedWeight)
    }


@needs_jit
@pytest.mark.parametrize("variant,kind", [("fp16", "f16"), ("lut6", "lut"), ("lut4-per-row", "lut"), ("int8", "int8")])
def test_packed_model_agrees_with_the_numpy_path(compressed_dirs, variant, kind, monkeypatch):
    monkeypatch.setattr(packing, "PACK_MIN_ELEMENTS", 0)
    ref, _ = _run(compressed_dirs[variant], packed=False)
    got, backend = _run(compressed_dirs[variant], packed=True)
    assert kind in _packed_kinds(backend), "the weights ran unpacked: the test would compare numpy with itself"
    for r, g in zip(ref, got):
        assert int(np.argmax(r)) == int(np.argmax(g))
        assert np.abs(r - g).max() <= 1e-4 * max(1.0, float(np.abs(r).max()))


@pytest.mark.parametrize("how", ["ANECHAT_JIT=0", "numba missing", "numba broken"])
def test_without_numba_the_numpy_path_runs(compressed_dirs, how, tmp_path):
    """Where numba is turned off, not installed, or fails to import (a numpy it was not built for, a broken
    llvmlite): nothing is packed and everything still runs, with the reference's answer."""
    code = (
        "import sys, numpy as np\n"
        "from anechat.runtime.milexec import jit\n"
        "from anechat.runtime.portable import PortableBackend\n"
        "from anechat.engine.lm import LanguageModel\n"
        "from anechat.runtime.modeldir import open_model_dir\n"
        "b = PortableBackend()\n"
        "assert not jit.AVAILABLE and not b.packed and 'numba' not in sys.modules\n"
        "lm = LanguageModel(open_model_dir(sys.argv[1]), b)\n"
        "print(int(np.argmax(lm.prefill([5, 6, 7]))))\n"
    )
    if how == "numba missing":  # a None entry in sys.modules makes `import numba` raise ImportError
        (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['numba'] = None\n")
        code = code.replace("'numba' not in sys.modules", "sys.modules.get('numba') is None")
    elif how == "numba broken":
        (tmp_path / "numba").mkdir()
        (tmp_path / "numba" / "__init__.py").write_text("raise OSError('libllvmlite.so: cannot open shared object file')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    env.pop("ANECHAT_JIT", None)
    if how == "ANECHAT_JIT=0":
        env["ANECHAT_JIT"] = "0"
    proc = subprocess.run([sys.executable, "-c", code, str(compressed_dirs["int8"])], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    lm = LanguageModel(open_model_dir(compressed_dirs["int8"]), PortableBackend(packed=False))
    assert int(proc.stdout.strip()) == int(np.argmax(lm.prefill([5, 6, 7])))


# --- the thread policy ---------------------------------------------------------------------------------
def test_small_work_runs_on_one_thread_and_big_work_on_the_idle_cores(monkeypatch):
    monkeypatch.delenv("ANECHAT_THREADS", raising=False)
    policy = ThreadPolicy(cpus=4)
    monkeypatch.setattr(policy, "idle_cores", lambda: 4.0)
    assert policy.threads_for(SMALL_MACS - 1) == 1
    assert policy.threads_for(1 << 30) == 4
    monkeypatch.setattr(policy, "idle_cores", lambda: 1.2)  # two cores' worth of other work
    assert policy.threads_for(1 << 30) == 1
    monkeypatch.setattr(policy, "idle_cores", lambda: 0.0)  # busier than the machine: still one thread
    assert policy.threads_for(1 << 30) == 1
    monkeypatch.setattr(policy, "idle_cores", lambda: 4.0)
    policy.ui_shares_cores = True
    assert policy.threads_for(1 << 30) == 3


@needs_jit
def test_a_layers_products_take_the_idle_cores(monkeypatch):
    """SmolLM2's smallest layer product (q/k/v fused, 960x576) is split when a second core is idle: the kernels'
    OpenMP workers spin briefly between products (the default) unless the user chose their wait policy."""
    monkeypatch.delenv("ANECHAT_THREADS", raising=False)
    policy = ThreadPolicy(cpus=2)
    monkeypatch.setattr(policy, "idle_cores", lambda: 2.0)
    assert policy.threads_for(960 * 576) == 2
    monkeypatch.setattr(policy, "idle_cores", lambda: 0.7)
    assert policy.threads_for(960 * 576) == 1
    code = "import os; from anechat.runtime.milexec import jit; print(os.environ.get('GOMP_SPINCOUNT'), os.environ.get('OMP_WAIT_POLICY'))"
    base = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "KMP_BLOCKTIME")}
    for extra, want in [({}, "10000 None"), ({"OMP_WAIT_POLICY": "PASSIVE"}, "None PASSIVE"),
                        ({"GOMP_SPINCOUNT": "5"}, "5 None")]:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                             env={**base, **extra}).stdout.strip()
        assert out == want, extra


def test_a_fixed_thread_count_wins(monkeypatch):
    monkeypatch.setenv("ANECHAT_THREADS", "1")
    assert ThreadPolicy(cpus=8).threads_for(1 << 30) == 1


def test_idle_cores_see_other_processes_not_our_own_work():
    if not Path("/proc/stat").is_file():
        pytest.skip("idle cores come from /proc/stat on Linux; elsewhere from the load average")
    policy = ThreadPolicy()
    policy.idle_cores()
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        import time

        time.sleep(1.2)
        with_hog = policy.idle_cores()
    finally:
        hog.kill()
        hog.wait()
    # our own busy loop would not count; the other process's does (about one core, give or take the neighbours)
    assert with_hog <= policy.cpus - 0.5


def test_the_policy_sets_blas_threads():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    policy = ThreadPolicy()
    policy.blas(1)
    info = [i for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
    if not info:
        pytest.skip("numpy here has no BLAS that threadpoolctl can see")
    assert info[0]["num_threads"] == 1


@needs_jit
@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_a_forked_child_multiplies_on_several_threads(monkeypatch):
    """Threads do not survive fork(): a child that multiplies with the thread count its parent used must
    complete (BLAS starts its threads again) instead of waiting on threads that are gone."""
    monkeypatch.setenv("ANECHAT_THREADS", "2")
    monkeypatch.setattr(packing, "POLICY", ThreadPolicy())
    monkeypatch.setattr(packing, "_BAND_BYTES_THREADED", 16 * 4 * 96)
    rng = np.random.default_rng(3)
    w = PackedWeight.f16((rng.standard_normal((300, 96)) * 0.05).astype(np.float16))
    xs = rng.standard_normal((96, 5)).astype(np.float32)
    want = w.matmul(xs)  # the parent's threads exist now
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only if the product completes (within 60 s) and matches
        code = 1
        try:
            import signal

            signal.signal(signal.SIGALRM, lambda *_: os._exit(3))
            signal.alarm(60)
            code = 0 if np.array_equal(w.matmul(xs), want) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
