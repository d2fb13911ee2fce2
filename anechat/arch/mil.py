"""Shared ANE building blocks. Layout inside a chunk is channels-first (1, C, 1, S) so projections are
1×1 convolutions; attention works on (heads, S, head_dim). Every op here is an ANE dispatch and a step of
the portable executor, so each block uses as few ops as the maths allows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from anechat.errors import ConversionError

FP16 = np.float16


def mb():
    from coremltools.converters.mil import Builder

    return Builder


def f16(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=FP16)


@dataclass(frozen=True)
class Palettized:
    """A weight (out, in, ...) as iOS18 `constexpr_lut_to_dense` stores it: one fp16 palette per group of
    `group_size` output channels."""

    indices: np.ndarray  # uint8, the weight's shape
    lut: np.ndarray  # fp16 (out / group_size, 1, ..., 2**bits, 1): rank of indices + 2
    bits: int

    @property
    def shape(self) -> tuple[int, ...]:
        return self.indices.shape

    @property
    def group_size(self) -> int:
        return self.indices.shape[0] // self.lut.shape[0]

    def dense(self) -> np.ndarray:
        """The weight the runtime will see (fp16 values as float32)."""
        palettes = self.lut.reshape(self.lut.shape[0], -1).astype(np.float32)
        rows = np.arange(self.indices.shape[0]) // self.group_size
        flat = self.indices.reshape(self.indices.shape[0], -1)
        return palettes[rows[:, None], flat].reshape(self.indices.shape)

    def __getitem__(self, rows: slice) -> Palettized:
        """Output channels [start, stop), on group boundaries (the lm_head is split into parts this way)."""
        start, stop, _ = rows.indices(self.indices.shape[0])
        g = self.group_size
        if start % g or stop % g:
            raise ConversionError(f"rows {start}:{stop} cut a LUT group of {g} output channels: choose a group size that divides {stop - start}")
        return Palettized(self.indices[start:stop], self.lut[start // g : stop // g], self.bits)

    def with_trailing_axes(self, count: int) -> Palettized:
        """The same weight with `count` unit axes appended, e.g. (out, in) → conv's (out, in, 1, 1)."""
        idx = self.indices.reshape(self.indices.shape + (1,) * count)
        lut = self.lut.reshape(self.lut.shape[: self.indices.ndim] + (1,) * count + self.lut.shape[-2:])
        return Palettized(idx, lut, self.bits)

    def __mul__(self, scale: float) -> Palettized:
        """The weight times a scalar: only the palettes change (a family folding a scale into a table)."""
        return Palettized(self.indices, (self.lut.astype(np.float32) * scale).astype(np.float16), self.bits)


@dataclass(frozen=True)
class Int8:
    """A weight (out, in, ...) as linear symmetric int8 with one fp16 scale per output channel, as iOS18
    `constexpr_blockwise_shift_scale` stores it (`--int8`)."""

    data: np.ndarray  # int8, the weight's shape
    scale: np.ndarray  # fp16 (out, 1, ...): same rank as data

    @classmethod
    def quantize(cls, weight: np.ndarray) -> Int8:
        w = np.asarray(weight, np.float32)
        peak = np.abs(w.reshape(w.shape[0], -1)).max(axis=1)
        scale = (np.where(peak > 0, peak, 1.0) / 127.0).astype(np.float16)
        s = scale.astype(np.float32).reshape((-1,) + (1,) * (w.ndim - 1))
        data = np.clip(np.rint(w / s), -127, 127).astype(np.int8)
        return cls(data, scale.reshape(s.shape))

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def size(self) -> int:
        return self.data.size

    def dense(self) -> np.ndarray:
        return self.data.astype(np.float32) * self.scale.astype(np.float32)

    def __getitem__(self, rows: slice) -> Int8:
        return Int8(self.data[rows], self.scale[rows])

    def with_trailing_axes(self, count: int) -> Int8:
        return Int8(self.data.reshape(self.data.shape + (1,) * count), self.scale.reshape(self.scale.shape + (1,) * count))

    def __mul__(self, scale: float) -> Int8:
        return Int8(self.data, (self.scale.astype(np.float32) * scale).astype(np.float16))


def weight_const(weight, trailing_axes: int = 0):
    """A weight as a program constant: fp16 values, or indices and palettes that `constexpr_lut_to_dense`
    expands on the device, or int8 values and scales for `constexpr_blockwise_shift_scale`. `trailing_axes`
    unit axes are appended (a conv's (out, in) → (out, in, 1, 1))."""
    if isinstance(weight, Int8):
        from coremltools.converters.mil import Builder

        q = weight.with_trailing_axes(trailing_axes)
        return Builder.constexpr_blockwise_shift_scale(data=q.data, scale=q.scale)
    if not isinstance(weight, Palettized):
        return np.ascontiguousarray(weight.reshape(weight.shape + (1,) * trailing_axes), dtype=np.float16)
    from coremltools.converters.mil import Builder
    from coremltools.converters.mil.mil import types

    p = weight.with_trailing_axes(trailing_axes)
    dtype = types.nptype_from_builtin(types.string_to_builtin(f"uint{p.bits}"))
    return Builder.constexpr_lut_to_dense(indices=p.indices.astype(dtype), lut=p.lut, vector_axis=None)


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
    """weight (out, in) applied to x (1, in, 1, S) → (1, out, 1, S)."""
    b = mb()
    kwargs: dict[str, Any] = {} if bias is None else {"bias": f16(bias)}
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


def gqa_attention(q, keys, values, mask, heads: int, kv_heads: int, seq: int, width: int, head_dim: int):
    """q (1, heads, S, hd) against keys/values (kv_heads, width, hd) with an additive mask broadcastable to
    (kv_heads, group, S, width) → (1, heads·hd, 1, S). GQA without repeating K/V: the `group` query heads
    that share a KV head are stacked along the rows. The attention scale is folded into q by the caller."""
    b = mb()
    group = heads // kv_heads
    q = b.reshape(x=q, shape=[kv_heads, group * seq, head_dim])
    scores = b.matmul(x=q, y=keys, transpose_y=True)  # (kvh, group·S, width)
    scores = b.add(x=b.reshape(x=scores, shape=[kv_heads, group, seq, width]), y=mask)
    probs = b.reshape(x=b.softmax(x=scores, axis=-1), shape=[kv_heads, group * seq, width])
    attn = b.matmul(x=probs, y=values)  # (kvh, group·S, hd) == (heads, S, hd)
    attn = b.transpose(x=b.reshape(x=attn, shape=[heads, seq, head_dim]), perm=[0, 2, 1])
    return b.reshape(x=attn, shape=[1, heads * head_dim, 1, seq])


def cache_rows(cache, key_row: int, value_row: int, kv_heads: int, width: int, head_dim: int):
    """The keys and values of one layer, (kv_heads, width, hd) each, from a (2·L, kv_heads, len, hd) cache."""
    b = mb()

    def row(r: int):
        return b.slice_by_index(
            x=cache, begin=[r, 0, 0, 0], end=[r + 1, kv_heads, width, head_dim], squeeze_mask=[True, False, False, False]
        )

    return row(key_row), row(value_row)


def write_at(state, k, v, key_row: int, value_row: int, base, kv_heads: int, seq: int, head_dim: int):
    """Write k/v (1, kv_heads, S, hd) at [pos, pos+S) of rows key_row/value_row of a KV state; `base` is
    (0, 0, pos, 0). Returns the updated cache (also written back to the state)."""
    b = mb()

    def at(row: int, end: bool):
        offset = [row + 1, kv_heads, seq, head_dim] if end else [row, 0, 0, 0]
        return b.add(x=base, y=np.array(offset, np.int32))

    cache = b.read_state(input=state)
    cache = b.slice_update(x=cache, update=k, begin=at(key_row, False), end=at(key_row, True))
    cache = b.slice_update(x=cache, update=v, begin=at(value_row, False), end=at(value_row, True))
    b.coreml_update_state(state=state, value=cache)
    return cache
