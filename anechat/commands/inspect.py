"""`anechat inspect MODEL_DIR`: parts, functions, IO, states, op histogram, weight bytes, compression;
with --ane, whether it will load and run well on the Neural Engine."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("inspect", help="show what is inside a model directory", description=__doc__)
    p.add_argument("model_dir", help="ANEMLL-layout model directory")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--ane",
        action="store_true",
        help="ANE readiness: tensor dimensions, load limits, ops off the ANE, fp16 activation range on a "
        "calibration text, estimated decode speed per chip (exit 1 when not ready)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.ane:
        from anechat.readiness import ane_readiness, readiness_json

        report = ane_readiness(Path(args.model_dir))
        print(json.dumps(readiness_json(report), indent=2) if args.json else report.format())
        return 0 if report.ok else 1
    from anechat.inspect import format_report, inspect_model_dir

    info = inspect_model_dir(Path(args.model_dir))
    print(json.dumps(info, indent=2) if args.json else format_report(info))
    return 0
