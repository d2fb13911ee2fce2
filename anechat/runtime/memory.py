"""Memory that becomes resident only as it is used, and freed memory handed back to the system.

Parsing a tokenizer.json (the tokenizers library: ~300 MB of short-lived allocations for Gemma 3's 262k
vocabulary, ~40 MB for SmolLM2's) or a program's protobuf leaves the C heap full of freed small blocks that
glibc keeps resident: they would sit beside the weights for the whole chat. malloc_trim gives their pages
back. Elsewhere (macOS's allocator returns pages by itself, musl has no malloc_trim) nothing is done."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import mmap
import sys

import numpy as np


@functools.cache
def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def release_free_memory() -> bool:
    """Return the C heap's free pages to the system; whether there was a way to."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


_HUGE_PAGE = 1 << 21


def zeros_as_written(shape: tuple[int, ...], dtype) -> np.ndarray:
    """A zero-filled array whose pages become resident as they are first written, 4 KB at a time.

    For a KV cache, written one position at a time: np.zeros' pages are untouched too, but where transparent
    huge pages are on (Linux's default "always" on many distributions) the first write to each 2 MB of it
    makes all 2 MB resident, so SmolLM2's whole 24 MB cache was resident after the first token. An
    anonymous map that declines huge pages holds only the positions written so far."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    advice = getattr(mmap, "MADV_NOHUGEPAGE", None)
    if nbytes < _HUGE_PAGE or advice is None:
        return np.zeros(shape, dtype)
    # private and anonymous: reads see the shared zero page, a page is made only when written (a shared
    # anonymous map is shmem, where reading a page makes it too)
    buffer = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE)
    with contextlib.suppress(OSError):  # a kernel without transparent huge pages refuses: nothing to decline
        buffer.madvise(advice)
    return np.frombuffer(buffer, dtype).reshape(shape)
