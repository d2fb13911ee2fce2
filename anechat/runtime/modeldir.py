"""ANEMLL-layout model directories: meta.yaml and the parts it names."""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anechat.errors import ModelLoadError, ModelNotFound

log = logging.getLogger(__name__)

KNOWN_PARAMETERS = {
    "context_length", "batch_size", "num_chunks", "model_prefix", "lut_embeddings", "lut_ffn", "lut_lmhead",
    "split_lm_head", "embeddings", "lm_head", "ffn", "argmax_in_model", "model_type", "architecture",
    "vocab_size", "num_layers", "state_length", "sliding_window", "fp16_scale", "lut_bits",
    "recurrent_states",
    # ANEMLL 0.3.5 monolithic models
    "monolithic_model", "functions", "lm_head_chunk_sizes", "lut_per_channel", "lut_embeddings_per_channel",
    "lut_lmhead_per_channel", "update_mask_prefill", "prefill_dynamic_slice", "single_cache", "tokenizer_path",
    "split_rotate", "pf", "attention_size", "num_logits",
}
MODEL_TYPES = ("chunked", "monolithic")
PART_SUFFIXES = (".mlmodelc", ".mlpackage")


@dataclass
class ModelDir:
    """A chunked model has embeddings, chunks and lm_head; a monolithic one has only `monolithic`: one part
    whose `infer`/`prefill` functions go from input_ids to logits."""

    path: Path
    name: str
    architecture: str | None
    context_length: int
    batch_size: int
    num_chunks: int
    model_prefix: str
    split_lm_head: int
    argmax_in_model: bool
    vocab_size: int | None
    embeddings: Path | None
    chunks: list[Path]
    lm_head: Path | None
    monolithic: Path | None = None
    meta: dict[str, Any] = field(repr=False, default_factory=dict)
    # Gemma 3's sliding window: past it, chunks run their infer_rotate / prefill_rotate functions
    sliding_window: int | None = None
    # states that summarise every token so far (Qwen 3.5's DeltaNet): they cannot be cut back to a prefix
    recurrent_states: list[str] = field(default_factory=list)
    resolved: list[Resolved] = field(default_factory=list)
    # anechat's narrow prefill (meta.yaml `anechat.prefill_narrow`): a function of fewer rows than batch_size
    # in the same chunks, for follow-up turns of a few tokens; None in ANEMLL's models and older anechat ones
    narrow: Narrow | None = None

    @property
    def made_by_anechat(self) -> bool:
        """Converted by anechat (meta.yaml's `anechat` section), so its functions follow anechat's contract."""
        section = self.meta.get("anechat")
        return isinstance(section, dict) and bool(section.get("format"))

    @property
    def parameters(self) -> dict[str, Any]:
        params = self.meta.get("model_info", {}).get("parameters")
        return params if isinstance(params, dict) else {}

    def parts(self) -> list[tuple[str, Path]]:
        """(role, path) of every part, in the order data flows through them."""
        if self.monolithic is not None:
            return [("monolithic", self.monolithic)]
        return [("embeddings", self.embeddings), *[(f"chunk {i}", c) for i, c in enumerate(self.chunks, 1)], ("lm_head", self.lm_head)]


@dataclass(frozen=True)
class Narrow:
    """The narrow prefill function's name and its rows (fewer than batch_size)."""

    function: str
    rows: int


def _narrow(section: dict, batch: int, meta_file: Path) -> Narrow | None:
    raw = section.get("prefill_narrow")
    if raw is None:
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("function"), str) or not raw["function"]:
        raise ModelLoadError(f"{meta_file}: anechat.prefill_narrow must be a mapping with a function name and batch_size")
    rows = _int(raw, "batch_size", 0, meta_file)
    if not 2 <= rows < batch:
        raise ModelLoadError(f"{meta_file}: anechat.prefill_narrow.batch_size must be from 2 to batch_size − 1 ({batch - 1}), got {rows}")
    if raw["function"] in ("infer", "prefill"):
        raise ModelLoadError(f"{meta_file}: anechat.prefill_narrow.function cannot be {raw['function']!r}")
    return Narrow(raw["function"], rows)


@dataclass(frozen=True)
class Resolved:
    """Which file a part resolved to, and why that one (`anechat inspect` shows it)."""

    role: str
    path: Path
    named: str | None  # what meta.yaml names, if anything
    how: str


def _strip_suffix(name: str) -> str:
    for s in PART_SUFFIXES:
        if name.endswith(s):
            return name[: -len(s)]
    return name


def _existing(root: Path, base: str, first: str | None) -> Path | None:
    """`base` as a compiled or packaged part; the suffix meta.yaml wrote is tried first."""
    order = sorted(PART_SUFFIXES, key=lambda s: s != first)
    for suffix in order:
        c = root / (base + suffix)
        if c.is_dir():
            if root.resolve() not in c.resolve().parents:
                raise ModelLoadError(f"{root}/meta.yaml: part {base + suffix!r} points outside the model directory")
            return c
    return None


def _resolve(root: Path, role: str, named: str | None, fallbacks: list[tuple[str, str]]) -> Resolved:
    """The first of meta.yaml's name and ANEMLL's rebuilt names (`fallbacks`: (base name, why)) that exists,
    each tried as .mlmodelc and .mlpackage as ANEMLL's chat does (parse_model_path): its meta.yaml names
    compiled parts even where compiling failed and only the packages exist."""
    first = next((s for s in PART_SUFFIXES if named and named.endswith(s)), None)
    candidates = ([(_strip_suffix(named), "as meta.yaml names it")] if named else []) + fallbacks
    tried: list[str] = []
    for base, why in candidates:
        if base in tried:
            continue
        tried.append(base)
        found = _existing(root, base, first)
        if found is None:
            continue
        if named and found.name != named and _strip_suffix(named) == base:
            why = f"meta.yaml names {named}, absent; the {found.suffix} beside it (ANEMLL's chat falls back so)"
        elif named and _strip_suffix(named) != base:
            why = f"{why} (meta.yaml names {named}, absent)"
        return Resolved(role, found, named, why)
    lut = _only_lut_variant(root, [b for b, _ in fallbacks])
    if lut is not None:
        how = ("the only LUT variant present (ANEMLL writes the plain name into meta.yaml when the compiled LUT part is "
               "missing, as on Linux)")
        return Resolved(role, lut, named, how + (f" (meta.yaml names {named}, absent)" if named else ""))
    shown = " or ".join(f"{b}.mlmodelc/.mlpackage" for b in tried)
    raise ModelLoadError(f"{root}: missing {role} part {named or tried[0]!r} (looked for {shown})")


def _only_lut_variant(root: Path, bases: list[str]) -> Path | None:
    """`PREFIX_part_lutN` (or `PREFIX_FFN_PF_lutN_chunk_…`) when exactly one such part exists for a LUT-less name."""
    found: dict[str, Path] = {}
    for base in bases:
        m = CHUNK.search(base)
        head, tail = (base[: m.start()], base[m.start():]) if m else (base, "")
        if "_lut" in head:
            continue
        for suffix in PART_SUFFIXES:
            for c in root.glob(f"{head}_lut*{tail}{suffix}"):
                if c.is_dir() and re.fullmatch(re.escape(head) + r"_lut\d+" + re.escape(tail), c.name[: -len(suffix)]):
                    found.setdefault(c.name[: -len(suffix)], c)
    if len(found) != 1:
        return None
    stem, path = next(iter(found.items()))
    return _existing(root, stem, path.suffix)


CHUNK = re.compile(r"_chunk_(\d+)of(\d+)")


def _resolve_chunks(root: Path, params: dict, prefix: str, n: int, meta_file: Path) -> list[Resolved]:
    """The transformer chunks, found as ANEMLL's chat finds them. 0.3.4 writes `ffn: PREFIX_FFN_PF.mlmodelc`
    with no chunk suffix and its chat ignores it, rebuilding `PREFIX_FFN_PF{lut}_chunk_01ofNN` from
    num_chunks; 0.3.5 writes the full name. The other chunks are numbered after the first; the file names
    count the chunks, as ANEMLL's chat counts them. Intermediate `*_FFN_chunk_*` / `*_prefill_chunk_*`
    packages left beside the combined ones never match."""
    named = params.get("ffn")
    lut = _lut_tag(params.get("lut_ffn"))
    default = f"{prefix}_FFN_PF{lut}_chunk_01of{n:02d}"
    rebuilt = "rebuilt from model_prefix, lut_ffn and num_chunks as ANEMLL's chat does"
    fallbacks = [(default, rebuilt), (f"{prefix}_FFN_PF_chunk_01of{n:02d}", rebuilt + ", without the LUT suffix")]
    if named and not CHUNK.search(_strip_suffix(named)):
        # ANEMLL 0.3.4: the name is no template; a single unchunked file is used only when nothing else exists
        first = _resolve(root, "transformer chunk 1", None, fallbacks + ([(_strip_suffix(named), "as meta.yaml names it")] if n == 1 else []))
        first = Resolved(first.role, first.path, named, first.how if first.how.startswith("as") else f"{first.how} (meta.yaml's ffn {named} has no chunk suffix: ANEMLL 0.3.4)")
    else:
        first = _resolve(root, "transformer chunk 1", named, fallbacks)
    stem = _strip_suffix(first.path.name)
    m = CHUNK.search(stem)
    if m is None:
        if n > 1:
            raise ModelLoadError(f"{meta_file}: ffn name {stem!r} has no _chunk_01ofNN part to number the chunks")
        return [first]
    total = int(m.group(2))
    if total != n:
        raise ModelLoadError(f"{meta_file}: num_chunks is {n} but the transformer chunk {first.path.name} says {total}")
    out = [first]
    for i in range(2, n + 1):
        name = CHUNK.sub(f"_chunk_{i:02d}of{n:02d}", stem)
        found = _existing(root, name, first.path.suffix)
        if found is None:
            raise ModelLoadError(f"{root}: missing transformer chunk {name}.mlmodelc/.mlpackage")
        out.append(Resolved(f"transformer chunk {i}", found, None, f"numbered after chunk 1 ({first.path.name})"))
    return out


def _load_meta(path: Path) -> dict[str, Any]:
    from anechat import yamlfile

    meta_file = path / "meta.yaml"
    text = yamlfile.read_text(meta_file, ModelLoadError)
    if text is None:
        raise ModelLoadError(f"{path}: not a model directory (no meta.yaml)")
    meta = yamlfile.parse(text, meta_file, ModelLoadError)
    if not isinstance(meta, dict) or not isinstance(meta.get("model_info"), dict):
        raise ModelLoadError(f"{meta_file}: no model_info section")
    return meta


MAX_INT = 1 << 24  # far above any context, batch, chunk count or vocabulary a model has


def _int(params: dict, key: str, default: int, meta_file: Path) -> int:
    value = params.get(key, default)
    if value is None:
        value = default
    try:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise TypeError
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        raise ModelLoadError(f"{meta_file}: parameters.{key} must be an integer, got {value!r}") from None
    if not -1 <= number <= MAX_INT:
        raise ModelLoadError(f"{meta_file}: parameters.{key} is out of range ({number})")
    return number


def _lut_tag(value: Any) -> str:
    """ANEMLL's file-name suffix for a LUT setting: `_lut4` for 4 and for "4,16" (bits, channels per group)."""
    if value in (None, "none", "None", False, 0, ""):
        return ""
    return f"_lut{str(value).split(',')[0].strip()}"


def _defaults(prefix: str, part: str, lut: Any) -> list[tuple[str, str]]:
    """ANEMLL's names for a part meta.yaml does not name or names wrongly: its generate_meta_yaml writes the
    name without the LUT suffix when the compiled LUT part is missing (so on Linux, where nothing compiles)."""
    tag = _lut_tag(lut)
    return [(f"{prefix}_{part}{tag}", "ANEMLL's default name"), (f"{prefix}_{part}", "ANEMLL's default name, without the LUT suffix")]


def open_model_dir(path: Path) -> ModelDir:
    path = Path(path)
    if not path.exists():
        raise ModelNotFound(f"model directory {path} does not exist")
    meta = _load_meta(path)
    meta_file = path / "meta.yaml"
    info = meta["model_info"]
    params = info.get("parameters") or {}
    if not isinstance(params, dict):
        raise ModelLoadError(f"{meta_file}: model_info.parameters must be a mapping, got {type(params).__name__}")
    for key in ("anechat",):
        if meta.get(key) is not None and not isinstance(meta.get(key), dict):
            raise ModelLoadError(f"{meta_file}: {key} must be a mapping, got {type(meta[key]).__name__}")
    for key in ("architecture", "model_type"):
        if info.get(key) is not None and not isinstance(info[key], str):
            raise ModelLoadError(f"{meta_file}: model_info.{key} must be a name, got {info[key]!r}")
    for key in ("model_prefix", "embeddings", "lm_head", "ffn", "monolithic_model", "architecture", "model_type"):
        if params.get(key) is not None and not isinstance(params[key], str):
            raise ModelLoadError(f"{meta_file}: parameters.{key} must be a name, got {params[key]!r}")
    for key in params:
        if key not in KNOWN_PARAMETERS:
            log.warning("%s: ignoring unknown parameter %r", meta_file, key)
    # ANEMLL 0.3.5 writes model_type in model_info; accept it among the parameters too.
    model_type = info.get("model_type") or params.get("model_type") or "chunked"
    if model_type not in MODEL_TYPES:
        raise ModelLoadError(f"{meta_file}: model_type {model_type!r} is not supported (expected {' or '.join(MODEL_TYPES)})")
    monolithic = model_type == "monolithic"
    prefix = str(params.get("model_prefix", "llama"))
    n = 1 if monolithic else _int(params, "num_chunks", 1, meta_file)
    ctx = _int(params, "context_length", 512, meta_file)
    batch = _int(params, "batch_size", 64, meta_file)
    if not 1 <= n <= 1024 or ctx < 1 or not 1 <= batch <= ctx:
        raise ModelLoadError(f"{meta_file}: inconsistent num_chunks/context_length/batch_size ({n}/{ctx}/{batch})")
    resolved: list[Resolved]
    if monolithic:
        lut = _lut_tag(params.get("lut_bits"))
        resolved = [_resolve(path, "monolithic", params.get("monolithic_model"), [
            (f"{prefix}_monolithic_full{lut}", "ANEMLL's default name"), (f"{prefix}_monolithic_full", "ANEMLL's default name, without the LUT suffix")])]
        parts: dict[str, Any] = dict(embeddings=None, chunks=[], lm_head=None, monolithic=resolved[0].path)
    else:
        if params.get("split_rotate"):
            raise ModelLoadError(f"{meta_file}: ANEMLL's split_rotate layout (separate FFN and PF files) is not supported yet")
        resolved = [
            _resolve(path, "embeddings", params.get("embeddings"), _defaults(prefix, "embeddings", params.get("lut_embeddings"))),
            *_resolve_chunks(path, params, prefix, n, meta_file),
            _resolve(path, "lm_head", params.get("lm_head"), _defaults(prefix, "lm_head", params.get("lut_lmhead"))),
        ]
        parts = dict(embeddings=resolved[0].path, chunks=[r.path for r in resolved[1:-1]], lm_head=resolved[-1].path)
    anechat = meta.get("anechat") or {}
    config = anechat.get("config") or {}
    if not isinstance(config, dict):
        raise ModelLoadError(f"{meta_file}: anechat.config must be a mapping, got {type(config).__name__}")
    vocab = _int(params, "vocab_size", 0, meta_file) or _int(config, "vocab_size", 0, meta_file)
    split = _int(params, "split_lm_head", 8, meta_file)
    if vocab < 0 or not 1 <= split <= 1024:
        raise ModelLoadError(f"{meta_file}: vocab_size/split_lm_head out of range ({vocab}/{split})")
    return ModelDir(
        path=path,
        name=str(info.get("name") or path.name),
        architecture=info.get("architecture") or params.get("architecture") or config.get("architecture"),
        context_length=ctx,
        batch_size=batch,
        num_chunks=n,
        model_prefix=prefix,
        split_lm_head=split,
        argmax_in_model=bool(params.get("argmax_in_model", False)),
        vocab_size=vocab or None,
        meta=meta,
        # ANEMLL 0.3.5's chat assumes Gemma 3's 512-token window where meta.yaml names none
        sliding_window=_int(params, "sliding_window", 512 if prefix.lower().startswith("gemma3") else 0, meta_file) or None,
        recurrent_states=[str(n) for n in params.get("recurrent_states") or []],
        resolved=resolved,
        narrow=_narrow(anechat, batch, meta_file),
        **parts,
    )


STEP_INPUTS = {"position_ids", "causal_mask", "current_pos"}
# ANEMLL 0.3.5's Gemma 3 caches (Core ML writes state names with "_" for ".")
SPLIT_STATES = {"model_model_kv_cache_local", "model_model_kv_cache_global"}
OPTIONAL_INPUTS = {"update_mask"}  # ANEMLL 0.3.5 prefill functions may take one (update_mask_prefill)


SINGLE_LOGITS = ("logits", "output_logits")  # a head that is not split names its one output so


def logit_output_names(outputs: dict) -> list[str]:
    """The head's logits outputs in vocabulary order: logits1..K, or one output named logits/output_logits."""
    split = sorted((n for n in outputs if n.startswith("logits") and n[6:].isdigit()), key=lambda n: int(n[6:]))
    if split:
        return split
    return [n for n in SINGLE_LOGITS if n in outputs][:1]


def _check_head_outputs(label: str, outputs: dict, argmax: bool) -> list[str]:
    names = set(outputs)
    if argmax:
        if not {"argmax_idx", "argmax_val"} <= names:
            return [f"{label}: argmax_in_model but no argmax_idx/argmax_val outputs"]
        return []
    logits = logit_output_names(outputs)
    if not logits or len(logits) != len(names):
        return [f"{label}: outputs must be logits1..K (or one named logits), found {sorted(names)}"]
    if len(logits) > 1 and any(outputs[n].shape[-1] > 16384 for n in logits):
        return [f"{label}: each of logits1..K must be at most 16384 wide"]
    return []


def _parse_sizes(raw: Any) -> list[int] | None:
    """ANEMLL's `lm_head_chunk_sizes`: a list, or a string like "1,2,3" / "[1, 2, 3]"."""
    if isinstance(raw, str):
        raw = [p for p in raw.strip().strip("[]").split(",") if p.strip()]
    if not isinstance(raw, (list, tuple)) or not raw:
        return None
    try:
        sizes = [int(x) for x in raw]
    except (TypeError, ValueError):
        return None
    return sizes if all(v > 0 for v in sizes) else None


def argmax_widths(path: Path, function_name: str | None = None) -> list[int] | None:
    """The vocabulary slice each `reduce_argmax` of a head program ranges over, in program order (the order
    of argmax_idx), or None when the program does not say."""
    import numpy as np

    from anechat.runtime.milexec.backend import read_program

    fn = read_program(path).function(function_name)
    types = dict(fn.inputs)
    consts: dict[str, Any] = {}
    widths = []
    for op in fn.ops:
        if op.type == "const" and op.outputs:
            consts[op.outputs[0]] = op.attributes.get("val")
        if op.type == "reduce_argmax":
            x, axis = op.inputs.get("x"), op.inputs.get("axis", -1)
            t = types.get(getattr(x, "name", None))
            axis = consts.get(axis.name) if hasattr(axis, "name") else axis
            try:
                widths.append(int(t.shape[int(np.asarray(axis).reshape(()))]))
            except (AttributeError, TypeError, ValueError, IndexError):
                return None
        types.update(zip(op.outputs, op.output_types))
    return widths or None


def head_splits(md: ModelDir, head) -> list[int]:
    """Widths of an argmax head's vocabulary slices: meta.yaml's lm_head_chunk_sizes, else what the head's
    program computes over, else ANEMLL's split of vocab_size (divmod: the first `rem` one larger)."""
    shape = head.outputs["argmax_idx"].shape
    n = 0 if not shape or min(shape) < 0 else math.prod(shape)
    sizes = _parse_sizes(md.parameters.get("lm_head_chunk_sizes"))
    if sizes and (n <= 0 or len(sizes) == n):
        return sizes
    sizes = argmax_widths(head.path, head.function_name)
    if sizes and (n <= 0 or len(sizes) == n):
        return sizes
    if md.vocab_size and n > 0:
        base, rem = divmod(md.vocab_size, n)
        return [base + (1 if i < rem else 0) for i in range(n)]
    raise ModelLoadError(
        f"{head.path.name}: cannot tell the vocabulary of its argmax outputs; add vocab_size (or "
        "lm_head_chunk_sizes) to meta.yaml's parameters"
    )


def _check_stateful(label: str, inputs: dict, states: dict, first_input: str, seq: int, ctx: int) -> list[str]:
    want = {first_input} | STEP_INPUTS
    if not want <= set(inputs) or set(inputs) - want - OPTIONAL_INPUTS:
        return [f"{label}: inputs {sorted(inputs)} != {sorted(want)}"]
    problems = []
    if inputs["causal_mask"].shape != (1, 1, seq, ctx):
        problems.append(f"{label}: causal_mask shape {inputs['causal_mask'].shape}")
    if len(states) != 1 and {n.replace(".", "_") for n in states} != SPLIT_STATES:
        problems.append(f"{label}: expected one KV state (or the local/global pair), found {len(states)}")
    return problems


def _narrow_function(md: ModelDir) -> list[tuple[str, int]]:
    return [(md.narrow.function, md.narrow.rows)] if md.narrow else []


def _check_monolithic(md: ModelDir) -> list[str]:
    from anechat.runtime.portable import describe_part

    problems: list[str] = []
    part = md.monolithic
    shapes = set()
    for fn, seq in (("infer", 1), ("prefill", md.batch_size), *_narrow_function(md)):
        label = f"{part.name}:{fn}"
        inputs, outputs, states = describe_part(part, fn)
        found = _check_stateful(label, inputs, states, "input_ids", seq, md.context_length)
        if not found and inputs["input_ids"].shape not in ((1, seq), (1, -1)):
            found.append(f"{label}: input_ids shape {inputs['input_ids'].shape}, expected (1, {seq})")
        if fn == "infer":
            found += _check_head_outputs(label, outputs, md.argmax_in_model)
        elif not outputs:
            found.append(f"{label}: no outputs")
        problems += found
        shapes.update(s.shape for s in states.values())
    if len(shapes) > 1:
        problems.append(f"infer and prefill declare different KV state shapes {sorted(shapes)}")
    return problems


def _check_chunked(md: ModelDir) -> list[str]:
    from anechat.runtime.portable import describe_part

    problems: list[str] = []
    inputs, outputs, _ = describe_part(md.embeddings)
    if set(inputs) != {"input_ids"} or "hidden_states" not in outputs:
        problems.append(f"{md.embeddings.name}: expects input_ids → hidden_states")
    state_shapes = set()
    functions = [("infer", 1), ("prefill", md.batch_size), *_narrow_function(md)]
    if md.sliding_window and md.sliding_window < md.context_length:
        functions += [("infer_rotate", 1), ("prefill_rotate", md.batch_size)]
    for chunk in md.chunks:
        for fn, seq in functions:
            label = f"{chunk.name}:{fn}"
            inputs, outputs, states = describe_part(chunk, fn)
            found = _check_stateful(label, inputs, states, "hidden_states", seq, md.context_length)
            if "output_hidden_states" not in outputs:
                found.append(f"{label}: no output_hidden_states")
            problems += found
            state_shapes.add(tuple(sorted((n, s.shape) for n, s in states.items())))
    if len(state_shapes) > 1:
        problems.append(f"chunks declare different KV state shapes {sorted(state_shapes)}")
    _, outputs, _ = describe_part(md.lm_head)
    return problems + _check_head_outputs(md.lm_head.name, outputs, md.argmax_in_model)


def check_model_dir(path: Path) -> list[str]:
    """Problems of a model directory against the contract (empty when it is sound)."""
    try:
        md = open_model_dir(path)
    except (ModelLoadError, ModelNotFound) as e:
        return [str(e)]
    problems: list[str] = []
    for f in ("tokenizer.json",):
        if not (md.path / f).is_file():
            problems.append(f"missing {f}")
    try:
        problems += _check_monolithic(md) if md.monolithic is not None else _check_chunked(md)
    except ModelLoadError as e:
        problems.append(str(e))
    return problems
