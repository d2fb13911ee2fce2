"""Shape and data-movement ops. They return numpy views wherever numpy can."""

from __future__ import annotations

import numpy as np

from anechat.runtime.milexec.ops import OpArgs, kernel


@kernel("reshape")
def reshape(a: OpArgs):
    if a.is_const("shape"):
        shape = tuple(a.static_list("shape"))
        return (lambda x: x.reshape(shape)), ["x"]
    return (lambda x, shape: x.reshape(tuple(int(s) for s in shape))), ["x", "shape"]


@kernel("transpose")
def transpose(a: OpArgs):
    perm = tuple(a.static_list("perm"))
    return (lambda x: x.transpose(perm)), ["x"]


@kernel("expand_dims")
def expand_dims(a: OpArgs):
    axes = tuple(a.static_list("axes"))
    return (lambda x: np.expand_dims(x, axes)), ["x"]


@kernel("squeeze")
def squeeze(a: OpArgs):
    listed = a.static_list("axes", None)
    axes = tuple(listed) if listed else None
    return (lambda x: np.squeeze(x, axis=axes)), ["x"]


@kernel("concat")
def concat(a: OpArgs):
    axis = int(a.static("axis"))
    n = len(a.op.inputs["values"]) if isinstance(a.op.inputs["values"], list) else 1
    names = [f"values[{i}]" for i in range(n)]
    return (lambda *xs: np.concatenate(xs, axis=axis)), names


@kernel("stack")
def stack(a: OpArgs):
    axis = int(a.static("axis"))
    n = len(a.op.inputs["values"])
    return (lambda *xs: np.stack(xs, axis=axis)), [f"values[{i}]" for i in range(n)]


@kernel("split")
def split(a: OpArgs):
    axis = int(a.static("axis"))
    sizes = a.static_list("split_sizes", None)
    parts = 0 if sizes else int(a.static("num_splits"))
    cache: dict = {}  # x.shape → index tuples: np.split is slow for the per-token path

    def f(x):
        if x.shape not in cache:
            ax = axis % x.ndim
            widths = sizes or [x.shape[ax] // parts] * parts
            bounds = np.cumsum([0] + list(widths))
            cache[x.shape] = [
                tuple(slice(int(b), int(e)) if i == ax else slice(None) for i in range(x.ndim))
                for b, e in zip(bounds[:-1], bounds[1:])
            ]
        return tuple(x[idx] for idx in cache[x.shape])

    return f, ["x"]


def _slices(rank, begin, end, stride, begin_mask, end_mask, squeeze_mask):
    """MIL slice_by_index arguments → a numpy index tuple."""
    index: list[int | slice] = []
    for i in range(rank):
        st = int(stride[i]) if stride is not None else 1
        if squeeze_mask and squeeze_mask[i]:
            index.append(int(begin[i]))
            continue
        b = None if (begin_mask and begin_mask[i]) else int(begin[i])
        e = None if (end_mask and end_mask[i]) else int(end[i])
        index.append(slice(b, e, st))
    return tuple(index)


def _masks(a: OpArgs):
    """(stride, begin_mask, end_mask, squeeze_mask), each None when the op leaves it out."""

    def opt(k):
        v = a.static(k, None)
        return None if v is None else [bool(x) for x in np.asarray(v).reshape(-1)]

    return a.static_list("stride", None), opt("begin_mask"), opt("end_mask"), opt("squeeze_mask")


@kernel("slice_by_index")
def slice_by_index(a: OpArgs):
    stride, bm, em, sm = _masks(a)
    if a.is_const("begin") and a.is_const("end"):
        begin, end = a.static_list("begin"), a.static_list("end")
        index = _slices(len(begin), begin, end, stride, bm, em, sm)
        return (lambda x: x[index]), ["x"]
    return (lambda x, begin, end: x[_slices(x.ndim, begin, end, stride, bm, em, sm)]), ["x", "begin", "end"]


@kernel("slice_by_size")
def slice_by_size(a: OpArgs):
    def f(x, begin, size):
        return x[tuple(slice(int(b), None if int(s) == -1 else int(b) + int(s)) for b, s in zip(begin, size))]

    return f, ["x", "begin", "size"]


@kernel("slice_update")
def slice_update(a: OpArgs):
    stride, bm, em, sm = _masks(a)
    # The plan tells us when x dies here: then write into it instead of copying (the KV cache update).
    inplace = a.inplace_ok
    plain = stride is None and not any(bm or []) and not any(em or []) and not any(sm or [])

    def f(x, update, begin, end):
        out = x if inplace else x.copy()
        if plain:  # the KV-cache write: a box given by begin/end, once per layer and token
            out[tuple(map(slice, begin.tolist(), end.tolist()))] = update
        else:
            out[_slices(x.ndim, begin, end, stride, bm, em, sm)] = update
        return out

    return f, ["x", "update", "begin", "end"]


@kernel("gather")
def gather(a: OpArgs):
    axis = int(a.static("axis", 0))
    if int(a.static("batch_dims", 0)) != 0:
        raise a.error("batch_dims other than 0 is not supported")
    if a.is_const("x") and axis == 0:
        from anechat.runtime.milexec.packed import PackedWeight

        table = a.weight("x")
        if isinstance(table, PackedWeight):  # an embedding lookup: only the rows asked for are widened
            rows = table.n

            def lookup(indices):
                idx = np.asarray(indices)
                if idx.size and (idx.min() < -rows or idx.max() >= rows):
                    raise IndexError(f"index {int(idx.max() if idx.max() >= rows else idx.min())} is out of bounds for axis 0 with size {rows}")
                return table.take(np.where(idx < 0, idx + rows, idx))

            return lookup, ["indices"]

    def f(x, indices):
        idx = np.asarray(indices)
        idx = np.where(idx < 0, idx + x.shape[axis], idx)
        return np.take(x, idx, axis=axis)

    return f, ["x", "indices"]


@kernel("gather_along_axis")
def gather_along_axis(a: OpArgs):
    axis = int(a.static("axis", 0))
    return (lambda x, indices: np.take_along_axis(x, np.asarray(indices, dtype=np.int64), axis=axis)), ["x", "indices"]


@kernel("tile")
def tile(a: OpArgs):
    reps = tuple(a.static_list("reps"))
    return (lambda x: np.tile(x, reps)), ["x"]


@kernel("fill")
def fill(a: OpArgs):
    value = a.static("value", 0.0)
    return (lambda shape: np.full(tuple(int(s) for s in shape), value, dtype=a.compute_dtype)), ["shape"]


@kernel("shape")
def shape(a: OpArgs):
    return (lambda x: np.array(x.shape, dtype=np.int32)), ["x"]


@kernel("range_1d")
def range_1d(a: OpArgs):
    return (lambda start, end, step: np.arange(start, end, step)), ["start", "end", "step"]


@kernel("band_part")
def band_part(a: OpArgs):
    lower, upper = int(a.static("lower", -1)), int(a.static("upper", -1))

    def f(x):
        rows, cols = x.shape[-2:]
        d = np.arange(cols)[None, :] - np.arange(rows)[:, None]
        keep = np.ones((rows, cols), bool)
        if lower >= 0:
            keep &= d >= -lower
        if upper >= 0:
            keep &= d <= upper
        return np.where(keep, x, np.zeros((), x.dtype))

    return f, ["x"]
