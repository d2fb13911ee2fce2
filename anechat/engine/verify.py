"""`anechat convert --verify`: run the converted chunks in the portable runtime next to the plain numpy
reference forward pass of the same weights, and report how closely they agree. It lives with the engine,
above the converter, because it runs the result as the engine would (its LM and its tokenizer)."""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from anechat.arch.reference import SAMPLE_TEXT

MIN_TOP1 = 0.95


FP16_MAX = 65504.0


@dataclass
class VerifyReport:
    tokens: int
    top1_agreement: float
    max_logit_error: float
    logit_scale: float
    prefill_max_error: float
    kl: float = 0.0  # mean KL(reference ‖ model) of the next-token distributions, nats
    # the same tokens with every op rounded to fp16, as on the ANE
    strict_top1_agreement: float = 1.0
    strict_finite: bool = True
    # largest |residual stream| after each layer as the converted graph holds it (reference peak × fp16 scale)
    peaks: list[float] = field(default_factory=list)

    @property
    def overflows(self) -> list[int]:
        return [i for i, p in enumerate(self.peaks) if p >= FP16_MAX]

    @property
    def ok(self) -> bool:
        return (self.top1_agreement >= MIN_TOP1 and self.strict_top1_agreement >= MIN_TOP1 and self.strict_finite
                and not self.overflows)

    def format(self) -> str:
        problems = []
        if self.top1_agreement < MIN_TOP1:
            problems.append(f"top-1 agreement below {MIN_TOP1:.0%}")
        if not self.strict_finite:
            problems.append("strict fp16 produced inf/NaN")
        elif self.strict_top1_agreement < MIN_TOP1:
            problems.append(f"strict-fp16 top-1 agreement below {MIN_TOP1:.0%}")
        if self.overflows:
            problems.append(f"activations above fp16's {FP16_MAX:,.0f} in layers {self.overflows}")
        verdict = "ok" if not problems else "FAILED (" + "; ".join(problems) + ")"
        lines = [
            f"verify: {self.tokens} tokens teacher-forced · top-1 agreement {self.top1_agreement:.1%} · "
            f"KL {self.kl:.4f} nats · max |logit error| {self.max_logit_error:.4f} (logit range ±{self.logit_scale:.1f}) · "
            f"prefill last-token max error {self.prefill_max_error:.4f} · "
            f"strict fp16 top-1 {self.strict_top1_agreement:.1%} · {verdict}"
        ]
        if self.peaks:
            worst = max(self.peaks)
            lines.append(
                f"  max |activation| per layer (fp16 max {FP16_MAX:,.0f}; largest {worst:,.0f} = {worst / FP16_MAX:.0%}): "
                + " ".join(f"{p:,.0f}" for p in self.peaks)
            )
        return "\n".join(lines)


def mean_kl(reference_logits: np.ndarray, model_logits: np.ndarray) -> float:
    """Mean KL(reference ‖ model) over the rows of two (n, vocab) logit arrays: what compression costs the
    whole distribution, not only its top token."""

    def log_softmax(a: np.ndarray) -> np.ndarray:
        a = a.astype(np.float64) - a.max(-1, keepdims=True)
        return a - np.log(np.exp(a).sum(-1, keepdims=True))

    p, q = log_softmax(reference_logits), log_softmax(model_logits)
    return float((np.exp(p) * (p - q)).sum(-1).mean())


def compare(reference_logits: np.ndarray, model_logits: np.ndarray) -> tuple[float, float]:
    """(top-1 agreement, max abs error) between two (n, vocab) logit arrays."""
    agree = float(np.mean(reference_logits.argmax(-1) == model_logits.argmax(-1)))
    return agree, float(np.max(np.abs(reference_logits - model_logits)))


def teacher_forced(lm, ids: Sequence[int], on_token: Callable[[int], None] | None = None) -> np.ndarray:
    """Logits after each of ids, one `infer` step at a time (the first through prefill); `on_token(n)` after
    the n-th."""
    lm.reset()
    out = []
    for i, t in enumerate(ids):
        out.append(lm.step(t) if i else lm.prefill([t]))
        if on_token is not None:
            on_token(i + 1)
    return np.stack(out)


def _silent(step: str, fraction: float | None = None, /, *, done: float | None = None, total: float | None = None,
            unit: str = "") -> None:
    pass


def verify_ids(checkpoint, model_dir: Path, ids: Sequence[int], *, strict_fp16: bool = False,
               progress: Callable | None = None) -> VerifyReport:
    """`progress` (convert's Progress) hears each stage, with the layers or tokens done."""
    from anechat.arch.reference import ReferenceModel
    from anechat.engine.lm import LanguageModel
    from anechat.runtime.modeldir import open_model_dir
    from anechat.runtime.portable import PortableBackend

    report = progress or _silent
    ids = list(ids)
    n = len(ids)

    def counted(stage: str, unit: str, total: int) -> Callable[[int], None]:
        report(stage)
        return lambda done: report(stage, done=done, total=total, unit=unit)

    # One model in memory at a time (the reference's fp32 weights, then each runtime's): at Qwen3.5-0.8B's size
    # each is 4-7 GB, and holding all three made --verify peak at 16.6 GB.
    reference = ReferenceModel(checkpoint)
    reference.on_layer = counted(f"verifying: the numpy reference (fp32) reads {n} tokens", "layers",
                                 checkpoint.config.num_layers)
    ref = reference.forward(ids)
    peaks = list(reference.peaks)
    del reference
    report("verifying: loading the converted model in the portable runtime")
    md = open_model_dir(model_dir)
    lm = LanguageModel(md, PortableBackend(strict_fp16=strict_fp16))
    stepped = teacher_forced(lm, ids, counted("verifying: the converted model, one token at a time", "tokens", n))
    agree, err = compare(ref, stepped)
    report(f"verifying: the converted model's prefill of {n} tokens")
    lm.reset()
    prefilled = lm.prefill(ids)
    del lm
    gc.collect()
    strict = stepped if strict_fp16 else teacher_forced(
        LanguageModel(md, PortableBackend(strict_fp16=True)), ids,
        counted("verifying: again with every op rounded to fp16, as on the ANE", "tokens", n))
    scale = float((md.meta.get("model_info", {}).get("parameters") or {}).get("fp16_scale") or 1.0)
    return VerifyReport(
        tokens=len(ids),
        top1_agreement=agree,
        max_logit_error=err,
        logit_scale=float(np.max(np.abs(ref))),
        prefill_max_error=float(np.max(np.abs(prefilled - ref[-1]))),
        kl=mean_kl(ref, stepped),
        strict_top1_agreement=compare(ref, strict)[0],
        strict_finite=bool(np.all(np.isfinite(strict))),
        peaks=[p * scale for p in peaks],
    )


def verify_conversion(source: Path, model_dir: Path, progress: Callable | None = None, max_tokens: int = 64) -> VerifyReport:
    from anechat.convert.checkpoint import load_checkpoint
    from anechat.engine.tokenizer import ChatTokenizer

    if progress:
        progress("verifying: reading the checkpoint")
    checkpoint = load_checkpoint(source)
    from anechat.runtime.modeldir import open_model_dir

    context = open_model_dir(model_dir).context_length
    tokenizer = ChatTokenizer.from_dir(model_dir)
    ids = tokenizer.encode(SAMPLE_TEXT)
    if tokenizer.config.get("add_bos_token") and tokenizer.bos_token_id is not None:
        ids.insert(0, tokenizer.bos_token_id)  # a model trained with BOS first (Gemma) is only itself after one
    ids = ids[: min(max_tokens, context)]
    return verify_ids(checkpoint, model_dir, ids, progress=progress)
