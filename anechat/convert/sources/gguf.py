"""GGUF files (llama.cpp / ollama) as checkpoints: metadata → ModelConfig, tensors dequantized lazily."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from anechat.arch import for_gguf_name
from anechat.arch.llama import unpermute_rope  # noqa: F401  (llama.cpp's permutation; tests import it here)
from anechat.convert.checkpoint import Checkpoint
from anechat.errors import ConversionError

SUPPORTED_QUANTS = {"F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"}

_BLOCK = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)$")


def hf_name(gguf_name: str, arch=None) -> str | None:
    """A GGUF tensor's name in a Checkpoint (the family's table; Llama's by default), None if unused."""
    if arch is None:
        from anechat.arch.llama import Llama as arch
    if gguf_name in arch.gguf_global_names:
        return arch.gguf_global_names[gguf_name]
    m = _BLOCK.match(gguf_name)
    if m and m.group(2) in arch.gguf_layer_names:
        return f"model.layers.{m.group(1)}.{arch.gguf_layer_names[m.group(2)]}.{m.group(3)}"
    return None


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
        name = hf_name(t.name, arch)
        if name is None:
            continue
        loaders[name] = _loader(t, name, config, arch)
    if "lm_head.weight" not in loaders and "model.embed_tokens.weight" in loaders:
        loaders["lm_head.weight"] = loaders["model.embed_tokens.weight"]
        config.tie_word_embeddings = True
    check_complete(path, loaders, config)
    from anechat.convert.sources.gguf_vocab import build_tokenizer_files

    tokenizer_files = build_tokenizer_files(meta, config.max_position_embeddings)
    return Checkpoint(config=config, source=path, loaders=loaders, tokenizer_files=tokenizer_files)


def _loader(tensor, name: str, config, arch) -> Callable[[], np.ndarray]:
    import gguf

    def load() -> np.ndarray:
        w = np.asarray(gguf.quants.dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
        return arch.gguf_tensor(name, w.reshape([int(d) for d in reversed(tensor.shape)]), config)

    return load


def check_complete(path: Path, loaders: dict, config) -> None:
    from anechat.arch import by_name

    missing = [n for n in by_name(config.architecture).required_tensors(config) if n not in loaders]
    if missing:
        raise ConversionError(f"{path.name}: missing {len(missing)} tensors, e.g. {missing[0]}")
    if config.attention_bias and "model.layers.0.self_attn.q_proj.bias" not in loaders:
        config.attention_bias = False  # some Qwen2 exports drop zero biases
