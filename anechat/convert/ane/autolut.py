"""`--lut-* auto`: the smallest LUT per part that keeps the model's top-1 agreement above a threshold.

Each candidate (4, 6 then 8 bits, with their default group sizes) is measured on its own: the numpy reference
forward pass of the checkpoint, with only that part's weights replaced by their palettized values, teacher-
forced over the calibration text, against the same pass with the original weights. The first candidate whose
top-1 agreement reaches AUTO_MIN_TOP1 wins; when none does, the part stays fp16. Parts are measured one at a
time (the others uncompressed), so the errors of two compressed parts can add up in the final model:
`convert --verify` measures the result."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from anechat.convert.ane.compress import (
    DEFAULT_GROUP,
    EMBEDDINGS,
    LM_HEAD,
    MIN_WEIGHT_ELEMENTS,
    Calibration,
    Lut,
    palettize_weight,
)

AUTO_BITS = (4, 6, 8)
# Teacher-forced top-1 agreement with the uncompressed weights on the calibration text a part must keep.
AUTO_MIN_TOP1 = 0.90


@dataclass(frozen=True)
class Choice:
    part: str
    lut: Lut | None  # None: no candidate kept the agreement, the part stays fp16
    tried: tuple[tuple[Lut, float], ...]  # (candidate, agreement) in the order measured

    def format(self) -> str:
        tried = ", ".join(f"LUT{lut.bits},{lut.group_size} {agree:.1%}" for lut, agree in self.tried)
        picked = f"LUT{self.lut.bits},{self.lut.group_size}" if self.lut else "fp16 (no LUT kept it)"
        return f"--lut-{self.part} auto: {picked} (top-1 vs uncompressed on the calibration text, need ≥ {AUTO_MIN_TOP1:.0%}: {tried})"


def choose(part: str, agreement: Callable[[Lut], float], threshold: float = AUTO_MIN_TOP1) -> Choice:
    """The first of 4, 6, 8 bits whose agreement reaches the threshold; later candidates are not measured."""
    tried = []
    for bits in AUTO_BITS:
        lut = Lut(bits, DEFAULT_GROUP[bits])
        tried.append((lut, agreement(lut)))
        if tried[-1][1] >= threshold:
            return Choice(part, lut, tuple(tried))
    return Choice(part, None, tuple(tried))


def part_weights(names: Sequence[str], shapes: dict[str, tuple[int, ...]], part: str) -> list[str]:
    """The checkpoint weights a part's LUT covers: for the transformer, every 2-D layer weight big enough to
    be palettized (norms and biases stay fp16, as compress.palettize_layer leaves them)."""
    if part == "embeddings":
        return [EMBEDDINGS]
    if part == "lmhead":
        return [LM_HEAD]
    return [n for n in names if ".layers." in n and len(shapes[n]) == 2 and int(np.prod(shapes[n])) >= MIN_WEIGHT_ELEMENTS]


class Agreement:
    """Measures candidates for one checkpoint: the reference logits of the calibration text once, then one
    forward pass per candidate."""

    def __init__(self, checkpoint, calibration: Calibration, ids: Sequence[int]) -> None:
        from anechat.arch.reference import ReferenceModel

        self.checkpoint, self.calibration, self.ids = checkpoint, calibration, list(ids)
        self.base = ReferenceModel(checkpoint).forward(self.ids).argmax(-1)

    def __call__(self, part: str, lut: Lut) -> float:
        from anechat.arch.reference import ReferenceModel

        ref = ReferenceModel(self.checkpoint)
        shapes = {n: w.shape for n, w in ref.w.items()}
        for name in part_weights(list(ref.w), shapes, part):
            # lm_head errors count by its input; a table row is read whole (compress.LutCheckpoint does the same)
            moments = None if name == EMBEDDINGS else self.calibration.moments(name)
            ref.w[name] = palettize_weight(ref.w[name], lut, name, moments).dense()
        return float(np.mean(ref.forward(self.ids).argmax(-1) == self.base))
