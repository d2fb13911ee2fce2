"""Activation statistics on a calibration text, from the numpy reference forward pass.

For every linear weight (out, in) the mean square of each input channel's activation: how much an error in
that column of the weight moves the output. Compression weighs its errors by it."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from anechat.convert.checkpoint import Checkpoint

# Ordinary prose, a list, some code and a chat turn: the kinds of text a chat model sees. It shares no
# sentence with the texts the benchmarks and tests measure agreement on.
CALIBRATION_TEXT = (
    "A good recipe for bread needs only four things: flour, water, salt and yeast. Mix them, let the dough "
    "rest for an hour, fold it twice, then bake it in a hot oven until the crust sounds hollow when you tap "
    "it. The same patience helps in many crafts; a carpenter measures twice and cuts once, and a gardener "
    "waits for the frost to pass before planting tomatoes.\n\n"
    "Question: Why is the sky blue?\nAnswer: Sunlight is scattered by the molecules of the air, and blue "
    "light, with its shorter wavelength, is scattered much more than red light.\n\n"
    "Shopping list:\n1. Apples (6)\n2. Milk, 2 litres\n3. Coffee beans\n\n"
    "def mean(values):\n    return sum(values) / len(values) if values else 0.0\n\n"
    "In 1969, the Apollo 11 mission landed two astronauts on the Moon. Millions of people watched on "
    "television as Neil Armstrong stepped onto the surface. Today spacecraft explore Mars, Jupiter and the "
    "outer edges of the solar system, sending back pictures of ice, dust storms and volcanoes.\n"
    "User: Can you help me write a short email to my landlord about a broken heater?\n"
    "Assistant: Of course. Dear Mr. Smith, I am writing to let you know that the heater in my apartment "
    "stopped working on Monday. Could you arrange a repair this week? Thank you, Anna."
)


class _Observed:
    """Stands in for a weight in the reference model: `x @ w.T` adds up x² per column.
    numpy defers `@` to us because __array_ufunc__ is None."""

    __array_ufunc__ = None

    def __init__(self, weight: np.ndarray, sink: dict, name: str) -> None:
        self.weight, self.sink, self.name = weight, sink, name

    @property
    def T(self) -> _Observed:
        return self

    def __rmatmul__(self, x: np.ndarray) -> np.ndarray:
        rows = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
        total, count = self.sink.get(self.name, (0.0, 0))
        self.sink[self.name] = (total + np.einsum("ij,ij->j", rows, rows), count + rows.shape[0])
        if self.name == "lm_head.weight":  # nothing reads the logits: skip the largest matmul of the pass
            return np.zeros(x.shape[:-1] + self.weight.shape[:1], np.float32)
        return x @ self.weight.T


def input_moments(checkpoint: Checkpoint, ids: Sequence[int]) -> dict[str, np.ndarray]:
    """Weight name → mean x² of each input channel (float64, length `in`) over the tokens `ids`, for every
    2-D weight but the embedding table (whose "input" is a token id)."""
    from anechat.arch.reference import ReferenceModel

    ref = ReferenceModel(checkpoint)
    sink: dict = {}
    for name, w in list(ref.w.items()):
        if w.ndim == 2 and name != "model.embed_tokens.weight":
            ref.w[name] = _Observed(w, sink, name)  # type: ignore[assignment]  # duck-typed: records x @ w.T
    ref.forward(list(ids))
    return {name: total / count for name, (total, count) in sink.items()}


def calibration_ids(tokenizer_json: str, limit: int = 512) -> list[int]:
    """The calibration text in the checkpoint's own tokens."""
    from tokenizers import Tokenizer

    return Tokenizer.from_str(tokenizer_json).encode(CALIBRATION_TEXT, add_special_tokens=False).ids[:limit]
