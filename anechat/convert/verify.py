"""`anechat convert --verify`: run the converted chunks in the portable runtime next to the plain numpy
reference forward pass of the same weights, and report how closely they agree."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

SAMPLE_TEXT = (
    "The Apple Neural Engine is a processor designed for machine learning. It runs models that have been "
    "converted to Core ML, where large language models are split into chunks so that each part fits the "
    "engine's limits. Paris is the capital of France, and the river Seine flows through it."
)
MIN_TOP1 = 0.95


@dataclass
class VerifyReport:
    tokens: int
    top1_agreement: float
    max_logit_error: float
    logit_scale: float
    prefill_max_error: float
    kl: float = 0.0  # mean KL(reference ‖ model) of the next-token distributions, nats

    @property
    def ok(self) -> bool:
        return self.top1_agreement >= MIN_TOP1

    def format(self) -> str:
        verdict = "ok" if self.ok else f"FAILED (top-1 agreement below {MIN_TOP1:.0%})"
        return (
            f"verify: {self.tokens} tokens teacher-forced · top-1 agreement {self.top1_agreement:.1%} · "
            f"KL {self.kl:.4f} nats · max |logit error| {self.max_logit_error:.4f} (logit range ±{self.logit_scale:.1f}) · "
            f"prefill last-token max error {self.prefill_max_error:.4f} · {verdict}"
        )


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


def verify_ids(checkpoint, model_dir: Path, ids: Sequence[int], *, strict_fp16: bool = False) -> VerifyReport:
    from anechat.convert.numpy_reference import ReferenceModel
    from anechat.engine.lm import ChunkedLM
    from anechat.runtime.modeldir import open_model_dir
    from anechat.runtime.portable import PortableBackend

    ids = list(ids)
    ref = ReferenceModel(checkpoint).forward(ids)
    lm = ChunkedLM(open_model_dir(model_dir), PortableBackend(strict_fp16=strict_fp16))
    stepped = np.stack([lm.step(t) if i else lm.prefill([t]) for i, t in enumerate(ids)])
    agree, err = compare(ref, stepped)
    lm.reset()
    prefilled = lm.prefill(ids)
    return VerifyReport(
        tokens=len(ids),
        top1_agreement=agree,
        max_logit_error=err,
        logit_scale=float(np.max(np.abs(ref))),
        prefill_max_error=float(np.max(np.abs(prefilled - ref[-1]))),
        kl=mean_kl(ref, stepped),
    )


def verify_conversion(source: Path, model_dir: Path, progress: Callable | None = None, max_tokens: int = 64) -> VerifyReport:
    from anechat.convert.checkpoint import load_checkpoint
    from anechat.engine.tokenizer import ChatTokenizer

    if progress:
        progress("verifying against the numpy reference", None)
    checkpoint = load_checkpoint(source)
    from anechat.runtime.modeldir import open_model_dir

    context = open_model_dir(model_dir).context_length
    ids = ChatTokenizer.from_dir(model_dir).encode(SAMPLE_TEXT)[: min(max_tokens, context)]
    return verify_ids(checkpoint, model_dir, ids)
