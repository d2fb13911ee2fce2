"""Sampling: greedy, temperature, top-k, top-p, min-p, repetition penalty; seeded and reproducible."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Sequence

import numpy as np

from anechat.errors import UsageError
from anechat.settings import SAMPLING_KEYS, SCHEMA


@dataclass
class SamplingParams:
    """The sampler's parameters; the user-facing ones take their defaults and ranges from the settings schema."""

    temperature: float = SCHEMA["temperature"].default
    top_k: int = SCHEMA["top_k"].default
    top_p: float = SCHEMA["top_p"].default
    min_p: float = SCHEMA["min_p"].default
    repeat_penalty: float = SCHEMA["repeat_penalty"].default
    repeat_last_n: int = 64
    seed: int | None = SCHEMA["seed"].default
    max_tokens: int = SCHEMA["max_tokens"].default

    def merged(self, **overrides: Any) -> SamplingParams:
        known = {f.name for f in fields(self)}
        return replace(self, **{k: v for k, v in overrides.items() if v is not None and k in known})

    def validate(self) -> None:
        for key in SAMPLING_KEYS:
            value = getattr(self, key)
            if value is not None:
                try:
                    SCHEMA[key].check(value)
                except ValueError as e:
                    raise UsageError(f"{key}: {e}") from None
        if self.repeat_last_n < 0:
            raise UsageError(f"repeat_last_n: must be ≥ 0 (got {self.repeat_last_n})")


class Sampler:
    def __init__(self, params: SamplingParams) -> None:
        self.p = params
        self.rng = np.random.default_rng(params.seed)
        self._below = BINS  # where the last nucleus ended, plus a margin: where to look first next time

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
        # Every step below is one vectorised pass over the candidates (no sort of the vocabulary):
        # this runs once per generated token.
        inv_t = np.float32(1.0 / p.temperature)
        if p.top_k and p.top_k < logits.size:
            cand = np.argpartition(logits, -p.top_k)[-p.top_k :]
            z = np.multiply(logits[cand], inv_t, dtype=np.float32)
        else:
            cand = None
            z = np.multiply(logits, inv_t, dtype=np.float32)
        # gap to the best, in natural-log units of probability
        gap = np.subtract(z.max(), z, out=z)
        probs = np.exp(np.negative(gap))
        if p.top_p < 1.0:
            mass = p.top_p * float(probs.sum())
            # Consecutive tokens' nuclei end at similar gaps: when the last one was a small part of the
            # vocabulary, look near its end first (two passes over the vocabulary instead of seven), and
            # over everything only when that falls short.
            found = _nucleus(probs, gap, mass, self._below) or _nucleus(probs, gap, mass)
            assert found is not None  # over the whole vocabulary there always is one
            keep, edge = found
            self._below = min(BINS, edge + NEAR) if keep.size * 8 < probs.size else BINS
            cand = keep if cand is None else cand[keep]
            probs = probs[keep]
        if p.min_p > 0:
            keep = np.flatnonzero(probs >= p.min_p)  # the best token has probability 1 here
            cand = keep if cand is None else cand[keep]
            probs = probs[keep]
        i = _draw(probs, self.rng.random())
        return int(cand[i]) if cand is not None else i


BINS = 4096
NEAR = 16  # bins (two nats) past the last nucleus' edge
BLOCK = 1024


def _draw(probs: np.ndarray, u: float) -> int:
    """Inverse-CDF draw in two short passes (block sums, then one block) instead of a cumulative sum
    over the whole vocabulary."""
    if probs.size <= 4 * BLOCK:
        cum = np.cumsum(probs, dtype=np.float64)
        return min(int(np.searchsorted(cum, u * cum[-1], side="right")), probs.size - 1)
    blocks = np.cumsum(np.add.reduceat(probs, np.arange(0, probs.size, BLOCK)), dtype=np.float64)
    target = u * blocks[-1]
    b = min(int(np.searchsorted(blocks, target, side="right")), blocks.size - 1)
    segment = np.cumsum(probs[b * BLOCK : (b + 1) * BLOCK], dtype=np.float64)
    j = int(np.searchsorted(segment, target - (blocks[b - 1] if b else 0.0), side="right"))
    return b * BLOCK + min(j, segment.size - 1)


def _nucleus(probs: np.ndarray, gap: np.ndarray, mass: float, below: int = BINS) -> tuple[np.ndarray, int] | None:
    """Indices of the smallest most-probable set whose (unnormalised) probability reaches `mass`, and the bin
    where it ends. With `below`, only the tokens in bins under it are looked at: the most probable ones, so if
    they reach `mass` the set is among them, the same set exactly; None says that they do not."""
    if below >= BINS:
        return _binned(probs, gap, mass, whole=True)
    near = np.flatnonzero(gap < below / 8.0)  # bin < below, as _binned bins: gap * 8 is exact
    found = _binned(probs[near], gap[near], mass, whole=False)
    return None if found is None else (near[found[0]], found[1])


def _binned(probs: np.ndarray, gap: np.ndarray, mass: float, whole: bool) -> tuple[np.ndarray, int] | None:
    """Tokens binned by their gap to the best (eighths of a nat): whole bins above the cut are kept, only
    the bin where the cumulative mass crosses the threshold is sorted."""
    bins = np.minimum((gap * 8.0).astype(np.int32), BINS - 1)
    cum = np.cumsum(np.bincount(bins, weights=probs, minlength=BINS))
    edge = int(np.searchsorted(cum, mass))
    if edge >= BINS:  # short of the mass: rounding, for the whole vocabulary; too few, for a part of it
        if not whole:
            return None
        edge = BINS - 1
    before = cum[edge - 1] if edge else 0.0
    in_edge = np.flatnonzero(bins == edge)
    in_edge = in_edge[np.argsort(-probs[in_edge], kind="stable")]
    k = int(np.searchsorted(np.cumsum(probs[in_edge], dtype=np.float64), mass - before)) + 1
    return np.concatenate([np.flatnonzero(bins < edge), in_edge[:k]]), edge
