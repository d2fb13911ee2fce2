"""Writing a program as text `model.mil` plus `weights/weight.bin` — the layout of a compiled .mlmodelc.

Used to test the text reader against programs read from .mlpackage files, and by `anechat inspect --mil`."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np

from anechat.runtime.milexec.ir import Function, Op, Program, TensorType, Var
from anechat.runtime.milexec.weights import SENTINEL

BLOB_CODES = {"fp16": 1, "fp32": 2, "uint8": 3, "int8": 4, "int16": 6, "uint16": 7, "int4": 8, "uint1": 9,
              "uint2": 10, "uint4": 11, "uint3": 12, "uint6": 13, "int32": 14, "uint32": 15}
SUB_BYTE_BITS = {"int4": 4, "uint1": 1, "uint2": 2, "uint3": 3, "uint4": 4, "uint6": 6}
INLINE_LIMIT = 16  # larger constants go to weight.bin, as Apple's compiler does


class BlobWriter:
    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.offset = 64

    def add(self, array: np.ndarray, dtype: str) -> int:
        bits = SUB_BYTE_BITS.get(dtype)
        if bits:
            values = np.asarray(array).astype(np.uint8).reshape(-1) & ((1 << bits) - 1)
            flat = ((values[:, None] >> np.arange(bits, dtype=np.uint8)) & 1).astype(np.uint8).reshape(-1)
            data = np.packbits(flat, bitorder="little").tobytes()
        else:
            data = np.ascontiguousarray(array).tobytes()
        record_at = self.offset
        data_at = record_at + 64
        record = struct.pack("<IIQQ", SENTINEL, BLOB_CODES[dtype], len(data), data_at).ljust(64, b"\0")
        padded = data + b"\0" * (-len(data) % 64)
        self.chunks.append(record + padded)
        self.offset += len(record) + len(padded)
        return record_at

    def write(self, path: Path) -> None:
        header = struct.pack("<II", len(self.chunks), 2).ljust(64, b"\0")
        path.write_bytes(header + b"".join(self.chunks))


def _type(t: TensorType) -> str:
    if not t.shape:
        return t.dtype
    dims = ", ".join("?" if d is None else str(d) for d in t.shape)
    return f"tensor<{t.dtype}, [{dims}]>"


def _scalar_type(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int32"
    if isinstance(v, float):
        return "fp32"
    return "string"


def _literal(v: Any) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    if isinstance(v, (float, np.floating)):
        f = float(v)
        return "inf" if f == float("inf") else "-inf" if f == float("-inf") else "nan" if f != f else f.hex()
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(int(v))


class _Writer:
    def __init__(self, blobs: BlobWriter) -> None:
        self.blobs = blobs

    def value(self, v: Any, t: TensorType | None) -> str:
        if isinstance(v, Var):
            return v.name
        if isinstance(v, list):
            return "(" + ", ".join(self.value(e, None) for e in v) + ")"
        if isinstance(v, np.ndarray) and t is not None and t.shape:
            if v.size > INLINE_LIMIT:
                offset = self.blobs.add(v, t.dtype)
                return f'{_type(t)}(BLOBFILE(path = string("@model_path/weights/weight.bin"), offset = uint64({offset})))'
            return f"{_type(t)}([" + ", ".join(_literal(x) for x in v.reshape(-1).tolist()) + "])"
        if isinstance(v, np.ndarray):
            kind = t.dtype if t else "fp32"
            return f"{kind}({_literal(v.reshape(()).item())})"
        kind = t.dtype if t is not None else _scalar_type(v)
        return f"{kind}({_literal(v)})"

    def op(self, op: Op) -> str:
        lhs = ", ".join(f"{_type(t) if t is not None else 'fp32'} {n}" for n, t in zip(op.outputs, op.output_types))
        args = ", ".join(f"{k} = {self.value(v, None if not isinstance(v, np.ndarray) else TensorType(_dtype_name(v), v.shape))}" for k, v in op.inputs.items())
        attrs = [f'name = string("{op.outputs[0] if op.outputs else op.type}")']
        for k, v in op.attributes.items():
            t = op.output_types[0] if k == "val" and op.output_types else None
            attrs.append(f"{k} = {self.value(v, t)}")
        call = f"{op.type}({args})[{', '.join(attrs)}];"
        return f"            {lhs} = {call}" if lhs else f"            {call}"

    def function(self, fn: Function) -> str:
        params = [f"{_type(t)} {n}" for n, t in fn.inputs.items()]
        params += [f"state<{_type(t)}> {n}" for n, t in fn.states.items()]
        opset = fn.opset.lower().replace("coreml8", "ios18")
        lines = [f"    func {fn.name}<{opset}>({', '.join(params)}) {{"]
        lines += [self.op(op) for op in fn.ops]
        lines.append(f"    }} -> ({', '.join(fn.outputs)});")
        return "\n".join(lines)


def _dtype_name(a: np.ndarray) -> str:
    return {"float16": "fp16", "float32": "fp32", "int32": "int32", "int8": "int8", "uint8": "uint8",
            "int16": "int16", "uint16": "uint16", "bool": "bool", "int64": "int32"}.get(a.dtype.name, "fp32")


def dump_mil(program: Program, outdir: Path) -> Path:
    """Write `outdir` as an .mlmodelc-style directory: model.mil and weights/weight.bin."""
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / "weights").mkdir(exist_ok=True)
    blobs = BlobWriter()
    w = _Writer(blobs)
    ordered = [program.default_function] + [n for n in program.functions if n != program.default_function]
    body = "\n".join(w.function(program.functions[n]) for n in ordered)
    text = 'program(1.3)\n[buildInfo = dict<string, string>({{"anechat", "dump_mil"}})]\n{\n' + body + "\n}\n"
    (outdir / "model.mil").write_text(text, encoding="utf-8")
    blobs.write(outdir / "weights" / "weight.bin")
    if program.metadata:  # where coremlcompiler keeps it (metadata.json, a list of one object)
        import json

        (outdir / "metadata.json").write_text(json.dumps([{"userDefinedMetadata": program.metadata}], indent=1), encoding="utf-8")
    return outdir
