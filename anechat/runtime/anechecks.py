"""Core ML's known failures on real Macs and iPhones, predicted from a part's MIL program alone.

Each check names where the failure was reported (a coremltools or ANEMLL issue, a release note) and what to do
about it. A check fails (`fail`) where every device with a Neural Engine is affected, and warns (`warn`) where
only some chips, OS versions or coremltools builds are. `anechat inspect --ane`, the end of `anechat convert`
and `anechat doctor` show them; anechat's own conversions pass them (the converter is changed where one does
not); a model made elsewhere (ANEMLL) is flagged where a check fails, never refused.

A new known failure is one more `Check` in CHECKS: an id, a title, its source, the advice, and a function from
the part's facts to its findings."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from anechat.runtime.milexec.ir import Function, Op, Program, TensorType, Var

FAIL, WARN, OK = "fail", "warn", "ok"
STATE_ALIGN = 32  # fp16 values in 64 bytes
MAX_INNER_DIM = 16384  # the last two axes (H, W) of a tensor the ANE computes on
MAX_OUTER_DIM = 65536  # the axes before them (N, C)
MAX_RANK = 5
GB = 1 << 30
MACOS_WEIGHTS = 2 * GB  # per program: larger ones fail to load on a Mac (ANEMLL #28)
IOS_WEIGHTS_WARN = 950_000_000  # iOS fails near 1 GB per program; warn with margin
LUT_OPS = ("constexpr_lut_to_dense",)
COREMLTOOLS_VERSION = "com.github.apple.coremltools.version"


@dataclass(frozen=True)
class Finding:
    severity: str  # FAIL or WARN
    where: str  # "infer: state model_model_kv_cache_0 (4, 2, 512, 16)"


@dataclass
class Facts:
    """What the checks read of one part."""

    role: str
    path: Path
    program: Program
    weight_bytes: int

    @property
    def coremltools(self) -> str | None:
        """The coremltools that built the part, as its metadata records it (None when it does not say)."""
        return self.program.metadata.get(COREMLTOOLS_VERSION) or None


@dataclass(frozen=True)
class Check:
    id: str
    title: str
    source: str
    symptom: str  # what the failure looks like on the device
    fix: str
    run: Callable[[Facts], list[Finding]]


@dataclass
class CheckResult:
    check: Check
    findings: list[Finding] = field(default_factory=list)

    @property
    def status(self) -> str:
        severities = {f.severity for f in self.findings}
        return FAIL if FAIL in severities else WARN if WARN in severities else OK

    def line(self) -> str:
        c = self.check
        if self.status == OK:
            return f"ok    {c.title} ({c.source})"
        where = "; ".join(f.where for f in self.findings[:4]) + (f"; … {len(self.findings) - 4} more" if len(self.findings) > 4 else "")
        return f"{self.status.upper():5s} {c.title} ({c.source}): {where}. On the device: {c.symptom}. What to do: {c.fix}"

    def as_dict(self) -> dict:
        c = self.check
        return {"id": c.id, "title": c.title, "status": self.status, "source": c.source, "symptom": c.symptom, "fix": c.fix,
                "findings": [{"severity": f.severity, "where": f.where} for f in self.findings]}


@dataclass
class PartChecks:
    role: str
    path: str
    coremltools: str | None
    results: list[CheckResult]

    def failed(self, severity: str = FAIL) -> list[CheckResult]:
        return [r for r in self.results if r.status == severity]

    def format(self, indent: str = "    ") -> list[str]:
        built = f"built with coremltools {self.coremltools}" if self.coremltools else "coremltools version not recorded"
        return [f"{indent}known Core ML failures ({built}):"] + [f"{indent}  {r.line()}" for r in self.results]

    def as_dict(self) -> dict:
        return {"role": self.role, "path": self.path, "coremltools": self.coremltools, "checks": [r.as_dict() for r in self.results]}


# -- helpers -----------------------------------------------------------------------------------------------------


def _shape(t: TensorType | None) -> tuple:
    return tuple(-1 if d is None else d for d in t.shape) if t is not None else ()


def _version(text: str | None) -> tuple[int, ...] | None:
    """(9, 0) of "9.0", (9, 1) of "9.1.dev1"; None when there is no version to read."""
    if not text:
        return None
    parts = []
    for p in text.split("."):
        digits = "".join(ch for ch in p if ch.isdigit()) if p[:1].isdigit() else ""
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts) or None


def _fns(facts: Facts) -> Iterator[Function]:
    return iter(facts.program.functions.values())


def _dtype_of(value, types: dict) -> str | None:
    """A value's MIL dtype: a named value's declared type, or a literal's numpy dtype."""
    if isinstance(value, Var):
        t = types.get(value.name)
        return t.dtype if isinstance(t, TensorType) else None
    if isinstance(value, np.ndarray):
        return {np.dtype(np.float16): "fp16", np.dtype(np.float32): "fp32", np.dtype(np.int32): "int32"}.get(value.dtype)
    return None


def _producers(fn: Function) -> dict[str, Op]:
    return {name: op for op in fn.ops for name in op.outputs}


def _dedupe(findings: list[Finding]) -> list[Finding]:
    """One finding per place, its functions listed together ("infer, prefill: state …")."""
    by_what: dict[tuple[str, str], list[str]] = {}
    for f in findings:
        fn, _, what = f.where.partition(": ")
        by_what.setdefault((f.severity, what), []).append(fn)
    return [Finding(sev, f"{', '.join(sorted(set(fns)))}: {what}") for (sev, what), fns in by_what.items()]


# -- the checks --------------------------------------------------------------------------------------------------


def _state_last_axis(facts: Facts) -> list[Finding]:
    out = [
        Finding(FAIL, f"{fn.name}: state {n} {_shape(t)}: last axis {t.shape[-1]}")
        for fn in _fns(facts)
        for n, t in fn.states.items()
        if t.shape and t.shape[-1] is not None and t.shape[-1] % STATE_ALIGN
    ]
    return _dedupe(out)


def _state_dtype(facts: Facts) -> list[Finding]:
    out = [Finding(FAIL, f"{fn.name}: state {n} is {t.dtype}") for fn in _fns(facts) for n, t in fn.states.items() if t.dtype != "fp16"]
    return _dedupe(out)


def _state_uses(fn: Function) -> set[str]:
    return {v.name for op in fn.ops if op.type in ("read_state", "coreml_update_state") for v in op.input_vars()}


def _unused_state(facts: Facts) -> list[Finding]:
    version = _version(facts.coremltools)
    # The conversion itself breaks before 9.1; a file that has one was built or combined some other way, and
    # re-saving it with an older coremltools fails.
    severity = WARN if version is not None and version >= (9, 1) else FAIL
    out = [Finding(severity, f"{fn.name}: state {n} is declared and never read") for fn in _fns(facts) for n in fn.states if n not in _state_uses(fn)]
    return _dedupe(out)


def _lut_bits(op: Op) -> int | None:
    lut = op.inputs.get("lut")
    if not isinstance(lut, np.ndarray) or lut.ndim == 0:
        return None
    entries = lut.shape[-2] if lut.ndim >= 2 else lut.shape[0]  # iOS18: (..., 2^bits, vector size); iOS16: (2^bits,)
    return int(entries).bit_length() - 1 if entries > 0 and entries & (entries - 1) == 0 else None


def _lut4_stateful_coremltools_90(facts: Facts) -> list[Finding]:
    version = _version(facts.coremltools)
    if version is None or version[:2] != (9, 0):
        return []
    out = []
    for fn in _fns(facts):
        if not fn.states:
            continue
        # coremltools' palettize_weights names its ops `<weight>_palettized`: the reported trigger. LUTs written
        # directly (anechat's) do not go through that pass.
        n = sum(1 for op in fn.ops if op.type in LUT_OPS and _lut_bits(op) == 4 and any(o.endswith("_palettized") for o in op.outputs))
        if n:
            out.append(Finding(WARN, f"{fn.name}: {n} 4-bit LUT weights from palettize_weights in a stateful function"))
    return _dedupe(out)


def _lut_then_shift_scale(facts: Facts) -> list[Finding]:
    out = []
    for fn in _fns(facts):
        made_by = _producers(fn)
        types = fn.value_types()
        n = 0
        for op in fn.ops:
            data = op.inputs.get("data")
            if op.type == "constexpr_blockwise_shift_scale" and isinstance(data, Var):
                src = made_by.get(data.name)
                if src is not None and src.type in LUT_OPS and _dtype_of(data, types) in ("fp16", None):
                    n += 1
        if n:
            out.append(Finding(FAIL, f"{fn.name}: {n} constexpr_lut_to_dense → constexpr_blockwise_shift_scale (fp16)"))
    return _dedupe(out)


def int8_block_weights(fn: Function) -> int:
    """How many of a function's weights are int8 with more than one scale along the input axis ((out, in, ...)
    weights): the per-block quantization the Neural Engine is reported to get wrong."""
    n = 0
    for op in fn.ops:
        scale = op.inputs.get("scale")
        if op.type == "constexpr_blockwise_shift_scale" and isinstance(scale, np.ndarray) and scale.ndim >= 2 and scale.shape[1] > 1:
            n += 1
    return n


def has_int8_blocks(model_dir: Path) -> bool:
    """Whether any part of a model directory holds per-block int8 weights (the `int8-blocks` check's predicate)."""
    from anechat.runtime.milexec.backend import read_program
    from anechat.runtime.modeldir import open_model_dir

    md = open_model_dir(Path(model_dir))
    return any(int8_block_weights(fn) for _, path in md.parts() for fn in read_program(path).functions.values())


def _int8_blocks(facts: Facts) -> list[Finding]:
    out = []
    for fn in _fns(facts):
        n = int8_block_weights(fn)
        if n:
            out.append(Finding(WARN, f"{fn.name}: {n} int8 weights with per-block scales"))
    return _dedupe(out)


def _slice_update_dtype(facts: Facts) -> list[Finding]:
    out = []
    for fn in _fns(facts):
        types = fn.value_types()
        for op in fn.ops:
            if op.type != "slice_update":
                continue
            x, update = _dtype_of(op.inputs.get("x"), types), _dtype_of(op.inputs.get("update"), types)
            result = op.output_types[0].dtype if op.output_types and op.output_types[0] is not None else None
            if update is not None and (x not in (None, update) or result not in (None, update)):
                out.append(Finding(FAIL, f"{fn.name}: slice_update {op.outputs[0]}: update {update} into {x}"))
    return _dedupe(out)


def _tensors(fn: Function) -> Iterator[tuple[str, TensorType]]:
    """Every tensor the device computes on: inputs, states and op results (weights and constants are not)."""
    yield from ((f"input {n}", t) for n, t in fn.inputs.items())
    yield from ((f"state {n}", t) for n, t in fn.states.items())
    for op in fn.ops:
        if op.type == "const" or op.type.startswith("constexpr_"):
            continue
        for name, t in zip(op.outputs, op.output_types):
            if isinstance(t, TensorType):
                yield f"{op.type} {name}", t


def _dimensions(facts: Facts) -> list[Finding]:
    out = []
    for fn in _fns(facts):
        for what, t in _tensors(fn):
            dims = [d for d in t.shape if d is not None]
            if not dims:
                continue
            inner, outer = t.shape[-2:], t.shape[:-2]
            if any(d is not None and d > MAX_INNER_DIM for d in inner) or any(d is not None and d > MAX_OUTER_DIM for d in outer):
                out.append(Finding(FAIL, f"{fn.name}: {what} {_shape(t)}"))
    return _dedupe(out)


def _rank(facts: Facts) -> list[Finding]:
    out = [Finding(FAIL, f"{fn.name}: {what} has rank {len(t.shape)}") for fn in _fns(facts) for what, t in _tensors(fn) if len(t.shape) > MAX_RANK]
    return _dedupe(out)


def _weights(facts: Facts) -> list[Finding]:
    size = facts.weight_bytes
    if size > MACOS_WEIGHTS:
        return [Finding(FAIL, f"{size / 1e6:,.0f} MB of weights in one program (macOS loads up to ~2 GB, iOS ~1 GB)")]
    if size > IOS_WEIGHTS_WARN:
        return [Finding(WARN, f"{size / 1e6:,.0f} MB of weights in one program (iOS loads up to ~1 GB; macOS is fine)")]
    return []


def _state_shapes(facts: Facts) -> list[Finding]:
    out = []
    for fn in _fns(facts):
        shapes = sorted({_shape(t) for t in fn.states.values()})
        if len(shapes) > 1:
            out.append(Finding(WARN, f"{fn.name}: {len(shapes)} state shapes {', '.join(map(str, shapes))}"))
    return _dedupe(out)


def _output_feeds_state(facts: Facts) -> list[Finding]:
    out = []
    for fn in _fns(facts):
        made_by = _producers(fn)
        outputs = set(fn.outputs)
        seen: set[str] = set()
        todo = [v.name for op in fn.ops if op.type == "coreml_update_state" for k, v in op.inputs.items() if k == "value" and isinstance(v, Var)]
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            if name in outputs:
                out.append(Finding(FAIL, f"{fn.name}: output {name} is written into a state"))
                continue
            op = made_by.get(name)
            if op is not None and op.type != "read_state":
                todo.extend(v.name for v in op.input_vars())
    return _dedupe(out)


CHECKS: list[Check] = [
    Check("state-last-axis", "state last axis a multiple of 32", "coremltools #2631",
          "stateful model fails on the ANE (270 fails, 256 works); Apple asks for 64-byte-aligned last axes",
          "pad or transpose the state so its last axis is a multiple of 32; readers slice the real part",
          _state_last_axis),
    Check("state-dtype", "states in fp16", "Core ML state types", "Core ML states are fp16 tensors",
          "declare every state as fp16", _state_dtype),
    Check("unused-state", "every declared state is read", "coremltools #2661, fixed in 9.1",
          "conversion breaks: Op \"unused_state_tmp\" … expects tensor but got state",
          "read the state in every function that declares it (anechat and ANEMLL add 0 × one element of it)", _unused_state),
    Check("lut4-stateful", "no 4-bit palettize_weights LUT in a stateful program from coremltools 9.0", "coremltools #2716",
          "segfault after 100-200 predictions on CPU_AND_NE (macOS 26.5, M5 Max); the 8.3 build works",
          "rebuild with coremltools 8.3 or a release that fixes #2716, or use 6/8-bit LUTs; run 300+ predictions "
          "on the device (`anechat bench`) before relying on it", _lut4_stateful_coremltools_90),
    Check("lut-shift-scale", "no LUT feeding constexpr_blockwise_shift_scale in fp16", "coremltools PR #2688",
          "macOS 26 ANE load fails: 'mps.dequantize' op operand #2 must be tensor of quantized values",
          "fold per-channel scales into the LUT entries (palettize_weights without enable_per_channel_scale)", _lut_then_shift_scale),
    Check("int8-blocks", "int8 weights with one scale per output channel", "apple/coreai-models #279; coremltools docs",
          "iOS 27 (iPhone 16 Pro Max): per-block int8 weights give wrong Neural Engine output (cosine 0.37, right on the "
          "GPU); Apple recommends per-channel scales on the Neural Engine",
          "check the model's answers on the device; where they are wrong, convert with --int8-block 0 (one scale per "
          "output channel, less exact) or with a LUT", _int8_blocks),
    Check("slice-update-dtype", "slice_update writes its own dtype", "ANEMLL #39",
          "macOS 26 (M4/M5) prefill: BNNS Op: Slice update: update data type must match output data type",
          "cast the update to the destination's dtype (fp16) before slice_update", _slice_update_dtype),
    Check("dimensions", "dimensions H, W ≤ 16384 and N, C ≤ 65536", "ANE limits",
          "the ANE rejects the op; Core ML runs it elsewhere or fails to compile",
          "split the tensor (lm_head into more parts, a smaller prefill batch or chunk)", _dimensions),
    Check("rank", "tensors of rank ≤ 5", "ANE limits", "the ANE rejects the op", "reshape to rank ≤ 5", _rank),
    Check("weights", "weights per program ≤ ~2 GB (macOS), 950 MB (iOS)", "ANEMLL #28",
          "the part converts but does not load on the device",
          "use more chunks (--chunks) or a smaller LUT so each part stays under 950 MB", _weights),
    Check("state-shapes", "states of one shape", "ANEMLL 0.3.5 release notes, M1/A14",
          "M1 and A14 Neural Engines fail to compile models whose states differ in shape",
          "on M1 / A14 use a model whose states share one shape (ANEMLL: 512-context monolithic Gemma 3)", _state_shapes),
    Check("output-feeds-state", "no output written into a state", "coremltools PR #2713",
          "the Core ML runtime segfaults loading the model",
          "return a value that does not feed the state write", _output_feeds_state),
]


def weight_bytes(part: Path) -> int:
    return sum(f.stat().st_size for f in Path(part).rglob("*.bin") if f.is_file())


def check_facts(facts: Facts) -> PartChecks:
    return PartChecks(facts.role, facts.path.name, facts.coremltools, [CheckResult(c, c.run(facts)) for c in CHECKS])


def check_part(role: str, path: Path, program: Program | None = None) -> PartChecks:
    """Every check over one part (its program read from the file unless given)."""
    from anechat.runtime.milexec.backend import read_program

    program = program if program is not None else read_program(path)
    return check_facts(Facts(role, Path(path), program, weight_bytes(path)))


def check_model(model_dir: Path) -> list[PartChecks]:
    """Every check over every part of a model directory, in the order data flows through them."""
    from anechat.runtime.modeldir import open_model_dir

    md = open_model_dir(Path(model_dir))
    return [check_part(role, path) for role, path in md.parts()]


def summary(parts: list[PartChecks]) -> tuple[list[str], list[str]]:
    """(failures, warnings), one line each: part, check, where, source."""
    lines: dict[str, list[str]] = {FAIL: [], WARN: []}
    for p in parts:
        for r in p.results:
            for f in r.findings:
                lines[f.severity].append(f"{p.role}: {r.check.title}: {f.where} ({r.check.source})")
    return lines[FAIL], lines[WARN]
