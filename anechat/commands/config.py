"""`anechat config show|path|set|unset`: the settings file, and the value of every setting in force."""

from __future__ import annotations

import argparse
import json

from anechat.config import Effective, Settings, effective, flag_values, save_setting
from anechat.errors import UsageError
from anechat.settings import SCHEMA


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("config", help="show or change settings (default model, sampling, theme)",
                              description=__doc__)
    sub = p.add_subparsers(dest="config_command", required=True, metavar="COMMAND")
    show = sub.add_parser("show", help="every setting's value in force and where it comes from",
                          description="Every setting's value in force and its origin (default, registry, config "
                                      "file, flag); give the flags you would give `anechat` to see their effect.")
    show.add_argument("--json", action="store_true", help="print a JSON object")
    for setting in SCHEMA.values():
        if setting.flags:
            setting.add_flag(show)
    show.set_defaults(func=run_show)
    sub.add_parser("path", help="print the config file's path").set_defaults(func=run_path)
    keys = "keys: " + ", ".join(f"{k} ({s.help})" for k, s in SCHEMA.items())
    set_ = sub.add_parser("set", help="set one key", description=keys)
    set_.add_argument("key", choices=list(SCHEMA), metavar="KEY")
    set_.add_argument("value", metavar="VALUE")
    set_.set_defaults(func=run_set)
    unset = sub.add_parser("unset", help="remove one key (back to the built-in default)")
    unset.add_argument("key", choices=list(SCHEMA), metavar="KEY")
    unset.set_defaults(func=run_unset)


UNSET = {"system_prompt": "none (the model's own default)", "seed": "none (a new random seed for each answer)",
         "default_model": "none (give -m NAME or --model-dir DIR)"}


def registry_default() -> dict[str, Effective]:
    from anechat.models.registry import load_registry

    name = load_registry().default
    return {"default_model": Effective(name, "registry")} if name else {}


def model_defaults(name: str | None) -> dict[str, Effective]:
    """The sampling model `name` recommends (its installed generation_config.json, or the registry's values
    for a model not installed yet), as the layer under the settings file."""
    from pathlib import Path

    from anechat.engine.loader import generation_defaults
    from anechat.models import store
    from anechat.models.registry import load_registry
    from anechat.settings import generation_defaults as parse

    if not name:
        return {}
    installed = store.installed()
    if name in installed:
        values = generation_defaults(installed[name].path)
    elif Path(name).expanduser().is_dir():
        values = generation_defaults(Path(name).expanduser())
    else:
        entry = load_registry().entries.get(name)
        values = parse(entry.generation) if entry is not None else {}
    return {k: Effective(v, f"model {Path(name).name}") for k, v in values.items()}


def run_show(args: argparse.Namespace) -> int:
    file, flags = Settings.load(), flag_values(args)
    model = flags.default_model or file.default_model or registry_default().get("default_model", Effective(None, "")).value
    values = effective(file, flags, {**registry_default(), **model_defaults(model)})
    if args.json:
        print(json.dumps({k: {"value": e.value, "origin": e.origin} for k, e in values.items()}, ensure_ascii=False,
                         indent=2))
        return 0
    # YAML with the origin as a comment: readable, and still loads as `key: value`.
    # A setting nothing sets is a comment saying what that means, not a `null`.
    shown = {k: json.dumps(e.value, ensure_ascii=False) if e.value is not None else f"# {k}: {UNSET.get(k, 'not set')}"
             for k, e in values.items()}
    lines = {k: text if text.startswith("#") else f"{k}: {text}" for k, text in shown.items()}
    width = max(len(line) for line in lines.values())
    for key, line in lines.items():
        print(f"{line:<{width}}  # {values[key].origin}")
    return 0


def run_path(args: argparse.Namespace) -> int:
    from anechat.paths import config_file

    print(config_file())
    return 0


def run_set(args: argparse.Namespace) -> int:
    try:
        value = SCHEMA[args.key].parse(args.value)
    except ValueError as e:
        raise UsageError(f"config: {args.key}: {e}") from None
    path = save_setting(args.key, value)
    print(f"{args.key} = {value!r} in {path}")
    return 0


def run_unset(args: argparse.Namespace) -> int:
    path = save_setting(args.key, None)
    print(f"{args.key} unset in {path}")
    return 0
