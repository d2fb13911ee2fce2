"""Core ML backend (macOS ≥ 15): the chunks run on the Neural Engine through coremltools.

.mlmodelc parts load with `CompiledMLModel`; .mlpackage parts are compiled once and the compiled
model is cached under the platformdirs cache dir, keyed by the package's content, so the second start
is as fast as with a .mlmodelc.
"""

from __future__ import annotations

import hashlib
import platform
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from anechat.errors import ModelLoadError
from anechat.runtime.backend import TensorSpec

COMPUTE_UNITS = ("CPU_AND_NE", "ALL", "CPU_ONLY", "CPU_AND_GPU")
DEFAULT_COMPUTE_UNITS = "CPU_AND_NE"


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


def compiled_cache_path(package: Path, cache_root: Path) -> Path:
    return cache_root / "compiled" / f"{package.stem}-{package_digest(package)}.mlmodelc"


def _np_dtype(name: str) -> np.dtype:
    return np.dtype({"fp16": "float16", "fp32": "float32", "int32": "int32"}.get(name, name))


def build_inputs(inputs: dict[str, Any], specs: dict[str, TensorSpec]) -> dict[str, np.ndarray]:
    """Core ML is strict about dtypes and contiguity: give it exactly what the model declares."""
    out = {}
    for name, spec in specs.items():
        if name not in inputs:
            raise ModelLoadError(f"missing input {name!r} (expects {', '.join(specs)})")
        out[name] = np.ascontiguousarray(inputs[name], dtype=_np_dtype(spec.dtype))
    return out


@dataclass
class CoreMLPart:
    path: Path
    function_name: str | None
    model: Any
    inputs: dict[str, TensorSpec] = field(default_factory=dict)
    outputs: dict[str, TensorSpec] = field(default_factory=dict)
    states: dict[str, TensorSpec] = field(default_factory=dict)

    def predict(self, inputs: dict[str, Any], state: Any = None) -> dict[str, Any]:
        feed = build_inputs(inputs, self.inputs) if self.inputs else inputs
        if state is None:
            return self.model.predict(feed)
        return self.model.predict(feed, state=state)

    def make_state(self) -> Any:
        return self.model.make_state()


class CoreMLBackend:
    name = "coreml"

    def __init__(self, compute_units: str | None = None, cache_root: Path | None = None) -> None:
        self.compute_units = compute_units or DEFAULT_COMPUTE_UNITS
        if self.compute_units not in COMPUTE_UNITS:
            raise ValueError(f"compute units must be one of {', '.join(COMPUTE_UNITS)}")
        if cache_root is None:
            from anechat.paths import cache_dir

            cache_root = cache_dir()
        self.cache_root = cache_root

    @property
    def label(self) -> str:
        return "ANE (Core ML)" if self.compute_units in ("CPU_AND_NE", "ALL") else f"Core ML {self.compute_units}"

    def compiled(self, package: Path) -> Path:
        """The .mlmodelc for an .mlpackage, compiling it into the cache on first use."""
        target = compiled_cache_path(package, self.cache_root)
        if target.is_dir():
            return target
        import coremltools as ct

        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            ct.utils.compile_model(str(package), str(tmp))
            tmp.rename(target)
        except Exception as e:  # noqa: BLE001 — any compiler failure is a load failure of this part
            shutil.rmtree(tmp, ignore_errors=True)
            raise ModelLoadError(f"{package.name}: Core ML could not compile it: {e}") from None
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
            raise ModelLoadError(f"{path.name}: Core ML could not load it: {e}") from None
        part = CoreMLPart(path=path, function_name=function_name, model=model)
        part.inputs, part.outputs, part.states = _io_specs(path, function_name)
        return part


def _io_specs(path: Path, function_name: str | None):
    """Input/output/state specs from the model's own program, read by the portable reader (the same
    files Core ML loads), so both backends validate inputs the same way."""
    from anechat.runtime.portable import describe_part

    return describe_part(path, function_name)
