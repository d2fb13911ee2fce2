"""Model names become directory names under the models dir: they are checked once, where they enter (the
registry, `models add --name`, `pull`, `rm`), and every path built from one is checked to stay inside its root
before anything is written or removed."""

from __future__ import annotations

import re
from pathlib import Path

from anechat.errors import AnechatError, UsageError

# One path component, no leading dot (hidden names are anechat's own partial and old directories), no
# separators, nothing a shell or a file system treats specially.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")
NAME_RULE = "letters, digits, '.', '_', '+', '-', starting with a letter or digit, at most 100 characters"


def check_model_name(name: object, where: str = "", error: type[AnechatError] = UsageError) -> str:
    """`name` when it is a safe model name, else `error` (one line, naming `where` it came from)."""
    if not isinstance(name, str) or not NAME.fullmatch(name) or name.endswith(".partial"):
        prefix = f"{where}: " if where else ""
        raise error(f"{prefix}invalid model name {name!r}: use {NAME_RULE}")
    return name


def inside(root: Path, path: Path, what: str = "path") -> Path:
    """`path`, after checking that it (resolved, links followed for its parent) stays strictly inside `root`.
    The last component itself is not followed: removing a link removes the link, not what it points at."""
    base = Path(root).resolve()
    path = Path(path)
    parent = path.parent.resolve()
    full = parent / path.name
    if path.name in ("", ".", "..") or (parent != base and base not in parent.parents):
        raise UsageError(f"refusing {what} {str(path)!r}: it is outside {base}")
    return full
