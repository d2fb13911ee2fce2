"""A plain float32 numpy forward pass straight from a Checkpoint's weights: no MIL, no ANE tricks.

It is the independent oracle the converted chunks are checked against (`anechat convert --verify`
and the tests). Standard HF formulation: RMSNorm, rotate_half rope, GQA by repeating K/V heads. The
family files (anechat/arch/) write their forward pass with the pieces here; ReferenceModel holds the
weights, the KV cache and the position.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from anechat.arch.rope import inv_freq

if TYPE_CHECKING:
    from anechat.arch.base import Checkpoint


# Calibration and verification text: plain English prose, in every tokenizer's range.
SAMPLE_TEXT = (
    "The Apple Neural Engine is a processor designed for machine learning. It runs models that have been "
    "converted to Core ML, where large language models are split into chunks so that each part fits the "
    "engine's limits. Paris is the capital of France, and the river Seine flows through it."
)


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rotate_half(x: np.ndarray) -> np.ndarray:
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    return x * cos + rotate_half(x) * sin


class ReferenceModel:
    def __init__(self, checkpoint: Checkpoint) -> None:
        from anechat.arch import by_name

        self.c = checkpoint.config
        self.arch = by_name(self.c.architecture)
        self.w = {name: checkpoint.tensor(name) for name in checkpoint.names()}
        self._inv_freq = inv_freq(self.c)
        self.reset()

    def reset(self) -> None:
        self.keys: list[np.ndarray] = [np.zeros((self.c.num_kv_heads, 0, self.c.head_dim), np.float32)] * self.c.num_layers
        self.values = list(self.keys)
        self.pos = 0
        # a recurrent layer's state by layer index (Qwen 3.5's DeltaNet: conv inputs and S)
        self.recurrent: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        # largest |residual stream| seen after each layer (what fp16 must hold)
        self.peaks = [0.0] * self.c.num_layers
        self.on_layer: Callable[[int], None] | None = None  # told the layers done so far (a long check's progress)

    def record(self, i: int, x: np.ndarray) -> None:
        """Layer i is done, with output x."""
        self.peaks[i] = max(self.peaks[i], float(np.max(np.abs(x))))
        if self.on_layer is not None:
            self.on_layer(i + 1)

    def rope(self, positions: np.ndarray, inv: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        angles = np.outer(positions, self._inv_freq if inv is None else inv)
        full = np.concatenate([angles, angles], axis=-1)
        return np.cos(full).astype(np.float32), np.sin(full).astype(np.float32)

    def project(self, x: np.ndarray, name: str, heads: int) -> np.ndarray:
        """x (S, H) through a projection → (heads, S, head_dim)."""
        y = x @ self.w[name + ".weight"].T
        if name + ".bias" in self.w:
            y = y + self.w[name + ".bias"]
        return y.reshape(x.shape[0], heads, self.c.head_dim).transpose(1, 0, 2)

    def attend(self, i: int, q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float, window: int | None = None) -> np.ndarray:
        """Append layer i's new k/v to its cache and attend: (heads, S, hd) queries → (S, heads·hd).
        With a window, query p sees keys p-window+1 … p (HF's sliding window)."""
        c = self.c
        s = q.shape[1]
        self.keys[i] = np.concatenate([self.keys[i], k], axis=1)
        self.values[i] = np.concatenate([self.values[i], v], axis=1)
        group = c.num_heads // c.num_kv_heads
        keys = np.repeat(self.keys[i], group, axis=0)
        values = np.repeat(self.values[i], group, axis=0)
        scores = q @ keys.transpose(0, 2, 1) * scale
        total = keys.shape[1]
        qpos = (total - s + np.arange(s))[:, None]
        kpos = np.arange(total)[None, :]
        allowed = kpos <= qpos  # query j (absolute position pos+j) sees keys at positions ≤ pos+j
        if window:
            allowed &= qpos - kpos < window
        scores = np.where(allowed, scores, -np.inf)
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        scores /= scores.sum(-1, keepdims=True)
        return (scores @ values).transpose(1, 0, 2).reshape(s, -1)

    def forward(self, ids: Sequence[int]) -> np.ndarray:
        """Logits (len(ids), vocab) for ids appended after everything already in the cache."""
        logits = self.arch.reference_forward(self, np.asarray(ids, dtype=np.int64))
        self.pos += len(ids)
        return logits

    def greedy(self, prompt: Sequence[int], max_new_tokens: int, eos_ids: Sequence[int] = ()) -> list[int]:
        logits = self.forward(prompt)[-1]
        out: list[int] = []
        for _ in range(max_new_tokens):
            tok = int(np.argmax(logits))
            out.append(tok)
            if tok in eos_ids:
                break
            logits = self.forward([tok])[-1]
        return out
