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


# Input elements that share one int8 scale (and offset): the block of GGUF's Q8_0/Q4_0/Q4_1/Q5_x, so a weight
# that a GGUF file already stores on such a grid keeps it (docs/quantization.md).
INT8_BLOCK = 32
# Steps per block range tried by the affine candidates: 255 spans the range with every code; 240 (= 16 · 15)
# and 248 (= 8 · 31) put a GGUF Q4_x / Q5_x block's 16 or 32 levels exactly on the int8 grid (with a scale that
# is their step / 16 or / 8, exact in fp16).
_AFFINE_STEPS = (240, 248, 255)
_ROWS_AT_ONCE = 4096  # rows quantized together (bounds the temporaries of a 49k-row lm_head)


@dataclass(frozen=True)
class Int8:
    """A weight (out, in, ...) as linear int8, as iOS18 `constexpr_blockwise_shift_scale` stores it
    (`--int8`): value = scale · (data − offset), one fp16 scale (and offset) per block of `INT8_BLOCK` input
    elements of a row, or per row when the row does not split into such blocks. The offset is left out when no
    block needs one (then the blocks are symmetric: 8.5 bits a weight, else 9)."""

    data: np.ndarray  # int8, the weight's shape
    scale: np.ndarray  # fp16 (out, in / block, 1, ...): same rank as data
    offset: np.ndarray | None = None  # fp16, scale's shape

    @classmethod
    def quantize(cls, weight: np.ndarray, block: int = INT8_BLOCK) -> Int8:
        """Per block, the candidate grid with the least squared error: symmetric (step peak/127, offset 0) or
        affine with a step of range/k for each k in _AFFINE_STEPS (offset centring the codes). A weight that
        was quantized before on a coarser grid of the same blocks (a GGUF file's Q8_0 or Q4_1) comes back
        almost exactly, where one scale per row re-rounds it onto a coarser, misaligned grid."""
        w = np.asarray(weight, np.float32)
        n = w.shape[0]
        k = w.size // n
        b = block if block and k % block == 0 else k
        flat = w.reshape(n, k // b, b)
        data = np.empty((n, k // b, b), np.int8)
        scale = np.empty((n, k // b, 1), np.float16)
        offset = np.empty((n, k // b, 1), np.float16)
        for r in range(0, n, _ROWS_AT_ONCE):
            rows = slice(r, r + _ROWS_AT_ONCE)
            data[rows], scale[rows], offset[rows] = _best_grid(flat[rows])
        shape = (n, k // b) + (1,) * (w.ndim - 2)
        off = offset.reshape(shape) if np.any(offset) else None
        return cls(data.reshape(w.shape), scale.reshape(shape), off)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def size(self) -> int:
        return self.data.size

    @property
    def block(self) -> int:
        return self.data.shape[1] // self.scale.shape[1]

    def dense(self) -> np.ndarray:
        q = self.data.astype(np.float32)

        def expand(a: np.ndarray) -> np.ndarray:
            return np.repeat(a.astype(np.float32), self.block, axis=1)

        if self.offset is not None:
            q -= expand(self.offset)
        return q * expand(self.scale)

    def __getitem__(self, rows: slice) -> Int8:
        return Int8(self.data[rows], self.scale[rows], None if self.offset is None else self.offset[rows])

    def with_trailing_axes(self, count: int) -> Int8:
        def grow(a):
            return None if a is None else a.reshape(a.shape + (1,) * count)

        return Int8(grow(self.data), grow(self.scale), grow(self.offset))

    def __mul__(self, scale: float) -> Int8:
        return Int8(self.data, (self.scale.astype(np.float32) * scale).astype(np.float16), self.offset)


def int8_bytes(shape: tuple[int, ...], block: int = INT8_BLOCK, offsets: bool = True) -> int:
    """What Int8.quantize stores for a weight of this shape: a byte per value, an fp16 scale and (when any block
    is affine, as nearly always) an fp16 offset per block."""
    n = shape[0]
    k = int(np.prod(shape[1:], dtype=np.int64))
    blocks = k // block if block and k % block == 0 else 1
    return n * k + (4 if offsets else 2) * n * blocks


def _fp16(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float16).astype(np.float32)


def _best_grid(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x (rows, blocks, block) → int8 codes, fp16 scales and fp16 offsets (rows, blocks, 1) of each block's best
    candidate grid (Int8.quantize)."""
    lo = x.min(-1, keepdims=True)
    hi = x.max(-1, keepdims=True)
    peak = np.maximum(-lo, hi)
    span = hi - lo

    def grid(s: np.ndarray, off: np.ndarray, low: int):
        s = np.where(s > 0, s, 1.0)  # an all-zero block
        q = np.clip(np.rint(x / s + off), low, 127)
        return q, s, off, np.square(s * (q - off) - x).sum(-1, keepdims=True)

    q, s, off, err = grid(_fp16(peak / 127.0), np.zeros_like(peak), -127)
    with np.errstate(divide="ignore", invalid="ignore"):
        for steps in _AFFINE_STEPS:
            s_k = _fp16(span / steps)
            # the block's minimum on code `low`, the codes centred in int8 (240 steps: -120..120; 255: -128..127)
            low = -((steps + 1) // 2)
            off_k = _fp16(np.nan_to_num(low - lo / np.where(s_k > 0, s_k, 1.0)))
            q_k, s_k, off_k, err_k = grid(s_k, off_k, -128)
            better = err_k < err
            q, s, off, err = (np.where(better, a, b) for a, b in ((q_k, q), (s_k, s), (off_k, off), (err_k, err)))
    return q.astype(np.int8), s.astype(np.float16), off.astype(np.float16)


def weight_const(weight, trailing_axes: int = 0):
    """A weight as a program constant: fp16 values, or indices and palettes that `constexpr_lut_to_dense`
    expands on the device, or int8 values and scales for `constexpr_blockwise_shift_scale`. `trailing_axes`
    unit axes are appended (a conv's (out, in) → (out, in, 1, 1))."""
    if isinstance(weight, Int8):
        from coremltools.converters.mil import Builder

        q = weight.with_trailing_axes(trailing_axes)
        if q.offset is None:
            return Builder.constexpr_blockwise_shift_scale(data=q.data, scale=q.scale)
        return Builder.constexpr_blockwise_shift_scale(data=q.data, scale=q.scale, offset=q.offset)
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
