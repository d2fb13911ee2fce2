"""Work directories in progress (`.NAME.….partial`, beside a convert's output or under the models dir).

A process that dies without cleaning up (SIGKILL, power loss) leaves its partial directory behind. Each one
therefore holds a lock file the owner keeps an flock on, and is listed in a journal under the cache dir: a
later `convert` or `models` command removes the partials whose lock it can take — the kernel releases an
flock when its holder dies, so a taken lock proves the owner is gone, whatever became of its PID."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Callable, Iterator

LOCK = ".anechat-partial.lock"
PARTIAL = re.compile(r"\..+\.partial")


def _journal_dir() -> Path:
    from anechat.paths import cache_dir

    return cache_dir() / "partials"


def _try_lock(fd: int) -> bool:
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


@contextlib.contextmanager
def tracked(work: Path) -> Iterator[Path]:
    """Own `work` (an empty new partial directory) while the block runs: lock it, list it in the journal, and
    send the temporary files of libraries (coremltools' tmp*.mlpackage) into it, so they go with it."""
    work = Path(work).resolve()
    fd = os.open(work / LOCK, os.O_CREAT | os.O_RDWR, 0o600)
    _try_lock(fd)
    os.write(fd, f"{os.getpid()}\n".encode())
    entry = None
    with contextlib.suppress(OSError):  # no journal (read-only cache): only the cleanup of a crash is lost
        _journal_dir().mkdir(parents=True, exist_ok=True)
        entry = _journal_dir() / f"{uuid.uuid4().hex}.json"
        entry.write_text(json.dumps({"path": str(work), "pid": os.getpid()}))
    scratch = work / "tmp"
    scratch.mkdir(exist_ok=True)
    saved = tempfile.tempdir
    tempfile.tempdir = str(scratch)
    try:
        yield work
    finally:
        tempfile.tempdir = saved
        shutil.rmtree(scratch, ignore_errors=True)
        os.close(fd)
        if entry is not None:
            entry.unlink(missing_ok=True)


def finish(work: Path) -> None:
    """Drop the bookkeeping from a finished work directory before it is moved into place."""
    shutil.rmtree(Path(work) / "tmp", ignore_errors=True)
    (Path(work) / LOCK).unlink(missing_ok=True)


def remove_stale(say: Callable[[str], None]) -> list[Path]:
    """Remove the partial directories of dead processes listed in the journal; say each one. A journal entry
    is trusted only for a directory named like a partial that holds a lock file."""
    removed: list[Path] = []
    journal = _journal_dir()
    if not journal.is_dir():
        return removed
    for entry in sorted(journal.glob("*.json")):
        try:
            record = json.loads(entry.read_text())
            path = Path(record["path"])
            pid = int(record.get("pid", 0))
        except (OSError, ValueError, KeyError, TypeError):
            entry.unlink(missing_ok=True)
            continue
        if not path.is_dir() or path.is_symlink() or not PARTIAL.fullmatch(path.name) or not (path / LOCK).is_file():
            if not path.exists():
                entry.unlink(missing_ok=True)
            continue
        try:
            fd = os.open(path / LOCK, os.O_RDWR)
        except OSError:
            continue
        try:
            if not _try_lock(fd):
                continue  # its owner is alive
            shutil.rmtree(path, ignore_errors=True)
        finally:
            os.close(fd)
        entry.unlink(missing_ok=True)
        removed.append(path)
        say(f"removed {path}, left behind by an interrupted anechat (process {pid})")
    return removed
