"""User settings: a YAML file at paths.config_file(), overridden by CLI flags; `anechat config ...`.

Every key is optional; an unset sampling key leaves the engine's default in force. Values are checked
when the file is read, when `config set` writes, and when CLI flags are merged, and a bad one is
rejected with its key and the reason."""

from __future__ import annotations

import argparse
import json
import os
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping

from anechat.errors import AnechatError, UsageError


class ConfigError(AnechatError):
    """The config file cannot be read or holds an invalid value."""


_THEME = re.compile(r"[a-z0-9][a-z0-9_-]*")


@dataclass(frozen=True)
class _Rule:
    type: type
    ok: Callable[[Any], bool]
    why: str


RULES: dict[str, _Rule] = {
    "default_model": _Rule(str, lambda v: bool(v.strip()), "must not be empty"),
    "system_prompt": _Rule(str, lambda v: True, ""),
    "theme": _Rule(str, lambda v: bool(_THEME.fullmatch(v)), "must be a theme name (lowercase, digits, - or _)"),
    "temperature": _Rule(float, lambda v: 0 <= v <= 10, "must be in [0, 10] (0 = greedy)"),
    "top_p": _Rule(float, lambda v: 0 < v <= 1, "must be in (0, 1]"),
    "top_k": _Rule(int, lambda v: v >= 0, "must be ≥ 0 (0 = off)"),
    "min_p": _Rule(float, lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "repeat_penalty": _Rule(float, lambda v: v > 0, "must be > 0 (1 = off)"),
    "seed": _Rule(int, lambda v: 0 <= v < 2**32, "must be in [0, 2**32)"),
    "max_tokens": _Rule(int, lambda v: v >= 1, "must be ≥ 1"),
}
SAMPLING_KEYS = ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "seed", "max_tokens")
# CLI flag destinations that carry a different name in the file.
CLI_NAMES = {"model": "default_model", "system": "system_prompt"}


_TYPE_NAMES = {float: "a number", int: "an integer", str: "text"}


def check_value(key: str, value: Any) -> Any:
    """The value in its canonical type, or ValueError with the reason (without the key)."""
    rule = RULES[key]
    # YAML's true/false are ints to Python; no setting here is a boolean.
    if isinstance(value, bool) or not isinstance(value, (int, float) if rule.type is float else rule.type):
        raise ValueError(f"must be {_TYPE_NAMES[rule.type]} (got {value!r})")
    value = rule.type(value)
    if not rule.ok(value):
        raise ValueError(f"{rule.why} (got {value!r})")
    return value


def parse_value(key: str, text: str) -> Any:
    """A value typed on the command line, converted by the key's type and checked."""
    if key not in RULES:
        raise UsageError(f"config: unknown key {key!r} (known: {', '.join(RULES)})")
    rule = RULES[key]
    try:
        value = rule.type(text) if rule.type is not str else text
    except ValueError:
        raise UsageError(f"config: {key}: must be {_TYPE_NAMES[rule.type]} (got {text!r})") from None
    try:
        return check_value(key, value)
    except ValueError as e:
        raise UsageError(f"config: {key}: {e}") from None


@dataclass(frozen=True)
class Settings:
    default_model: str | None = None
    system_prompt: str | None = None
    theme: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repeat_penalty: float | None = None
    seed: int | None = None
    max_tokens: int | None = None

    @classmethod
    def load(cls, path: Path | str | None = None) -> "Settings":
        """The settings in the file; defaults when it does not exist."""
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
    def _from_mapping(cls, data: Mapping[str, Any], error: Callable[[str, str], AnechatError]) -> "Settings":
        values = {}
        for key, value in data.items():
            if key not in RULES:
                raise error(str(key), f"unknown key (known: {', '.join(RULES)})")
            if value is not None:
                try:
                    values[key] = check_value(key, value)
                except ValueError as e:
                    raise error(key, str(e)) from None
        return cls(**values)

    def save(self, path: Path | str | None = None) -> Path:
        """Write the set keys (all of the file's content), atomically."""
        import yaml

        path = _path(path)
        values = self.as_dict(only_set=True)
        text = "# anechat settings (anechat config set KEY VALUE; CLI flags override these)\n"
        if values:
            text += yaml.safe_dump(values, sort_keys=False, allow_unicode=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise ConfigError(f"cannot write {path}: {e.strerror or e}") from None
        return path

    def as_dict(self, only_set: bool = False) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None or not only_set}

    def merged(self, cli_args: argparse.Namespace | Mapping[str, Any]) -> "Settings":
        """CLI values (argparse dests: model, system, temperature, top_p, ...) override the file's; None
        means the flag was not given."""
        given = vars(cli_args) if isinstance(cli_args, argparse.Namespace) else dict(cli_args)
        overrides = {CLI_NAMES.get(k, k): v for k, v in given.items() if v is not None}
        overrides = {k: v for k, v in overrides.items() if k in RULES}
        flag = {v: k for k, v in CLI_NAMES.items()}
        checked = self._from_mapping(
            overrides, lambda key, why: UsageError(f"--{flag.get(key, key).replace('_', '-')}: {why}"))
        return replace(self, **checked.as_dict(only_set=True))

    def sampling(self) -> dict[str, Any]:
        """The set sampling keys, as keyword arguments for SamplingParams.merged()."""
        return {k: getattr(self, k) for k in SAMPLING_KEYS if getattr(self, k) is not None}


def _path(path: Path | str | None) -> Path:
    from anechat.paths import config_file

    return Path(path) if path is not None else config_file()


# -- `anechat config ...` -------------------------------------------------------------------------------


def add_config_parser(subparsers) -> None:
    p = subparsers.add_parser("config", help="show or change settings (default model, sampling, theme)",
                              description=__doc__)
    sub = p.add_subparsers(dest="config_command", required=True, metavar="COMMAND")
    show = sub.add_parser("show", help="print every setting (null = not set)")
    show.add_argument("--json", action="store_true", help="print a JSON object")
    show.set_defaults(func=run_show)
    sub.add_parser("path", help="print the config file's path").set_defaults(func=run_path)
    set_ = sub.add_parser("set", help="set one key", description="keys: " + ", ".join(RULES))
    set_.add_argument("key", choices=list(RULES), metavar="KEY")
    set_.add_argument("value", metavar="VALUE")
    set_.set_defaults(func=run_set)
    unset = sub.add_parser("unset", help="remove one key (back to the built-in default)")
    unset.add_argument("key", choices=list(RULES), metavar="KEY")
    unset.set_defaults(func=run_unset)


def run_show(args: argparse.Namespace) -> int:
    values = Settings.load().as_dict()
    if args.json:
        print(json.dumps(values, ensure_ascii=False, indent=2))
    else:
        import yaml

        print(yaml.safe_dump(values, sort_keys=False, allow_unicode=True), end="")
    return 0


def run_path(args: argparse.Namespace) -> int:
    print(_path(None))
    return 0


def run_set(args: argparse.Namespace) -> int:
    value = parse_value(args.key, args.value)
    path = replace(Settings.load(), **{args.key: value}).save()
    print(f"{args.key} = {value!r} in {path}")
    return 0


def run_unset(args: argparse.Namespace) -> int:
    path = replace(Settings.load(), **{args.key: None}).save()
    print(f"{args.key} unset in {path}")
    return 0
