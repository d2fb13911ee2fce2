"""`anechat inspect --ane DIR`: will this model load and run well on the Neural Engine of a Mac or an iPhone?

Checked per part, from the files alone: the largest tensor dimension against the ANE's 16,384 limit, weight
bytes against Core ML's load limits, the ops used and those Core ML is known to run elsewhere. Run on a
calibration text in the portable runtime with every op rounded to fp16 as the ANE computes: the largest
|activation| per decoder layer against fp16's 65,504. And an estimate of decode speed per chip."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from anechat.runtime.anechecks import IOS_WEIGHTS_WARN, MACOS_WEIGHTS, PartChecks, check_part, summary

ANE_MAX_DIM = 16384
FP16_MAX = 65504.0
GB = 1 << 30
# Model files above these fail to load on the device even though they convert fine (ANEMLL issue #28); iOS is
# held to 950 MB, a margin under its ~1 GB (anechecks' `weights` check).
LOAD_LIMITS = {"iOS": IOS_WEIGHTS_WARN, "macOS": MACOS_WEIGHTS}
# ANE memory bandwidth (GB/s) that ANEMLL's anemll-bench measured per chip.
ANE_BANDWIDTH = {"M1": 60.9, "M2": 60.5, "M3": 63.1, "M3 Max": 120.2, "M4": 64.2, "M4 Pro": 126.4, "M4 Max": 118.9, "M5": 70.2}
# Apple publishes no list of the ops the ANE runs. These are the MIL ops that public field reports
# (hollance/neural-engine "unsupported layers", ANEMLL keeping argmax and embeddings out of its FFN chunks)
# find Core ML placing on the CPU or GPU; Xcode's Core ML performance report is the authority on a device.
OFF_ANE_OPS = {
    "gather": "a lookup in a table this large (embeddings) usually runs on the CPU",
    "gather_along_axis": "gathers usually run on the CPU",
    "reduce_argmax": "integer result: runs on the CPU",
    "topk": "runs on the CPU",
    "argsort": "runs on the CPU",
    "non_maximum_suppression": "runs on the CPU",
    "lstm": "recurrent layers are not supported by the ANE",
    "gru": "recurrent layers are not supported by the ANE",
    "rnn": "recurrent layers are not supported by the ANE",
}
OFF_ANE_BASIS = "public field reports (hollance/neural-engine, ANEMLL); confirm with Xcode's Core ML performance report"


@dataclass
class PartReport:
    role: str
    path: str
    weight_bytes: int
    max_dim: int
    max_dim_at: str
    flexible_inputs: list[str]
    ops: dict[str, int]
    off_ane: dict[str, str]
    checks: PartChecks | None = None  # Core ML's known failures (anechat.runtime.anechecks)

    @property
    def on_cpu_anyway(self) -> bool:
        """The embeddings part: one table lookup for 1 or a batch of tokens, flexible in ANEMLL too and cheap
        wherever Core ML runs it; a flexible chunk or lm_head would be a problem."""
        return self.role == "embeddings"

    def problems(self) -> list[str]:
        """Known failures every Neural Engine meets (tensor dimensions and weight sizes among them), and flexible
        shapes where they keep a part off the ANE."""
        if self.checks:
            out = summary([self.checks])[0]
        else:  # a part whose program was not checked: its size and dimensions still count
            out = [f"{self.role}: a tensor dimension of {self.max_dim} ({self.max_dim_at}) exceeds the ANE's {ANE_MAX_DIM}"
                   ] if self.max_dim > ANE_MAX_DIM else []
            out += [f"{self.role}: {self.weight_bytes / 1e6:,.0f} MB of weights is over the {limit / 1e6:,.0f} MB {system} load limit"
                    for system, limit in LOAD_LIMITS.items() if self.weight_bytes > limit]
        if self.flexible_inputs and not self.on_cpu_anyway:
            out.append(f"{self.role}: flexible input shapes ({', '.join(self.flexible_inputs)}) keep it off the ANE")
        return out

    def warnings(self) -> list[str]:
        """Known failures of some chips, OS versions or coremltools builds only."""
        return summary([self.checks])[1] if self.checks else []


@dataclass
class Readiness:
    name: str
    parts: list[PartReport]
    bytes_per_token: int
    calls_per_token: int
    layer_max: list[float] = field(default_factory=list)  # largest |activation| per decoder layer (strict fp16)
    activation_tokens: int = 0

    def warnings(self) -> list[str]:
        return [w for part in self.parts for w in part.warnings()]

    def problems(self) -> list[str]:
        out = [p for part in self.parts for p in part.problems()]
        for i, m in enumerate(self.layer_max):
            if not np.isfinite(m) or m > FP16_MAX:
                out.append(f"layer {i}: activations overflow fp16 (|x| {'inf' if not np.isfinite(m) else f'{m:,.0f}'} > {FP16_MAX:,.0f})")
        return out

    @property
    def ok(self) -> bool:
        return not self.problems()

    def decode_estimates(self) -> dict[str, float]:
        """tok/s if decoding were bound by reading every weight once per token at the ANE's bandwidth."""
        return {chip: bw * 1e9 / max(self.bytes_per_token, 1) for chip, bw in ANE_BANDWIDTH.items()}

    def format(self) -> str:
        lines = [f"ANE readiness of {self.name}"]
        for p in self.parts:
            limits = ", ".join(f"{'ok' if p.weight_bytes <= lim else 'OVER'} for {sys} ({lim / 1e6:,.0f} MB)" for sys, lim in LOAD_LIMITS.items())
            lines.append(f"  {p.role}: {p.path}")
            lines.append(f"    weights {p.weight_bytes / 1e6:.1f} MB: {limits}")
            verdict = "ok" if p.max_dim <= ANE_MAX_DIM else "OVER"
            lines.append(f"    largest tensor dimension {p.max_dim} ({p.max_dim_at}): {verdict} (ANE limit {ANE_MAX_DIM})")
            lines.append("    ops: " + ", ".join(f"{k} {v}" for k, v in sorted(p.ops.items(), key=lambda kv: -kv[1])))
            for op, why in p.off_ane.items():
                lines.append(f"    likely off the ANE: {op} ({why})")
            if p.flexible_inputs:
                why = ("fine for the embeddings (a cheap lookup, flexible in ANEMLL too)" if p.on_cpu_anyway
                       else "the ANE needs fixed shapes, so this part runs elsewhere")
                lines.append(f"    flexible input shapes ({', '.join(p.flexible_inputs)}): {why}")
            if p.checks:
                lines += p.checks.format()
        lines.append(f"  (off-ANE op list: {OFF_ANE_BASIS})")
        if not self.layer_max:
            lines.append("  activation range: not measured here (`anechat inspect --ane DIR` runs the model in fp16 to measure it)")
        else:
            worst = int(np.argmax(np.nan_to_num(self.layer_max, nan=np.inf)))
            shown = ", ".join(f"{m:,.0f}" if np.isfinite(m) else "inf" for m in self.layer_max)
            lines.append(
                f"  largest |activation| per layer, every op rounded to fp16, {self.activation_tokens} calibration tokens: "
                f"{shown} (max at layer {worst}; fp16 limit {FP16_MAX:,.0f})"
            )
        est = self.decode_estimates()
        lines.append(
            f"  estimated decode (an estimate: weight bytes per token {self.bytes_per_token / 1e6:.1f} MB over the ANE bandwidth "
            f"anemll-bench measured; {self.calls_per_token} predict calls per token add their dispatch time on top):"
        )
        lines.append("    " + ", ".join(f"{chip} {v:.0f} tok/s" for chip, v in est.items()))
        problems, warnings = self.problems(), self.warnings()
        verdict = "ready" if not problems else "NOT READY: " + "; ".join(problems)
        if warnings:
            verdict += f" ({len(warnings)} warning{'s' * (len(warnings) > 1)} for some devices: " + "; ".join(warnings) + ")"
        lines.append("  verdict: " + verdict)
        return "\n".join(lines)


def _part_report(role: str, path: Path) -> PartReport:
    from anechat.inspect import weights_bytes
    from anechat.runtime.milexec.backend import read_program

    program = read_program(path)
    ops: Counter = Counter()
    off: dict[str, str] = {}
    max_dim, max_at = 0, ""
    flexible: set[str] = set()
    for fn in program.functions.values():
        flexible.update(n for n, t in fn.inputs.items() if any(d is None for d in t.shape))
        types = {n: t for op in fn.ops for n, t in zip(op.outputs, op.output_types)}
        for op in fn.ops:
            if op.type == "const":
                continue
            ops[op.type] += 1
            if op.type in OFF_ANE_OPS and (op.type != "gather" or _rows(op, types) > ANE_MAX_DIM):
                off[op.type] = OFF_ANE_OPS[op.type]
            for name, t in zip(op.outputs, op.output_types):
                dims = [d for d in (t.shape if t is not None else ()) if d is not None]
                if dims and max(dims) > max_dim and not op.type.startswith("constexpr_"):
                    max_dim, max_at = max(dims), f"{op.type} {name}"
    return PartReport(role, path.name, weights_bytes(path), max_dim, max_at, sorted(flexible), dict(ops), off, check_part(role, path, program))


def _rows(op, types: dict) -> int:
    """Rows of the table a gather reads (small ones, such as rope tables, are not the ANE's concern)."""
    table = op.inputs.get("x")
    t = types.get(getattr(table, "name", None))
    return int(t.shape[0] or 0) if t is not None and t.shape else 0


def _bytes_per_token(md, parts: list[PartReport]) -> int:
    """Every weight is read once per decoded token, except the embedding table: one row of it."""
    total = 0
    for p in parts:
        if p.role == "embeddings":
            total += p.weight_bytes // max(md.vocab_size or 1, 1)
        else:
            total += p.weight_bytes
    return total


def layer_activation_max(model_dir: Path, ids: list[int]) -> list[float]:
    """Largest |value| any op produces in each decoder layer while the model prefills `ids`, every op
    rounded to fp16 (the portable runtime's --strict-fp16). A layer's ops run from its K/V cache write to
    the next layer's (the residual stream, its attention and its MLP); the lm_head and embeddings are out."""
    from anechat.engine.lm import LanguageModel
    from anechat.runtime.modeldir import open_model_dir
    from anechat.runtime.portable import PortableBackend

    lm = LanguageModel(open_model_dir(model_dir), PortableBackend(strict_fp16=True))
    found: dict[int, float] = {}
    offset = 0
    forward = lm.forward
    for part in getattr(forward, "prefill_parts", None) or [getattr(forward, "prefill_part", None)]:
        plan, writes = part.plan, 0
        for n, (f, ins, outs) in enumerate(plan.steps):
            if plan.step_types[n] == "slice_update":
                writes += 1
            elif writes:  # before a part's first K/V write: its input (and the embedding lookup)
                plan.steps[n] = (_observing(f, found, offset + (writes - 1) // 2), ins, outs)
        offset += writes // 2
    lm.prefill(ids)
    return [found.get(i, 0.0) for i in range(max(found, default=-1) + 1)]


def _observing(f, found: dict[int, float], layer: int):
    """f, recording the largest finite |output| of the layer, or inf when f makes an infinity of finite
    inputs (an overflow; the causal mask's -inf and what it flows into are not)."""

    def floats(values):
        return [v for v in values if isinstance(v, np.ndarray) and v.dtype.kind == "f" and v.size]

    def observed(*args):
        out = f(*args)
        outs = floats(out if isinstance(out, tuple) else (out,))
        if outs:
            finite = [np.abs(o[np.isfinite(o)]) for o in outs]
            m = max((float(v.max()) for v in finite if v.size), default=0.0)
            if any(v.size < o.size for v, o in zip(finite, outs)) and all(np.isfinite(a).all() for a in floats(args)):
                m = float("inf")
            found[layer] = max(found.get(layer, 0.0), m)
        return out

    return observed


def ane_readiness(model_dir: Path, activations: bool = True, max_tokens: int = 128) -> Readiness:
    from anechat.runtime.modeldir import open_model_dir

    md = open_model_dir(model_dir)
    parts = [_part_report(role, path) for role, path in md.parts()]
    calls = 1 if md.monolithic is not None else len(md.chunks) + 2
    report = Readiness(md.name, parts, _bytes_per_token(md, parts), calls)
    if activations:
        from anechat.convert.calibrate import CALIBRATION_TEXT
        from anechat.engine.tokenizer import ChatTokenizer

        ids = ChatTokenizer.from_dir(model_dir).encode(CALIBRATION_TEXT)[: min(max_tokens, md.context_length)]
        report.layer_max = layer_activation_max(model_dir, ids)
        report.activation_tokens = len(ids)
    return report


def readiness_json(r: Readiness) -> dict[str, Any]:
    return {
        "name": r.name,
        "parts": [{**{k: v for k, v in p.__dict__.items() if k != "checks"}, "checks": p.checks.as_dict()["checks"] if p.checks else []} for p in r.parts],
        "bytes_per_token": r.bytes_per_token,
        "calls_per_token": r.calls_per_token,
        "layer_max_abs_activation": [m if np.isfinite(m) else "inf" for m in r.layer_max],
        "activation_tokens": r.activation_tokens,
        "estimated_decode_tok_s": r.decode_estimates(),
        "off_ane_basis": OFF_ANE_BASIS,
        "problems": r.problems(),
        "warnings": r.warnings(),
        "ready": r.ok,
    }
