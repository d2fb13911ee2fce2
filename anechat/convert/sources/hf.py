"""Hugging Face model directories: config.json, *.safetensors (sharded or not), tokenizer files."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from anechat.arch import for_hf_model_type
from anechat.convert.checkpoint import Checkpoint
from anechat.errors import ConversionError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConversionError(f"{path.parent}: missing {path.name}") from None
    except (OSError, ValueError) as e:
        raise ConversionError(f"{path}: unreadable JSON ({e})") from None


def _shards(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index).get("weight_map") if isinstance(_read_json(index), dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
            raise ConversionError(f"{index}: expected a weight_map of tensor → shard file")
        files = sorted(set(weight_map.values()))
        if any(Path(f).name != f for f in files):
            raise ConversionError(f"{index}: shard names must be plain file names")
        missing = [f for f in files if not (path / f).is_file()]
        if missing:
            raise ConversionError(f"{path}: shard {missing[0]} named in model.safetensors.index.json is missing")
        return [path / f for f in files]
    shards = sorted(path.glob("*.safetensors"))
    if not shards:
        raise ConversionError(f"{path}: no *.safetensors weights (PyTorch .bin checkpoints are not supported)")
    return shards


def _tensor_loader(shard: Path, name: str, dtype: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from safetensors import safe_open

        with safe_open(str(shard), framework="numpy") as f:
            if dtype != "BF16":
                return f.get_tensor(name).astype(np.float32)
        return _read_bf16(shard, name)

    return load


def _read_bf16(shard: Path, name: str) -> np.ndarray:
    """numpy has no bfloat16: read the raw 16-bit words and widen them (bf16 is the top half of fp32)."""
    import struct

    with open(shard, "rb") as fh:
        header_len = struct.unpack("<Q", fh.read(8))[0]
        info = json.loads(fh.read(header_len))[name]
        start, end = info["data_offsets"]
        fh.seek(8 + header_len + start)
        raw = np.frombuffer(fh.read(end - start), dtype=np.uint16)
    return (raw.astype(np.uint32) << 16).view(np.float32).reshape(info["shape"])


def _index_shard(shard: Path) -> dict[str, str]:
    import struct

    try:
        with open(shard, "rb") as fh:
            header_len = struct.unpack("<Q", fh.read(8))[0]
            if header_len > 100_000_000:
                raise ValueError("header too large")
            header = json.loads(fh.read(header_len))
    except (OSError, ValueError, struct.error) as e:
        raise ConversionError(f"{shard}: corrupt safetensors file ({e})") from None
    size = shard.stat().st_size
    out = {}
    if not isinstance(header, dict):
        raise ConversionError(f"{shard}: corrupt safetensors file (header is not a JSON object)")
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            start, end = (int(v) for v in info["data_offsets"])
            dtype = str(info["dtype"])
        except (TypeError, ValueError, KeyError):
            raise ConversionError(f"{shard}: corrupt safetensors header at tensor {name!r}") from None
        if not 0 <= start <= end or 8 + header_len + end > size:
            raise ConversionError(f"{shard}: truncated (tensor {name} ends past the end of the file)")
        out[name] = dtype
    return out


def load_hf_dir(path: Path) -> Checkpoint:
    path = Path(path)
    cfg = _read_json(path / "config.json")
    if not isinstance(cfg, dict):
        raise ConversionError(f"{path / 'config.json'}: expected a JSON object, got {type(cfg).__name__}")
    arch = for_hf_model_type(cfg.get("model_type"))
    config = arch.config_from_hf(cfg)
    loaders: dict[str, Callable[[], np.ndarray]] = {}
    for shard in _shards(path):
        for name, dtype in _index_shard(shard).items():
            if dtype not in ("F32", "F16", "BF16"):
                raise ConversionError(f"{shard.name}: tensor {name} has dtype {dtype}; anechat converts F32/F16/BF16")
            key = arch.hf_tensor_name(name)
            if key is not None:
                loaders[key] = _tensor_loader(shard, name, dtype)
    if "lm_head.weight" not in loaders:
        if "model.embed_tokens.weight" not in loaders:
            raise ConversionError(f"{path}: no model.embed_tokens.weight in the safetensors files")
        loaders["lm_head.weight"] = loaders["model.embed_tokens.weight"]
        config.tie_word_embeddings = True
    from anechat.convert.sources.gguf import check_complete

    check_complete(path, loaders, config)
    files = {f: (path / f).read_text(encoding="utf-8") for f in TOKENIZER_FILES if (path / f).is_file()}
    if "tokenizer.json" not in files:
        raise ConversionError(f"{path}: missing tokenizer.json (slow SentencePiece-only tokenizers are not supported)")
    return Checkpoint(config=config, source=path, loaders=loaders, tokenizer_files=files)
