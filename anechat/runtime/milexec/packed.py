"""Weight matrices kept in the form they are stored in: fp16 (a view of the memory-mapped weight.bin), LUT
indices with their palettes, or int8 with block scales. Nothing is widened to an fp32 copy at load.

A PackedWeight is an (n, k) matrix of n output rows; its `shape` is the program's (a conv's (n, k, 1, 1)).
- one position (decode): `matvec` runs a numba kernel over the compressed rows (jit.py);
- many positions (prefill): `matmul` widens a band of rows at a time into a small fp32 buffer and hands it to
  BLAS, so the widening is paid once per band for all positions and no full-size copy ever exists;
- anything else that needs the values (an op that is not a matrix product) gets `dense()`, the plain numpy
  reference the kernels are tested against."""

from __future__ import annotations

import os

import numpy as np

from anechat.runtime.milexec import jit
from anechat.runtime.milexec.weights import mapped_location
from anechat.runtime.threads import POLICY

PACK_MIN_ELEMENTS = 1 << 16  # smaller constants are cheaper to hold in fp32 than to call a kernel on
_BAND_BYTES = 1 << 20  # fp32 rows widened at a time for a matrix product: stays in the cache
# With BLAS on several threads, fewer and larger products: each call splits its rows between the threads and
# waits for the slowest. SmolLM2's 128-token prefill on two threads, 1 MB vs 4 MB bands (medians of 5
# interleaved runs): fp16 437 -> 462 tok/s, int8 431 -> 487; 8 MB was slower again (int8 408, LUT6 441 vs 460).
_BAND_BYTES_THREADED = 1 << 22


class PackedWeight:
    def __init__(self, kind: str, shape: tuple[int, ...], data: np.ndarray, lut: np.ndarray | None = None,
                 rows_per_group: int = 1, scale: np.ndarray | None = None, offset: np.ndarray | None = None) -> None:
        self.kind = kind
        self.shape = tuple(int(d) for d in shape)
        self.n = self.shape[0]
        self.k = int(np.prod(self.shape[1:], dtype=np.int64))
        self.data = data.reshape(self.n, self.k)  # f16: uint16 bits; lut: uint8 indices; int8: int8 values
        self.lut = lut
        self.rows_per_group = rows_per_group
        self.scale = scale
        self.offset = offset
        # palettes padded to 64 or 256 entries for the in-register lookup kernels (jit.AVX512)
        self.lut_padded: np.ndarray | None = None
        if kind == "lut" and lut is not None and lut.shape[1] <= 256 and jit.AVAILABLE and jit.AVX512:
            entries = 64 if lut.shape[1] <= 64 else 256
            self.lut_padded = np.zeros((lut.shape[0], entries), np.float32)
            self.lut_padded[:, : lut.shape[1]] = lut
        # the same palettes as byte tables for the AVX2 lookup kernels (jit.AVX2): fp16 values only
        self.lut_planes = lut_planes(lut) if kind == "lut" and lut is not None and self.lut_padded is None \
            and jit.AVAILABLE and jit.AVX2 else None
        self.dtype = np.dtype(np.float32)  # what the values are, as far as other ops are concerned
        self.ndim = len(self.shape)
        self.size = self.n * self.k
        self._dense: np.ndarray | None = None
        # Where the stored rows sit in the weight file, when they are a view of its memory map: an embedding
        # lookup reads its rows from there (see take)
        self._file = mapped_location(self.data)
        self._has_offsets: bool | None = None

    # --- constructors ---------------------------------------------------------------------------
    @classmethod
    def f16(cls, values: np.ndarray) -> PackedWeight:
        return cls("f16", values.shape, np.asarray(values).view(np.uint16))

    @classmethod
    def lut_rows(cls, indices: np.ndarray, lut: np.ndarray, rows_per_group: int) -> PackedWeight:
        """indices (n, ...) into per-row-group palettes lut (n // rows_per_group, palette)."""
        return cls("lut", indices.shape, np.ascontiguousarray(indices, dtype=np.uint8),
                   lut=np.ascontiguousarray(lut, dtype=np.float32), rows_per_group=rows_per_group)

    @classmethod
    def int8(cls, q: np.ndarray, scale: np.ndarray, offset: np.ndarray | None) -> PackedWeight:
        """q (n, ...) int8; scale and offset (n, blocks) over equal blocks of each flattened row."""
        scale2 = np.ascontiguousarray(scale, dtype=np.float32)
        off = np.zeros_like(scale2) if offset is None else np.ascontiguousarray(offset, dtype=np.float32)
        return cls("int8", q.shape, np.ascontiguousarray(q, dtype=np.int8), scale=scale2, offset=off)

    # --- values ---------------------------------------------------------------------------------
    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows start..stop as fp32 (n_rows, k): the numpy reference of every kernel."""
        return self._values(np.arange(start, stop))

    def _values(self, which: np.ndarray, block: np.ndarray | None = None) -> np.ndarray:
        block = self.data[which] if block is None else block
        if self.kind == "f16":
            return block.view(np.float16).astype(np.float32)
        if self.kind == "lut":
            assert self.lut is not None
            return np.take_along_axis(self.lut[which // self.rows_per_group], block.astype(np.intp), axis=1)
        assert self.scale is not None and self.offset is not None
        q = block.reshape(len(which), self.scale.shape[1], -1).astype(np.float32)
        q -= self.offset[which][:, :, None]
        q *= self.scale[which][:, :, None]
        return q.reshape(len(which), self.k)

    def widen_into(self, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        """Rows start..stop widened into out[:stop - start] (a JIT loop where there is one)."""
        band = out[: stop - start]
        if not jit.AVAILABLE:
            band[...] = self.rows(start, stop)
        elif self.kind == "f16":
            jit.KERNELS["widen_f16"](self.data, start, stop, band)
        elif self.lut_planes is not None:
            jit.KERNELS["widen_lutb"](self.data, self.lut_planes, self.lut, self.rows_per_group, start, stop, band)
        elif self.lut_padded is not None:
            jit.KERNELS[f"widen_lut{self.lut_padded.shape[1]}"](self.data, self.lut_padded, self.rows_per_group, start, stop, band)
        elif self.kind == "lut":
            jit.KERNELS["widen_lut"](self.data, self.lut, self.rows_per_group, start, stop, band)
        else:
            jit.KERNELS["widen_int8"](self.data, self.scale, self.offset, start, stop, band)
        return band

    def dense(self) -> np.ndarray:
        if self._dense is None:
            self._dense = self.rows(0, self.n).reshape(self.shape)
        return self._dense

    def take(self, indices: np.ndarray) -> np.ndarray:
        """Rows by index (an embedding lookup), widened alone."""
        flat = np.asarray(indices, dtype=np.intp).reshape(-1)
        block = self._read_rows(flat) if self._file is not None else None
        return self._values(flat, block).reshape((*np.shape(indices), *self.shape[1:]))

    def _read_rows(self, which: np.ndarray) -> np.ndarray:
        """Stored rows read from the weight file, not through its map: a lookup touches a few scattered rows,
        and each page fault on the map brings the 64 KB around it into this process's resident memory (the
        kernel's fault-around), 7 MB of SmolLM2's embeddings for a 128-token prompt; read, they stay in the
        page cache only. pread is one call per row, safe from several threads at once."""
        assert self._file is not None
        fd, start = self._file
        row = self.k * self.data.itemsize
        out = np.empty((len(which), self.k), self.data.dtype)
        raw = out.view(np.uint8).reshape(len(which), row)
        for i, r in enumerate(which.tolist()):
            raw[i] = np.frombuffer(os.pread(fd, row, start + r * row), np.uint8)
        return out

    # --- products -------------------------------------------------------------------------------
    def matvec(self, x: np.ndarray) -> np.ndarray:
        """W @ x for x (k,) fp32."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        out = np.empty(self.n, np.float32)
        threads = POLICY.threads_for(self.size)
        name = f"lut{self.lut_padded.shape[1]}" if self.lut_padded is not None else "lutb" if self.lut_planes is not None else self.kind
        if threads > 1 and jit.PARALLEL.acquire(blocking=False):
            try:
                jit.set_threads(threads)
                self._run(jit.KERNELS[name + "_par"], x, out)
            finally:
                jit.PARALLEL.release()
        else:
            self._run(jit.KERNELS[name], x, out)
        return out

    def _run(self, kernel, x: np.ndarray, out: np.ndarray) -> None:
        if self.kind == "f16":
            kernel(self.data, x, out)
        elif self.lut_planes is not None:
            kernel(self.data, self.lut_planes, self.lut, self.rows_per_group, x, out)
        elif self.lut_padded is not None:
            kernel(self.data, self.lut_padded, self.rows_per_group, x, out)
        elif self.kind == "lut":
            kernel(self.data, self.lut, self.rows_per_group, x, out)
        else:
            assert self.scale is not None and self.offset is not None
            if self._has_offsets is None:
                # symmetric int8 (no offsets): Σx per block is never needed
                self._has_offsets = bool(self.offset.any())
            kernel(self.data, self.scale, self.offset, x, self._has_offsets, out)

    def matmul(self, x: np.ndarray) -> np.ndarray:
        """W @ x for x (k, m) fp32, m positions: bands of rows widened into the cache, then BLAS.

        The threads the policy grants go to BLAS, not to a split of the rows between Python threads: measured
        on SmolLM2 (128-token prefill, quiet 2-core Zen 4), two threads splitting the rows ran no faster than
        one (twice the CPU time: concurrent one-thread OpenBLAS calls wait on each other), while BLAS's own
        threads took fp16 from 323 to 461 tok/s, int8 340 to 467, LUT6 360 to 496; the widening stays serial
        and is a few percent of a band's cost."""
        out = np.empty((self.n, x.shape[1]), np.float32)
        threads = POLICY.threads_for(self.size * x.shape[1])
        POLICY.blas(threads)
        band = max(1, (_BAND_BYTES if threads == 1 else _BAND_BYTES_THREADED) // (4 * self.k))
        buf = np.empty((min(band, self.n), self.k), np.float32)
        for start in range(0, self.n, band):
            stop = min(self.n, start + band)
            np.matmul(self.widen_into(start, stop, buf), x, out=out[start:stop])
        return out

    def __repr__(self) -> str:
        return f"PackedWeight({self.kind}, {self.shape})"


def lut_planes(lut: np.ndarray) -> np.ndarray | None:
    """Palettes (groups, entries) as the byte tables of jit's AVX2 lookup (groups, LUT_PLANE_BYTES): for the
    low and the high byte of each fp16 value, four tables of 16 entries, each twice (one per 128-bit lane).
    None where a palette has more than 64 entries or a value that fp16 does not hold exactly (Core ML stores
    palettes in fp16; an fp32 one keeps the lookup by loads)."""
    groups, entries = lut.shape
    with np.errstate(over="ignore"):  # a value beyond fp16's range becomes inf: not exact, so no tables
        halves = lut.astype(np.float16)
    if entries > 64 or not np.array_equal(halves.astype(np.float32), lut):
        return None
    padded = np.zeros((groups, 64), np.float16)
    padded[:, :entries] = halves
    tables = padded.view(np.uint8).reshape(groups, 4, 16, 2).transpose(0, 3, 1, 2)  # group, byte, table, entry
    return np.ascontiguousarray(np.concatenate([tables, tables], axis=3).reshape(groups, 256))


def densify(value):
    return value.dense() if isinstance(value, PackedWeight) else value
