"""What is inside a model directory: parts, functions, IO, states, op histograms, weights, compression."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from anechat.runtime.modeldir import open_model_dir

COMPRESSION_OPS = {
    "constexpr_lut_to_dense": "LUT",
    "constexpr_blockwise_shift_scale": "linear (int8/int4)",
    "constexpr_affine_dequantize": "affine",
    "constexpr_sparse_to_dense": "sparse",
}


def _spec(t) -> dict[str, Any]:
    return {"dtype": t.dtype, "shape": [d if d is not None else -1 for d in t.shape]}


def weights_bytes(part: Path) -> int:
    return sum(f.stat().st_size for f in part.rglob("*.bin") if f.is_file())


def describe_part(path: Path) -> dict[str, Any]:
    from anechat.runtime.milexec.backend import read_program

    program = read_program(path)
    functions = {}
    for name, fn in program.functions.items():
        types = fn.value_types()
        ops = Counter(op.type for op in fn.ops if op.type != "const")
        compression: Counter[str] = Counter()
        for op in fn.ops:
            if op.type in COMPRESSION_OPS:
                compression[COMPRESSION_OPS[op.type]] += 1
        functions[name] = {
            "inputs": {n: _spec(t) for n, t in fn.inputs.items()},
            "outputs": {n: _spec(types[n]) for n in fn.outputs if types.get(n) is not None},
            "states": {n: _spec(t) for n, t in fn.states.items()},
            "ops": sum(ops.values()),
            "op_histogram": dict(ops.most_common()),
            "compressed_weights": dict(compression),
        }
    return {
        "path": path.name,
        "format": path.suffix.lstrip("."),
        "default_function": program.default_function,
        "weight_bytes": weights_bytes(path),
        "functions": functions,
    }


def inspect_model_dir(path: Path) -> dict[str, Any]:
    md = open_model_dir(path)
    params = md.meta["model_info"].get("parameters", {})
    parts = md.parts()
    lut_keys = ("lut_bits", "lut_embeddings", "lut_lmhead") if md.monolithic else ("lut_embeddings", "lut_ffn", "lut_lmhead")
    return {
        "name": md.name,
        "architecture": md.architecture,
        "model_type": "monolithic" if md.monolithic else "chunked",
        "context_length": md.context_length,
        "batch_size": md.batch_size,
        # anechat's narrow prefill (meta.yaml anechat.prefill_narrow): fewer rows, for short follow-up turns
        "narrow_prefill": {"function": md.narrow.function, "rows": md.narrow.rows} if md.narrow else None,
        "num_chunks": md.num_chunks,
        "split_lm_head": md.split_lm_head,
        "argmax_in_model": md.argmax_in_model,
        "lut": {k: params.get(k, "none") for k in lut_keys},
        # states that summarise every token (Qwen 3.5's DeltaNet conv and recurrent states), not one slot per position
        "recurrent_states": list(md.recurrent_states),
        "parts": {role: {**describe_part(p), "resolved": _resolution(md, p)} for role, p in parts},
    }


def _resolution(md, path: Path) -> str:
    """How meta.yaml's name led to this file (ANEMLL's chat rules: .mlmodelc ⇄ .mlpackage, rebuilt chunk names)."""
    for r in md.resolved:
        if r.path == path:
            return r.how
    return "as meta.yaml names it"


def format_report(info: dict[str, Any]) -> str:
    layout = "monolithic (one program)" if info.get("model_type") == "monolithic" else f"{info['num_chunks']} chunk(s)"
    lines = [
        f"{info['name']} ({info['architecture'] or 'unknown architecture'}): context {info['context_length']}, "
        f"prefill batch {info['batch_size']}"
        + (f" (and {n['rows']}: {n['function']}, for short follow-ups)" if (n := info.get("narrow_prefill")) else "")
        + f", {layout}, lm_head split {info['split_lm_head']}"
        + (", argmax in model" if info["argmax_in_model"] else ""),
    ]
    recurrent = {n.replace(".", "_") for n in info.get("recurrent_states") or []}
    if recurrent:
        lines.append(f"recurrent states (one summary of every token, snapshotted at turn boundaries): {', '.join(info['recurrent_states'])}")
    total = 0
    for role, part in info["parts"].items():
        total += part["weight_bytes"]
        lines.append(f"\n{role}: {part['path']}  weights {part['weight_bytes'] / 1e6:.1f} MB")
        lines.append(f"  resolved: {part.get('resolved', 'as meta.yaml names it')}")
        for fname, fn in part["functions"].items():
            default = " (default)" if fname == part["default_function"] else ""
            lines.append(f"  function {fname}{default}: {fn['ops']} ops")
            for kind in ("inputs", "outputs", "states"):
                for n, s in fn[kind].items():
                    note = "  (recurrent)" if kind == "states" and n.replace(".", "_") in recurrent else ""
                    lines.append(f"    {kind[:-1]:6s} {n}: {s['dtype']} {tuple(s['shape'])}{note}")
            hist = ", ".join(f"{k} {v}" for k, v in list(fn["op_histogram"].items())[:10])
            lines.append(f"    ops: {hist}")
            if fn["compressed_weights"]:
                lines.append("    compressed weights: " + ", ".join(f"{k} ×{v}" for k, v in fn["compressed_weights"].items()))
    lines.append(f"\ntotal weights {total / 1e6:.1f} MB")
    return "\n".join(lines)
