"""Shared ANE building blocks. Layout inside a chunk is channels-first (1, C, 1, S) so projections are
1×1 convolutions; attention works on (heads, S, head_dim). Every op here is an ANE dispatch and a step of
the portable executor, so each block uses as few ops as the maths allows."""

from __future__ import annotations

import numpy as np

from anechat.convert.ane.compress import weight_const

FP16 = np.float16


def mb():
    from coremltools.converters.mil import Builder

    return Builder


def f16(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=FP16)


def rms_norm(x, weight: np.ndarray | None, eps: float, axis: int, width: int):
    """RMSNorm as LayerNorm over [x, −x]: that vector has mean 0 and variance mean(x²), so LayerNorm of it,
    cut back to the first half, is exactly x / sqrt(mean(x²) + eps). ANE has a fast LayerNorm, no RMSNorm."""
    b = mb()
    doubled = b.concat(values=[x, b.mul(x=x, y=FP16(-1.0))], axis=axis)
    gamma = None if weight is None else f16(np.concatenate([weight, weight]))
    normed = b.layer_norm(x=doubled, axes=[axis], gamma=gamma, epsilon=FP16(eps))
    rank = len(x.shape)
    ax = axis % rank
    end = [0] * rank
    end[ax] = width
    return b.slice_by_index(
        x=normed, begin=[0] * rank, end=end, end_mask=[i != ax for i in range(rank)]
    )


def conv1x1(x, weight: np.ndarray, bias: np.ndarray | None = None, name: str | None = None):
    """weight (out, in), plain or Palettized, applied to x (1, in, 1, S) → (1, out, 1, S)."""
    b = mb()
    kwargs = {} if bias is None else {"bias": f16(bias)}
    if name is not None:
        kwargs["name"] = name
    return b.conv(x=x, weight=weight_const(weight, trailing_axes=2), **kwargs)


def rotate_half_matrix(head_dim: int) -> np.ndarray:
    """P with x @ P == rotate_half(x) == concat(−x[half:], x[:half]) along the last axis: one matmul
    instead of two slices, a negation and a concat."""
    half = head_dim // 2
    p = np.zeros((head_dim, head_dim), np.float32)
    p[np.arange(half) + half, np.arange(half)] = -1.0
    p[np.arange(half), np.arange(half) + half] = 1.0
    return p


def rope(x, cos, sin, rot: np.ndarray):
    """x (1, heads, S, hd), cos/sin (S, hd): x·cos + rotate_half(x)·sin."""
    b = mb()
    return b.add(x=b.mul(x=x, y=cos), y=b.mul(x=b.matmul(x=x, y=f16(rot)), y=sin))
