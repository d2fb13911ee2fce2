"""Llama family: Llama 2/3.x, SmolLM, Mistral-style dense decoders. The baseline everything else varies."""

from anechat.arch.base import Architecture


class Llama(Architecture):
    name = "llama"
    hf_model_types = ("llama", "mistral")
    gguf_names = ("llama",)
