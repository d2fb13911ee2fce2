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
    from anechat.names import check_model_name

    where = f"{source}:{_line(node, 'models', name)}"
    check_model_name(name, where, RegistryError)
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
        for key in ("repo", "package", "member", "revision", "sha256"):
            if key in spec and not isinstance(spec[key], str):
                raise RegistryError(f"{source}:{_line(node, 'models', name, 'sources')} model {name!r}: {key} must be a string")
        parts = spec.get("parts")
        if parts is not None and (not isinstance(parts, list) or not all(
                isinstance(p, dict) and isinstance(p.get("package"), str) and isinstance(p.get("member"), str) for p in parts)):
            raise RegistryError(f"{source}:{_line(node, 'models', name, 'sources')} model {name!r}: parts must be a list of {{package, member}}")
        files = spec.get("files")
        if files is not None and not (isinstance(files, list) and all(isinstance(f, str) for f in files)):
            raise RegistryError(f"{source}:{_line(node, 'models', name, 'sources')} model {name!r}: files must be a list of strings")
    known = set(Entry.__dataclass_fields__) - {"name", "origin"}
    values = {k: v for k, v in raw.items() if k in known}
    for key, value in values.items():
        problem = _field_problem(key, value)
        if problem:
            raise RegistryError(f"{source}:{_line(node, 'models', name, key)} model {name!r}: {key} {problem}, got {value!r}")
    values = {k: str(v) if k in TEXT_FIELDS and v is not None else v for k, v in values.items()}
    values.setdefault("title", name)
    return Entry(name=name, origin=origin, **values)


TEXT_FIELDS = ("title", "architecture", "parameters", "quantization", "license", "notes")
CONVERT_KEYS = ("context", "batch", "chunks", "lut_ffn", "lut_lmhead", "lut_embeddings", "int8", "argmax", "monolithic", "prefix")


def _field_problem(key: str, value: Any) -> str | None:
    """What is wrong with one field's value (None when it is fine): types and ranges before any use."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if key in TEXT_FIELDS:
        return None if value is None or isinstance(value, str) or number else "must be text"
    if key == "context":
        return None if value is None or (isinstance(value, int) and not isinstance(value, bool) and 0 < value <= 1 << 20) \
            else "must be a whole number of tokens between 1 and 1048576"
    if key in ("size_mb", "download_mb"):
        return None if value is None or (number and 0 <= value < 1e9) else "must be a number of megabytes"
    if key == "convert":
        if not isinstance(value, dict):
            return "must be a mapping of convert options"
        unknown = [k for k in value if k not in CONVERT_KEYS]
        if unknown:
            return f"has unknown options {unknown} (known: {', '.join(CONVERT_KEYS)})"
        for k in ("context", "batch", "chunks"):
            v = value.get(k)
            if v is not None and not (isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 1 << 20):
                return f"option {k} must be a positive whole number"
        for k in ("int8", "argmax", "monolithic"):
            if k in value and not isinstance(value[k], bool):
                return f"option {k} must be true or false"
        for k in ("lut_ffn", "lut_lmhead", "lut_embeddings", "prefix"):
            v = value.get(k)
            if v is not None and not isinstance(v, (str, int)) or isinstance(v, bool):
                return f"option {k} must be text or a number"
    return None


def _load_file(path: Path, origin: str) -> tuple[dict[str, Entry], str | None]:
    from anechat import yamlfile

    text = yamlfile.read_text(path, RegistryError)
    if text is None:
        return {}, None
    data, node = _parse(text, str(path))
    models = data.get("models") or {}
    if not isinstance(models, dict):
        raise RegistryError(f"{path}:{_line(node, 'models')} 'models' must be a mapping of name → entry")
    default = data.get("default")
    if default is not None and not isinstance(default, str):
        raise RegistryError(f"{path}:{_line(node, 'default')} default must be a model name, got {default!r}")
    return {str(n): _entry(str(n), raw, str(path), node, origin) for n, raw in models.items()}, default


def load_registry() -> Registry:
    entries, default = _load_file(shipped_path(), "shipped")
    user_entries, user_default = _load_file(user_path(), "user")
    entries.update(user_entries)
    default = user_default or default
    if default is not None and default not in entries:
        raise RegistryError(f"default model {default!r} is not in the registry")
    return Registry(entries, default)
