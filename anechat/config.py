"""User settings: a YAML file at paths.config_file(), overridden by CLI flags.

The keys, their types, ranges and defaults are anechat.settings.SCHEMA; every key is optional and an
unset one leaves its default in force. Values are checked when the file is read, when `config set`
writes and when CLI flags are merged, and a bad one is rejected with its key and the reason."""

from __future__ import annotations

import argparse
import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from anechat.errors import AnechatError, UsageError
from anechat.settings import BY_DEST, SAMPLING_KEYS, SCHEMA


class ConfigError(AnechatError):
    """The config file cannot be read or holds an invalid value."""


class Settings:
    """The values the settings file sets (or a layer of them: see merged); unset keys read as None."""

    def __init__(self, **values: Any) -> None:
        unknown = set(values) - set(SCHEMA)
        if unknown:
            raise TypeError(f"unknown settings: {', '.join(sorted(unknown))}")
        self._values = {k: values[k] for k in SCHEMA if values.get(k) is not None}

    def __getattr__(self, name: str) -> Any:
        if name in SCHEMA:
            return self._values.get(name)
        raise AttributeError(name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Settings) and self._values == other._values

    def __repr__(self) -> str:
        return f"Settings({', '.join(f'{k}={v!r}' for k, v in self._values.items())})"

    def replace(self, **changes: Any) -> Settings:
        """A copy with `changes` applied (None unsets a key)."""
        return Settings(**{**self._values, **changes})

    @classmethod
    def load(cls, path: Path | str | None = None) -> Settings:
        """The settings in the file; none when it does not exist."""
        from anechat import yamlfile

        path = _path(path)
        text = yamlfile.read_text(path, ConfigError)
        if text is None:
            return cls()
        data = yamlfile.parse(text, path, ConfigError)
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected `key: value` lines, found a {type(data).__name__}")
        return cls._from_mapping(data, lambda key, why: ConfigError(f"{path}: {key}: {why}"))

    @classmethod
    def _from_mapping(cls, data: Mapping[str, Any], error: Callable[[str, str], AnechatError]) -> Settings:
        values = {}
        for key, value in data.items():
            if key not in SCHEMA:
                raise error(str(key), f"unknown key (known: {', '.join(SCHEMA)})")
            if value is not None:
                try:
                    values[key] = SCHEMA[key].check(value)
                except ValueError as e:
                    raise error(key, str(e)) from None
        return cls(**values)

    def save(self, path: Path | str | None = None) -> Path:
        """Write the set keys (all of the file's content), atomically."""
        import yaml

        path = _path(path)
        text = "# anechat settings (anechat config set KEY VALUE; CLI flags override these)\n"
        if self._values:
            text += yaml.safe_dump(self._values, sort_keys=False, allow_unicode=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)
        except OSError as e:
            with contextlib.suppress(OSError):  # the cleanup of a failed write must not fail again
                tmp.unlink(missing_ok=True)
            raise ConfigError(f"cannot write {path}: {e.strerror or e}") from None
        return path

    def as_dict(self, only_set: bool = False) -> dict[str, Any]:
        return dict(self._values) if only_set else {k: self._values.get(k) for k in SCHEMA}

    def merged(self, cli_args: argparse.Namespace | Mapping[str, Any]) -> Settings:
        """CLI values (argparse dests: model, system, temperature, top_p, ...) override the file's; None
        means the flag was not given."""
        return self.replace(**flag_values(cli_args).as_dict(only_set=True))

    def sampling(self) -> dict[str, Any]:
        """The set sampling keys, as keyword arguments for SamplingParams.merged()."""
        return {k: v for k, v in self._values.items() if k in SAMPLING_KEYS}


def flag_values(cli_args: argparse.Namespace | Mapping[str, Any]) -> Settings:
    """The settings given as command-line flags, checked (a bad one is a usage error naming the flag)."""
    given = vars(cli_args) if isinstance(cli_args, argparse.Namespace) else dict(cli_args)
    overrides = {BY_DEST[k].name: v for k, v in given.items() if v is not None and k in BY_DEST}
    flag = {s.name: s.flags[-1] for s in SCHEMA.values() if s.flags}
    return Settings._from_mapping(overrides, lambda key, why: UsageError(f"{flag.get(key, key)}: {why}"))


@dataclass(frozen=True)
class Effective:
    value: Any
    origin: str  # "default", "registry", "config file" or "flag"


def effective(file: Settings, flags: Settings, defaults: Mapping[str, Effective] | None = None) -> dict[str, Effective]:
    """Every key's value in force and where it comes from: a flag over the file over the default.
    `defaults` replaces built-in defaults that only a higher layer knows (the registry's default model)."""
    out = {}
    for key, setting in SCHEMA.items():
        if getattr(flags, key) is not None:
            out[key] = Effective(getattr(flags, key), "flag")
        elif getattr(file, key) is not None:
            out[key] = Effective(getattr(file, key), "config file")
        else:
            out[key] = (defaults or {}).get(key) or Effective(setting.default, "default")
    return out


def save_setting(key: str, value: Any) -> Path:
    """Set (None: unset) one key in the settings file, keeping the others."""
    return Settings.load().replace(**{key: value}).save()


def _path(path: Path | str | None) -> Path:
    from anechat.paths import config_file

    return Path(path) if path is not None else config_file()
