"""sha256 of every file of a model directory, recorded when anechat installs, links or converts a model, so
`anechat models verify` can tell a damaged model from a good one."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

RECORD = ".anechat-install.json"
# bookkeeping that is not part of the model
SKIP = (RECORD, ".anechat-partial.lock")


def hash_file(path: Path, h=None) -> str:
    h = hashlib.sha256() if h is None else h
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def checksums(path: Path) -> dict[str, str]:
    sums = {}
    for f in sorted(Path(path).rglob("*")):
        if f.is_file() and f.name not in SKIP:
            sums[str(f.relative_to(path))] = hash_file(f)
    return sums


def write_record(record_file: Path, model: Path, **fields: Any) -> None:
    record_file.write_text(json.dumps({**fields, "sha256": checksums(model)}, indent=1))


def read_record(record_file: Path, error: type[Exception]) -> dict[str, str] | None:
    """The recorded {file: sha256}, None when there is no record; `error` for a damaged one."""
    try:
        text = record_file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"{record_file}: cannot read: {getattr(e, 'strerror', None) or e}") from None
    try:
        data = json.loads(text)
    except ValueError as e:
        raise error(f"{record_file}: not valid JSON ({e})") from None
    sums = data.get("sha256") if isinstance(data, dict) else None
    if not isinstance(sums, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in sums.items()):
        raise error(f"{record_file}: expected an object with a 'sha256' mapping of file → hex digest")
    return sums
