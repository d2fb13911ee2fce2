"""YAML files users edit (settings, registry, meta.yaml): read and parsed with one-line errors that name the
file and the line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from anechat.errors import AnechatError


def read_text(path: Path, error: type[AnechatError]) -> str | None:
    """The file's text, or None when it does not exist."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None


def parse(text: str, source: Path | str, error: type[AnechatError]) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        problem = " ".join(str(getattr(e, "problem", None) or e).split())  # one line, whatever PyYAML wrote
        raise error(f"{source}: not valid YAML{where}: {problem}") from None
    except (RecursionError, MemoryError):
        raise error(f"{source}: not valid YAML: nested too deeply") from None
