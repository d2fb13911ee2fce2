"""anechat's theme files as Textual themes."""

from __future__ import annotations

from textual.theme import Theme

from anechat.themes import ThemeSpec


def to_textual(spec: ThemeSpec) -> Theme:
    return Theme(name=spec.name, dark=spec.dark, **spec.colors)
