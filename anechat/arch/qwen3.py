"""Qwen3 (dense): per-head RMSNorm on q and k before rope, no projection biases, explicit head_dim."""

from anechat.arch.base import Architecture


class Qwen3(Architecture):
    name = "qwen3"
    hf_model_types = ("qwen3",)
    gguf_names = ("qwen3",)
    qk_norm = True
    default_rope_theta = 1000000.0
