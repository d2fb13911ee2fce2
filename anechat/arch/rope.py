"""Rotary position tables shared by the numpy reference and the ANE graph (HF's rotate_half convention)."""

from __future__ import annotations

import math

import numpy as np

from anechat.arch.base import ModelConfig
from anechat.errors import ConversionError


def inv_freq(config: ModelConfig) -> np.ndarray:
    """Per-pair inverse frequencies, shape (head_dim // 2,), float64, with the config's rope scaling."""
    dim = config.head_dim
    freqs = 1.0 / (config.rope_theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    scaling = config.rope_scaling or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind in (None, "default"):
        return freqs
    if kind == "linear":
        return freqs / float(scaling["factor"])
    if kind == "llama3":
        factor = float(scaling["factor"])
        low = float(scaling.get("low_freq_factor", 1.0))
        high = float(scaling.get("high_freq_factor", 4.0))
        old_ctx = float(scaling.get("original_max_position_embeddings", 8192))
        wavelen = 2 * math.pi / freqs
        scaled = np.where(wavelen > old_ctx / low, freqs / factor, freqs)
        smooth = (old_ctx / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_ctx / high) & (wavelen <= old_ctx / low)
        return np.where(medium, smoothed, scaled)
    raise ConversionError(f"rope scaling type {kind!r} is not supported")


def cos_sin(config: ModelConfig, length: int) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin tables of shape (length, head_dim), float32: row p holds position p."""
    angles = np.outer(np.arange(length, dtype=np.float64), inv_freq(config))
    full = np.concatenate([angles, angles], axis=1)
    return np.cos(full).astype(np.float32), np.sin(full).astype(np.float32)
