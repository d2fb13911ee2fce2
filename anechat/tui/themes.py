"""anechat's theme files as Textual themes."""

from __future__ import annotations

from typing import Any

from textual.theme import Theme

from anechat.themes import ThemeSpec


def to_textual(spec: ThemeSpec) -> Theme:
    colors: dict[str, Any] = dict(spec.colors)  # Theme's colour parameters, by name
    return Theme(name=spec.name, dark=spec.dark, **colors)
