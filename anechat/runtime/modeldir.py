"""ANEMLL-layout model directories: meta.yaml and the parts it names."""

from __future__ import annotations

import logging
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
}
PART_SUFFIXES = (".mlmodelc", ".mlpackage")


@dataclass
class ModelDir:
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
    embeddings: Path
    chunks: list[Path]
    lm_head: Path
    meta: dict[str, Any] = field(repr=False, default_factory=dict)


def _find_part(root: Path, name: str, what: str) -> Path:
    """A part named with or without extension; .mlmodelc preferred (it is what Core ML loads fastest)."""
    candidates = [root / name] if name.endswith(PART_SUFFIXES) else [root / (name + s) for s in PART_SUFFIXES]
    for c in candidates:
        if c.is_dir():
            if root.resolve() not in c.resolve().parents:
                raise ModelLoadError(f"{root}/meta.yaml: {what} {name!r} points outside the model directory")
            return c
    raise ModelLoadError(f"{root}: missing {what} part {name!r}")


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


def _int(params: dict, key: str, default: int, meta_file: Path) -> int:
    value = params.get(key, default)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ModelLoadError(f"{meta_file}: parameters.{key} must be an integer, got {value!r}") from None


def _lut_tag(value: Any) -> str:
    return "" if value in (None, "none", "None", False, 0) else f"_lut{value}"


def open_model_dir(path: Path) -> ModelDir:
    path = Path(path)
    if not path.exists():
        raise ModelNotFound(f"model directory {path} does not exist")
    meta = _load_meta(path)
    meta_file = path / "meta.yaml"
    info = meta["model_info"]
    params = info.get("parameters") or {}
    for key in params:
        if key not in KNOWN_PARAMETERS:
            log.warning("%s: ignoring unknown parameter %r", meta_file, key)
    if params.get("model_type", "chunked") not in ("chunked", None):
        raise ModelLoadError(f"{meta_file}: model_type {params['model_type']!r} is not supported yet")
    prefix = str(params.get("model_prefix", "llama"))
    n = _int(params, "num_chunks", 1, meta_file)
    ctx = _int(params, "context_length", 512, meta_file)
    batch = _int(params, "batch_size", 64, meta_file)
    if n < 1 or ctx < 1 or not 1 <= batch <= ctx:
        raise ModelLoadError(f"{meta_file}: inconsistent num_chunks/context_length/batch_size ({n}/{ctx}/{batch})")
    emb = params.get("embeddings") or f"{prefix}_embeddings{_lut_tag(params.get('lut_embeddings'))}"
    head = params.get("lm_head") or f"{prefix}_lm_head{_lut_tag(params.get('lut_lmhead'))}"
    ffn = str(params.get("ffn") or f"{prefix}_FFN_PF{_lut_tag(params.get('lut_ffn'))}_chunk_01of{n:02d}")
    chunk_names = [re.sub(r"_chunk_\d+of\d+", f"_chunk_{i:02d}of{n:02d}", ffn) for i in range(1, n + 1)]
    if n > 1 and chunk_names[0] == chunk_names[1]:
        raise ModelLoadError(f"{meta_file}: ffn name {ffn!r} has no _chunk_01ofNN part to number the chunks")
    anechat = meta.get("anechat") or {}
    config = anechat.get("config") or {}
    vocab = params.get("vocab_size") or config.get("vocab_size")
    return ModelDir(
        path=path,
        name=str(info.get("name") or path.name),
        architecture=info.get("architecture") or params.get("architecture") or config.get("architecture"),
        context_length=ctx,
        batch_size=batch,
        num_chunks=n,
        model_prefix=prefix,
        split_lm_head=_int(params, "split_lm_head", 8, meta_file),
        argmax_in_model=bool(params.get("argmax_in_model", False)),
        vocab_size=int(vocab) if vocab else None,
        embeddings=_find_part(path, str(emb), "embeddings"),
        chunks=[_find_part(path, c, "transformer chunk") for c in chunk_names],
        lm_head=_find_part(path, str(head), "lm_head"),
        meta=meta,
    )


def check_model_dir(path: Path) -> list[str]:
    """Problems of a model directory against the contract (empty when it is sound)."""
    from anechat.runtime.portable import describe_part

    try:
        md = open_model_dir(path)
    except (ModelLoadError, ModelNotFound) as e:
        return [str(e)]
    problems: list[str] = []
    for f in ("tokenizer.json",):
        if not (md.path / f).is_file():
            problems.append(f"missing {f}")
    try:
        inputs, outputs, _ = describe_part(md.embeddings)
        if set(inputs) != {"input_ids"} or "hidden_states" not in outputs:
            problems.append(f"{md.embeddings.name}: expects input_ids → hidden_states")
        state_shapes = set()
        for chunk in md.chunks:
            for fn, seq in (("infer", 1), ("prefill", md.batch_size)):
                inputs, outputs, states = describe_part(chunk, fn)
                want = {"hidden_states", "position_ids", "causal_mask", "current_pos"}
                if set(inputs) != want:
                    problems.append(f"{chunk.name}:{fn}: inputs {sorted(inputs)} != {sorted(want)}")
                    continue
                if inputs["causal_mask"].shape != (1, 1, seq, md.context_length):
                    problems.append(f"{chunk.name}:{fn}: causal_mask shape {inputs['causal_mask'].shape}")
                if "output_hidden_states" not in outputs:
                    problems.append(f"{chunk.name}:{fn}: no output_hidden_states")
                if len(states) != 1:
                    problems.append(f"{chunk.name}:{fn}: expected one KV state, found {len(states)}")
                state_shapes.update(s.shape for s in states.values())
        if len(state_shapes) > 1:
            problems.append(f"chunks declare different KV state shapes {sorted(state_shapes)}")
        inputs, outputs, _ = describe_part(md.lm_head)
        names = set(outputs)
        if md.argmax_in_model:
            if not {"argmax_idx", "argmax_val"} <= names:
                problems.append(f"{md.lm_head.name}: argmax_in_model but no argmax_idx/argmax_val outputs")
        else:
            logits = [outputs[f"logits{k}"] for k in range(1, len(names) + 1) if f"logits{k}" in outputs]
            if len(logits) != len(names) or any(s.shape[-1] > 16384 for s in logits):
                problems.append(f"{md.lm_head.name}: outputs must be logits1..K, each at most 16384 wide")
    except ModelLoadError as e:
        problems.append(str(e))
    return problems
