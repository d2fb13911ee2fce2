"""Architecture registry: one small file per family."""

from __future__ import annotations

from anechat.arch.base import Architecture, ModelConfig
from anechat.arch.gemma3 import Gemma3
from anechat.arch.llama import Llama
from anechat.arch.qwen2 import Qwen2
from anechat.arch.qwen3 import Qwen3
from anechat.arch.qwen3_5 import Qwen3_5
from anechat.errors import ConversionError

ARCHITECTURES: dict[str, type[Architecture]] = {a.name: a for a in (Llama, Qwen2, Qwen3, Qwen3_5, Gemma3)}


def _supported() -> str:
    return ", ".join(sorted({t for a in ARCHITECTURES.values() for t in a.hf_model_types}))


def for_hf_model_type(model_type: str | None) -> type[Architecture]:
    for arch in ARCHITECTURES.values():
        if model_type in arch.hf_model_types:
            return arch
    raise ConversionError(f"unsupported architecture {model_type!r} (anechat converts: {_supported()})")


def for_gguf_name(name: str | None) -> type[Architecture]:
    for arch in ARCHITECTURES.values():
        if name in arch.gguf_names:
            return arch
    raise ConversionError(f"unsupported GGUF architecture {name!r} (anechat converts: {_supported()})")


def by_name(name: str) -> type[Architecture]:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ConversionError(f"unknown architecture {name!r}") from None


__all__ = ["ARCHITECTURES", "Architecture", "ModelConfig", "by_name", "for_gguf_name", "for_hf_model_type"]
