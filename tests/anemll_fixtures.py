"""Tiny model directories laid out the way ANEMLL builds them, made from anechat's own conversions by
editing their programs: what ANEMLL's converters do differently (read in Anemll/Anemll 0.3.4 and the
0.3.5 fork bhctsntrk/Anemll: anemll/models/llama_model.py, ane_converter/qwen_converter.py,
utils/generate_meta_yaml.py, tests/chat.py) is reproduced here, and the parts are written as compiled
`.mlmodelc` directories (text model.mil + weights), the form ANEMLL publishes.

- The last chunk's `prefill` skips the final norm and returns only the block's first row (1, 1, H)
  ("Skipping final normalization for prefill, data not used!").
- Argmax heads split the vocabulary with divmod (the first `rem` heads one larger); meta.yaml may carry
  vocab_size and lm_head_chunk_sizes, or neither.
- 0.3.5 prefill (and older infer) functions may take `update_mask` (1, 1, N, S), N = max(state length,
  sliding window), not the context.
- meta.yaml has no `anechat` section.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import yaml

from anechat.runtime.milexec.ir import Function, Op, TensorType, Var
from anechat.runtime.milexec.miltext_write import dump_mil
from anechat.runtime.milexec.proto import read_mlpackage


def _const(fn_ops: list, name: str, value: np.ndarray, dtype: str) -> Var:
    value = np.asarray(value)
    fn_ops.append(Op("const", {}, [name], [TensorType(dtype, value.shape)], {"val": value}))
    return Var(name)


def first_row_without_norm(fn: Function, hidden: int) -> None:
    """Make a last chunk's prefill end as ANEMLL's does: the residual stream before the final norm, row 0."""
    norm = [op for op in fn.ops if op.type == "layer_norm"][-1]
    concat = next(op for op in fn.ops if norm.inputs["x"].name in op.outputs)
    residual = concat.inputs["values"][0]  # [x, -x] → x: the stream before the norm, (1, H, 1, S)
    fn.ops = [op for op in fn.ops if "output_hidden_states" not in op.outputs]
    ops = fn.ops
    b = _const(ops, "anemll_row0_begin", np.zeros(4, np.int32), "int32")
    e = _const(ops, "anemll_row0_end", np.array([1, hidden, 1, 1], np.int32), "int32")
    ops.append(Op("slice_by_index", {"x": residual, "begin": b, "end": e}, ["anemll_row0"], [TensorType("fp16", (1, hidden, 1, 1))]))
    shape = _const(ops, "anemll_row0_shape", np.array([1, hidden, 1], np.int32), "int32")
    ops.append(Op("reshape", {"x": Var("anemll_row0"), "shape": shape}, ["anemll_row0_r"], [TensorType("fp16", (1, hidden, 1))]))
    perm = _const(ops, "anemll_row0_perm", np.array([0, 2, 1], np.int32), "int32")
    ops.append(Op("transpose", {"x": Var("anemll_row0_r"), "perm": perm}, ["anemll_row0_t"], [TensorType("fp16", (1, 1, hidden))]))
    ops.append(Op("identity", {"x": Var("anemll_row0_t")}, ["output_hidden_states"], [TensorType("fp16", (1, 1, hidden))]))


def declare_update_mask(fn: Function, rows: int) -> None:
    """Add ANEMLL's update_mask input, (1, 1, rows, S). The edited program ignores its values: what is under
    test is that the runtime feeds the declared shape, which Core ML enforces."""
    seq = next(t.shape[1] for n, t in fn.inputs.items() if n in ("input_ids", "hidden_states"))
    fn.inputs["update_mask"] = TensorType("fp16", (1, 1, rows, seq))


def rename_output(fn: Function, old: str, new: str) -> None:
    for op in fn.ops:
        op.outputs = [new if o == old else o for o in op.outputs]
        for k, v in op.inputs.items():
            if isinstance(v, Var) and v.name == old:
                op.inputs[k] = Var(new)
    fn.outputs = [new if o == old else o for o in fn.outputs]


def as_anemll(src: Path, dst: Path, *, edits=None, drop_params=(), set_params=None) -> Path:
    """Copy an anechat conversion to `dst` in ANEMLL's form: every part compiled to .mlmodelc text after
    `edits[part_stem](program)`, meta.yaml without the anechat section and with parameters changed."""
    edits = edits or {}
    dst.mkdir(parents=True)
    meta = yaml.safe_load((src / "meta.yaml").read_text())
    config = meta.pop("anechat")["config"]
    params = meta["model_info"]["parameters"]
    for f in src.iterdir():
        if f.suffix == ".mlpackage":
            program = read_mlpackage(f)
            if f.stem in edits:
                edits[f.stem](program)
            dump_mil(program, dst / (f.stem + ".mlmodelc"))
            for key, value in list(params.items()):
                if value == f.name:
                    params[key] = f.stem
        elif f.is_file() and f.name != "meta.yaml":
            shutil.copy(f, dst / f.name)
    params["vocab_size"] = config["vocab_size"]
    for key in drop_params:
        params.pop(key, None)
    params.update(set_params or {})
    (dst / "meta.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    return dst
