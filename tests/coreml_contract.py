"""A contract fake of coremltools' prediction API as it behaves on macOS 15, for the Linux tests.

Real Core ML cannot run here, so what anechat's Core ML backend relies on is written down from
coremltools' source (9.0: coremltools/models/utils.py `compile_model`, models/_compiled_model.py,
models/model.py `_get_predictions`, coremlpython/CoreMLPython.mm, CoreMLPythonArray.mm,
CoreMLPythonUtils.mm `convertArrayValueToPython`) and enforced here. The computation itself runs in the
portable executor over the compiled model's text program, so a model that passes through the fake
answers with real numbers. Rules enforced:

- compile_model: the source must end in .mlpackage or .mlmodel; the destination must end in .mlmodelc;
  the compiled directory is moved with shutil.move (into the destination when it already exists).
- CompiledMLModel: path a str naming a compiled .mlmodelc; compute_units a ct.ComputeUnit; function_name
  a str that names a function of the program ("" or None: the default function).
- predict: data a dict; float16 arrays are converted to float32 in the caller's dict (coremltools does it
  in place); the native layer takes only int32, float32 and float64 arrays; every declared input is
  required, none other is accepted, shapes must equal the declared ones; a stateful function needs a
  state, a stateless one takes none; a state fits a function when it holds the same state names and
  shapes (how ANEMLL shares one state between chunks); float16 outputs come back as float32.
- make_state: only for stateful functions; MLState.read_state/write_state take a declared state's name.
  read_state returns a float32 copy of an fp16 state; write_state takes float32, float64 or int32 arrays of the
  declared shape and refuses float16 (CoreMLPythonUtils.mm: `Unsupported array type: 102 with itemsize = 2`).
- slice_update: the update's dtype must be the destination's (macOS 26 prefill, ANEMLL #39: `BNNS Op: Slice
  update: update data type must match output data type`): predict fails on a function that breaks it.
- MLComputePlan.load_from_path(path=compiled .mlmodelc, compute_units): per op, a preferred device.
- Opt-in (`ne_int8_blocks_defect`), a reported device defect rather than an API rule: on the Neural Engine
  compute units (CPU_AND_NE, ALL) a constexpr_blockwise_shift_scale whose scale has more than one block along
  the input axis expands as if every block of a row had the row's first scale and offset — an M5's Neural
  Engine reading blocked input-axis scales as per-row scales (apple/coreai-torch #93); apple/coreai-models #279
  reports the same class of per-block int weights answering garbage on the ANE (iOS 27, iPhone 16 Pro Max:
  cosine 0.367 vs 0.999 on the GPU). CPU_ONLY and CPU_AND_GPU expand it correctly.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from anechat.runtime import coreml
from anechat.runtime.milexec.miltext_write import dump_mil
from anechat.runtime.milexec.proto import read_mlpackage
from anechat.runtime.portable import PortableBackend

NATIVE_DTYPES = {np.dtype(np.int32), np.dtype(np.float32), np.dtype(np.float64)}


def _unsupported(value: np.ndarray) -> str:
    """coremltools' message for an array it cannot convert: the dtype's kind as a character code."""
    return f"Unsupported array type: {ord(value.dtype.kind)} with itemsize = {value.dtype.itemsize}"


class FakeMLState:
    def __init__(self, buffers: dict[str, np.ndarray], specs: dict) -> None:
        self.portable = SimpleNamespace(buffers=buffers)
        self.specs = {n: tuple(s.shape) for n, s in specs.items()}

    def read_state(self, name: str) -> np.ndarray:
        """MLState.read_state (coremltools 9, macOS 15): a copy of a declared state; fp16 comes back as fp32."""
        if name not in self.specs:
            raise RuntimeError(f"Unknown state name: {name}")
        return self.portable.buffers[name].astype(np.float32)

    def write_state(self, name: str, value: np.ndarray) -> None:
        """MLState.write_state: a float32, float64 or int32 numpy array of the declared shape."""
        if name not in self.specs:
            raise RuntimeError(f"Unknown state name: {name}")
        if isinstance(value, np.ndarray) and value.dtype not in NATIVE_DTYPES:
            raise RuntimeError(_unsupported(value))
        if not isinstance(value, np.ndarray) or tuple(value.shape) != self.specs[name]:
            raise RuntimeError(f"state {name}: value of shape {getattr(value, 'shape', None)}, expected {self.specs[name]}")
        np.copyto(self.portable.buffers[name], value)


def _slice_update_mismatch(fn) -> str | None:
    """Core ML's error for a slice_update whose update is not of the destination's dtype, or None."""
    from anechat.runtime.milexec.ir import Var

    types = fn.value_types()

    def _dtype_of(value, types):  # written here, not taken from anechat: the fake stands for Core ML
        if isinstance(value, Var):
            return getattr(types.get(value.name), "dtype", None)
        return {"float16": "fp16", "float32": "fp32", "int32": "int32"}.get(getattr(getattr(value, "dtype", None), "name", ""))

    for op in fn.ops:
        if op.type == "slice_update":
            x, update = _dtype_of(op.inputs.get("x"), types), _dtype_of(op.inputs.get("update"), types)
            if None not in (x, update) and x != update:
                return "BNNS Op: Slice update: update data type must match output data type"
    return None


def _first_block_only(program):
    """#93's symptom, written here rather than taken from anechat: the fake stands for the device."""
    for fn in program.functions.values():
        for op in fn.ops:
            scale = op.inputs.get("scale")
            if op.type == "constexpr_blockwise_shift_scale" and isinstance(scale, np.ndarray) and scale.ndim >= 2 and scale.shape[1] > 1:
                for name in ("scale", "offset"):
                    v = op.inputs.get(name)
                    if isinstance(v, np.ndarray):
                        op.inputs[name] = np.repeat(np.asarray(v)[:, :1], v.shape[1], axis=1)
    return program


@dataclass
class FakeCoreML:
    """Install with `install(monkeypatch)`; counters and switches are the test's to read and set."""

    compiles: list[tuple[str, str]] = field(default_factory=list)
    loads: list[tuple[str, str, str]] = field(default_factory=list)
    predicts: int = 0
    probes: int = 0
    fail_predict: str | None = None  # a function name whose predict raises, as an ANE compile failure does
    cpu_ops: tuple[str, ...] = ()  # ops the compute plan puts on the CPU
    backend: PortableBackend = field(default_factory=PortableBackend)
    ne_int8_blocks_defect: bool = False  # the Neural Engine's per-block int8 defect (module docstring)
    defect_units: tuple[str, ...] = ("CPU_AND_NE", "ALL")  # where the defect shows (a test may widen it)
    ne_backend: PortableBackend = field(default_factory=PortableBackend)  # runs the programs as that ANE reads them

    def runtime_for(self, path: Path, compute_units) -> PortableBackend:
        if not (self.ne_int8_blocks_defect and compute_units.name in self.defect_units):
            return self.backend
        from anechat.runtime.milexec.backend import read_program

        key = path.resolve()
        if key not in self.ne_backend._programs:  # a copy of its own: CPU_AND_GPU loads the same compiled model
            self.ne_backend._programs[key] = _first_block_only(read_program(path))
        return self.ne_backend

    def install(self, monkeypatch) -> FakeCoreML:
        import coremltools as ct
        from coremltools.models import compute_plan

        fake = self

        def compile_model(model, destination_path=None):
            model = str(model)
            if not model.rstrip("/").endswith((".mlpackage", ".mlmodel")):
                raise ValueError(f"Invalid model file path: '{model}'.Expected a file with .mlpackage or .model extension. ")
            if destination_path is not None and not str(destination_path).rstrip("/").endswith(".mlmodelc"):
                raise Exception('"destination_path" parameter must have ".mlmodelc" file extension.')
            fake.compiles.append((model, str(destination_path)))
            built = Path(tempfile.mkdtemp(prefix="fake-coreml-")) / (Path(model).stem + ".mlmodelc")
            dump_mil(read_mlpackage(Path(model)), built)
            if destination_path is None:
                return str(built)
            shutil.move(str(built), str(destination_path))
            return destination_path

        class CompiledMLModel:
            def __init__(self, path, compute_units=ct.ComputeUnit.ALL, function_name=None, optimization_hints=None, asset=None):
                if not isinstance(path, str):
                    raise TypeError('The "path" parameter must be of type "str".')
                if not isinstance(compute_units, ct.ComputeUnit):
                    raise TypeError('The "compute_units" parameter must be of type: "coremltools.ComputeUnit".')
                if function_name is None:
                    function_name = ""
                if not isinstance(function_name, str):
                    raise TypeError('The "function_name" parameter must be of type "str".')
                p = Path(path)
                if p.suffix != ".mlmodelc" or not (p / "model.mil").is_file():
                    raise RuntimeError(f"Error opening compiled model at {path}: not a compiled model (.mlmodelc)")
                program = fake.backend.program(p)
                if function_name and function_name not in program.functions:
                    raise RuntimeError(f"Function '{function_name}' not found in model {p.name}")
                self.part = fake.runtime_for(p, compute_units).load(p, function_name or None)
                self.function_name = function_name or program.default_function
                self.slice_update_error = _slice_update_mismatch(program.function(self.function_name))
                self.compute_unit = compute_units
                fake.loads.append((p.name, self.function_name, compute_units.name))

            def predict(self, data, state=None):
                if type(data) is not dict:
                    raise TypeError(f'"data" parameter must be either a dict or list of dict, but got {type(data)}.')
                for k, v in data.items():  # coremltools' _update_float16_multiarray_input_to_float32, in place
                    if isinstance(v, np.ndarray) and v.dtype == np.float16:
                        data[k] = v.astype(np.float32)
                for k, v in data.items():
                    if not isinstance(v, np.ndarray) or v.dtype not in NATIVE_DTYPES:
                        raise RuntimeError(f"Unsupported array type for {k}: {getattr(v, 'dtype', type(v))}")
                specs = self.part.inputs
                for name, spec in specs.items():
                    if name not in data:
                        raise RuntimeError(f"Feature {name} is required but not specified.")
                    if tuple(data[name].shape) != tuple(spec.shape) and -1 not in spec.shape:
                        raise RuntimeError(f"Shape {data[name].shape} of {name} does not match the declared {spec.shape}")
                extra = set(data) - set(specs)
                if extra:
                    raise RuntimeError(f"Feature {sorted(extra)[0]} is not an input of function {self.function_name}")
                if self.part.states and state is None:
                    raise RuntimeError("This model is stateful: predict needs a state from make_state()")
                if not self.part.states and state is not None:
                    raise RuntimeError("This model has no state")
                if state is not None:
                    want = {n: tuple(s.shape) for n, s in self.part.states.items()}
                    if not isinstance(state, FakeMLState) or state.specs != want:
                        raise RuntimeError(f"The state does not match the states of function {self.function_name}")
                if fake.fail_predict == self.function_name:
                    raise RuntimeError("E5RT: Neural Engine compilation failed (ANECCompile() FAILED)")
                if self.slice_update_error:
                    raise RuntimeError(self.slice_update_error)
                fake.predicts += 1
                out = self.part.predict(data, state.portable if state is not None else None)
                return {n: (v.astype(np.float32) if v.dtype.kind == "f" else v) for n, v in out.items()}

            def make_state(self):
                if not self.part.states:
                    raise RuntimeError("This model has no state")
                return FakeMLState(self.part.make_state().buffers, self.part.states)

        class MLComputePlan:
            def __init__(self, program, compute_units):
                self.program, self.units = program, compute_units

            @classmethod
            def load_from_path(cls, path, compute_units=ct.ComputeUnit.ALL):
                p = Path(path)
                if p.suffix != ".mlmodelc":
                    raise RuntimeError(f"{path}: the compute plan needs a compiled model")
                return cls(fake.backend.program(p), compute_units)

            @property
            def model_structure(self):
                fns = {}
                for name, fn in self.program.functions.items():
                    ops = [SimpleNamespace(operator_name=op.type) for op in fn.ops]
                    fns[name] = SimpleNamespace(block=SimpleNamespace(operations=ops))
                return SimpleNamespace(program=SimpleNamespace(functions=fns))

            def get_compute_device_usage_for_mlprogram_operation(self, op):
                on_cpu = self.units.name in ("CPU_ONLY", "CPU_AND_GPU") or op.operator_name in fake.cpu_ops
                device = MLCPUComputeDevice() if on_cpu else MLNeuralEngineComputeDevice()
                return SimpleNamespace(preferred_compute_device=device, supported_compute_devices=[device])

            def get_estimated_cost_for_mlprogram_operation(self, op):
                return SimpleNamespace(weight=1.0)

        class MLCPUComputeDevice:
            pass

        class MLNeuralEngineComputeDevice:
            pass

        monkeypatch.setattr(ct.utils, "compile_model", compile_model)
        monkeypatch.setattr(ct.models, "CompiledMLModel", CompiledMLModel)
        monkeypatch.setattr(compute_plan, "MLComputePlan", MLComputePlan)
        monkeypatch.setattr(coreml, "coreml_unavailable_reason", lambda: None)
        monkeypatch.setattr(coreml, "has_neural_engine", lambda: True)
        # The first-run check runs in a child process on a Mac; here the child's code runs in this process,
        # where the fake is installed (tests/test_coreml_contract.py covers the child's death separately).
        from anechat.engine import coreml_probe

        def probe_here(model_path, compute_units):
            fake.probes += 1
            import contextlib
            import io

            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                code = coreml_probe.main([str(model_path), compute_units])
            lines = err.getvalue().strip().splitlines()
            return code, lines[-1] if lines else ""

        monkeypatch.setattr(coreml_probe, "run_probe", probe_here)
        return self
