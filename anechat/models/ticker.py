"""A long step's progress for a user who is waiting: its name when it starts, then every few seconds how long
it has taken (and, when known, about how long it will), so a first run is never minutes of silence."""

from __future__ import annotations

import threading
import time
from typing import Callable

Say = Callable[[str], None]


def duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds} s" if seconds < 120 else f"{seconds // 60} min {seconds % 60:02d} s"


class Ticker:
    """`with Ticker(say) as t: t.step("converting chunk 1/2"); ...`: each step is said once, then repeated
    with its elapsed time every `every` seconds until the next step or the end of the block (4 s: a line
    at least every 5 s even when the step holds the GIL for a while and the thread wakes late)."""

    def __init__(self, say: Say, every: float = 4.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.say, self.every, self.clock = say, every, clock
        self._lock = threading.Lock()
        self._text: str | None = None
        self._estimate: float | None = None
        self._started = self._last = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Ticker:
        self._thread = threading.Thread(target=self._run, name="anechat-ticker", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def step(self, text: str, estimate_s: float | None = None, quiet: bool = False) -> None:
        """A new step. `quiet`: said only once it has taken `every` seconds (a step that is usually quick
        and whose silence is expected, such as loading a model in pipe mode, whose stderr is otherwise empty)."""
        now = self.clock()
        with self._lock:
            self._text, self._estimate, self._started, self._last = text, estimate_s, now, now
        if not quiet:
            self.say(text)

    def clear(self) -> None:
        """The step is over and nothing long follows (the first token of an answer came): stop repeating."""
        with self._lock:
            self._text = None

    def tick(self) -> None:
        """Say the current step again if it has been silent for `every` seconds (the thread calls this)."""
        now = self.clock()
        with self._lock:
            if self._text is None or now - self._last < self.every:
                return
            self._last = now
            text, elapsed, estimate = self._text, now - self._started, self._estimate
        left = f", about {duration(estimate - elapsed)} left" if estimate and estimate > elapsed else ""
        self.say(f"{text} … {duration(elapsed)}{left}")

    def _run(self) -> None:
        while not self._stop.wait(min(0.5, self.every / 4)):
            self.tick()
