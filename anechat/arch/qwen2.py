"""Qwen2 / Qwen2.5: Llama with biases on the q, k and v projections (GGUFs keep HF's q/k order)."""

from anechat.arch.llama import Llama


class Qwen2(Llama):
    name = "qwen2"
    hf_model_types = ("qwen2",)
    gguf_names = ("qwen2",)
    attention_bias = True
    default_rope_theta = 1000000.0

    @classmethod
    def config_from_hf(cls, cfg):
        # Qwen2's config.json does not say attention_bias: the biases are always there.
        return super().config_from_hf({**cfg, "attention_bias": True})
