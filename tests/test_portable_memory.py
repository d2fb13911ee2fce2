"""What the portable runtime keeps resident, held as properties rather than RSS numbers (those depend on the
machine, its allocator and what else maps the same libraries; benchmarks/bench_runtime.py measures them):

- running a model imports neither coremltools (its converters: ~70 MB) nor scipy.linalg (numba's np.dot: 16 MB);
- weights stay as stored: every fp16 matrix is a view of its memory-mapped weight.bin and no fp32 copy of one
  exists after a prefill and decode;
- an embedding lookup reads its rows from the file, with the stored values;
- the KV state's pages become resident as positions are written (no transparent huge pages);
- freed C heap is handed back where the allocator allows it."""

import mmap
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from anechat.engine.lm import LanguageModel
from anechat.runtime.memory import release_free_memory, zeros_as_written
from anechat.runtime.milexec import jit
from anechat.runtime.milexec import packed as packing
from anechat.runtime.milexec.packed import PackedWeight
from anechat.runtime.milexec.proto import model_pb2, read_mlpackage
from anechat.runtime.milexec.weights import BlobFile, mapped_location
from anechat.runtime.modeldir import open_model_dir
from anechat.runtime.portable import PortableBackend

ROOT = Path(__file__).resolve().parent.parent


def _python(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=300)


def test_a_chat_turn_imports_neither_coremltools_nor_scipy_linalg(tiny_model_dirs):
    code = (
        "import sys, numpy as np\n"
        "from anechat.engine.loader import load_model\n"
        "from anechat.runtime.milexec import jit\n"
        "m = load_model(sys.argv[1], backend='portable')\n"
        "ids = m.tokenizer.encode('hello there')\n"
        "token = int(np.argmax(m.lm.prefill(ids)))\n"
        "m.lm.step(token)\n"
        "print(jit.AVAILABLE, 'coremltools' in sys.modules, 'scipy.linalg' in sys.modules)\n"
    )
    proc = _python(code, str(tiny_model_dirs["llama"]))
    assert proc.returncode == 0, proc.stderr
    numba, coremltools, scipy_linalg = proc.stdout.split()
    assert coremltools == "False", "reading an .mlpackage imported all of coremltools"
    if numba == "True":
        assert scipy_linalg == "False", "starting numba imported scipy.linalg"


def test_the_protobuf_classes_work_before_and_after_coremltools_is_imported(tiny_model_dirs):
    """Read without coremltools first, then with it imported (a conversion in the same process): both parse,
    and coremltools' own classes read the same file."""
    package = next(tiny_model_dirs["llama"].glob("*lm_head*.mlpackage"))
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from anechat.runtime.milexec.proto import read_mlpackage, package_model_file\n"
        "before = read_mlpackage(Path(sys.argv[1]))\n"
        "assert 'coremltools' not in sys.modules\n"
        "import coremltools\n"
        "from coremltools.proto import Model_pb2\n"
        "spec = Model_pb2.Model.FromString(package_model_file(Path(sys.argv[1])).read_bytes())\n"
        "after = read_mlpackage(Path(sys.argv[1]))\n"
        "assert spec.WhichOneof('Type') == 'mlProgram'\n"
        "assert [o.type for o in before.function(None).ops] == [o.type for o in after.function(None).ops]\n"
        "print('ok')\n"
    )
    proc = _python(code, str(package))
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
    # here coremltools is already imported (the converter made the model): its own module is used
    import coremltools.proto.Model_pb2

    assert model_pb2() is coremltools.proto.Model_pb2
    assert read_mlpackage(package).function(None).ops


@pytest.mark.skipif(not jit.AVAILABLE, reason="numba is not importable here: the numpy path widens every weight by design")
def test_weights_stay_as_stored_through_prefill_and_decode(tiny_model_dirs, monkeypatch):
    # the tiny model's matrices are small: pack everything but the smallest tables
    monkeypatch.setattr(packing, "PACK_MIN_ELEMENTS", 1024)
    backend = PortableBackend()
    lm = LanguageModel(open_model_dir(tiny_model_dirs["llama"]), backend)
    token = int(np.argmax(lm.prefill(list(range(5, 17)))))
    for _ in range(3):
        token = int(np.argmax(lm.step(token)))
    values = [*backend.pool._converted.values(), *backend.pool._folded.values()]
    weights = [v for v in values if isinstance(v, PackedWeight)]
    assert {w.kind for w in weights} == {"f16"} and len(weights) >= 8
    for w in weights:
        assert w._dense is None, f"{w}: an fp32 copy was made"
        assert mapped_location(w.data) is not None, f"{w}: not a view of the weight file"
    big_fp32 = [v.shape for v in values if isinstance(v, np.ndarray) and v.dtype == np.float32 and v.size >= 1024]
    assert not big_fp32, f"fp32 copies beside the mapped weights: {big_fp32}"


def _mapped(tmp_path, values: np.ndarray, offset: int = 192) -> np.ndarray:
    """values as a view of a weight file's map, as the program reader hands them out."""
    path = tmp_path / f"weight{len(list(tmp_path.iterdir()))}.bin"
    path.write_bytes(b"\0" * offset + values.tobytes() + b"\0" * 64)
    data = BlobFile(path).data
    return data[offset : offset + values.nbytes].view(values.dtype).reshape(values.shape)


def test_an_embedding_lookup_reads_the_stored_rows_from_the_file(tmp_path):
    rng = np.random.default_rng(0)
    table = (rng.standard_normal((300, 24)) * 0.1).astype(np.float16)
    mapped = _mapped(tmp_path, table)
    w = PackedWeight.f16(mapped)
    if not hasattr(os, "pread"):
        pytest.skip("no pread here: lookups go through the map")
    assert w._file is not None and w._file[1] == 192
    # a plain memory map (not a weight file's) or a view that is not contiguous: looked up through the map
    plain = np.memmap(tmp_path / "weight0.bin", dtype=np.float16, mode="r", offset=192, shape=table.shape)
    assert mapped_location(plain) is None and mapped_location(mapped[:, ::2]) is None
    ids = np.array([[299, 0, 7, 7, 150]])
    got = w.take(ids)
    assert got.dtype == np.float32 and got.shape == (1, 5, 24)
    assert np.array_equal(got, table[ids].astype(np.float32))
    q = rng.integers(-128, 128, (40, 32)).astype(np.int8)
    scale = rng.random((40, 2)).astype(np.float32)
    int8 = PackedWeight.int8(_mapped(tmp_path, q), scale, None)
    assert np.array_equal(int8.take(np.array([3, 39])), int8.dense()[[3, 39]])
    # not a view of a file (a weight built in memory): looked up in memory
    assert PackedWeight.f16(table.copy())._file is None
    assert np.array_equal(PackedWeight.f16(table.copy()).take(ids), got)


def _resident_kb(arr: np.ndarray) -> int:
    """Rss of the mapping that holds arr, from /proc/self/smaps."""
    address = arr.__array_interface__["data"][0]
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                start, end = (int(x, 16) for x in head.split("-"))
                inside = start <= address < end
            elif inside and head == "Rss:":
                return int(line.split()[1])
    raise AssertionError("no mapping holds the array")


@pytest.mark.skipif(not Path("/proc/self/smaps").is_file() or not hasattr(mmap, "MADV_NOHUGEPAGE"),
                    reason="transparent huge pages and /proc/self/smaps are Linux's")
def test_state_pages_become_resident_as_positions_are_written():
    """A (60, 3, 512, 64) fp32 cache (SmolLM2's) written at one position: only the pages of that position are
    resident, not every 2 MB that position touches (which transparent huge pages would make resident)."""
    cache = zeros_as_written((60, 3, 512, 64), np.float32)
    assert not cache.any() and cache.flags.writeable
    cache[:, :, 0, :] = 1.0
    pages = 60 * 3  # one 4 KB page per (layer, head) row written
    assert _resident_kb(cache) <= pages * 4 * 2
    assert float(cache.sum()) == 60 * 3 * 64


def test_portable_states_start_zeroed_and_read_state_copies(tiny_model_dirs):
    lm = LanguageModel(open_model_dir(tiny_model_dirs["llama"]), PortableBackend())
    for name, buf in lm.state.buffers.items():
        assert buf.dtype == np.float32 and not buf.any(), name
        copy = lm.state.read_state(name)
        copy += 1
        assert not buf.any(), "read_state returns a copy"


def test_release_free_memory_where_the_allocator_allows_it():
    released = release_free_memory()
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert released
    else:
        assert released is False


def test_a_numba_that_cannot_start_leaves_the_numpy_path(monkeypatch, tiny_model_dirs):
    """numba's CPU target is started at backend creation (with scipy.linalg hidden); where it fails to start
    the backend runs the plain numpy path instead of failing at the first token."""
    monkeypatch.setattr(jit, "_READY", False)
    backend = PortableBackend()
    assert backend.packed is False
    lm = LanguageModel(open_model_dir(tiny_model_dirs["llama"]), backend)
    assert np.isfinite(lm.prefill([5, 6, 7])).all()
