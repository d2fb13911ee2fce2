"""The live tokens/sec figure: tokens over a short sliding window, sampled for a sparkline."""

from __future__ import annotations

import time
from collections import deque
from typing import Callable


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
        """Tokens per second over the last window (or since the first token, when that is shorter)."""
        if self._start is None:
            return 0.0
        now = self.clock()
        while self._events and self._events[0][0] < now - self.window_s:
            self._events.popleft()
        span = min(self.window_s, now - self._start)
        if span <= 0:
            return 0.0
        # The first token marks the start of the span; it is not produced inside it.
        count = sum(n for _, n in self._events) - (1 if now - self._start <= self.window_s else 0)
        return max(count, 0) / span

    def sample(self) -> float:
        value = self.rate()
        self.samples.append(value)
        return value
