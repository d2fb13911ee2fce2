"""SIGTERM (a `kill`, a service manager, a closing terminal's session) ends a command the way Ctrl+C does:
the partial answer is flushed and saved, work directories are cleaned, one line says what happened."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

EXIT_TERMINATED = 128 + signal.SIGTERM


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM; every `except KeyboardInterrupt` cleanup runs for it too."""


def _raise(signum, frame) -> None:
    raise Terminated()


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
