"""The live tokens/sec figure: tokens over a short sliding window, sampled for a sparkline."""

from __future__ import annotations

import time
from collections import deque
from typing import Callable

SMOOTHING = 0.5  # the EMA's weight of a new sample (a sample each half second: ~1 s time constant)


class RateMeter:
    def __init__(self, window_s: float = 1.0, history: int = 40, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self.clock = clock
        self._events: deque[tuple[float, int]] = deque()
        self.samples: deque[float] = deque(maxlen=history)
        self.total = 0
        self._start: float | None = None

    def start(self) -> None:
        self._events.clear()
        self.total = 0
        self._start = None

    def add(self, tokens: int = 1, at: float | None = None) -> None:
        now = self.clock() if at is None else at
        if self._start is None:
            self._start = now  # the rate counts from the first token: prefill time is TTFT's business
        self._events.append((now, tokens))
        self.total += tokens

    def rate(self) -> float:
        """Tokens per second over the last window, measured between the tokens' own decode times: tokens
        reach a UI in batches, and counting whole tokens per window made the figure jump (3 → 4 → 1 tok/s)."""
        if self._start is None:
            return 0.0
        now = self.clock()
        last = self._events[-1][0] if self._events else now
        # Tokens decoded within the window before the last one, and the gaps between them.
        while len(self._events) > 2 and self._events[0][0] < last - self.window_s:
            self._events.popleft()
        if len(self._events) < 2:
            return 0.0
        first = self._events[0][0]
        span = last - first
        count = sum(n for _, n in self._events) - self._events[0][1]  # the first token opens the span
        # A stall: nothing decoded for a window and for three of the usual gaps between tokens (a slow model
        # decodes a token every second or two: it is not stalled between them, and read 0.0 tok/s there).
        if count <= 0 or span <= 0 or now - last > max(self.window_s, 3 * span / count):
            return 0.0
        return count / span

    def sample(self) -> float:
        """The rate smoothed with an exponential moving average (time constant ~ the window), for the gauge."""
        value = self.rate()
        previous = self.samples[-1] if self.samples and self.total else None
        if previous is not None and value > 0:
            value = previous + SMOOTHING * (value - previous)
        self.samples.append(value)
        return value
