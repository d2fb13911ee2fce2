"""Progress lines on stderr for long commands (conversion, downloads); stdout stays for results."""

from __future__ import annotations

import sys
import threading


class ProgressLines:
    """The two outputs of a progress Ticker (anechat.progress) on stderr: `say` writes each new step as a line;
    `update` writes the step's repeats (how far, elapsed, time left), on a terminal redrawn in place on one line
    below the step, elsewhere (a log, a pipe) as lines of their own. The stream is the stderr of when this was
    made: the converter silences coremltools by swapping sys.stderr meanwhile."""

    def __init__(self, stream=None, indent: str = "  ") -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.indent = indent
        self._open = False  # a redrawn line is on screen, not yet ended
        self._lock = threading.Lock()  # the ticker's thread and the converting thread both write

    def say(self, text: str) -> None:
        with self._lock:
            self._end()
            print(f"{self.indent}{text}", file=self.stream, flush=True)

    def update(self, text: str) -> None:
        with self._lock:
            if not self.tty:
                print(f"{self.indent}{text}", file=self.stream, flush=True)
                return
            print(f"\r\033[K{self.indent}{text}", end="", file=self.stream, flush=True)
            self._open = True

    def close(self) -> None:
        with self._lock:
            self._end()

    def _end(self) -> None:
        if self._open:
            print(file=self.stream, flush=True)
            self._open = False
