"""Matrix and normalisation ops: where the time goes, so constants are laid out for BLAS at load."""

from __future__ import annotations

import numpy as np

from anechat.runtime.milexec import jit
from anechat.runtime.milexec.ops import OpArgs, kernel
from anechat.runtime.milexec.packed import PackedWeight
from anechat.runtime.threads import POLICY


def _f32(a: OpArgs, w) -> np.ndarray:
    return np.ascontiguousarray(w, dtype=a.compute_dtype)


@kernel("conv")
def conv(a: OpArgs):
    if not a.is_const("weight"):
        raise a.error("dynamic conv weights are not supported")
    held = a.weight("weight")
    bias = a.static("bias", None)
    bias = None if bias is None else _f32(a, bias)
    strides = a.static_list("strides", None) or [1] * (held.ndim - 2)
    dilations = a.static_list("dilations", None) or [1] * (held.ndim - 2)
    groups = int(a.static("groups", 1))
    pad_type = a.static("pad_type", "valid")
    pad = a.static_list("pad", None) or [0] * (2 * (held.ndim - 2))
    pointwise = held.shape[2:] == (1,) * (held.ndim - 2) and groups == 1 and set(strides) == {1} and not any(pad)
    if pointwise and isinstance(held, PackedWeight):
        return _pointwise_packed(held, bias), ["x"]
    w = _f32(a, held.dense() if isinstance(held, PackedWeight) else held)
    if pointwise:
        return _pointwise(w, bias), ["x"]
    depthwise = w.ndim == 4 and groups == w.shape[0] and w.shape[1:3] == (1, 1) and bias is None
    if depthwise and set(strides) == {1} and set(dilations) == {1} and pad_type == "valid":
        return _depthwise_row(w), ["x"]
    return _general_conv(w, bias, strides, dilations, groups, pad_type, pad), ["x"]


def _pointwise(w: np.ndarray, bias: np.ndarray | None):
    """1×1 conv on (1, C, *spatial): one BLAS matmul of the (out, in) weight with a (in, positions) view."""
    w2 = np.ascontiguousarray(w.reshape(w.shape[0], w.shape[1]))
    b2 = None if bias is None else bias.reshape(-1, 1)
    out_c = w.shape[0]

    def f(x):
        spatial = x.shape[2:]
        POLICY.blas_for(x.size * out_c)
        if x.size == x.shape[1]:  # one position: a matrix-vector product (BLAS gemv)
            y = w2 @ x.reshape(-1)
            if b2 is not None:
                y += b2[:, 0]
            return y.reshape((1, out_c, *spatial))
        if x.shape[0] == 1:
            y = w2 @ x.reshape(x.shape[1], -1)
            if b2 is not None:
                y += b2
            return y.reshape((1, out_c, *spatial))
        y = np.einsum("oi,nip->nop", w2, x.reshape(x.shape[0], x.shape[1], -1))
        if b2 is not None:
            y += b2
        return y.reshape((x.shape[0], out_c, *spatial))

    return f


def _pointwise_packed(w: PackedWeight, bias: np.ndarray | None):
    """1×1 conv with a compressed weight: a kernel over the compressed rows for one position, banded
    widening + BLAS for many."""
    b = None if bias is None else np.asarray(bias, np.float32).reshape(-1)
    out_c = w.n

    def f(x):
        spatial = x.shape[2:]
        if x.size == x.shape[1]:
            y = w.matvec(x.reshape(-1))
            if b is not None:
                y += b
            return y.reshape((1, out_c, *spatial))
        ys = [w.matmul(np.ascontiguousarray(xi.reshape(x.shape[1], -1), dtype=np.float32)) for xi in x]
        y = np.stack(ys)
        if b is not None:
            y += b.reshape(1, -1, 1)
        return y.reshape((x.shape[0], out_c, *spatial))

    return f


def _depthwise_row(w: np.ndarray):
    """Depthwise conv along the last axis of (1, C, 1, T) (a causal conv1d over time, Gated DeltaNet's):
    a sum of K shifted products instead of a Python loop over C groups."""
    k = w.shape[-1]
    taps = np.ascontiguousarray(w[:, 0, 0, :].T).reshape(k, 1, -1, 1, 1)  # tap j: a (1, C, 1, 1) column

    def f(x):
        out_len = x.shape[-1] - k + 1
        y = x[..., 0:out_len] * taps[0]
        for j in range(1, k):
            y += x[..., j : j + out_len] * taps[j]
        return y

    return f


def _general_conv(w, bias, strides, dilations, groups, pad_type, pad):
    nd = w.ndim - 2
    k = w.shape[2:]

    def f(x):
        if pad_type == "same":
            pads = []
            for i in range(nd):
                eff = (k[i] - 1) * dilations[i] + 1
                out = -(-x.shape[2 + i] // strides[i])
                total = max((out - 1) * strides[i] + eff - x.shape[2 + i], 0)
                pads.append((total // 2, total - total // 2))
        elif pad_type == "custom":
            pads = [(pad[2 * i], pad[2 * i + 1]) for i in range(nd)]
        else:
            pads = [(0, 0)] * nd
        xp = np.pad(x, [(0, 0), (0, 0), *pads])
        windows = np.lib.stride_tricks.sliding_window_view(
            xp, [(k[i] - 1) * dilations[i] + 1 for i in range(nd)], axis=tuple(range(2, 2 + nd))
        )
        sl = (slice(None), slice(None)) + tuple(slice(None, None, strides[i]) for i in range(nd))
        sl += tuple(slice(None, None, dilations[i]) for i in range(nd))
        windows = windows[sl]  # (N, C, *out, *k)
        n, c = x.shape[:2]
        cg, og = c // groups, w.shape[0] // groups
        outs = []
        for g in range(groups):
            wg = w[g * og : (g + 1) * og]
            xg = windows[:, g * cg : (g + 1) * cg]
            outs.append(np.tensordot(xg, wg, axes=([1, *range(2 + nd, 2 + 2 * nd)], [1, *range(2, 2 + nd)])))
        y = np.concatenate(outs, axis=-1)  # (N, *out, O)
        y = np.moveaxis(y, -1, 1)
        if bias is not None:
            y = y + bias.reshape((1, -1) + (1,) * nd)
        return np.ascontiguousarray(y)

    return f


@kernel("matmul")
def matmul(a: OpArgs):
    tx, ty = bool(a.static("transpose_x", False)), bool(a.static("transpose_y", False))
    if a.is_const("y"):
        y = _f32(a, a.static("y"))
        y = np.ascontiguousarray(np.swapaxes(y, -1, -2)) if ty else y
        perm = None if tx else signed_permutation(y)
        if perm is not None:
            # x @ P for a signed permutation P (the converter's rotate_half): a gather and a sign flip
            src, sign = perm
            return (lambda x: np.take(x, src, axis=-1) * sign), ["x"]
        cols = y.shape[-1]

        def f_const(x):
            POLICY.blas_for(x.size * cols)
            return np.matmul(np.swapaxes(x, -1, -2) if tx else x, y)

        return f_const, ["x"]

    if ty and not tx:
        # x @ yᵀ as (y @ xᵀ)ᵀ: y (often a slice of the KV cache) stays contiguous for BLAS; only the small
        # query side is transposed. A strided second operand would send numpy down its slow non-BLAS loop.
        def f_ty(x, y):
            POLICY.blas_for(x.size * y.shape[-2])
            if x.shape[-2] < y.shape[-1]:  # few queries (decode): the transposed product is the small copy
                # made contiguous again, or every following elementwise op walks a strided layout
                return np.ascontiguousarray(np.swapaxes(np.matmul(y, np.swapaxes(x, -1, -2)), -1, -2))
            return np.matmul(x, np.ascontiguousarray(np.swapaxes(y, -1, -2)))

        return f_ty, ["x", "y"]

    def f(x, y):
        POLICY.blas_for(x.size * y.shape[-1])
        return np.matmul(np.swapaxes(x, -1, -2) if tx else x, np.swapaxes(y, -1, -2) if ty else y)

    return f, ["x", "y"]


def signed_permutation(y: np.ndarray):
    """(source column for each output column, its sign) when y is a 2-D matrix of one ±1 per column."""
    if y.ndim != 2 or y.shape[0] != y.shape[1] or y.shape[0] > 4096:
        return None
    nonzero = y != 0
    if not (nonzero.sum(axis=0) == 1).all() or not np.isin(y[nonzero], (-1.0, 1.0)).all():
        return None
    src = nonzero.argmax(axis=0)
    if len(set(src.tolist())) != y.shape[0]:
        return None
    return src, y[src, np.arange(y.shape[1])].astype(y.dtype)


@kernel("linear")
def linear(a: OpArgs):
    held = a.weight("weight")
    bias = a.static("bias", None)
    bias = None if bias is None else _f32(a, bias)
    if isinstance(held, PackedWeight) and held.ndim == 2:
        return _linear_packed(held, bias), ["x"]
    w = np.ascontiguousarray(_f32(a, held.dense() if isinstance(held, PackedWeight) else held).T)

    def f(x):
        POLICY.blas_for(x.size * w.shape[1])
        return x @ w if bias is None else x @ w + bias

    return f, ["x"]


def _linear_packed(w: PackedWeight, bias: np.ndarray | None):
    def f(x):
        rows = np.ascontiguousarray(x.reshape(-1, w.k), dtype=np.float32)
        y = w.matvec(rows[0])[None, :] if rows.shape[0] == 1 else w.matmul(rows.T).T
        if bias is not None:
            y = y + bias
        return y.reshape((*x.shape[:-1], w.n))

    return f


@kernel("layer_norm")
def layer_norm(a: OpArgs):
    eps = float(a.static("epsilon", 1e-5))
    gamma, beta = (a.static(k, None) for k in ("gamma", "beta"))
    gamma, beta = (None if v is None else _f32(a, v) for v in (gamma, beta))
    axes = a.static_list("axes", None)
    shaped: dict = {}  # x.shape → (axes, gamma, beta) laid out to broadcast against x

    def prepare(x):
        ax = tuple(sorted(i % x.ndim for i in axes)) if axes is not None else tuple(range(x.ndim))
        dims = [x.shape[i] if i in ax else 1 for i in range(x.ndim)]
        return ax, *(None if v is None else v.reshape(dims) for v in (gamma, beta))

    def f(x):
        if x.shape not in shaped:
            shaped[x.shape] = prepare(x)
        ax, g, b = shaped[x.shape]
        xc = x - x.mean(axis=ax, keepdims=True)
        y = xc / np.sqrt(np.mean(xc * xc, axis=ax, keepdims=True) + eps)
        if g is not None:
            y *= g
        if b is not None:
            y += b
        return y

    return f, ["x"]


@kernel("anechat_rms_norm")
def rms_norm(a: OpArgs):
    """x / sqrt(mean(x², axis) + eps) · gamma — what LayerNorm over [x, −x] computes (see fuse.py)."""
    axis, eps = int(a.static("axis")), float(a.static("epsilon"))
    gamma = a.static("gamma", None)
    gamma = None if gamma is None else _f32(a, gamma)
    shaped: dict = {}

    flat_gamma = None if gamma is None else gamma.reshape(-1)
    rms_rows = jit.KERNELS.get("rms_rows") if a.packed else None
    rms_cols = jit.KERNELS.get("rms_cols") if a.packed else None
    kernel_gamma = np.zeros(0, np.float32) if flat_gamma is None else np.ascontiguousarray(flat_gamma, np.float32)

    def f(x):
        if x.size == x.shape[axis] and x.flags.c_contiguous:  # one position (decode)
            if rms_rows is not None and x.dtype == np.float32:  # one kernel call: 2 µs against numpy's 5
                out = np.empty(x.shape, np.float32)
                rms_rows(x.reshape(1, -1), kernel_gamma, eps, out.reshape(1, -1))
                return out
            v = x.reshape(-1)
            scale = np.float32(1.0 / np.sqrt(float(np.dot(v, v)) / v.size + eps))
            y = v * scale if flat_gamma is None else v * (flat_gamma * scale)
            return y.reshape(x.shape)
        d = x.shape[axis]
        if rms_rows is not None and x.flags.c_contiguous and x.strides[axis] == x.itemsize:
            # several rows, nothing after the axis (decode's per-head q/k norms): one kernel call, not six
            out = np.empty(x.shape, np.float32)
            rms_rows(x.reshape(-1, d), kernel_gamma, eps, out.reshape(-1, d))
            return out
        if rms_cols is not None and x.flags.c_contiguous:
            ax = axis % x.ndim
            out = np.empty(x.shape, np.float32)
            shape3 = (int(np.prod(x.shape[:ax])), d, int(np.prod(x.shape[ax + 1:])))
            rms_cols(x.reshape(shape3), kernel_gamma, eps, out.reshape(shape3))
            return out
        ms = np.mean(np.square(x), axis=axis, keepdims=True)
        ms += eps
        y = x / np.sqrt(ms)
        if gamma is not None:
            if x.ndim not in shaped:
                ax = axis % x.ndim
                shaped[x.ndim] = gamma.reshape([gamma.size if i == ax else 1 for i in range(x.ndim)])
            y *= shaped[x.ndim]
        return y

    return f, ["x"]


@kernel("anechat_rope")
def rope(a: OpArgs):
    """x·cos + (x·P)·sin with P a signed permutation: one gather instead of a matmul (see fuse.fuse_rope)."""
    src, sign = signed_permutation(_f32(a, a.static("perm")))
    rope4 = jit.KERNELS.get("rope4") if a.packed else None
    src_i = np.ascontiguousarray(src, dtype=np.intp)
    sign_f = np.ascontiguousarray(sign, dtype=np.float32)

    def f(x, cos, sin):
        if (rope4 is not None and x.ndim == 4 and cos.ndim == 2 and cos.shape == sin.shape == x.shape[2:]
                and x.dtype == cos.dtype == sin.dtype == np.float32):
            out = np.empty(x.shape, np.float32)
            rope4(x, cos, sin, src_i, sign_f, out)
            return out
        out = x * cos
        out += np.take(x, src, axis=-1) * (sin * sign)
        return out

    return f, ["x", "cos", "sin"]


@kernel("anechat_swiglu")
def swiglu(a: OpArgs):
    """silu(gate) · up for the two halves of x along axis (see fuse.fuse_swiglu)."""
    axis = int(a.static("axis"))

    def f(x):
        half = x.shape[axis] // 2
        gate = np.take(x, np.arange(half), axis=axis) if x.ndim != 4 or axis != 1 else x[:, :half]
        up = np.take(x, np.arange(half, 2 * half), axis=axis) if x.ndim != 4 or axis != 1 else x[:, half:]
        t = np.negative(gate)
        np.exp(t, out=t)
        t += 1.0
        out = gate / t
        out *= up
        return out

    return f, ["x"]


MASKED = -1e4  # a mask value at or below this makes exp() exactly 0 in fp32


# (mask, its visible columns) of the last call, shared by every attention step: one mask array serves all
# layers of a call (each call gets a fresh copy, PortablePart._input), so it is scanned once per call, not per
# layer. One tuple, replaced whole: a thread reading it sees one mask's entry or another's, never a mix.
_VISIBLE: tuple = (None, 0)


def visible(mask) -> int:
    """Columns up to the last one any row may see (masked columns beyond it would get probability 0)."""
    global _VISIBLE
    seen = _VISIBLE
    if seen[0] is mask:
        return seen[1]
    open_cols = (mask.reshape(-1, mask.shape[-1]) > MASKED).any(axis=0)
    n = int(open_cols.size - np.argmax(open_cols[::-1])) if open_cols.any() else open_cols.size
    _VISIBLE = (mask, n)
    return n


@kernel("anechat_attention")
def attention(a: OpArgs):
    """softmax(q·kᵀ + mask)·v over the visible columns only (see fuse.fuse_attention)."""
    pre, post = (a.op.attributes.get(k) for k in ("pre_shape", "post_shape"))
    pre = None if pre is None else [int(d) for d in np.asarray(pre).reshape(-1)]
    post = None if post is None else [int(d) for d in np.asarray(post).reshape(-1)]

    # One query position (decode) with the JIT: one kernel call. The plain numpy path below is its reference.
    attend_one = jit.KERNELS.get("attend_one") if a.packed else None
    # the rows the numpy path's last product yields, (kv heads, group) when the kernel's layout is the same
    rows = tuple(post[:-1]) if post is not None else tuple(pre[:-1]) if pre is not None else None

    def f(q, k, v, mask):
        n = visible(mask)
        if (attend_one is not None and mask.size == mask.shape[-1] and q.ndim == 3 and k.ndim == 3 and v.ndim == 3
                and q.shape[0] == k.shape[0] == v.shape[0] and (rows is None or rows == q.shape[:-1])):
            out = np.empty(q.shape[:-1] + v.shape[-1:], np.float32)
            attend_one(q, k, v, mask.reshape(-1), n, out)
            return out
        POLICY.blas_for(q.size * n)
        keys, values = k[..., :n, :], v[..., :n, :]
        if q.shape[-2] < keys.shape[-1]:
            s = np.ascontiguousarray(np.swapaxes(np.matmul(keys, np.swapaxes(q, -1, -2)), -1, -2))
        else:
            s = np.matmul(q, np.ascontiguousarray(np.swapaxes(keys, -1, -2)))
        if pre is not None:
            s = s.reshape(pre[:-1] + [n])
        s += mask[..., :n]
        s -= s.max(axis=-1, keepdims=True)
        np.exp(s, out=s)
        s /= s.sum(axis=-1, keepdims=True)
        if post is not None:
            s = s.reshape(post[:-1] + [n])
        return np.matmul(s, values)

    return f, ["q", "k", "v", "mask"]


@kernel("softmax")
def softmax(a: OpArgs):
    axis = int(a.static("axis", -1))

    def f(x):
        e = np.subtract(x, x.max(axis=axis, keepdims=True))
        np.exp(e, out=e)
        e /= e.sum(axis=axis, keepdims=True)
        return e

    return f, ["x"]


@kernel("l2_norm")
def l2_norm(a: OpArgs):
    eps = float(a.static("epsilon", 1e-12))

    def f(x):
        axes = tuple(range(max(x.ndim - 3, 0), x.ndim))
        return x / np.sqrt(np.maximum(np.sum(x * x, axis=axes, keepdims=True), eps))

    return f, ["x"]
