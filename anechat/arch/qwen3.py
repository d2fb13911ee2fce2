"""Qwen3 (dense): Llama with per-head RMSNorm on q and k before rope, no projection biases, explicit head_dim."""

from anechat.arch.llama import Llama


class Qwen3(Llama):
    name = "qwen3"
    hf_model_types = ("qwen3",)
    gguf_names = ("qwen3",)
    qk_norm = True
    default_rope_theta = 1000000.0
