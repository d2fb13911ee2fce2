"""Compressed-weight ops. They only ever see constants, so the plan runs them once at load time. With packed
weights on (a JIT kernel is available), a weight whose grouping the kernels read (palettes or scales per group
of output rows) stays compressed as a PackedWeight; anything else is expanded here, once."""

from __future__ import annotations

import numpy as np

from anechat.runtime.milexec import packed as packing
from anechat.runtime.milexec.ops import OpArgs, dtype_of, kernel
from anechat.runtime.milexec.packed import PackedWeight


def _row_grouped(shape: tuple[int, ...], groups: tuple[int, ...]) -> bool:
    """Groups along the output rows only (every other axis one group), rows divisible among them."""
    return len(shape) >= 2 and shape[0] % groups[0] == 0 and all(g == 1 for g in groups[1:])


def _packable(indices: np.ndarray) -> bool:
    return indices.ndim >= 2 and indices.size >= packing.PACK_MIN_ELEMENTS


def lut_packed(indices: np.ndarray, lut: np.ndarray):
    rank = indices.ndim
    if lut.ndim == rank + 2 and lut.shape[-1] == 1 and _packable(indices) and _row_grouped(indices.shape, lut.shape[:rank]):
        groups = lut.shape[0]
        return PackedWeight.lut_rows(indices, lut.reshape(groups, lut.shape[rank]), indices.shape[0] // groups)
    return lut_to_dense(indices, lut)


def shift_scale_packed(data: np.ndarray, scale: np.ndarray, offset: np.ndarray | None = None):
    ok = (
        data.dtype == np.int8 and _packable(data) and scale.ndim == data.ndim and scale.shape[0] == data.shape[0]
        and all(d == 1 for d in data.shape[2:]) and all(s == 1 for s in scale.shape[2:])
        and data.shape[1] % scale.shape[1] == 0 and (offset is None or offset.shape == scale.shape)
    )
    if not ok:
        return blockwise_shift_scale(data, scale, offset)
    blocks = scale.shape[1]
    n = data.shape[0]
    return PackedWeight.int8(data, scale.reshape(n, blocks), None if offset is None else offset.reshape(n, blocks))


def lut_to_dense(indices: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """iOS18 form: lut has rank(indices)+2 dims [groups per axis..., palette, vector]; each output element
    reads the palette of its group."""
    rank = indices.ndim
    if lut.ndim != rank + 2 or lut.shape[-1] != 1:
        raise ValueError(f"unsupported LUT shape {lut.shape} for indices {indices.shape}")
    groups = lut.shape[:rank]
    block = [d // g for d, g in zip(indices.shape, groups)]
    group_index = np.zeros(indices.shape, dtype=np.int32)
    for axis, (g, b) in enumerate(zip(groups, block)):
        if g > 1:
            shape = [1] * rank
            shape[axis] = indices.shape[axis]
            group_index = group_index * g + (np.arange(indices.shape[axis], dtype=np.int32) // b).reshape(shape)
    flat = lut.reshape(-1, lut.shape[rank])
    return flat[group_index, indices.astype(np.int32)]


def _lut_ios16(indices: np.ndarray, lut: np.ndarray, shape) -> np.ndarray:
    bits = int(np.log2(lut.shape[0]))
    from anechat.runtime.milexec.weights import unpack_bits

    count = int(np.prod(shape))
    return lut[unpack_bits(indices, bits, count)].reshape(shape)


@kernel("constexpr_lut_to_dense")
def constexpr_lut_to_dense(a: OpArgs):
    if a.has("shape"):  # iOS16: packed uint8 indices + 1-D lut + shape
        shape = tuple(a.static_list("shape"))
        return (lambda indices, lut: _lut_ios16(indices, lut, shape)), ["indices", "lut"]
    return (lut_packed if a.packed else lut_to_dense), ["indices", "lut"]


def blockwise_shift_scale(data: np.ndarray, scale: np.ndarray, offset: np.ndarray | None = None) -> np.ndarray:
    out = data.astype(np.float32)
    for axis, (d, s) in enumerate(zip(data.shape, scale.shape)):
        if s != d:
            scale = np.repeat(scale, d // s, axis)
            if offset is not None:
                offset = np.repeat(offset, d // s, axis)
    if offset is not None:
        out -= offset.astype(np.float32)
    return out * scale.astype(np.float32)


@kernel("constexpr_blockwise_shift_scale")
def constexpr_blockwise_shift_scale(a: OpArgs):
    f = shift_scale_packed if a.packed else blockwise_shift_scale
    if a.has("offset"):
        return f, ["data", "scale", "offset"]
    return f, ["data", "scale"]


@kernel("constexpr_affine_dequantize")
def constexpr_affine_dequantize(a: OpArgs):
    axis = int(a.static("axis"))

    def f(q, zero_point, scale):
        shape = [1] * q.ndim
        shape[axis] = -1
        zp = np.asarray(zero_point, np.float32)
        sc = np.asarray(scale, np.float32)
        zp = zp.reshape(shape) if zp.ndim else zp
        sc = sc.reshape(shape) if sc.ndim else sc
        return (q.astype(np.float32) - zp) * sc

    return f, ["quantized_data", "zero_point", "scale"]


@kernel("constexpr_cast")
def constexpr_cast(a: OpArgs):
    target = dtype_of(a.static("output_dtype"), a.compute_dtype)
    return (lambda source_val: source_val.astype(target)), ["source_val"]
