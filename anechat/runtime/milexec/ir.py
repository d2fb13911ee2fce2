"""The in-memory form of a MIL program, independent of where it was read from (protobuf or text)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np


@dataclass(frozen=True)
class Var:
    """A reference to a named value produced earlier (function input or op output)."""

    name: str


@dataclass
class TensorType:
    dtype: str  # MIL scalar type name: fp16, fp32, int32, int16, uint16, bool, uint4, ...
    shape: tuple[int | None, ...]  # None for a flexible dimension

    def static_shape(self) -> tuple[int, ...]:
        """The shape of a value stored in the program (a weight, a constant): never flexible."""
        dims = tuple(d for d in self.shape if d is not None)
        if len(dims) != len(self.shape):
            from anechat.errors import ModelLoadError

            raise ModelLoadError(f"a stored {self.dtype} value with a flexible shape {self.shape}")
        return dims


@dataclass
class Op:
    type: str
    inputs: dict[str, Any]  # name → Var | np.ndarray | scalar | list of those (variadic inputs)
    outputs: list[str]
    output_types: list[TensorType | None] = field(default_factory=list)
    attributes: dict[str, Any] = field(default_factory=dict)

    def input_vars(self) -> Iterator[Var]:
        """The values this op reads from other ops or the function's inputs, variadic inputs included."""
        for v in self.inputs.values():
            for e in v if isinstance(v, list) else [v]:
                if isinstance(e, Var):
                    yield e


@dataclass
class Function:
    name: str
    inputs: dict[str, TensorType]
    states: dict[str, TensorType]
    outputs: list[str]
    ops: list[Op]
    opset: str = "CoreML8"

    def value_types(self) -> dict[str, TensorType | None]:
        """The type of every named value: the inputs and each op's outputs (None where not declared)."""
        types: dict[str, TensorType | None] = dict(self.inputs)
        for op in self.ops:
            types.update(zip(op.outputs, op.output_types))
        return types


@dataclass
class Program:
    functions: dict[str, Function]
    default_function: str
    source: str  # file the program was read from, for error messages
    # the model's user-defined metadata (com.github.apple.coremltools.version: the coremltools that built it)
    metadata: dict[str, str] = field(default_factory=dict)

    def function(self, name: str | None) -> Function:
        from anechat.errors import ModelLoadError

        key = name or self.default_function
        if key not in self.functions:
            raise ModelLoadError(f"{self.source}: no function {key!r} (has {', '.join(sorted(self.functions))})")
        return self.functions[key]


NUMPY_DTYPES = {
    "fp16": np.float16,
    "fp32": np.float32,
    "fp64": np.float64,
    "int8": np.int8,
    "int16": np.int16,
    "int32": np.int32,
    "int64": np.int64,
    "uint8": np.uint8,
    "uint16": np.uint16,
    "uint32": np.uint32,
    "uint64": np.uint64,
    "bool": np.bool_,
}
