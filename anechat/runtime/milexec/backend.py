"""The portable backend: MLModel-like parts over compiled plans, state shared between parts."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from anechat.errors import ModelLoadError
from anechat.runtime.backend import TensorSpec
from anechat.runtime.memory import zeros_as_written
from anechat.runtime.milexec.ir import NUMPY_DTYPES, Function, Program, TensorType
from anechat.runtime.milexec.plan import ConstPool, Plan


def read_program(path: Path) -> Program:
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"missing model part {path}")
    if path.suffix == ".mlpackage":
        from anechat.runtime.milexec.proto import read_mlpackage

        return read_mlpackage(path)
    if path.suffix == ".mlmodelc":
        from anechat.runtime.milexec.miltext import read_mlmodelc

        return read_mlmodelc(path)
    raise ModelLoadError(f"{path}: not an .mlpackage or .mlmodelc")


def _spec(name: str, t: TensorType) -> TensorSpec:
    if not isinstance(t, TensorType):
        raise ModelLoadError(f"{name!r}: an input, output or state that is not a tensor ({t})")
    dtype = np.dtype(NUMPY_DTYPES.get(t.dtype, np.float32)).name
    return TensorSpec(name, tuple(-1 if d is None else int(d) for d in t.shape), dtype)


Specs = dict[str, TensorSpec]


def function_specs(fn: Function) -> tuple[Specs, Specs, Specs]:
    """(inputs, outputs, states) of a function, as the backends describe them."""
    types = fn.value_types()
    inputs = {n: _spec(n, t) for n, t in fn.inputs.items()}
    states = {n: _spec(n, t) for n, t in fn.states.items()}
    outputs = {n: _spec(n, t) for n in fn.outputs if (t := types.get(n)) is not None}
    return inputs, outputs, states


def describe_part(path: Path, function_name: str | None = None) -> tuple[Specs, Specs, Specs]:
    """(inputs, outputs, states) specs of a part's function, read without compiling it."""
    return function_specs(read_program(Path(path)).function(function_name))


class PortableState:
    """State buffers by name, in the compute dtype; parts declaring the same states can share one."""

    def __init__(self, buffers: dict[str, np.ndarray]) -> None:
        self.buffers = buffers

    def read(self, name: str) -> np.ndarray:
        return self.buffers[name]

    def read_state(self, name: str) -> np.ndarray:
        """A copy of one state (coremltools' MLState.read_state)."""
        return self.buffers[name].copy()

    def write_state(self, name: str, value: np.ndarray) -> None:
        """Overwrite one state in place (coremltools' MLState.write_state)."""
        np.copyto(self.buffers[name], value)


@dataclass
class PortablePart:
    path: Path
    function_name: str | None
    plan: Plan
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    states: dict[str, TensorSpec]

    def __post_init__(self) -> None:
        self._lock = threading.Lock()  # a plan's registers belong to one call at a time
        self._compute = self.plan.pool.compute_dtype
        self._out_dtypes = {n: np.dtype(s.dtype) for n, s in self.outputs.items()}

    def make_state(self) -> PortableState:
        return PortableState({n: zeros_as_written(s.shape, self._compute) for n, s in self.states.items()})

    def _input(self, name: str, value: Any) -> np.ndarray:
        spec = self.inputs[name]
        arr = np.asarray(value)
        if arr.ndim != len(spec.shape) or any(d not in (-1, a) for d, a in zip(spec.shape, arr.shape)):
            raise ModelLoadError(f"{self.path.name}: input {name!r} has shape {arr.shape}, expected {spec.shape}")
        # Always a fresh array: kernels may cache facts about an input for the rest of this call (the
        # attention kernel caches the mask's visible columns), which must not outlive it.
        if arr.dtype.kind == "f":
            return np.array(arr, dtype=self._compute)
        return np.array(arr, dtype=spec.dtype)

    def predict(self, inputs: dict[str, Any], state: PortableState | None = None) -> dict[str, np.ndarray]:
        missing = [n for n in self.inputs if n not in inputs]
        if missing:
            raise ModelLoadError(f"{self.path.name}: missing input {missing[0]!r} (expects {', '.join(self.inputs)})")
        feed = {n: self._input(n, inputs[n]) for n in self.inputs}
        if self.states:
            if state is None:
                raise ModelLoadError(f"{self.path.name}: this part is stateful; pass state=part.make_state()")
            for n, s in self.states.items():
                buf = state.buffers.get(n)
                if buf is None or buf.shape != s.shape:
                    raise ModelLoadError(f"{self.path.name}: state {n!r} missing or of the wrong shape")
        with self._lock:
            out = self.plan.run(feed, state.buffers if state is not None else {})
            return {n: self._output(n, v) for n, v in out.items()}

    def _output(self, name: str, value) -> np.ndarray:
        """A copy (registers are reused by the next call). Floats stay in the compute dtype: casting fp32
        logits to the declared fp16 and back costs more per token than the rest of the host work; with
        strict_fp16 they already hold fp16 values."""
        declared = self._out_dtypes.get(name, np.dtype(np.float32))
        value = np.asarray(value)
        if declared.kind == "f" and value.dtype.kind == "f":
            return value.copy()
        return value.astype(declared, copy=True)


class PortableBackend:
    name = "portable"
    label = "portable (numpy)"

    def __init__(self, strict_fp16: bool = False, packed: bool | None = None) -> None:
        """packed: keep weights compressed as stored and multiply with the JIT kernels (default: when numba
        imports); off, every weight is widened to fp32 at load and BLAS does all products (the reference)."""
        from anechat.runtime.milexec import jit

        self.strict_fp16 = strict_fp16
        self.packed = jit.AVAILABLE and not strict_fp16 if packed is None else packed and jit.AVAILABLE
        if self.packed and not jit.ensure_ready():
            self.packed = False
        self.pool = ConstPool(np.float32, packed=self.packed)
        self._programs: dict[Path, Program] = {}

    def program(self, path: Path) -> Program:
        key = Path(path).resolve()
        if key not in self._programs:
            self._programs[key] = read_program(Path(path))
        return self._programs[key]

    def load(self, path: Path, function_name: str | None = None) -> PortablePart:
        path = Path(path)
        fn = self.program(path).function(function_name)
        plan = Plan(fn, str(path), self.pool, strict_fp16=self.strict_fp16)
        inputs, outputs, states = function_specs(plan.function)  # as fused: what runs
        return PortablePart(path, function_name, plan, inputs, outputs, states)
