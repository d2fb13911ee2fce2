"""Llama family: Llama 2/3.x, SmolLM, Mistral-style dense decoders. The baseline the Qwen files vary.

Owns: GGUF quirks (llama.cpp's rope permutation of q/k), the fused per-layer weights of the ANE graph,
the decoder block (RMSNorm → fused qkv → rope → cached GQA attention → o; RMSNorm → SwiGLU) and the numpy
reference forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import sqrt
from typing import ClassVar

import numpy as np

from anechat.arch import reference as npref
from anechat.arch.base import KV_STATE, Architecture
from anechat.arch.mil import (
    cache_rows,
    conv1x1,
    f16,
    gqa_attention,
    mb,
    rms_norm,
    rope,
    rotate_half_matrix,
    write_at,
)


def unpermute_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp's convert_hf_to_gguf `permute`, which interleaves each head's two rotary halves."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@dataclass(frozen=True)
class LayerWeights:
    """One decoder layer's weights, fused and pre-scaled the way the ANE graph wants them."""

    attn_norm: np.ndarray
    qkv: np.ndarray  # (q_out + 2·kv_out, hidden), q rows pre-scaled by 1/sqrt(head_dim) unless qk_norm
    qkv_bias: np.ndarray | None
    qk_norm: np.ndarray | None  # (1, heads + kv_heads, 1, head_dim) gamma; q rows carry the attention scale
    o: np.ndarray
    mlp_norm: np.ndarray
    gate_up: np.ndarray  # (2·ffn, hidden)
    down: np.ndarray


def attention_inputs(ckpt, i: int, scale: float, norm_gain=lambda w: w):
    """qkv fused, its bias, and the per-head q/k norm gains with the attention scale folded into q."""
    c = ckpt.config
    q, k, v = (ckpt.layer(i, f"self_attn.{n}_proj.weight") for n in "qkv")
    bias = None
    if c.attention_bias:
        bias = np.concatenate([ckpt.layer(i, f"self_attn.{n}_proj.bias") for n in "qkv"])
    qk_norm = None
    if c.qk_norm:
        qn = norm_gain(ckpt.layer(i, "self_attn.q_norm.weight")) * scale
        kn = norm_gain(ckpt.layer(i, "self_attn.k_norm.weight"))
        qk_norm = np.concatenate([np.tile(qn, (c.num_heads, 1)), np.tile(kn, (c.num_kv_heads, 1))])[None, :, None, :]
    else:
        q = q * scale
        if bias is not None:
            bias[: q.shape[0]] *= scale
    return np.concatenate([q, k, v]), bias, qk_norm


def qkv_heads(c, w_qkv, bias, qk_norm, x, cos, sin, seq: int):
    """x (1, H, 1, S) normalised → q (1, heads, S, hd), k, v (1, kv_heads, S, hd), rope applied."""

    b = mb()
    hd, nh, kvh = c.head_dim, c.num_heads, c.num_kv_heads
    qkv = conv1x1(x, w_qkv, bias)
    qkv = b.transpose(x=b.reshape(x=qkv, shape=[1, nh + 2 * kvh, hd, seq]), perm=[0, 1, 3, 2])  # (1, heads, S, hd)
    qk, v = b.split(x=qkv, split_sizes=[nh + kvh, kvh], axis=1)
    if qk_norm is not None:
        qk = b.mul(x=rms_norm(qk, None, c.rms_norm_eps, axis=-1, width=hd), y=f16(qk_norm))
    qk = rope(qk, cos, sin, rotate_half_matrix(hd))
    q, k = b.split(x=qk, split_sizes=[nh, kvh], axis=1)
    return q, k, v


class Llama(Architecture):
    name = "llama"
    hf_model_types: ClassVar[tuple[str, ...]] = ("llama", "mistral")
    gguf_names: ClassVar[tuple[str, ...]] = ("llama",)

    @classmethod
    def gguf_tensor(cls, name, w, config):
        # llama.cpp permutes q/k rows only for the llama architecture (Qwen GGUFs keep HF's order).
        if cls.name == "llama" and name.endswith("self_attn.q_proj.weight"):
            return unpermute_rope(w, config.num_heads)
        if cls.name == "llama" and name.endswith("self_attn.k_proj.weight"):
            return unpermute_rope(w, config.num_kv_heads)
        return w

    @classmethod
    def layer_weights(cls, ckpt, i: int) -> LayerWeights:
        qkv, bias, qk_norm = attention_inputs(ckpt, i, 1.0 / sqrt(ckpt.config.head_dim))
        return LayerWeights(
            attn_norm=ckpt.layer(i, "input_layernorm.weight"),
            qkv=qkv,
            qkv_bias=bias,
            qk_norm=qk_norm,
            o=ckpt.layer(i, "self_attn.o_proj.weight"),
            mlp_norm=ckpt.layer(i, "post_attention_layernorm.weight"),
            gate_up=np.concatenate([ckpt.layer(i, "mlp.gate_proj.weight"), ckpt.layer(i, "mlp.up_proj.weight")]),
            down=ckpt.layer(i, "mlp.down_proj.weight"),
        )

    @classmethod
    def decoder_layer(cls, w: LayerWeights, i: int, x, env):

        b = mb()
        c, seq, ctx = env.config, env.seq, env.ctx
        h, hd, nh, kvh, L = c.hidden_size, c.head_dim, c.num_heads, c.num_kv_heads, c.num_layers
        cos, sin = env.rope_tables()
        q, k, v = qkv_heads(c, w.qkv, w.qkv_bias, w.qk_norm, rms_norm(x, w.attn_norm, c.rms_norm_eps, axis=1, width=h), cos, sin, seq)
        # Write this layer's new keys/values at [pos, pos+S) of the shared state, then attend over the whole row.
        cache = write_at(env.state(KV_STATE), k, v, i, L + i, env.base, kvh, seq, hd)
        keys, values = cache_rows(cache, i, L + i, kvh, ctx, hd)
        attn = gqa_attention(q, keys, values, env.mask, nh, kvh, seq, ctx, hd)
        x = b.add(x=x, y=conv1x1(attn, w.o))
        xn = rms_norm(x, w.mlp_norm, c.rms_norm_eps, axis=1, width=h)
        gate, up = b.split(x=conv1x1(xn, w.gate_up), num_splits=2, axis=1)
        return b.add(x=x, y=conv1x1(b.mul(x=b.silu(x=gate), y=up), w.down))

    @classmethod
    def reference_forward(cls, ref, ids):

        c, w = ref.c, ref.w
        x = w["model.embed_tokens.weight"][ids]
        cos, sin = ref.rope(np.arange(ref.pos, ref.pos + len(ids)))
        for i in range(c.num_layers):
            p = f"model.layers.{i}."
            h = npref.rms_norm(x, w[p + "input_layernorm.weight"], c.rms_norm_eps)
            q = ref.project(h, p + "self_attn.q_proj", c.num_heads)
            k = ref.project(h, p + "self_attn.k_proj", c.num_kv_heads)
            v = ref.project(h, p + "self_attn.v_proj", c.num_kv_heads)
            if c.qk_norm:
                q = npref.rms_norm(q, w[p + "self_attn.q_norm.weight"], c.rms_norm_eps)
                k = npref.rms_norm(k, w[p + "self_attn.k_norm.weight"], c.rms_norm_eps)
            out = ref.attend(i, npref.apply_rope(q, cos, sin), npref.apply_rope(k, cos, sin), v, 1.0 / np.sqrt(c.head_dim))
            x = x + out @ w[p + "self_attn.o_proj.weight"].T
            h = npref.rms_norm(x, w[p + "post_attention_layernorm.weight"], c.rms_norm_eps)
            gate = h @ w[p + "mlp.gate_proj.weight"].T
            up = h @ w[p + "mlp.up_proj.weight"].T
            x = x + (gate / (1 + np.exp(-gate)) * up) @ w[p + "mlp.down_proj.weight"].T
            ref.record(i, x)
        return npref.rms_norm(x, w["model.norm.weight"], c.rms_norm_eps) @ w["lm_head.weight"].T
