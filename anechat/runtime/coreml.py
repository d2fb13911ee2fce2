"""Core ML backend (macOS ≥ 15): the chunks run on the Neural Engine through coremltools.

.mlmodelc parts load with `CompiledMLModel`; .mlpackage parts are compiled once and the compiled model is
cached under the platformdirs cache dir. What coremltools and Core ML demand here is written down as a
contract fake in tests/coreml_contract.py, so the Linux tests fail when this module breaks a rule a Mac
would enforce.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from anechat.errors import ModelLoadError
from anechat.runtime.backend import TensorSpec

COMPUTE_UNITS = ("CPU_AND_NE", "ALL", "CPU_ONLY", "CPU_AND_GPU")
DEFAULT_COMPUTE_UNITS = "CPU_AND_NE"
# A compile that died with its process leaves its scratch directory; one this old is nobody's.
STALE_SCRATCH_S = 6 * 3600


def coreml_unavailable_reason() -> str | None:
    """None when Core ML can actually predict here, else why not.

    coremltools imports fine on Linux and hands out MLModel objects whose predict() raises, so the
    import alone proves nothing: the native proxy must have loaded and the OS must support states.
    """
    if sys.platform != "darwin":
        return f"Core ML needs macOS (this is {sys.platform})"
    release = platform.mac_ver()[0]
    try:
        major = int(release.split(".")[0])
    except ValueError:
        return f"unknown macOS version {release!r}"
    if major < 15:
        return f"stateful Core ML models need macOS 15 or newer (this is {release})"
    try:
        from coremltools.models import model as ct_model
    except Exception as e:  # noqa: BLE001 — any import failure means no Core ML
        return f"coremltools cannot be imported: {e}"
    if getattr(ct_model, "_MLModelProxy", None) is None:
        return "coremltools has no native Core ML bindings in this install"
    return None


def has_neural_engine() -> bool:
    """Apple silicon has a Neural Engine; an Intel Mac runs CPU_AND_NE on the CPU alone."""
    return sys.platform == "darwin" and platform.machine() == "arm64"


def toolchain_tag() -> str:
    """What a compiled model depends on besides its package: the compiler (macOS) and coremltools."""
    try:
        import coremltools

        ct_version = coremltools.__version__
    except Exception:  # noqa: BLE001 — no coremltools: the tag only has to differ from one with it
        ct_version = "none"
    return f"macos{platform.mac_ver()[0] or '-'}-ct{ct_version}"


def package_digest(package: Path) -> str:
    """Content key of an .mlpackage: file names, sizes and the bytes of everything but big weight blobs
    (whose size and mtime stand in for them, so hashing a 1 GB weight file is not paid per start)."""
    h = hashlib.sha256()
    for f in sorted(p for p in package.rglob("*") if p.is_file()):
        st = f.stat()
        h.update(str(f.relative_to(package)).encode())
        h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
        if st.st_size < (1 << 20):
            h.update(f.read_bytes())
    return h.hexdigest()[:24]


def _source_tag(package: Path) -> str:
    return hashlib.sha256(str(package.resolve()).encode()).hexdigest()[:8]


def compiled_cache_path(package: Path, cache_root: Path) -> Path:
    """`<stem>-<source>-<key>.mlmodelc`: source names the package's place (two models may both have a
    `llama_embeddings`), key its content and the toolchain that compiled it."""
    key = hashlib.sha256(f"{package_digest(package)}:{toolchain_tag()}".encode()).hexdigest()[:24]
    return cache_root / "compiled" / f"{package.stem}-{_source_tag(package)}-{key}.mlmodelc"


def prune_compiled(keep: Path) -> list[Path]:
    """Remove the older compiled copies of the same package (each a full copy of its weights) and the
    scratch directories of compiles whose process died. Returns what was removed."""
    removed = []
    prefix = keep.name.rsplit("-", 1)[0] + "-"
    now = time.time()
    for other in keep.parent.iterdir():
        stale_scratch = other.name.startswith(".compiling-") and now - other.stat().st_mtime > STALE_SCRATCH_S
        if other != keep and (other.name.startswith(prefix) or stale_scratch):
            shutil.rmtree(other, ignore_errors=True)
            removed.append(other)
    return removed


def _np_dtype(name: str) -> np.dtype:
    return np.dtype({"fp16": "float16", "fp32": "float32", "int32": "int32"}.get(name, name))


def _wire_dtype(name: str) -> np.dtype:
    """What to hand coremltools for an input declared `name`: it converts float16 arrays to float32 itself
    before Core ML converts them back, and its native layer takes only int32, float32 and float64."""
    dtype = _np_dtype(name)
    return np.dtype(np.float32) if dtype == np.float16 else dtype


def build_inputs(inputs: dict[str, Any], specs: dict[str, TensorSpec]) -> dict[str, np.ndarray]:
    """Core ML is strict about names, shapes and dtypes: give it exactly what the function declares."""
    out = {}
    for name, spec in specs.items():
        if name not in inputs:
            raise ModelLoadError(f"missing input {name!r} (expects {', '.join(specs)})")
        arr = np.ascontiguousarray(inputs[name], dtype=_wire_dtype(spec.dtype))
        if arr.ndim != len(spec.shape) or any(d not in (-1, a) for d, a in zip(spec.shape, arr.shape)):
            raise ModelLoadError(f"input {name!r} has shape {arr.shape}, the model declares {spec.shape}")
        out[name] = arr
    return out


@dataclass
class CoreMLPart:
    path: Path
    function_name: str | None
    model: Any
    inputs: dict[str, TensorSpec] = field(default_factory=dict)
    outputs: dict[str, TensorSpec] = field(default_factory=dict)
    states: dict[str, TensorSpec] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.path.name}:{self.function_name}" if self.function_name else self.path.name

    def predict(self, inputs: dict[str, Any], state: Any = None) -> dict[str, Any]:
        feed = build_inputs(inputs, self.inputs) if self.inputs else dict(inputs)
        try:
            if state is None:
                return self.model.predict(feed)
            return self.model.predict(feed, state=state)
        except Exception as e:  # noqa: BLE001 — Core ML reports every failure as a RuntimeError of its own words
            raise ModelLoadError(f"{self.label}: Core ML prediction failed: {e}") from None

    def make_state(self) -> Any:
        try:
            return self.model.make_state()
        except Exception as e:  # noqa: BLE001
            raise ModelLoadError(f"{self.label}: Core ML cannot make its state: {e}") from None


class CoreMLBackend:
    name = "coreml"
    # Core ML compiles for the Neural Engine on the first predict and may fail or fall back only then.
    needs_warm_up = True

    def __init__(self, compute_units: str | None = None, cache_root: Path | None = None) -> None:
        self.compute_units = compute_units or DEFAULT_COMPUTE_UNITS
        if self.compute_units not in COMPUTE_UNITS:
            raise ValueError(f"compute units must be one of {', '.join(COMPUTE_UNITS)}")
        if cache_root is None:
            from anechat.paths import cache_dir

            cache_root = cache_dir()
        self.cache_root = cache_root
        self.compile_seconds: dict[Path, float] = {}  # per package compiled by this process (not cache hits)

    @property
    def uses_neural_engine(self) -> bool:
        return self.compute_units in ("CPU_AND_NE", "ALL") and has_neural_engine()

    @property
    def label(self) -> str:
        if self.compute_units in ("CPU_AND_NE", "ALL") and not has_neural_engine():
            return "Core ML CPU (no Neural Engine)"
        return "ANE (Core ML)" if self.uses_neural_engine else f"Core ML {self.compute_units}"

    def compiled(self, package: Path) -> Path:
        """The .mlmodelc for an .mlpackage, compiling it into the cache on first use.

        Each compile writes into its own scratch directory and is renamed into place, so two processes
        compiling the same model never see each other's half-written output."""
        target = compiled_cache_path(package, self.cache_root)
        if target.is_dir():
            return target
        import coremltools as ct

        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".compiling-", dir=target.parent))
        started = time.perf_counter()
        try:
            # coremltools refuses a destination that does not end in .mlmodelc.
            built = ct.utils.compile_model(str(package), str(scratch / f"{package.stem}.mlmodelc"))
            try:
                os.rename(built, target)
            except OSError:
                if not target.is_dir():  # not a lost race with another process: a real failure
                    raise
        except Exception as e:  # noqa: BLE001 — any compiler failure is a load failure of this part
            raise ModelLoadError(f"{package.name}: Core ML could not compile it: {e}") from None
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        self.compile_seconds[package] = time.perf_counter() - started
        prune_compiled(target)
        return target

    def load(self, path: Path, function_name: str | None = None) -> CoreMLPart:
        import coremltools as ct

        path = Path(path)
        compiled = self.compiled(path) if path.suffix == ".mlpackage" else path
        try:
            model = ct.models.CompiledMLModel(
                str(compiled), compute_units=getattr(ct.ComputeUnit, self.compute_units), function_name=function_name
            )
        except Exception as e:  # noqa: BLE001
            where = f"{path.name}:{function_name}" if function_name else path.name
            raise ModelLoadError(f"{where}: Core ML could not load it: {e}") from None
        part = CoreMLPart(path=path, function_name=function_name, model=model)
        part.inputs, part.outputs, part.states = _io_specs(path, function_name)
        return part

    def compiled_path(self, path: Path) -> Path:
        """Where the compiled form of a part is (compiling it if needed)."""
        path = Path(path)
        return self.compiled(path) if path.suffix == ".mlpackage" else path


def _io_specs(path: Path, function_name: str | None):
    """Input/output/state specs from the model's own program, read by the portable reader (the same
    files Core ML loads), so both backends validate inputs the same way."""
    from anechat.runtime.portable import describe_part

    return describe_part(path, function_name)


@dataclass
class DevicePlan:
    """Where Core ML plans to run one function's ops (MLComputePlan)."""

    ops: int = 0
    ops_on: dict[str, int] = field(default_factory=dict)
    cost_on: dict[str, float] = field(default_factory=dict)

    def share(self, device: str = "ane") -> tuple[float, float]:
        """(share of ops, share of estimated cost) on a device."""
        total_cost = sum(self.cost_on.values())
        ops = self.ops_on.get(device, 0) / self.ops if self.ops else 0.0
        cost = self.cost_on.get(device, 0.0) / total_cost if total_cost else ops
        return ops, cost


def _device_name(device: Any) -> str:
    kind = type(device).__name__
    return "ane" if "NeuralEngine" in kind else "gpu" if "GPU" in kind else "cpu"


def compute_plan(compiled: Path, compute_units: str, function_name: str | None = None) -> DevicePlan:
    """Ask Core ML where it would run each op of a compiled model's function (coremltools ≥ 8)."""
    import coremltools as ct
    from coremltools.models.compute_plan import MLComputePlan

    plan = MLComputePlan.load_from_path(path=str(compiled), compute_units=getattr(ct.ComputeUnit, compute_units))
    program = plan.model_structure.program
    if program is None:
        raise ModelLoadError(f"{compiled.name}: not an ML program")
    functions = program.functions
    fn = functions.get(function_name or "main") or next(iter(functions.values()))
    out = DevicePlan()
    for op in fn.block.operations:
        if op.operator_name in ("const", "constexpr_lut_to_dense", "constexpr_blockwise_shift_scale"):
            continue  # weights, not work
        usage = plan.get_compute_device_usage_for_mlprogram_operation(op)
        if usage is None:
            continue
        device = _device_name(usage.preferred_compute_device)
        cost = plan.get_estimated_cost_for_mlprogram_operation(op)
        out.ops += 1
        out.ops_on[device] = out.ops_on.get(device, 0) + 1
        out.cost_on[device] = out.cost_on.get(device, 0.0) + (cost.weight if cost is not None else 0.0)
    return out
