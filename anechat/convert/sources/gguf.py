"""GGUF files (llama.cpp / ollama) as checkpoints: metadata → ModelConfig, tensors dequantized lazily."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

import numpy as np

from anechat.arch import for_gguf_name
from anechat.convert.checkpoint import Checkpoint
from anechat.errors import ConversionError

SUPPORTED_QUANTS = {"F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"}

_LAYER = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight", "output.weight": "lm_head.weight"}
_BLOCK = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)$")


def hf_name(gguf_name: str) -> str | None:
    if gguf_name in _GLOBAL:
        return _GLOBAL[gguf_name]
    m = _BLOCK.match(gguf_name)
    if m and m.group(2) in _LAYER:
        return f"model.layers.{m.group(1)}.{_LAYER[m.group(2)]}.{m.group(3)}"
    return None


def unpermute_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp's convert_hf_to_gguf `permute`, which interleaves each head's two rotary halves."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _read_meta(reader) -> dict[str, Any]:
    return {name: f.contents() for name, f in reader.fields.items() if not name.startswith("GGUF.")}


def _open(path: Path):
    import gguf

    try:
        return gguf.GGUFReader(str(path), "r")
    except (ValueError, OSError, IndexError, KeyError) as e:
        # The gguf package raises ValueError for a bad magic and IndexError/ValueError for truncation.
        detail = str(e) or type(e).__name__
        if "magic" in detail.lower():
            raise ConversionError(f"{path.name}: not a GGUF file (bad magic)") from None
        raise ConversionError(f"{path.name}: unreadable GGUF ({detail}); is the file truncated?") from None


def load_gguf(path: Path) -> Checkpoint:
    path = Path(path)
    reader = _open(path)
    meta = _read_meta(reader)
    arch_key = meta.get("general.architecture")
    arch = for_gguf_name(arch_key)
    config = arch.config_from_gguf(meta, str(arch_key))  # one of the names for_gguf_name knows
    size = path.stat().st_size
    loaders: dict[str, Callable[[], np.ndarray]] = {}
    for t in reader.tensors:
        qname = t.tensor_type.name
        if qname not in SUPPORTED_QUANTS:
            raise ConversionError(f"{path.name}: tensor {t.name} uses quantization {qname}, which anechat does not convert")
        if t.data_offset + t.n_bytes > size:
            raise ConversionError(f"{path.name}: truncated file (tensor {t.name} ends past the end of the file)")
        name = hf_name(t.name)
        if name is None:
            continue
        loaders[name] = _loader(t, name, config, arch.name)
    if "lm_head.weight" not in loaders and "model.embed_tokens.weight" in loaders:
        loaders["lm_head.weight"] = loaders["model.embed_tokens.weight"]
        config.tie_word_embeddings = True
    check_complete(path, loaders, config)
    from anechat.convert.sources.gguf_vocab import build_tokenizer_files

    tokenizer_files = build_tokenizer_files(meta, config.max_position_embeddings)
    return Checkpoint(config=config, source=path, loaders=loaders, tokenizer_files=tokenizer_files)


def _loader(tensor, name: str, config, arch_name: str) -> Callable[[], np.ndarray]:
    import gguf

    # llama.cpp permutes q/k rows only for the llama architecture (Qwen GGUFs keep HF's order).
    heads = None
    if arch_name == "llama" and name.endswith("self_attn.q_proj.weight"):
        heads = config.num_heads
    elif arch_name == "llama" and name.endswith("self_attn.k_proj.weight"):
        heads = config.num_kv_heads

    def load() -> np.ndarray:
        w = np.asarray(gguf.quants.dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
        w = w.reshape([int(d) for d in reversed(tensor.shape)])
        return unpermute_rope(w, heads) if heads else w

    return load


def check_complete(path: Path, loaders: dict, config) -> None:
    needed = ["model.embed_tokens.weight", "model.norm.weight"]
    for i in range(config.num_layers):
        for suffix in ("input_layernorm", "post_attention_layernorm", "self_attn.q_proj", "self_attn.k_proj",
                       "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"):
            needed.append(f"model.layers.{i}.{suffix}.weight")
        if config.qk_norm:
            needed += [f"model.layers.{i}.self_attn.q_norm.weight", f"model.layers.{i}.self_attn.k_norm.weight"]
    missing = [n for n in needed if n not in loaders]
    if missing:
        raise ConversionError(f"{path.name}: missing {len(missing)} tensors, e.g. {missing[0]}")
    if config.attention_bias and "model.layers.0.self_attn.q_proj.bias" not in loaders:
        config.attention_bias = False  # some Qwen2 exports drop zero biases
