"""Where anechat keeps things. `ANECHAT_HOME` puts everything under one directory (tests, portable installs);
otherwise platformdirs' per-user data/config/cache dirs (which honour XDG_* on Linux)."""

from __future__ import annotations

import os
from pathlib import Path

APP = "anechat"


def _home() -> Path | None:
    home = os.environ.get("ANECHAT_HOME")
    return Path(home).expanduser() if home else None


def data_dir() -> Path:
    if home := _home():
        return home / "data"
    import platformdirs

    return platformdirs.user_data_path(APP)


def config_dir() -> Path:
    if home := _home():
        return home / "config"
    import platformdirs

    return platformdirs.user_config_path(APP)


def cache_dir() -> Path:
    if home := _home():
        return home / "cache"
    import platformdirs

    return platformdirs.user_cache_path(APP)


def models_dir() -> Path:
    return data_dir() / "models"


def sessions_db() -> Path:
    return data_dir() / "sessions.db"


def config_file() -> Path:
    return config_dir() / "config.yaml"


def history_file() -> Path:
    return data_dir() / "history"


def themes_dir() -> Path:
    """Where users put their own theme files (same format as the shipped ones)."""
    return config_dir() / "themes"


def dir_size(path: Path) -> int:
    """Bytes in the files under `path` (a model directory: what it costs on disk)."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
