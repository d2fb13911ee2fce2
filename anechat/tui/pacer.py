"""How often a streaming answer is redrawn: as often as the UI can afford.

On the portable backend the model decodes on the same cores as the UI, and one redraw of a full screen
(layout and repaint of every visible Markdown block) costs tens of milliseconds of the main thread. The
pacer measures what the main thread spent since the last redraw (the redraw and everything else the UI did)
and spaces redraws so that the UI stays within its budget: 2.5 % of a core when the model computes on the
CPU (each 1 % the UI takes costs decoding a little more than 1 %), 10 % when it runs on the ANE. A
near-empty screen redraws two to four times a second, a full one on a slow machine about once a second.

One pacer serves all the answers of a conversation: what a redraw costs depends on the screen, which the
next answer inherits, so each answer goes on at the pace the previous one found instead of learning it
again from the fastest pace (and overspending while it does)."""

from __future__ import annotations

import time
from typing import Callable


class RenderPacer:
    def __init__(self, fastest_s: float = 0.25, slowest_s: float = 2.0, budget: float = 0.025,
                 clock: Callable[[], float] = time.monotonic, cpu: Callable[[], float] = time.thread_time) -> None:
        self.fastest_s, self.slowest_s, self.budget = fastest_s, slowest_s, budget
        self.clock, self.cpu = clock, cpu
        self.interval = fastest_s
        self._learned = False
        self.start()

    def start(self) -> None:
        """A new answer: its first words show at the fastest pace, later redraws at the pace learned so far."""
        self._at, self._cpu_at = self.clock(), self.cpu()
        self._first = True

    def due(self) -> bool:
        return self.clock() - self._at >= (self.fastest_s if self._first else self.interval)

    def drawn(self) -> None:
        """Called after each redraw: the main thread's time since the previous one (that redraw's layout
        and repaint, plus everything else the UI did) sets the next interval."""
        now, cpu = self.clock(), self.cpu()
        spent = cpu - self._cpu_at
        wanted = spent / self.budget if self.budget > 0 else self.fastest_s
        # Half-way towards what this sample asks, so that one odd frame (a new code block) does not swing
        # it; but the first sample is all there is to go on.
        pace = (self.interval + wanted) / 2 if self._learned else wanted
        self.interval = min(self.slowest_s, max(self.fastest_s, pace))
        self._at, self._cpu_at = now, cpu
        self._first, self._learned = False, True
