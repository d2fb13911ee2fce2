"""`anechat doctor`: can this machine run the model on Core ML, and does Core ML answer as the portable runtime
does? Compiles and loads every part, warms up, compares teacher-forced logits, measures decode speed and asks
Core ML where it runs the ops. Off a Mac: says why Core ML is unavailable and runs the portable checks."""

from __future__ import annotations

import argparse
import json


def add_parser(sub) -> None:
    from anechat.cli import add_model_arguments

    p = sub.add_parser("doctor", help="check that a model runs on Core ML (and the portable runtime) here", description=__doc__)
    add_model_arguments(p, runtime=False)
    p.add_argument("--compute-units", choices=("CPU_AND_NE", "ALL", "CPU_ONLY", "CPU_AND_GPU"), default=None,
                   help="Core ML compute units (default CPU_AND_NE)")
    p.add_argument("--tokens", type=int, default=32, help="teacher-forced tokens to compare (default 32)")
    p.add_argument("--json", action="store_true", help="print one JSON object (for a bug report)")
    p.set_defaults(func=run)


def _pct(x) -> str:
    return "-" if x is None else f"{x:.1%}"


def render(r: dict) -> list[str]:
    s, m, p, c = r["system"], r["model"], r["portable"], r["coreml"]
    where = f"macOS {s['macos']}" if s["macos"] else s["platform"]
    lines = [
        f"system     {where} {s['machine']}, Python {s['python']}, coremltools {s['coremltools'] or 'not installed'}, anechat {s['anechat']}",
        f"model      {m['name']}: {m['layout']}, {m['parts']} parts, context {m['context']}, batch {m['batch']}, {m['size_mb']:.0f} MB",
        f"           {m['path']}",
        "structure  " + ("ok" if not m["structure"] else f"{len(m['structure'])} problem(s): {m['structure'][0]}"),
    ]
    checks = m.get("ane_checks")
    if checks is not None:
        found = [("FAIL", x) for x in checks["failures"]] + [("warn", x) for x in checks["warnings"]]
        lines.append("ANE checks " + ("known Core ML failures: none predicted" if not found else
                                      f"{len(checks['failures'])} predicted failure(s), {len(checks['warnings'])} warning(s) "
                                      "(`anechat inspect --ane` says what to do)"))
        lines += [f"           {kind} {text}" for kind, text in found]
    if p:
        a = p["prefill_vs_infer"]
        lines.append(f"portable   loaded in {p['load_s']:.2f} s, warm-up {p['warm_up_s']:.2f} s; prefill vs infer: top-1 "
                     f"{'same' if a['top1'] == 1.0 else 'DIFFERENT'}, max |Δlogit| {a['max_abs_logit_diff']}; decode {p['decode_tok_s']:.1f} tok/s")
    if c and not c.get("available"):
        lines.append(f"Core ML    unavailable: {c['reason']} (portable checks only)")
    elif c:
        lines.append(f"Core ML    {c['label']} ({c['compute_units']})")
        if "load_s" in c:
            first = ("first run (compile, load, warm-up in a child process) "
                     f"{c['first_run_s']:.1f} s, then " if c["first_run_s"] is not None else "compiled copies cached, ")
            lines.append(f"           {first}loaded in {c['load_s']:.2f} s, warm-up {c['warm_up_s']:.2f} s")
        if "agreement" in c:
            a = c["agreement"]
            lines.append(f"agreement  {a['positions']} teacher-forced tokens vs portable: top-1 {_pct(a['top1'])} "
                         f"({_pct(a['top1_where_sure'])} where the portable margin > 1), max |Δlogit| {a['max_abs_logit_diff']}")
            lines.append(f"decode     Core ML {c['decode_tok_s']:.1f} tok/s · portable {p['decode_tok_s']:.1f} tok/s")
        plan = c.get("placement") or {}
        if "error" in plan:
            lines.append(f"placement  unknown: {plan['error']}")
        elif plan:
            lines.append(f"placement  Neural Engine: {_pct(plan['ane_ops'])} of ops, {_pct(plan['ane_cost'])} of estimated cost")
            for part in plan["parts"]:
                name = part["part"] + (f":{part['function']}" if part["function"] else "")
                lines.append(f"             {name:44s} {part['ops']:5d} ops  ANE {_pct(part['ane_ops']):>6} ops  {_pct(part['ane_cost']):>6} cost")
        if c.get("warning"):
            lines.append(f"warning    {c['warning']}")
    for problem in r["problems"]:
        lines.append(f"problem    {problem}")
    verdict = "ok" if r["ok"] else "FAILED"
    if r["ok"] and c and not c.get("available"):
        verdict = "ok (portable runtime only)"
    lines.append(f"verdict    {verdict}")
    return lines


def run(args: argparse.Namespace) -> int:
    from anechat.chat.model import ModelProvider, model_directory
    from anechat.commands.chat import say
    from anechat.engine.diagnose import diagnose
    from anechat.errors import UsageError, exit_code

    if args.tokens < 2:
        raise UsageError("--tokens must be at least 2")
    path = model_directory(args.model_dir) if args.model_dir else ModelProvider().resolve(args.model, say)
    report = diagnose(path, compute_units=args.compute_units, tokens=args.tokens)
    if args.json:
        print(json.dumps(report.as_dict(), indent=1))
    else:
        print("\n".join(render(report.as_dict())))
    return max((exit_code(e) for e in report.failures), default=0)
