"""The interface every backend offers; it mirrors coremltools' MLModel so the engine never knows which runs.

    part = backend.load(path, function_name="infer")
    state = part.make_state()
    out = part.predict({"hidden_states": x, ...}, state)   # dict[str, np.ndarray]

One state object made by any chunk may be passed to every chunk of the same model: they all declare
the same state (`model.model.kv_cache_0`) and update it in place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name: "float16", "float32", "int32"


class Part(Protocol):
    path: Path
    function_name: str | None
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    states: dict[str, TensorSpec]

    def predict(self, inputs: dict[str, Any], state: Any = None) -> dict[str, Any]: ...

    def make_state(self) -> Any: ...


class Backend(Protocol):
    name: str  # "portable" | "coreml"

    def load(self, path: Path, function_name: str | None = None) -> Part: ...
