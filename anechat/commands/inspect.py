"""`anechat inspect MODEL_DIR`: parts, functions, IO, states, op histogram, weight bytes, compression."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("inspect", help="show what is inside a model directory", description=__doc__)
    p.add_argument("model_dir", help="ANEMLL-layout model directory")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from anechat.inspect import format_report, inspect_model_dir

    info = inspect_model_dir(Path(args.model_dir))
    print(json.dumps(info, indent=2) if args.json else format_report(info))
    return 0
