"""models.yaml: the shipped registry merged with the user's own (which adds entries or overrides by name)."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from anechat.errors import AnechatError, ModelNotFound

FORMATS = ("anemll", "anemll-monolithic", "convert")
SOURCE_KINDS = ("hf", "pypi")


class RegistryError(AnechatError):
    pass


@dataclass
class Entry:
    name: str
    title: str
    format: str
    sources: list[dict[str, Any]]
    architecture: str | None = None
    parameters: str | None = None
    context: int | None = None
    quantization: str | None = None
    size_mb: float | None = None
    download_mb: float | None = None
    license: str | None = None
    notes: str | None = None
    convert: dict[str, Any] = field(default_factory=dict)
    # The model maker's recommended sampling (generation_config.json keys) for a model whose source carries
    # none (a GGUF): written into the installed directory, below the user's settings.
    generation: dict[str, Any] = field(default_factory=dict)
    origin: str = "shipped"


@dataclass
class Registry:
    entries: dict[str, Entry]
    default: str | None

    def get(self, name: str) -> Entry:
        if name in self.entries:
            return self.entries[name]
        raise ModelNotFound(f"unknown model {name!r}{suggest(name, self.entries)}; see `anechat models list`")


def suggest(name: str, names) -> str:
    close = difflib.get_close_matches(name, list(names), n=3, cutoff=0.5)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def shipped_path() -> Path:
    return Path(str(resources.files("anechat") / "data" / "models.yaml"))


def user_path() -> Path:
    from anechat.paths import config_dir

    return config_dir() / "models.yaml"


def _parse(text: str, source: str) -> tuple[dict[str, Any], Any]:
    import yaml

    from anechat import yamlfile

    data = yamlfile.parse(text, source, RegistryError)
    node = yaml.compose(text)  # parsed fine above: only wanted for the line numbers of entries
    if data is None:
        return {}, None
    if not isinstance(data, dict):
        raise RegistryError(f"{source}: expected a mapping with 'models:'")
    return data, node


def _line(node, *keys: str) -> str:
    """' line N' of the node at keys (for error messages), or ''."""
    for key in keys:
        if node is None or not hasattr(node, "value") or not isinstance(node.value, list):
            return ""
        match = [v for k, v in node.value if getattr(k, "value", None) == key]
        if not match:
            return f" line {node.start_mark.line + 1}"
        node = match[0]
    return f" line {node.start_mark.line + 1}" if node is not None else ""


def _entry(name: str, raw: Any, source: str, node, origin: str) -> Entry:
    where = f"{source}:{_line(node, 'models', name)}"
    if not isinstance(raw, dict):
        raise RegistryError(f"{where} model {name!r} must be a mapping")
    fmt = raw.get("format")
    if fmt not in FORMATS:
        raise RegistryError(f"{source}:{_line(node, 'models', name, 'format')} model {name!r}: format must be one of {', '.join(FORMATS)}")
    sources = raw.get("sources")
    if not isinstance(sources, list) or not sources:
        raise RegistryError(f"{where} model {name!r} needs a non-empty list of sources")
    for s in sources:
        kinds = [k for k in s if k in SOURCE_KINDS] if isinstance(s, dict) else []
        if len(kinds) != 1:
            raise RegistryError(f"{source}:{_line(node, 'models', name, 'sources')} model {name!r}: each source is one of {', '.join(SOURCE_KINDS)}")
        spec = s[kinds[0]]
        needed = ("repo",) if kinds[0] == "hf" else ("package", "member")
        if not isinstance(spec, dict) or any(k not in spec for k in needed):
            raise RegistryError(f"{source}:{_line(node, 'models', name, 'sources')} model {name!r}: {kinds[0]} source needs {', '.join(needed)}")
    known = set(Entry.__dataclass_fields__) - {"name", "origin"}
    values = {k: v for k, v in raw.items() if k in known}
    values.setdefault("title", name)
    return Entry(name=name, origin=origin, **values)


def _load_file(path: Path, origin: str) -> tuple[dict[str, Entry], str | None]:
    from anechat import yamlfile

    text = yamlfile.read_text(path, RegistryError)
    if text is None:
        return {}, None
    data, node = _parse(text, str(path))
    models = data.get("models") or {}
    if not isinstance(models, dict):
        raise RegistryError(f"{path}:{_line(node, 'models')} 'models' must be a mapping of name → entry")
    return {str(n): _entry(str(n), raw, str(path), node, origin) for n, raw in models.items()}, data.get("default")


def load_registry() -> Registry:
    entries, default = _load_file(shipped_path(), "shipped")
    user_entries, user_default = _load_file(user_path(), "user")
    entries.update(user_entries)
    default = user_default or default
    if default is not None and default not in entries:
        raise RegistryError(f"default model {default!r} is not in the registry")
    return Registry(entries, default)
