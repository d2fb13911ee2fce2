"""weight.bin: the blob file of an ML program, read through a memory map.

Layout (coremltools' MIL storage, version 2): a 64-byte header (u32 blob count, u32 version), then for
each blob a 64-byte metadata record (u32 sentinel 0xDEADBEEF, u32 storage dtype, u64 size in bytes,
u64 data offset) and its data, 64-byte aligned. Sub-byte values are packed LSB-first."""

from __future__ import annotations

import os
import struct
import weakref
from pathlib import Path

import numpy as np

from anechat.errors import ModelLoadError

SENTINEL = 0xDEADBEEF
# storage dtype code → (numpy dtype, bits per element)
STORAGE_DTYPES = {
    1: (np.float16, 16),
    2: (np.float32, 32),
    3: (np.uint8, 8),
    4: (np.int8, 8),
    5: (np.uint16, 16),  # bfloat16 bits
    6: (np.int16, 16),
    7: (np.uint16, 16),
    8: (np.int8, 4),  # int4
    9: (np.uint8, 1),
    10: (np.uint8, 2),
    11: (np.uint8, 4),
    12: (np.uint8, 3),
    13: (np.uint8, 6),
    14: (np.int32, 32),
    15: (np.uint32, 32),
}
SUB_BYTE_SIGNED = {8}


class BlobFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.data = np.memmap(path, dtype=np.uint8, mode="r")
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"{path}: cannot read weights ({e})") from None
        if len(self.data) < 64:
            raise ModelLoadError(f"{path}: truncated weight file ({len(self.data)} bytes)")
        if hasattr(os, "pread"):
            # The same file opened for reads beside the map (embedding rows: packed.PackedWeight.take), opened
            # with the map so both read the same file even if it is replaced on disk later, closed with the map.
            # Without it (out of descriptors) lookups read through the map.
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                return
            weakref.finalize(self.data, os.close, fd)
            setattr(self.data, _FD_ATTRIBUTE, fd)

    def read(self, offset: int, count: int) -> np.ndarray:
        """The `count` values of the blob whose metadata record sits at `offset`."""
        if offset < 0 or offset + 64 > len(self.data):
            raise ModelLoadError(f"{self.path}: blob offset {offset} is past the end of the file")
        # numpy arrays export the buffer protocol; numpy's stubs do not say so.
        sentinel, code, size, start = struct.unpack_from("<IIQQ", self.data, offset)  # type: ignore[arg-type]
        if sentinel != SENTINEL:
            raise ModelLoadError(f"{self.path}: no blob at offset {offset} (bad sentinel {sentinel:#x})")
        if code not in STORAGE_DTYPES:
            raise ModelLoadError(f"{self.path}: blob at offset {offset} has unknown dtype code {code}")
        if start + size > len(self.data):
            raise ModelLoadError(f"{self.path}: truncated weight file (blob at offset {offset} ends past the end)")
        dtype, bits = STORAGE_DTYPES[code]
        if size * 8 < count * bits:
            raise ModelLoadError(f"{self.path}: blob at offset {offset} holds {size} bytes, the program expects {count} values of {bits} bits")
        if bits >= 8:
            return self.data[start : start + size].view(dtype)[:count]
        # Read, not mapped: the packed bytes are needed only until they are unpacked, and pages of the map
        # once touched would stay in this process's resident memory beside the unpacked copy.
        with open(self.path, "rb") as f:
            f.seek(start)
            raw = np.frombuffer(f.read(size), dtype=np.uint8)
        return unpack_bits(raw, bits, count, signed=code in SUB_BYTE_SIGNED)


_UNPACK_CHUNK = 1 << 18  # values per pass: the bit-per-byte temporaries of a whole lm_head took ~500 MB at peak


def unpack_bits(raw: np.ndarray, bits: int, count: int, signed: bool = False) -> np.ndarray:
    """LSB-first packed `bits`-wide values → one uint8 (or int8) per value."""
    raw = np.asarray(raw, dtype=np.uint8)
    out = np.empty(count, np.uint8)
    shifts = np.arange(bits, dtype=np.uint8)
    for start in range(0, count, _UNPACK_CHUNK):  # a multiple of 8 values is a whole number of bytes
        n = min(_UNPACK_CHUNK, count - start)
        chunk = raw[start * bits // 8 : (start * bits + n * bits + 7) // 8]
        flat = np.unpackbits(chunk, bitorder="little")[: n * bits]
        values = flat.reshape(n, bits) << shifts
        out[start : start + n] = values.sum(axis=1, dtype=np.uint16)
    if signed:
        out = out.astype(np.int8)
        out[out >= 1 << (bits - 1)] -= 1 << bits
    return out


_FD_ATTRIBUTE = "anechat_fd"


def mapped_location(arr: np.ndarray) -> tuple[int, int] | None:
    """(file descriptor, byte offset) of the bytes a C-contiguous array views, when it is a view of a weight
    file's map (BlobFile); the descriptor lives as long as the map."""
    top = arr
    while isinstance(top.base, np.ndarray):
        top = top.base
    fd = getattr(top, _FD_ATTRIBUTE, None)
    if not isinstance(top, np.memmap) or fd is None or not arr.flags.c_contiguous:
        return None
    return fd, int(top.offset) + arr.__array_interface__["data"][0] - top.__array_interface__["data"][0]


SUB_BYTE_TYPES = {"int4", "uint1", "uint2", "uint3", "uint4", "uint6"}


class BlobStore:
    """The weight files one program refers to (`@model_path/...`), each opened once, never outside `base`."""

    def __init__(self, base: Path, source: str) -> None:
        self.base = base
        self.source = source
        self.files: dict[Path, BlobFile] = {}
        # Sub-byte blobs are unpacked into new arrays; a blob that several functions read (a multifunction
        # package's infer and prefill share every weight) must come back as the same array, or the constant
        # pool, which dedupes by address, keeps one unpacked copy per function (SmolLM2 LUT6: 240 MB, not 120).
        self._unpacked: weakref.WeakValueDictionary = weakref.WeakValueDictionary()

    def path(self, name: str) -> Path:
        path = (self.base / name.removeprefix("@model_path/")).resolve()
        if self.base.resolve() not in path.parents:
            raise ModelLoadError(f"{self.source}: weight file {name!r} points outside the model")
        return path

    def array(self, name: str, offset: int, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
        """The blob at `offset` of weight file `name`, as an array of the program's dtype and shape."""
        from anechat.runtime.milexec.ir import NUMPY_DTYPES

        path = self.path(name)
        if path not in self.files:
            if not path.is_file():
                raise ModelLoadError(f"{self.source}: missing weight file {path.name}")
            self.files[path] = BlobFile(path)
        key = (path, offset, dtype, shape)
        cached = self._unpacked.get(key)
        if cached is not None:
            return cached
        arr = self.files[path].read(offset, int(np.prod(shape, dtype=np.int64)))
        target = NUMPY_DTYPES.get(dtype)
        if target is not None and dtype not in SUB_BYTE_TYPES and arr.dtype.itemsize == np.dtype(target).itemsize:
            arr = arr.view(target)
        arr = arr.reshape(shape)
        if dtype in SUB_BYTE_TYPES:
            self._unpacked[key] = arr
        return arr
