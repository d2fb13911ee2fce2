"""Installed and registry models as one list (for `anechat models list`, `/models` and the model screen).
Import-light: no numpy, no engine."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ModelRow:
    name: str
    title: str
    installed: bool
    default: bool
    size_mb: float | None  # on disk once installed (what it takes now, when installed)
    format: str
    download_mb: float | None = None  # what a pull fetches (less than size_mb for a model converted here)

    def mark(self, current: str | None = None) -> str:
        """▶ the model in use, * the default, else nothing: the first column wherever models are listed."""
        return "▶" if self.name == current else ("*" if self.default else "")

    @property
    def state(self) -> str:
        return "installed" if self.installed else "available"

    @property
    def size(self) -> str:
        return f"{self.size_mb:.0f} MB" if self.size_mb else ""

    @property
    def download(self) -> str:
        return f"{self.download_mb:.0f} MB" if self.download_mb and not self.installed else ""

    def line(self, current: str | None = None, name_width: int = 28) -> str:
        """One row of a plain-text model list (`anechat models list`, the REPL's /models), under header()."""
        return (f"{self.mark(current) or ' '} {self.name:{name_width}s} {self.state:10s} {self.size:>8s} "
                f"{self.download:>9s}  {self.title}")

    @staticmethod
    def header(name_width: int = 28) -> str:
        return f"  {'name':{name_width}s} {'state':10s} {'on disk':>8s} {'download':>9s}  title"


def model_rows() -> list[ModelRow]:
    """Installed and registry models, one row each, sorted by name (for `models list` and `/models`)."""
    from anechat.models import store
    from anechat.models.registry import load_registry

    registry = load_registry()
    have = store.installed()
    rows = []
    for name in sorted(set(registry.entries) | set(have)):
        e = registry.entries.get(name)
        size = round(have[name].size / 1e6, 1) if name in have else (e.size_mb if e else None)
        rows.append(ModelRow(name, e.title if e else "(local)", name in have, name == registry.default, size,
                             e.format if e else "anemll", e.download_mb if e else None))
    return rows
