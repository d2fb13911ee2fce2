"""Handing freed memory back to the system.

Parsing a tokenizer.json (the tokenizers library: ~300 MB of short-lived allocations for Gemma 3's 262k
vocabulary, ~40 MB for SmolLM2's) or a program's protobuf leaves the C heap full of freed small blocks that
glibc keeps resident: they would sit beside the weights for the whole chat. malloc_trim gives their pages
back. Elsewhere (macOS's allocator returns pages by itself, musl has no malloc_trim) nothing is done."""

from __future__ import annotations

import ctypes
import functools
import sys


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
