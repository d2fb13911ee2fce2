"""Wraps any backend so the time spent inside predict() is known: host overhead = total − predict time."""

from __future__ import annotations

import time
from typing import Any


class TimedPart:
    def __init__(self, part: Any, clock: PredictClock) -> None:
        self._part = part
        self._clock = clock

    def __getattr__(self, name: str) -> Any:
        return getattr(self._part, name)

    def predict(self, inputs, state=None):
        t = time.perf_counter()
        try:
            return self._part.predict(inputs, state)
        finally:
            self._clock.seconds += time.perf_counter() - t
            self._clock.calls += 1


class PredictClock:
    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0


class TimedBackend:
    def __init__(self, backend: Any) -> None:
        self._backend = backend
        self.clock = PredictClock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def load(self, path, function_name=None):
        return TimedPart(self._backend.load(path, function_name), self.clock)
