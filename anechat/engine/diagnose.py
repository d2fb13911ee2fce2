"""What `anechat doctor` measures: can this machine run a model on Core ML, and does Core ML answer as the
portable runtime does? Returns plain data; the command formats it."""

from __future__ import annotations

import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from anechat.errors import AnechatError, ModelLoadError, WrongOutput
from anechat.paths import dir_size

# Teacher-forced text: ordinary prose, so the top-1 margins are those of real use.
TEXT = (
    "The Neural Engine is a part of Apple's chips built for the matrix arithmetic of neural networks. "
    "A language model split into chunks runs on it one token at a time: each chunk reads the keys and "
    "values it stored for earlier tokens, adds its own, and hands its hidden state to the next chunk. "
    "Paris is the capital of France, and the Seine flows through it on its way to the sea."
)
# Where the portable runtime is this sure of its top-1 (logit margin), Core ML's fp16 must agree.
SURE_MARGIN = 1.0
MIN_AGREEMENT = 0.9
# The first-run check of a model with per-block int8 weights: enough positions that one low-margin flip stays
# above MIN_AGREEMENT, few enough to cost a second or two once.
PROBE_TOKENS = 16


@dataclass
class Report:
    system: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    portable: dict[str, Any] = field(default_factory=dict)
    coreml: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    failures: list[type[AnechatError]] = field(default_factory=list)  # what kind of failure each problem is

    def fail(self, message: str, error: type[AnechatError] = AnechatError) -> None:
        self.problems.append(message)
        self.failures.append(error)

    def as_dict(self) -> dict[str, Any]:
        return {"system": self.system, "model": self.model, "portable": self.portable, "coreml": self.coreml,
                "problems": self.problems, "ok": not self.problems}


def system_facts() -> dict[str, Any]:
    from anechat import __version__
    from anechat.runtime.coreml import coreml_unavailable_reason, has_neural_engine

    try:
        import coremltools

        ct_version = coremltools.__version__
    except Exception:  # noqa: BLE001 — reported, not fatal
        ct_version = None
    return {
        "anechat": __version__,
        "python": platform.python_version(),
        "platform": sys.platform,
        "macos": platform.mac_ver()[0] or None,
        "machine": platform.machine(),
        "coremltools": ct_version,
        "neural_engine": has_neural_engine(),
        "coreml_unavailable": coreml_unavailable_reason(),
    }


def teacher_forced(lm, ids: list[int]) -> np.ndarray:
    """Logits after each token, fed one at a time through `infer` (the path every decoded token takes)."""
    lm.reset()
    return np.stack([lm.step(t) for t in ids])


def decode_rate(lm, tokens: int) -> float:
    lm.reset()
    token = int(np.argmax(lm.prefill([0])))
    t = time.perf_counter()
    for _ in range(tokens):
        token = int(np.argmax(lm.step(token)))
    return tokens / (time.perf_counter() - t)


def agreement(reference: np.ndarray, other: np.ndarray) -> dict[str, Any]:
    top_ref, top_other = reference.argmax(-1), other.argmax(-1)
    ordered = np.sort(reference, axis=-1)
    margin = ordered[:, -1] - ordered[:, -2]
    same = top_ref == top_other
    finite = np.isfinite(reference) & np.isfinite(other)
    return {
        "positions": int(len(same)),
        "top1": round(float(same.mean()), 4),
        "top1_where_sure": round(float(same[margin > SURE_MARGIN].mean()), 4) if (margin > SURE_MARGIN).any() else None,
        "disagree_where_sure": int((~same & (margin > SURE_MARGIN)).sum()),
        "max_abs_logit_diff": round(float(np.abs(reference[finite] - other[finite]).max()), 4) if finite.any() else None,
    }


def disagrees(a: dict[str, Any]) -> bool:
    """Doctor's rule: Core ML differs from the portable runtime where the portable top-1 is sure, or too often."""
    return bool(a["disagree_where_sure"]) or a["top1"] < MIN_AGREEMENT


def probe_agreement(md, lm, tokens: int = PROBE_TOKENS) -> dict[str, Any]:
    """A short teacher-forced comparison of `lm` with the portable runtime of the same files: the logits after
    each token through `infer`, then the prefill functions' logits after the same tokens."""
    from anechat.engine.lm import LanguageModel
    from anechat.engine.tokenizer import ChatTokenizer
    from anechat.runtime.portable import PortableBackend

    ids = ChatTokenizer.from_dir(md.path).encode(TEXT)[: max(2, min(tokens, md.context_length - 2))]
    rows = []
    for model in (LanguageModel(md, PortableBackend()), lm):
        forced = teacher_forced(model, ids)
        model.reset()
        rows.append(np.vstack([forced, model.prefill(ids)[None, :]]))
        model.reset()
    return agreement(rows[0], rows[1])


def _load(md, backend) -> tuple[Any, float, float]:
    from anechat.engine.lm import LanguageModel

    t = time.perf_counter()
    lm = LanguageModel(md, backend)
    loaded = time.perf_counter() - t
    t = time.perf_counter()
    lm.warm_up()
    return lm, loaded, time.perf_counter() - t


def _placement(md, backend) -> dict[str, Any]:
    from anechat.runtime.coreml import compute_plan

    parts, ops, ane_ops, cost, ane_cost = [], 0, 0, 0.0, 0.0
    functions = ["infer", "prefill"]
    for role, path in md.parts():
        for fn in functions if role.startswith("chunk") or role == "monolithic" else [None]:
            plan = compute_plan(backend.compiled_path(path), backend.compute_units, fn)
            op_share, cost_share = plan.share("ane")
            parts.append({"part": path.name, "function": fn, "ops": plan.ops, "ane_ops": round(op_share, 4), "ane_cost": round(cost_share, 4)})
            ops += plan.ops
            ane_ops += plan.ops_on.get("ane", 0)
            cost += sum(plan.cost_on.values())
            ane_cost += plan.cost_on.get("ane", 0.0)
    return {"parts": parts, "ane_ops": round(ane_ops / ops, 4) if ops else 0.0,
            "ane_cost": round(ane_cost / cost, 4) if cost else (round(ane_ops / ops, 4) if ops else 0.0)}


def ane_checks(path: Path) -> dict[str, list[str]]:
    """Core ML's known failures predicted from the programs (anechat.runtime.anechecks): shown, never fatal,
    since what a device does with the model is what the rest of the doctor measures."""
    from anechat.runtime.anechecks import check_model, summary

    failures, warnings = summary(check_model(path))
    return {"failures": failures, "warnings": warnings}


def diagnose(path: Path, *, compute_units: str | None = None, tokens: int = 32, decode_tokens: int = 16) -> Report:
    from anechat.engine.tokenizer import ChatTokenizer
    from anechat.runtime.modeldir import check_model_dir, open_model_dir
    from anechat.runtime.portable import PortableBackend

    report = Report(system=system_facts())
    md = open_model_dir(path)
    size = dir_size(Path(md.path))
    report.model = {"path": str(md.path), "name": md.name, "layout": "monolithic" if md.monolithic else "chunked",
                    "parts": len(md.parts()), "context": md.context_length, "batch": md.batch_size,
                    "size_mb": round(size / 1e6, 1), "structure": check_model_dir(md.path)}
    if report.model["structure"]:
        report.fail(f"model directory: {report.model['structure'][0]}", ModelLoadError)
        return report
    report.model["ane_checks"] = ane_checks(md.path)
    ids = ChatTokenizer.from_dir(md.path).encode(TEXT)[: max(2, min(tokens, md.context_length - decode_tokens - 2))]
    try:
        lm, load_s, warm_s = _load(md, PortableBackend())
        forced = teacher_forced(lm, ids)
        lm.reset()
        prefilled = lm.prefill(ids)
        report.portable = {
            "load_s": round(load_s, 3), "warm_up_s": round(warm_s, 3),
            # the prefill functions against the infer path on the same runtime
            "prefill_vs_infer": agreement(forced[-1:], prefilled[None, :]),
            "decode_tok_s": round(decode_rate(lm, decode_tokens), 2),
        }
    except AnechatError as e:
        report.fail(f"portable runtime: {e}", ModelLoadError)
        return report
    if report.portable["prefill_vs_infer"]["top1"] < 1.0:
        report.fail("portable runtime: the prefill functions and the infer path disagree")
    if report.system["coreml_unavailable"]:
        report.coreml = {"available": False, "reason": report.system["coreml_unavailable"]}
        return report
    _diagnose_coreml(report, md, ids, forced, compute_units, decode_tokens)
    return report


def _diagnose_coreml(report: Report, md, ids, forced, compute_units, decode_tokens) -> None:
    from anechat.runtime.coreml import CoreMLBackend

    backend = CoreMLBackend(compute_units=compute_units)
    out: dict[str, Any] = {"available": True, "compute_units": backend.compute_units, "label": backend.label}
    report.coreml = out
    try:
        from anechat.engine.coreml_probe import ensure_first_run_survives

        # a model that kills Core ML's process is reported, not fatal; the child compiles into the cache
        try:
            first_run = ensure_first_run_survives(md, backend)
        except WrongOutput as e:  # the first run's named cause; the comparison below still shows the numbers
            report.fail(f"Core ML: {e}", WrongOutput)
            first_run = None
        lm, load_s, warm_s = _load(md, backend)
        out.update(first_run_s=None if first_run is None else round(first_run, 3),
                   compiled_now=len(backend.compile_seconds), load_s=round(load_s, 3), warm_up_s=round(warm_s, 3))
        out["agreement"] = agreement(forced, teacher_forced(lm, ids))
        out["decode_tok_s"] = round(decode_rate(lm, decode_tokens), 2)
    except AnechatError as e:
        report.fail(f"Core ML: {e}", ModelLoadError)
        return
    try:
        out["placement"] = _placement(md, backend)
    except Exception as e:  # noqa: BLE001 — the plan is advice; a coremltools without it must not fail the doctor
        out["placement"] = {"error": f"{type(e).__name__}: {e}"}
    a = out["agreement"]
    if disagrees(a):
        report.fail(
            f"Core ML and the portable runtime disagree: top-1 {a['top1']:.1%} over {a['positions']} tokens, "
            f"{a['disagree_where_sure']} where the portable margin exceeds {SURE_MARGIN}")
    if backend.uses_neural_engine and isinstance(out["placement"].get("ane_cost"), float) and out["placement"]["ane_cost"] < 0.5:
        out["warning"] = "most of the work is planned off the Neural Engine"
