"""SIGTERM (a `kill`, a service manager, a closing terminal's session) ends a command the way Ctrl+C does:
the partial answer is flushed and saved, work directories are cleaned, one line says what happened."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Callable, Iterator, TypeVar

T = TypeVar("T")

EXIT_TERMINATED = 128 + signal.SIGTERM


# Set by a command that ends on a signal without an error (a server stopped with Ctrl+C): the process
# then leaves as an interrupted one does, without the interpreter's slow teardown (cli._leave_now).
stopping = False


# Set when a signal ends the process: work under way in another thread (a decoding step, a first-run kernel
# compile, a prefill block of a big model) is abandoned rather than waited for. Those threads are daemons and
# the exit path ends the process (cli._leave_now); waiting would hold the exit for as long as the step takes.
leaving = threading.Event()


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM; every `except KeyboardInterrupt` cleanup runs for it too."""


# Inside `held()` the handlers below note the signal instead of raising; it is raised as the block ends.
_held = False
_pending: type[KeyboardInterrupt] | None = None


def _raise(signum, frame) -> None:
    _deliver(Terminated)


def interrupt(signum, frame) -> None:
    """Ctrl+C as Python's default handler takes it, saying that the process is leaving (see `leaving`)."""
    _deliver(KeyboardInterrupt)


def _deliver(kind: type[KeyboardInterrupt]) -> None:
    global _pending
    leaving.set()
    if _held and _pending is None:
        _pending = kind
        return
    raise kind()  # not held, or a second signal while held (a write blocked on a stalled reader): now


@contextlib.contextmanager
def held() -> Iterator[None]:
    """A block a signal does not cut in two (main thread, the handlers above): pipe mode shows a piece of the
    answer and saves it in one such block, so what was shown is what was saved even when the signal arrives
    between the two. The signal is raised as the block ends; a second one while the block runs (stdout blocked
    on a reader that stopped reading) is raised at once."""
    global _held, _pending
    if _held or threading.current_thread() is not threading.main_thread():
        yield
        return
    _held = True
    try:
        yield
    finally:
        _held = False
        kind, _pending = _pending, None
        if kind is not None:
            raise kind()


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


class Abandoned(Exception):
    """The caller's cancel flag was set while `in_background` waited."""


def in_background(work: Callable[[], T], cancel: threading.Event | None = None, name: str = "anechat-work") -> T:
    """work() on a daemon thread while the caller waits in short slices: a long call into a library (a
    download pool, a tokenizer's Rust code) does not hold the caller until it returns. A signal reaches the
    main thread at once; a set `cancel` raises Abandoned. What is abandoned finishes alone (a daemon thread
    does not hold the exit, see cli._leave_now)."""
    box: dict = {}

    def run() -> None:
        try:
            box["value"] = work()
        except BaseException as e:  # noqa: BLE001 — re-raised in the caller's thread
            box["error"] = e

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.05)
        if cancel is not None and cancel.is_set() and thread.is_alive():
            raise Abandoned()
    if "error" in box:
        raise box["error"]
    return box["value"]
