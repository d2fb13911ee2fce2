"""Sampling: greedy, temperature, top-k, top-p, min-p, repetition penalty; seeded and reproducible."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Sequence

import numpy as np

from anechat.errors import UsageError


@dataclass
class SamplingParams:
    temperature: float = 0.7
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    seed: int | None = None
    max_tokens: int = 512

    def merged(self, **overrides) -> "SamplingParams":
        known = {f.name for f in fields(self)}
        return replace(self, **{k: v for k, v in overrides.items() if v is not None and k in known})

    def validate(self) -> None:
        checks = [
            ("temperature", self.temperature >= 0, "must be ≥ 0"),
            ("top_k", self.top_k >= 0, "must be ≥ 0 (0 = off)"),
            ("top_p", 0 < self.top_p <= 1, "must be in (0, 1]"),
            ("min_p", 0 <= self.min_p < 1, "must be in [0, 1)"),
            ("repeat_penalty", self.repeat_penalty > 0, "must be > 0 (1 = off)"),
            ("repeat_last_n", self.repeat_last_n >= 0, "must be ≥ 0"),
            ("max_tokens", self.max_tokens >= 1, "must be ≥ 1"),
        ]
        for key, ok, why in checks:
            if not ok:
                raise UsageError(f"{key} = {getattr(self, key)} {why}")


class Sampler:
    def __init__(self, params: SamplingParams) -> None:
        self.p = params
        self.rng = np.random.default_rng(params.seed)

    def _penalize(self, logits: np.ndarray, history: Sequence[int]) -> np.ndarray:
        recent = np.unique(np.asarray(history[-self.p.repeat_last_n :], dtype=np.int64))
        if recent.size == 0:
            return logits
        logits = logits.copy()
        vals = logits[recent]
        logits[recent] = np.where(vals > 0, vals / self.p.repeat_penalty, vals * self.p.repeat_penalty)
        return logits

    def __call__(self, logits: np.ndarray, history: Sequence[int] = ()) -> int:
        p = self.p
        if p.repeat_penalty != 1.0 and p.repeat_last_n and len(history):
            logits = self._penalize(logits, history)
        if p.temperature == 0:
            return int(np.argmax(logits))
        # Candidates: the top-k (or everything), sorted by logit, as float64 probabilities.
        if p.top_k and p.top_k < logits.size:
            cand = np.argpartition(logits, -p.top_k)[-p.top_k :]
        else:
            # Tokens more than 30·T below the best have probability < e^-30 of the top one: dropping them
            # changes nothing measurable and saves sorting the whole vocabulary every token.
            cand = np.flatnonzero(logits >= logits.max() - 30.0 * p.temperature)
        cand = cand[np.argsort(logits[cand])[::-1]]
        z = logits[cand].astype(np.float64) / p.temperature
        probs = np.exp(z - z[0])
        probs /= probs.sum()
        keep = probs.size
        if p.top_p < 1.0:
            keep = min(keep, int(np.searchsorted(np.cumsum(probs), p.top_p)) + 1)
        if p.min_p > 0:
            keep = min(keep, max(1, int(np.count_nonzero(probs >= p.min_p * probs[0]))))
        probs = probs[:keep] / probs[:keep].sum()
        return int(cand[self.rng.choice(keep, p=probs)])
