"""Keep Python's cyclic garbage collector off the objects that outlive a generation.

A full collection walks every tracked object while holding the GIL. With a loaded model (the parsed
programs) and a UI holding thousands of widgets, one pass takes a few hundred milliseconds here, and every
one of them stalls the decoding thread. While any generation runs, the objects that existed before it are
frozen (gc.freeze: O(1)), so collections only walk what the generation itself allocates; when the last
generation ends they are unfrozen and collected as usual, so nothing is kept alive for good."""

from __future__ import annotations

import gc
import threading
from contextlib import contextmanager
from typing import Iterator

_lock = threading.Lock()
_holders = 0


@contextmanager
def heap_frozen() -> Iterator[None]:
    global _holders
    with _lock:
        _holders += 1
        if _holders == 1:
            gc.freeze()
    try:
        yield
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0:
                gc.unfreeze()


_paused = 0


@contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic collection while a large tree of new objects is built (a parsed request body: JSON makes
    no cycles): each full pass over the growing tree and the loaded model would hold the GIL for up to a
    few hundred milliseconds. Nested and concurrent holders share one pause."""
    global _paused
    with _lock:
        _paused += 1
        if _paused == 1:
            gc.disable()
    try:
        yield
    finally:
        with _lock:
            _paused -= 1
            if _paused == 0:
                gc.enable()
