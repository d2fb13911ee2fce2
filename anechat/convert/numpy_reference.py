"""A plain float32 numpy forward pass straight from a Checkpoint's weights: no MIL, no ANE tricks.

It is the independent oracle the converted chunks are checked against (`anechat convert --verify`
and the tests). Standard HF formulation: RMSNorm, rotate_half rope, GQA by repeating K/V heads.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from anechat.arch.rope import inv_freq
from anechat.convert.checkpoint import Checkpoint


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rotate_half(x: np.ndarray) -> np.ndarray:
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


class ReferenceModel:
    def __init__(self, checkpoint: Checkpoint) -> None:
        self.c = checkpoint.config
        self.w = {name: checkpoint.tensor(name) for name in checkpoint.names()}
        self._inv_freq = inv_freq(self.c)
        self.reset()

    def reset(self) -> None:
        self.keys: list[np.ndarray] = [np.zeros((self.c.num_kv_heads, 0, self.c.head_dim), np.float32)] * self.c.num_layers
        self.values = list(self.keys)
        self.pos = 0

    def _rope(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        angles = np.outer(positions, self._inv_freq)
        full = np.concatenate([angles, angles], axis=-1)
        return np.cos(full).astype(np.float32), np.sin(full).astype(np.float32)

    def _attention(self, i: int, x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
        c, w, p = self.c, self.w, f"model.layers.{i}.self_attn."
        s = x.shape[0]

        def proj(name: str, heads: int) -> np.ndarray:
            y = x @ w[p + name + "_proj.weight"].T
            if p + name + "_proj.bias" in w:
                y = y + w[p + name + "_proj.bias"]
            return y.reshape(s, heads, c.head_dim).transpose(1, 0, 2)

        q, k, v = proj("q", c.num_heads), proj("k", c.num_kv_heads), proj("v", c.num_kv_heads)
        if c.qk_norm:
            q = rms_norm(q, w[p + "q_norm.weight"], c.rms_norm_eps)
            k = rms_norm(k, w[p + "k_norm.weight"], c.rms_norm_eps)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        self.keys[i] = np.concatenate([self.keys[i], k], axis=1)
        self.values[i] = np.concatenate([self.values[i], v], axis=1)
        group = c.num_heads // c.num_kv_heads
        keys = np.repeat(self.keys[i], group, axis=0)
        values = np.repeat(self.values[i], group, axis=0)
        scores = q @ keys.transpose(0, 2, 1) / np.sqrt(c.head_dim)
        total = keys.shape[1]
        # query j (absolute position pos+j) sees keys at positions ≤ pos+j
        allowed = np.arange(total)[None, :] <= (total - s + np.arange(s))[:, None]
        scores = np.where(allowed, scores, -np.inf)
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        scores /= scores.sum(-1, keepdims=True)
        out = (scores @ values).transpose(1, 0, 2).reshape(s, -1)
        return out @ w[p + "o_proj.weight"].T

    def forward(self, ids: Sequence[int]) -> np.ndarray:
        """Logits (len(ids), vocab) for ids appended after everything already in the cache."""
        c, w = self.c, self.w
        x = w["model.embed_tokens.weight"][np.asarray(ids, dtype=np.int64)]
        cos, sin = self._rope(np.arange(self.pos, self.pos + len(ids)))
        for i in range(c.num_layers):
            p = f"model.layers.{i}."
            x = x + self._attention(i, rms_norm(x, w[p + "input_layernorm.weight"], c.rms_norm_eps), cos, sin)
            h = rms_norm(x, w[p + "post_attention_layernorm.weight"], c.rms_norm_eps)
            gate = h @ w[p + "mlp.gate_proj.weight"].T
            up = h @ w[p + "mlp.up_proj.weight"].T
            x = x + (gate / (1 + np.exp(-gate)) * up) @ w[p + "mlp.down_proj.weight"].T
        self.pos += len(ids)
        return rms_norm(x, w["model.norm.weight"], c.rms_norm_eps) @ w["lm_head.weight"].T

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
