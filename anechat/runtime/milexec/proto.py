"""Programs from an .mlpackage: the protobuf Model.mlmodel (mlProgram) plus its weight.bin."""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import threading
import types
from pathlib import Path
from typing import Any

import numpy as np

from anechat.errors import ModelLoadError
from anechat.runtime.milexec.ir import NUMPY_DTYPES, Function, Op, Program, TensorType, Var
from anechat.runtime.milexec.weights import BlobStore

# MIL_pb2.DataType enum value → MIL type name
PROTO_DTYPES = {
    1: "bool", 2: "string", 10: "fp16", 11: "fp32", 12: "fp64", 13: "bf16", 21: "int8", 22: "int16", 23: "int32",
    24: "int64", 25: "int4", 31: "uint8", 32: "uint16", 33: "uint32", 34: "uint64", 35: "uint4", 36: "uint2",
    37: "uint1", 38: "uint6", 39: "uint3",
}


def package_model_file(package: Path) -> Path:
    """The Model.mlmodel inside an .mlpackage, found through its Manifest.json."""
    manifest = package / "Manifest.json"
    try:
        info = json.loads(manifest.read_text())
        root = info["itemInfoEntries"][info["rootModelIdentifier"]]["path"]
    except FileNotFoundError:
        raise ModelLoadError(f"{package}: not an .mlpackage (no Manifest.json)") from None
    except (KeyError, ValueError, TypeError, IndexError):
        raise ModelLoadError(f"{manifest}: malformed manifest") from None
    except OSError as e:
        raise ModelLoadError(f"{manifest}: unreadable ({e.strerror or e})") from None
    if not isinstance(root, str) or not root:
        raise ModelLoadError(f"{manifest}: malformed manifest (the root model's path is not a file name)")
    model = (package / "Data" / root).resolve()
    if package.resolve() not in model.parents:
        raise ModelLoadError(f"{manifest}: model path {root!r} points outside the package")
    return model


def _tensor_type(vt) -> TensorType | None:
    kind = vt.WhichOneof("type")
    if kind == "stateType":
        return _tensor_type(vt.stateType.wrappedType)
    if kind != "tensorType":
        return None
    t = vt.tensorType
    shape = tuple(d.constant.size if d.WhichOneof("dimension") == "constant" else None for d in t.dimensions)
    return TensorType(PROTO_DTYPES.get(t.dataType, f"code{t.dataType}"), shape)


class _Reader:
    def __init__(self, model_file: Path) -> None:
        self.model_file = model_file
        self.blobs = BlobStore(model_file.parent, str(model_file))

    def value(self, v, vtype: TensorType | None) -> Any:
        which = v.WhichOneof("value")
        t = vtype or _tensor_type(v.type)
        if which == "blobFileValue":
            if t is None:
                raise ModelLoadError(f"{self.model_file}: a weight blob without a tensor type")
            blob = v.blobFileValue
            return self.blobs.array(blob.fileName, int(blob.offset), t.dtype, t.static_shape())
        if which == "immediateValue":
            return self._immediate(v.immediateValue, t)
        raise ModelLoadError(f"{self.model_file}: unsupported value kind {which}")

    def _immediate(self, iv, t: TensorType | None) -> Any:
        kind = iv.WhichOneof("value")
        if kind == "tensor":
            tv = iv.tensor
            field = tv.WhichOneof("value")
            if t is None and field in (None, "bytes"):
                raise ModelLoadError(f"{self.model_file}: a tensor value whose type is not given")
            if field is None:
                assert t is not None
                return np.zeros(tuple(t.shape), NUMPY_DTYPES.get(t.dtype, np.float32))
            payload = getattr(tv, field)
            if field == "bytes":
                assert t is not None
                raw = np.frombuffer(payload.values, dtype=np.uint8)
                arr = raw.view(NUMPY_DTYPES[t.dtype]) if t.dtype in NUMPY_DTYPES else raw
            elif field == "strings":
                vals = list(payload.values)
                return vals[0] if t is not None and len(t.shape) == 0 else vals
            else:
                arr = np.array(list(payload.values))
            dtype = NUMPY_DTYPES.get(t.dtype) if t else None
            if dtype is not None:
                arr = arr.astype(dtype, copy=False)
            shape = t.static_shape() if t else arr.shape
            if len(shape) == 0:
                return arr.reshape(()).item() if arr.size else None
            return arr.reshape(shape)
        if kind == "list" or kind == "tuple":
            return [self._immediate(e, None) for e in getattr(iv, kind).values]
        raise ModelLoadError(f"{self.model_file}: unsupported immediate value {kind}")

    def op(self, pop) -> Op:
        if len(pop.blocks):
            raise ModelLoadError(f"{self.model_file}: unsupported op {pop.type!r} (nested blocks)")
        inputs: dict[str, Any] = {}
        for key, arg in pop.inputs.items():
            vals = []
            for b in arg.arguments:
                if b.WhichOneof("binding") == "name":
                    vals.append(Var(b.name))
                else:
                    vals.append(self.value(b.value, None))
            inputs[key] = vals if len(vals) != 1 or key == "values" else vals[0]
        attributes = {}
        for key, v in pop.attributes.items():
            if key == "name":
                continue
            attributes[key] = self.value(v, _tensor_type(v.type))
        outputs = [o.name for o in pop.outputs]
        return Op(pop.type, inputs, outputs, [_tensor_type(o.type) for o in pop.outputs], attributes)

    def function(self, name: str, fn) -> Function:
        inputs: dict[str, TensorType] = {}
        states: dict[str, TensorType] = {}
        for i in fn.inputs:
            t = _tensor_type(i.type)
            if t is None:
                raise ModelLoadError(f"{self.model_file}: input {i.name!r} of {name!r} is not a tensor")
            (states if i.type.WhichOneof("type") == "stateType" else inputs)[i.name] = t
        block = fn.block_specializations[fn.opset]
        ops = [self.op(o) for o in block.operations]
        return Function(name, inputs, states, list(block.outputs), ops, fn.opset)


_PROTO_PACKAGE = "_anechat_coremltools_proto"
_PROTO_LOCK = threading.Lock()


def model_pb2() -> types.ModuleType:
    """coremltools' generated protobuf classes for Model.mlmodel, imported without coremltools itself: its
    __init__ loads its converters (sympy, scipy, the MIL builder, 1,100 modules), ~70 MB resident and half a
    second that running a model never uses. The same generated files, loaded under a package name of our
    own; protobuf keeps one descriptor per .proto file, so a later `import coremltools` shares them."""
    if "coremltools" in sys.modules:
        from coremltools.proto import Model_pb2

        return Model_pb2
    with _PROTO_LOCK:
        if _PROTO_PACKAGE not in sys.modules:
            spec = importlib.util.find_spec("coremltools")
            if spec is None or not spec.submodule_search_locations:
                raise ModelLoadError("reading an .mlpackage needs coremltools (pip install coremltools)")
            package = types.ModuleType(_PROTO_PACKAGE)
            package.__path__ = [str(Path(p) / "proto") for p in spec.submodule_search_locations]
            sys.modules[_PROTO_PACKAGE] = package
        return importlib.import_module(_PROTO_PACKAGE + ".Model_pb2")


def read_mlpackage(package: Path) -> Program:
    Model_pb2 = model_pb2()
    model_file = package_model_file(package)
    spec = Model_pb2.Model()
    try:
        spec.ParseFromString(model_file.read_bytes())
    except FileNotFoundError:
        raise ModelLoadError(f"{package}: missing {model_file.name}") from None
    except Exception as e:  # noqa: BLE001 — protobuf raises DecodeError and friends
        raise ModelLoadError(f"{model_file}: corrupt model file ({type(e).__name__})") from None
    if spec.WhichOneof("Type") != "mlProgram":
        raise ModelLoadError(f"{package}: not an ML program (type {spec.WhichOneof('Type')})")
    reader = _Reader(model_file)
    functions = {name: reader.function(name, fn) for name, fn in spec.mlProgram.functions.items()}
    default = spec.description.defaultFunctionName or ("main" if "main" in functions else next(iter(functions)))
    return Program(functions, default, str(package), {str(k): str(v) for k, v in spec.description.metadata.userDefined.items()})
