"""Compile one MIL function into a flat plan: a register file and a list of prebuilt steps.

At load time: constants become registers (floats converted once to the compute dtype), constexpr ops
and any op whose inputs are all constant are folded, every kernel is built with its constant arguments
baked in, and liveness decides where slice_update may write in place. At run time only the steps run:
no dict lookups, no shape logic, no dtype conversion of weights or state."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from anechat.errors import ModelLoadError
from anechat.runtime.memory import release_free_memory
from anechat.runtime.milexec import packed as packing
from anechat.runtime.milexec.ir import Function, TensorType, Var
from anechat.runtime.milexec.ops import KERNELS, OpArgs
from anechat.runtime.milexec.packed import PackedWeight


def _array_key(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return ("arr", v.__array_interface__["data"][0], v.shape, v.dtype.str)
    return ("val", repr(v))


class ConstPool:
    """Constants shared by every function (and part) loaded through one backend: weights read from the
    same blob, and folds of the same inputs, are converted and expanded once, not per function."""

    def __init__(self, compute_dtype, packed: bool = False) -> None:
        self.compute_dtype = np.dtype(compute_dtype)
        # large fp16 constants (weight matrices) stay fp16 views of the weight file instead of fp32 copies
        self.packed = packed
        self._converted: dict = {}
        self._folded: dict = {}

    def convert(self, value: Any) -> Any:
        if not isinstance(value, np.ndarray) or value.dtype.kind != "f" or value.dtype == self.compute_dtype:
            return value
        key = _array_key(value)
        if key not in self._converted:
            if self.packed and value.dtype == np.float16 and value.ndim >= 2 and value.size >= packing.PACK_MIN_ELEMENTS:
                self._converted[key] = PackedWeight.f16(value)
            else:
                self._converted[key] = np.ascontiguousarray(value, dtype=self.compute_dtype)
        return self._converted[key]

    def dense(self, value: Any) -> Any:
        """A packed weight's fp32 values, for an op that reads it as a plain tensor (made once, kept)."""
        return value.dense() if isinstance(value, PackedWeight) else value

    def fold(self, op_type: str, f: Callable, args: list) -> Any:
        key = (op_type, tuple(_array_key(a) for a in args))
        if key not in self._folded:
            out = f(*args)
            if isinstance(out, PackedWeight):
                self._folded[key] = out
            else:
                self._folded[key] = tuple(self.convert(np.asarray(o)) for o in out) if isinstance(out, tuple) else self.convert(np.asarray(out) if not np.isscalar(out) else out)
        return self._folded[key]


def _round_fp16(f: Callable) -> Callable:
    def rounded(*args):
        out = f(*args)
        if isinstance(out, tuple):
            return tuple(_to_fp16_grid(o) for o in out)
        return _to_fp16_grid(out)

    return rounded


def _to_fp16_grid(x):
    if isinstance(x, np.ndarray) and x.dtype.kind == "f":
        return x.astype(np.float16).astype(x.dtype)
    return x


class Plan:
    def __init__(self, fn: Function, source: str, pool: ConstPool, strict_fp16: bool = False) -> None:
        from anechat.runtime.milexec.fuse import fuse_all

        # strict fp16 mimics the ANE op by op, so it runs the program exactly as written
        fn = fn if strict_fp16 else fuse_all(fn)
        self.function = fn
        self.source = source
        self.pool = pool
        self.regs: list[Any] = []
        self.reg_of: dict[str, int] = {}
        self.types: dict[str, TensorType | None] = dict(fn.inputs)
        self.const_regs: set[int] = set()
        self.steps: list[tuple[Callable, list[int], list[int]]] = []  # (kernel, input regs, output regs)
        self.step_types: list[str] = []  # the op type of each step (tools that observe a run read it)
        for name in list(fn.inputs) + list(fn.states):
            self._new_reg(name)
        self.input_regs = {n: self.reg_of[n] for n in fn.inputs}
        self.state_regs = {n: self.reg_of[n] for n in fn.states}
        self._compile(strict_fp16)
        missing = [n for n in fn.outputs if n not in self.reg_of]
        if missing:
            raise ModelLoadError(f"{source}: function {fn.name} returns undefined value {missing[0]!r}")
        self.output_regs = [(n, self.reg_of[n]) for n in fn.outputs]
        self._run: Callable | None = None

    def _new_reg(self, name: str | None, value: Any = None, const: bool = False) -> int:
        self.regs.append(value)
        idx = len(self.regs) - 1
        if name is not None:
            self.reg_of[name] = idx
        if const:
            self.const_regs.add(idx)
        return idx

    def _last_uses(self) -> dict[str, int]:
        last: dict[str, int] = {}
        for i, op in enumerate(self.function.ops):
            for e in op.input_vars():
                last[e.name] = i
        for name in self.function.outputs:
            last[name] = len(self.function.ops)
        return last

    def _compile(self, strict_fp16: bool) -> None:
        last = self._last_uses()
        consts: dict[str, Any] = {}
        # Values that are the live state buffer itself. coremltools' common-subexpression pass merges the
        # per-layer read_state ops into one, so "x is dead after this slice_update" alone would miss the
        # KV cache write; an update of a state alias is written in place, as Core ML does on device.
        state_alias: set[str] = set()
        for i, op in enumerate(self.function.ops):
            for name, t in zip(op.outputs, op.output_types):
                self.types[name] = t
            if op.type == "const":
                value = self.pool.convert(op.attributes["val"])
                consts[op.outputs[0]] = value
                self._new_reg(op.outputs[0], value, const=True)
                continue
            builder = KERNELS.get(op.type)
            if builder is None:
                raise ModelLoadError(f"{self.source}: unsupported op {op.type!r} (in function {self.function.name})")
            x = op.inputs.get("x")
            inplace = isinstance(x, Var) and (
                x.name in state_alias
                or (last.get(x.name) == i and x.name not in self.function.inputs and x.name not in consts)
            )
            if op.type == "read_state" or (op.type == "slice_update" and isinstance(x, Var) and x.name in state_alias):
                state_alias.update(op.outputs)
            if self._elide_state_op(op, state_alias):
                continue
            args = OpArgs(op, consts, self.pool.compute_dtype, self.source, inplace_ok=inplace, packed=self.pool.packed)
            try:
                f, names = builder(args)
                in_regs = [self._plain(self._operand(op, n, consts)) for n in names]
            except ModelLoadError:
                raise
            except (ValueError, TypeError, KeyError, IndexError) as e:
                raise args.error(str(e)) from None
            if all(r in self.const_regs for r in in_regs) and op.type not in ("read_state", "write_state", "coreml_update_state"):
                try:
                    out = self.pool.fold(op.type, f, [self.regs[r] for r in in_regs])
                except (ValueError, TypeError, IndexError) as e:
                    raise args.error(f"cannot evaluate constant: {e}") from None
                outs = out if isinstance(out, tuple) else (out,)
                for name, value in zip(op.outputs, outs):
                    consts[name] = value
                    self._new_reg(name, value, const=True)
                continue
            if strict_fp16 and op.type not in ("read_state", "write_state", "coreml_update_state", "slice_update"):
                f = _round_fp16(f)
            out_regs = [self._new_reg(n) for n in op.outputs]
            self.steps.append((f, in_regs, out_regs))
            self.step_types.append(op.type)

    def _plain(self, reg: int) -> int:
        """A register an op reads at run time (or folds) holds a tensor, never a PackedWeight: such an op
        gets the weight's fp32 values in a register of their own."""
        value = self.regs[reg]
        if isinstance(value, PackedWeight):
            return self._new_reg(None, self.pool.dense(value), const=True)
        return reg

    def _elide_state_op(self, op, state_alias: set[str]) -> bool:
        """State reads and write-backs of the live buffer need no step: a read is the state's own register,
        and writing back a buffer that was updated in place changes nothing."""
        if op.type == "read_state" and isinstance(op.inputs.get("input"), Var):
            self.reg_of[op.outputs[0]] = self.reg_of[op.inputs["input"].name]
            return True
        value = op.inputs.get("data" if op.type == "write_state" else "value")
        if op.type in ("write_state", "coreml_update_state") and isinstance(value, Var) and value.name in state_alias:
            for name in op.outputs:
                self.reg_of[name] = self.reg_of[value.name]
            state_alias.update(op.outputs)
            return True
        return False

    def _operand(self, op, name: str, consts: dict) -> int:
        if name.endswith("]"):
            base, idx = name[:-1].split("[")
            v = op.inputs[base]
            v = v[int(idx)] if isinstance(v, list) else v
        else:
            v = op.inputs[name]
        if isinstance(v, Var):
            if v.name not in self.reg_of:
                raise ModelLoadError(f"{self.source}: op {op.type} uses undefined value {v.name!r}")
            return self.reg_of[v.name]
        return self._new_reg(None, self.pool.convert(v) if isinstance(v, np.ndarray) else v, const=True)

    def _generate(self) -> Callable:
        """The plan as one generated Python function: registers become local variables and constants
        bound names, so a step costs one call and a local store — no list indexing, no closure per step."""
        def ref(r: int) -> str:
            return f"c{r}" if r in self.const_regs else f"r{r}"

        lines = ["def run(inputs, states):"]
        lines += [f"    r{r} = inputs[{name!r}]" for name, r in self.input_regs.items()]
        lines += [f"    r{r} = states[{name!r}]" for name, r in self.state_regs.items()]
        # Each local is deleted right after its last use: big temporaries (prefill) go back to the
        # allocator at once and are reused within the call, instead of all living until it returns.
        last_use: dict[int, int] = {}
        for n, (_, ins, _) in enumerate(self.steps):
            for r in ins:
                if r not in self.const_regs:
                    last_use[r] = n
        keep = {r for _, r in self.output_regs}
        dies: dict[int, list[int]] = {}
        for r, n in last_use.items():
            if r not in keep:
                dies.setdefault(n, []).append(r)
        namespace: dict[str, Any] = {}
        for n, (f, ins, outs) in enumerate(self.steps):
            namespace[f"k{n}"] = f
            call = f"k{n}({', '.join(ref(i) for i in ins)})"
            if not outs:
                lines.append(f"    {call}")
            elif len(outs) == 1:
                lines.append(f"    r{outs[0]} = {call}")
            else:
                lines.append(f"    {', '.join(f'r{o}' for o in outs)}, = {call}")
            dead = [f"r{r}" for r in dies.get(n, []) if r not in outs]
            if dead:
                lines.append(f"    del {', '.join(dead)}")
        lines.append("    return {" + ", ".join(f"{name!r}: {ref(r)}" for name, r in self.output_regs) + "}")
        namespace.update({f"c{r}": self.regs[r] for r in self.const_regs})
        exec(compile("\n".join(lines), f"<plan {self.source}:{self.function.name}>", "exec"), namespace)
        return namespace["run"]

    def run(self, inputs: dict[str, np.ndarray], states: dict[str, np.ndarray]) -> dict[str, Any]:
        if self._run is None:
            self._run = self._generate()
            release_free_memory()  # compiling the generated code left ~4 MB of freed parser memory resident
        return self._run(inputs, states)
