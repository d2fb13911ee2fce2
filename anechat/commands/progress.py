"""A small stderr progress line for long steps (conversion, downloads). stdout stays for results."""

from __future__ import annotations

import sys
import time


class ProgressLine:
    """Callable `progress(step, fraction)`: on a terminal one line redrawn in place, else a line per step."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.step: str | None = None
        self.started = time.perf_counter()
        self.step_started = self.started

    def __call__(self, step: str, fraction: float | None = None) -> None:
        now = time.perf_counter()
        if step != self.step:
            if self.step is not None:
                self._end_step(now)
            self.step, self.step_started = step, now
            if not self.tty:
                print(f"  {step} ...", file=self.stream, flush=True)
        if self.tty:
            pct = f" {fraction * 100:5.1f}%" if fraction is not None else ""
            print(f"\r\033[K  {step}{pct}", end="", file=self.stream, flush=True)

    def _end_step(self, now: float) -> None:
        if self.tty:
            print(f"\r\033[K  {self.step} ({now - self.step_started:.1f}s)", file=self.stream, flush=True)

    def close(self) -> None:
        if self.step is not None:
            self._end_step(time.perf_counter())
            self.step = None
