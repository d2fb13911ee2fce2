"""Op kernels: one small builder per MIL op, registered by name.

A builder receives the op's arguments (constants already known at load time) and returns a plain
function over the op's positional inputs, plus the names of those inputs. Constants are folded
into the builder's closure wherever that makes the per-call function cheaper (conv weights as
contiguous fp32 matrices, slices as precomputed index tuples, ...)."""

from __future__ import annotations

from typing import Any, Callable, overload

import numpy as np

from anechat.errors import ModelLoadError
from anechat.runtime.milexec.ir import Op, Var

Builder = Callable[["OpArgs"], tuple[Callable, list[str]]]
KERNELS: dict[str, Builder] = {}
_MISSING = object()


def kernel(*names: str):
    def register(fn: Builder) -> Builder:
        for n in names:
            KERNELS[n] = fn
        return fn

    return register


class OpArgs:
    """An op's inputs as its builder sees them: constants by value, dynamic ones by name only."""

    def __init__(self, op: Op, consts: dict[str, Any], compute_dtype, source: str, inplace_ok: bool = False,
                 packed: bool = False) -> None:
        self.op = op
        self.packed = packed  # compressed weights may stay compressed (packed.PackedWeight)
        self._consts = consts
        self.compute_dtype = compute_dtype
        self.source = source
        self.inplace_ok = inplace_ok

    def has(self, key: str) -> bool:
        return key in self.op.inputs

    def _resolve(self, v: Any) -> Any:
        if isinstance(v, Var):
            return self._consts.get(v.name, _MISSING)
        return v

    def is_const(self, key: str) -> bool:
        v = self.op.inputs.get(key)
        if isinstance(v, list):
            return all(self._resolve(e) is not _MISSING for e in v)
        return self._resolve(v) is not _MISSING

    def weight(self, key: str, default: Any = _MISSING) -> Any:
        """A constant matrix as held: possibly a PackedWeight, for kernels that multiply by it."""
        return self.static(key, default, keep_packed=True)

    def static(self, key: str, default: Any = _MISSING, keep_packed: bool = False) -> Any:
        """A value the kernel needs at load time (axes, perms, shapes, weights)."""
        if key not in self.op.inputs:
            if default is _MISSING:
                raise self.error(f"missing input {key!r}")
            return default
        v = self.op.inputs[key]
        value = [self._resolve(e) for e in v] if isinstance(v, list) else self._resolve(v)
        if value is _MISSING or (isinstance(value, list) and _MISSING in value):
            raise self.error(f"input {key!r} must be a constant")
        if not keep_packed:
            from anechat.runtime.milexec.packed import densify

            value = [densify(e) for e in value] if isinstance(value, list) else densify(value)
        return value

    @overload
    def static_list(self, key: str) -> list[int]: ...
    @overload
    def static_list(self, key: str, default: None) -> list[int] | None: ...

    def static_list(self, key: str, default: Any = _MISSING) -> list[int] | None:
        v = self.static(key, default)
        return [int(e) for e in np.asarray(v).reshape(-1)] if v is not None else v

    def error(self, message: str) -> ModelLoadError:
        return ModelLoadError(f"{self.source}: op {self.op.type} ({self.op.outputs[0] if self.op.outputs else '?'}): {message}")


def dtype_of(name: str, compute_dtype) -> np.dtype:
    """MIL dtype names → the numpy dtype values of that type are held in (floats in the compute dtype)."""
    if name in ("fp16", "fp32", "fp64", "bf16"):
        return np.dtype(compute_dtype)
    from anechat.runtime.milexec.ir import NUMPY_DTYPES

    return np.dtype(NUMPY_DTYPES.get(name, np.int32))


from anechat.runtime.milexec.ops import constexpr, elementwise, nn, state, tensor  # noqa: E402,F401 — registers kernels
