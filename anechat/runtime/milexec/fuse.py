"""Peephole fusions applied to a function before it is compiled into a plan.

Rotary embeddings (x·cos + (x·P)·sin with P a signed permutation) and SwiGLU (split → silu → mul) become
one step each: fewer steps and fewer temporaries on the per-token path.

Attention over a static-size KV cache reaches us as matmul(q, Kᵀ) → [reshape] → add(mask) → softmax →
[reshape] → matmul(·, V) over the whole context, although the mask hides every position not yet written.
`attention` computes the same thing over the visible columns only: exact, since masked columns get
probability exp(-inf) = 0, and proportional to the tokens actually in the cache instead of its size.

RMSNorm reaches Core ML as LayerNorm over [x, −x] (the ANE has no RMSNorm): mul(x, −1) → concat →
layer_norm → slice of the first half. On the CPU that is four steps and a tensor twice the size;
`rms_norm` computes the same value directly. Only exact matches are fused, so any other use of
LayerNorm is left alone."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from anechat.runtime.milexec.ir import Function, Op, Var


def _uses(fn: Function) -> Counter:
    uses: Counter = Counter()
    for op in fn.ops:
        for e in op.input_vars():
            uses[e.name] += 1
    for name in fn.outputs:
        uses[name] += 1
    return uses


def _const(consts: dict, v):
    if isinstance(v, Var):
        return consts.get(v.name)
    return v


def fuse_rms_norm(fn: Function) -> Function:
    consts, consumers, uses = _graph(fn)
    producer = {name: op for op in fn.ops for name in op.outputs}
    replace: dict[int, Op] = {}
    drop: set[int] = set()
    for ln in fn.ops:
        if ln.type != "layer_norm" or ln.inputs.get("beta") is not None:
            continue
        cat = _made_by(producer, ln.inputs.get("x"))
        if cat is None or cat.type != "concat" or uses[cat.outputs[0]] != 1:
            continue
        values = cat.inputs.get("values")
        if not isinstance(values, list) or len(values) != 2 or not all(isinstance(v, Var) for v in values):
            continue
        x, neg_var = values
        neg = producer.get(neg_var.name)
        if neg is None or neg.type != "mul" or uses[neg.outputs[0]] != 1:
            continue
        factor = [_const(consts, neg.inputs.get(k)) for k in ("x", "y")]
        operand = [neg.inputs.get(k) for k in ("x", "y")]
        if not any(f is not None and np.all(np.asarray(f) == -1) and isinstance(o, Var) and o.name == x.name
                   for f, o in zip(reversed(factor), operand)):
            continue
        axis = _const(consts, cat.inputs.get("axis"))
        axes = _const(consts, ln.inputs.get("axes"))
        if axis is None or axes is None or np.asarray(axes).size != 1 or int(np.asarray(axes).reshape(-1)[0]) != int(axis):
            continue
        readers = consumers.get(ln.outputs[0], [])
        if len(readers) != 1 or readers[0].type != "slice_by_index" or uses[ln.outputs[0]] != 1:
            continue
        sl = readers[0]
        width = _half_slice_width(sl, consts, int(axis))
        if width is None:
            continue
        gamma = _const(consts, ln.inputs.get("gamma"))
        if ln.inputs.get("gamma") is not None and gamma is None:
            continue
        inputs = {"x": x, "axis": int(axis), "epsilon": _const(consts, ln.inputs.get("epsilon"))}
        if gamma is not None:
            g = np.asarray(gamma)
            if g.shape[0] != 2 * width or not np.array_equal(g[:width], g[width:]):
                continue
            inputs["gamma"] = np.ascontiguousarray(g[:width])
        fused = Op("anechat_rms_norm", inputs, list(sl.outputs), list(sl.output_types))
        replace[id(sl)] = fused
        drop.update({id(neg), id(cat), id(ln)})
    return _rebuild(fn, replace, drop)


def _half_slice_width(sl: Op, consts: dict, axis: int) -> int | None:
    """The width when `sl` keeps exactly indices [0, width) along `axis` and everything elsewhere."""
    begin = _const(consts, sl.inputs.get("begin"))
    end = _const(consts, sl.inputs.get("end"))
    if begin is None or end is None or sl.inputs.get("stride") is not None or sl.inputs.get("squeeze_mask") is not None:
        return None
    begin, end = np.asarray(begin).reshape(-1), np.asarray(end).reshape(-1)
    rank = begin.size
    ax = axis % rank
    end_mask = _const(consts, sl.inputs.get("end_mask"))
    end_mask = np.zeros(rank, bool) if end_mask is None else np.asarray(end_mask, bool).reshape(-1)
    begin_mask = _const(consts, sl.inputs.get("begin_mask"))
    begin_mask = np.zeros(rank, bool) if begin_mask is None else np.asarray(begin_mask, bool).reshape(-1)
    if any(begin[i] != 0 and not begin_mask[i] for i in range(rank)):
        return None
    if end_mask[ax] or end[ax] <= 0:
        return None
    if not all(end_mask[i] for i in range(rank) if i != ax):
        return None
    return int(end[ax])


def _made_by(producer: dict[str, Op], value: Any) -> Op | None:
    """The op whose output `value` is; None for a constant or a function input."""
    return producer.get(value.name) if isinstance(value, Var) else None


def _single_consumer(consumers: dict, uses: Counter, name: str, op_type: str) -> Op | None:
    readers = consumers.get(name, [])
    if uses[name] == 1 and len(readers) == 1 and readers[0].type == op_type:
        return readers[0]
    return None


def _flag(consts: dict, op: Op, key: str) -> bool:
    v = _const(consts, op.inputs.get(key))
    return bool(v) if v is not None else False


def fuse_attention(fn: Function) -> Function:
    consts, consumers, uses = _graph(fn)
    replace: dict[int, Op] = {}
    drop: set[int] = set()
    for qk in fn.ops:
        if qk.type != "matmul" or not _flag(consts, qk, "transpose_y") or _flag(consts, qk, "transpose_x"):
            continue
        if not all(isinstance(qk.inputs.get(k), Var) and qk.inputs[k].name not in consts for k in ("x", "y")):
            continue
        chain = [qk]
        cur = qk
        pre_shape = None
        nxt = _single_consumer(consumers, uses, cur.outputs[0], "reshape")
        if nxt is not None:
            pre_shape = _const(consts, nxt.inputs.get("shape"))
            chain.append(nxt)
            cur = nxt
        add = _single_consumer(consumers, uses, cur.outputs[0], "add")
        if add is None or (pre_shape is None and nxt is not None):
            continue
        other = [v for k, v in add.inputs.items() if k in ("x", "y") and getattr(v, "name", None) != cur.outputs[0]]
        if len(other) != 1 or not isinstance(other[0], Var) or other[0].name not in fn.inputs:
            continue  # the mask must be a function input, the same for every layer
        mask = other[0]
        sm = _single_consumer(consumers, uses, add.outputs[0], "softmax")
        if sm is None or int(_const(consts, sm.inputs.get("axis")) or 0) not in (-1, len(fn.inputs[mask.name].shape) - 1):
            continue
        chain += [add, sm]
        cur = sm
        post_shape = None
        nxt = _single_consumer(consumers, uses, cur.outputs[0], "reshape")
        if nxt is not None:
            post_shape = _const(consts, nxt.inputs.get("shape"))
            if post_shape is None:
                continue
            chain.append(nxt)
            cur = nxt
        pv = _single_consumer(consumers, uses, cur.outputs[0], "matmul")
        if pv is None or _flag(consts, pv, "transpose_x") or _flag(consts, pv, "transpose_y"):
            continue
        if getattr(pv.inputs.get("x"), "name", None) != cur.outputs[0] or not isinstance(pv.inputs.get("y"), Var):
            continue
        ctx = fn.inputs[mask.name].shape[-1]
        if ctx is None or any(s is not None and int(np.asarray(s).reshape(-1)[-1]) != ctx for s in (pre_shape, post_shape)):
            continue
        inputs = {"q": qk.inputs["x"], "k": qk.inputs["y"], "v": pv.inputs["y"], "mask": mask}
        attributes = {"pre_shape": pre_shape, "post_shape": post_shape}
        replace[id(pv)] = Op("anechat_attention", inputs, list(pv.outputs), list(pv.output_types), attributes)
        drop.update(id(op) for op in chain)
    return _rebuild(fn, replace, drop)


def _graph(fn: Function):
    consts = {op.outputs[0]: op.attributes.get("val") for op in fn.ops if op.type == "const"}
    consumers: dict[str, list[Op]] = {}
    for op in fn.ops:
        for e in op.input_vars():
            consumers.setdefault(e.name, []).append(op)
    return consts, consumers, _uses(fn)


def _rebuild(fn: Function, replace: dict, drop: set) -> Function:
    if not replace:
        return fn
    ops = [replace.get(id(op), op) for op in fn.ops if id(op) not in drop]
    return Function(fn.name, fn.inputs, fn.states, fn.outputs, ops, fn.opset)


def fuse_rope(fn: Function) -> Function:
    from anechat.runtime.milexec.ops.nn import signed_permutation

    consts, consumers, uses = _graph(fn)
    producer = {name: op for op in fn.ops for name in op.outputs}
    replace: dict[int, Op] = {}
    drop: set[int] = set()
    for add in fn.ops:
        if add.type != "add":
            continue
        made = (_made_by(producer, add.inputs.get(k)) for k in ("x", "y"))
        muls = [m for m in made if m is not None and m.type == "mul" and uses[m.outputs[0]] == 1]
        if len(muls) != 2:
            continue
        for direct, rotated in (muls, muls[::-1]):
            mm = None
            for k, other in (("x", "y"), ("y", "x")):
                cand = _made_by(producer, rotated.inputs.get(k))
                if cand is not None and cand.type == "matmul" and uses[cand.outputs[0]] == 1:
                    mm, sin = cand, rotated.inputs.get(other)
                    break
            if mm is None or _flag(consts, mm, "transpose_x") or _flag(consts, mm, "transpose_y"):
                continue
            perm = _const(consts, mm.inputs.get("y"))
            x = mm.inputs.get("x")
            if perm is None or not isinstance(x, Var) or signed_permutation(np.asarray(perm, np.float32)) is None:
                continue
            names = {k: getattr(v, "name", None) for k, v in direct.inputs.items()}
            if names.get("x") == x.name:
                cos = direct.inputs.get("y")
            elif names.get("y") == x.name:
                cos = direct.inputs.get("x")
            else:
                continue
            inputs = {"x": x, "cos": cos, "sin": sin, "perm": np.asarray(perm)}
            replace[id(add)] = Op("anechat_rope", inputs, list(add.outputs), list(add.output_types))
            drop.update({id(mm), id(direct), id(rotated)})
            break
    return _rebuild(fn, replace, drop)


def fuse_swiglu(fn: Function) -> Function:
    consts, consumers, uses = _graph(fn)
    replace: dict[int, Op] = {}
    drop: set[int] = set()
    for split in fn.ops:
        if split.type != "split" or len(split.outputs) != 2 or any(uses[o] != 1 for o in split.outputs):
            continue
        gate, up = split.outputs
        silu = _single_consumer(consumers, uses, gate, "silu")
        if silu is None:
            continue
        mul = _single_consumer(consumers, uses, silu.outputs[0], "mul")
        if mul is None or {getattr(v, "name", None) for v in mul.inputs.values()} != {silu.outputs[0], up}:
            continue
        axis = _const(consts, split.inputs.get("axis"))
        sizes = _const(consts, split.inputs.get("split_sizes"))
        if axis is None or (sizes is not None and len(set(np.asarray(sizes).reshape(-1).tolist())) != 1):
            continue
        inputs = {"x": split.inputs["x"], "axis": int(axis)}
        replace[id(mul)] = Op("anechat_swiglu", inputs, list(mul.outputs), list(mul.output_types))
        drop.update({id(split), id(silu)})
    return _rebuild(fn, replace, drop)


def fuse_all(fn: Function) -> Function:
    return fuse_swiglu(fuse_rope(fuse_attention(fuse_rms_norm(fn))))
