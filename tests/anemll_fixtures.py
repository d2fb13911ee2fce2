"""What no model in tests/data/anemll/ (the real output of ANEMLL's converter) shows, made from anechat's own
conversions by editing their programs, as read in ANEMLL's source (Anemll/Anemll 0.3.4 and the 0.3.5 fork
bhctsntrk/Anemll: anemll/models/llama_model.py, utils/generate_meta_yaml.py, tests/chat.py), the parts written
as compiled `.mlmodelc` directories (text model.mil + weights). The real files cover the rest (the last
chunk's one-row prefill, argmax heads, LUT suffixes, 0.3.4's names); these stay only for:

- 0.3.5 prefill (and older infer) functions that take `update_mask` (1, 1, N, S), N = max(state length,
  sliding window), not the context (--update-mask-prefill; the reference models use the dynamic slice);
- a head whose one output is named `logits`;
- meta.yaml without an `anechat` section.
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
