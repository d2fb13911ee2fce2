"""Colour themes as data: the shipped ones (themes/ at the repository top, inside the package as
anechat/data/themes) and the user's own in the config dir, which override shipped ones by name.
Parsing lives here, without Textual, so the REPL and `config` can name themes too."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from anechat.errors import AnechatError
from anechat.settings import SCHEMA, THEME_NAME

DEFAULT_THEME: str = SCHEMA["theme"].default
COLOR_KEYS = ("primary", "secondary", "accent", "foreground", "background", "surface", "panel",
              "success", "warning", "error")
REQUIRED = ("primary",)
_HEX = re.compile(r"#(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6}|[0-9a-fA-F]{8})")


class ThemeError(AnechatError):
    pass


@dataclass(frozen=True)
class ThemeSpec:
    name: str
    dark: bool
    colors: dict[str, str] = field(default_factory=dict)
    source: Path | None = None


def shipped_dir() -> Path:
    return Path(__file__).parent / "data" / "themes"


def parse_theme(path: Path) -> ThemeSpec:
    from anechat import yamlfile

    text = yamlfile.read_text(path, ThemeError)
    data = yamlfile.parse(text or "", path, ThemeError)
    if not isinstance(data, dict):
        raise ThemeError(f"{path}: expected `key: value` lines")
    name = data.get("name", path.stem)
    if not isinstance(name, str) or not THEME_NAME.fullmatch(name):
        raise ThemeError(f"{path}: name must be lowercase letters, digits, - or _ (got {name!r})")
    unknown = set(data) - {"name", "dark", *COLOR_KEYS}
    if unknown:
        raise ThemeError(f"{path}: unknown keys {', '.join(sorted(unknown))} (known: name, dark, {', '.join(COLOR_KEYS)})")
    colors = {}
    for key in COLOR_KEYS:
        value = data.get(key)
        if value is None:
            if key in REQUIRED:
                raise ThemeError(f"{path}: {key} is required")
            continue
        if not isinstance(value, str) or not _HEX.fullmatch(value):
            raise ThemeError(f"{path}: {key} must be a colour like \"#1E2430\" (got {value!r})")
        colors[key] = value
    dark = data.get("dark", True)
    if not isinstance(dark, bool):
        raise ThemeError(f"{path}: dark must be true or false")
    return ThemeSpec(name, dark, colors, path)


def load_themes(warn=None) -> dict[str, ThemeSpec]:
    """All themes by name. A broken user theme is reported through `warn` and skipped, never fatal."""
    from anechat.paths import themes_dir

    themes: dict[str, ThemeSpec] = {}
    for folder in (shipped_dir(), themes_dir()):
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.yaml")) + sorted(folder.glob("*.yml")):
            try:
                spec = parse_theme(path)
            except ThemeError as e:
                if warn is None:
                    raise
                warn(str(e))
                continue
            themes[spec.name] = spec
    return themes
