"""A long step's progress for a user who is waiting, the same in every front end (pipe mode, the REPL, the TUI's
pull dialog, `anechat convert`): the step's name when it starts, then at least every few seconds how far it has
got (layers, bytes or a fraction, when known), how long it has taken, and about how long it will once that can
be estimated, so a first run is never minutes of silence."""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Callable

Say = Callable[[str], None]


def duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds} s" if seconds < 120 else f"{seconds // 60} min {seconds % 60:02d} s"


def amount(done: float, total: float | None, unit: str) -> str:
    """"12/30 layers", "120/238 MB", "42%"."""
    if unit == "bytes":
        mb = 1 << 20
        return f"{done / mb:.0f}/{total / mb:.0f} MB" if total else f"{done / mb:.0f} MB"
    if not unit:
        return f"{done * 100 / total:.0f}%" if total else ""
    return f"{done:.0f}/{total:.0f} {unit}" if total else f"{done:.0f} {unit}"


# An estimate from the rate so far needs this much of the step behind it: earlier, the first part's cost (a
# warm-up, a first layer that also builds caches) would be taken for the rate.
ETA_AFTER_S = 2.0
ETA_AFTER_FRACTION = 0.05


class Ticker:
    """`with Ticker(say) as t: t.step("converting chunk 1/2", total=30, unit="layers"); t.advance(3); ...`: each
    step is said once, then repeated with how far it has got and its elapsed time every `every` seconds until
    the next step or the end of the block (3 s: a line about every 4 s even when the step holds the GIL for a
    while and the thread wakes late; only a C++ call that keeps the GIL longer, such as coremltools merging
    functions on a loaded machine, stretches a gap, to 5.6 s at most in `anechat convert --verify` here).

    `update`, when given, takes the repeated lines instead of `say`: a front end that can redraw one line (the
    TUI's pull dialog) shows the new steps as a log and the repeats in place."""

    def __init__(self, say: Say, every: float = 3.0, clock: Callable[[], float] = time.monotonic,
                 update: Say | None = None) -> None:
        self.say, self.every, self.clock = say, every, clock
        self.update = update or say
        self._lock = threading.Lock()
        self._text: str | None = None
        self._estimate: float | None = None
        self._done, self._unit = 0.0, ""
        self._total: float | None = None
        self._probe: Callable[[], float] | None = None
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

    def __call__(self, text: str) -> None:
        """As a plain `say`: each new line starts a step."""
        self.report(text)

    def step(self, text: str, estimate_s: float | None = None, quiet: bool = False, total: float | None = None,
             unit: str = "", probe: Callable[[], float] | None = None) -> None:
        """A new step; `total` `unit`s to do, when known (advance() counts them, or `probe`, asked at each
        repeat: the bytes a download has written so far). `quiet`: said only once it has taken `every` seconds (a
        step that is usually quick and whose silence is expected, such as loading a model in pipe mode, whose
        stderr is otherwise empty)."""
        now = self.clock()
        with self._lock:
            self._text, self._estimate, self._started, self._last = text, estimate_s, now, now
            self._done, self._total, self._unit, self._probe = 0.0, total, unit, probe
        if not quiet:
            self.say(text)

    def advance(self, done: float, total: float | None = None) -> None:
        """How much of the current step is done (layers, bytes; a fraction of 1 when the step has no unit)."""
        with self._lock:
            self._done = done
            if total is not None:
                self._total = total

    def report(self, text: str, fraction: float | None = None, *, done: float | None = None,
               total: float | None = None, unit: str = "") -> None:
        """A converter's progress callback (convert's `Progress`): a new text starts a step; the same text with
        a fraction, or `done` of `total` `unit`s, says how far it has got."""
        with self._lock:
            same = text == self._text
        if not same:
            self.step(text)
        if done is not None:
            with self._lock:
                self._done, self._total, self._unit = done, total, unit
        elif fraction is not None:
            with self._lock:
                self._done, self._total, self._unit = fraction, 1.0, ""

    def clear(self) -> None:
        """The step is over and nothing long follows (the first token of an answer came): stop repeating."""
        with self._lock:
            self._text = None

    def line(self, now: float | None = None) -> str | None:
        """The current step as a progress line: name, how far, elapsed, about how long is left."""
        now = self.clock() if now is None else now
        probe = self._probe
        if probe is not None:
            with contextlib.suppress(OSError):  # a file gone between listing and measuring: measured next time
                self.advance(probe())
        with self._lock:
            if self._text is None:
                return None
            text, elapsed, estimate = self._text, now - self._started, self._estimate
            done, total, unit = self._done, self._total, self._unit
        if estimate is None and total and 0 < done < total and elapsed >= ETA_AFTER_S and done / total >= ETA_AFTER_FRACTION:
            estimate = elapsed * total / done
        how_far = amount(done, total, unit) if (done or total) else ""
        left = f", about {duration(estimate - elapsed)} left" if estimate and estimate > elapsed else ""
        return f"{text}{' · ' + how_far if how_far else ''} … {duration(elapsed)}{left}"

    def tick(self) -> None:
        """Say the current step again if it has been silent for `every` seconds (the thread calls this)."""
        now = self.clock()
        with self._lock:
            if self._text is None or now - self._last < self.every:
                return
            self._last = now
        line = self.line(now)
        if line is not None:
            self.update(line)

    def _run(self) -> None:
        while not self._stop.wait(min(0.5, self.every / 4)):
            self.tick()
