"""How many threads a kernel may use, decided per call from the work it has and the CPU it can get.

OpenBLAS starts one thread per core and those threads spin: when anything else runs (a browser, a build,
the UI's own thread) a multi-threaded matrix-vector product waits for a core that is busy and collapses
(a 2048×640 product: 20.7 ms on 2 threads vs 2.3 ms on one under the same load). The rule, measured in
docs/portable-runtime.md:

- work under SMALL_MACS multiply-adds (the smallest products: a few hundred thousand weights) runs on one
  thread: splitting it saves microseconds and risks milliseconds;
- bigger work (a layer's matrix-vector products, prefill's matrix products, a large vocabulary's lm_head)
  gets one thread per core that is idle right now — cores minus the busy time of other processes over the
  last moment (Linux /proc/stat, elsewhere the load average), rounded down — and never more than one per
  MIN_MACS_PER_THREAD of work. A layer's products are worth splitting only because the kernels' workers
  spin briefly between them instead of sleeping (jit.py): on a quiet 2-core machine SmolLM2 int8/LUT6
  decode 1.1-1.2x and Gemma 3 270M 1.2-1.4x their one-thread speed (docs/portable-runtime.md);
- while the full-screen UI is up, its thread shares the cores: one core is kept for it.

ANECHAT_THREADS=N fixes the count for every call (N=1: the single-thread runtime)."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

SMALL_MACS = 1 << 17
MIN_MACS_PER_THREAD = 1 << 16
SAMPLE_SECONDS = 0.5


def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _proc_stat_busy() -> tuple[float, float] | None:
    """(busy seconds, total seconds) of all CPUs since boot, or None where /proc/stat does not exist."""
    try:
        with open("/proc/stat", "rb") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != b"cpu":
        return None
    ticks = [int(v) for v in fields[1:9]]
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    idle = ticks[3] + ticks[4]  # idle + iowait
    total = sum(ticks)
    return (total - idle) / hz, total / hz


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


class ThreadPolicy:
    def __init__(self, cpus: int | None = None) -> None:
        self.cpus = cpus or _cpu_count()
        fixed = os.environ.get("ANECHAT_THREADS", "").strip()
        self.fixed = max(1, int(fixed)) if fixed.isdigit() else None
        self.ui_shares_cores = False
        self._lock = threading.Lock()
        self._last: tuple[float, float, float] | None = None  # (wall, busy of all, own cpu)
        self._idle = float(self.cpus)
        self._blas: Any = None
        self._blas_threads: int | None = None

    # --- how much CPU is free -------------------------------------------------------------------
    def idle_cores(self) -> float:
        """Cores not used by other processes, averaged over the last SAMPLE_SECONDS or so."""
        now = time.monotonic()
        last = self._last  # replaced whole under the lock: a read sees one sample or the next
        if last is not None and now - last[0] < SAMPLE_SECONDS:
            return self._idle  # the common case, ~120 times a token: no lock
        with self._lock:
            if self._last is not None and now - self._last[0] < SAMPLE_SECONDS:
                return self._idle
            stat = _proc_stat_busy()
            own = _own_cpu_seconds()
            if stat is None:
                try:
                    load = os.getloadavg()[0]
                except OSError:
                    load = 0.0
                # the load average counts our own running threads too (at least one: this one)
                self._idle = max(0.0, self.cpus - max(0.0, load - 1.0))
                self._last = (now, 0.0, own)
                return self._idle
            busy = stat[0]
            if self._last is not None and now > self._last[0]:
                wall = now - self._last[0]
                others = max(0.0, (busy - self._last[1]) - (own - self._last[2])) / wall
                self._idle = min(float(self.cpus), max(0.0, self.cpus - others))
            else:
                # first call: the load average stands in until there are two samples to compare
                try:
                    load = os.getloadavg()[0]
                except OSError:
                    load = 0.0
                self._idle = max(0.0, self.cpus - load)
            self._last = (now, busy, own)
            return self._idle

    def threads_for(self, macs: int) -> int:
        """Threads for a kernel doing `macs` multiply-adds."""
        if self.fixed is not None:
            return self.fixed
        if macs < SMALL_MACS or self.cpus == 1:
            return 1
        free = int(self.idle_cores() + 0.25) - (1 if self.ui_shares_cores else 0)
        return max(1, min(free, self.cpus, macs // MIN_MACS_PER_THREAD))

    # --- applying it ----------------------------------------------------------------------------
    def blas(self, threads: int) -> None:
        """Make the BLAS behind numpy use `threads` threads (a cheap call when nothing changes)."""
        if threads == self._blas_threads:
            return
        lib = self._blas_controller()
        if lib is not None:
            lib.set_num_threads(threads)
        self._blas_threads = threads

    def _blas_controller(self):
        if self._blas is None:
            self._blas = False
            try:
                from threadpoolctl import ThreadpoolController
            except ImportError:
                return None
            libs = ThreadpoolController().select(user_api="blas").lib_controllers
            if libs:
                self._blas = libs[0]
        return self._blas or None

    def blas_for(self, macs: int) -> int:
        n = self.threads_for(macs)
        self.blas(n)
        return n


POLICY = ThreadPolicy()


def set_ui_shares_cores(active: bool) -> None:
    """The full-screen UI calls this while it is up: its thread competes with the kernels for the cores."""
    POLICY.ui_shares_cores = active
