"""The programs of an ANEMLL-layout model: embeddings, transformer chunk and lm_head (chunked layout), or
all three in one (monolithic layout)."""

from __future__ import annotations

from dataclasses import dataclass
from math import ceil, sqrt

import numpy as np

from anechat.arch.base import ModelConfig
from anechat.arch.rope import cos_sin
from anechat.convert.ane.blocks import conv1x1, f16, mb, rms_norm, rope, rotate_half_matrix
from anechat.convert.ane.compress import weight_const
from anechat.convert.checkpoint import Checkpoint

STATE_NAME = "model.model.kv_cache_0"
MAX_SPLIT = 16384


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


def layer_weights(ckpt: Checkpoint, i: int) -> LayerWeights:
    c = ckpt.config
    scale = 1.0 / sqrt(c.head_dim)
    q, k, v = (ckpt.layer(i, f"self_attn.{n}_proj.weight") for n in "qkv")
    bias = None
    if c.attention_bias:
        bias = np.concatenate([ckpt.layer(i, f"self_attn.{n}_proj.bias") for n in "qkv"])
    qk_norm = None
    if c.qk_norm:
        qn = ckpt.layer(i, "self_attn.q_norm.weight") * scale
        kn = ckpt.layer(i, "self_attn.k_norm.weight")
        qk_norm = np.concatenate([np.tile(qn, (c.num_heads, 1)), np.tile(kn, (c.num_kv_heads, 1))])[None, :, None, :]
    else:
        q = q * scale
        if bias is not None:
            bias[: q.shape[0]] *= scale
    return LayerWeights(
        attn_norm=ckpt.layer(i, "input_layernorm.weight"),
        qkv=np.concatenate([q, k, v]),
        qkv_bias=bias,
        qk_norm=qk_norm,
        o=ckpt.layer(i, "self_attn.o_proj.weight"),
        mlp_norm=ckpt.layer(i, "post_attention_layernorm.weight"),
        gate_up=np.concatenate([ckpt.layer(i, "mlp.gate_proj.weight"), ckpt.layer(i, "mlp.up_proj.weight")]),
        down=ckpt.layer(i, "mlp.down_proj.weight"),
    )


def decoder_layer(c: ModelConfig, w: LayerWeights, gl: int, x, cos, sin, mask, base, kv_state, seq: int, ctx: int):
    """One layer on x (1, H, 1, S). gl = the layer's index in the whole model (its row in the KV state)."""
    b = mb()
    h, hd, nh, kvh = c.hidden_size, c.head_dim, c.num_heads, c.num_kv_heads
    group, total_heads = nh // kvh, nh + 2 * kvh
    L = c.num_layers

    xn = rms_norm(x, w.attn_norm, c.rms_norm_eps, axis=1, width=h)
    qkv = conv1x1(xn, w.qkv, w.qkv_bias)
    qkv = b.transpose(x=b.reshape(x=qkv, shape=[1, total_heads, hd, seq]), perm=[0, 1, 3, 2])  # (1, heads, S, hd)
    qk, v = b.split(x=qkv, split_sizes=[nh + kvh, kvh], axis=1)
    if w.qk_norm is not None:
        qk = b.mul(x=rms_norm(qk, None, c.rms_norm_eps, axis=-1, width=hd), y=f16(w.qk_norm))
    qk = rope(qk, cos, sin, rotate_half_matrix(hd))
    q, k = b.split(x=qk, split_sizes=[nh, kvh], axis=1)

    # Write this layer's new keys/values at [pos, pos+S) of the shared state, then attend over the whole row.
    def at(row: int, end: bool):
        offset = [row + 1, kvh, seq, hd] if end else [row, 0, 0, 0]
        return b.add(x=base, y=np.array(offset, np.int32))

    cache = b.read_state(input=kv_state)
    cache = b.slice_update(x=cache, update=k, begin=at(gl, False), end=at(gl, True))
    cache = b.slice_update(x=cache, update=v, begin=at(L + gl, False), end=at(L + gl, True))
    b.coreml_update_state(state=kv_state, value=cache)
    keys = b.slice_by_index(x=cache, begin=[gl, 0, 0, 0], end=[gl + 1, kvh, ctx, hd], squeeze_mask=[True, False, False, False])
    values = b.slice_by_index(
        x=cache, begin=[L + gl, 0, 0, 0], end=[L + gl + 1, kvh, ctx, hd], squeeze_mask=[True, False, False, False]
    )

    # GQA without repeating K/V: the `group` query heads that share a KV head are stacked along the rows.
    q = b.reshape(x=q, shape=[kvh, group * seq, hd])
    scores = b.matmul(x=q, y=keys, transpose_y=True)  # (kvh, group·S, ctx); 1/sqrt(hd) is folded into q
    scores = b.add(x=b.reshape(x=scores, shape=[kvh, group, seq, ctx]), y=mask)
    probs = b.reshape(x=b.softmax(x=scores, axis=-1), shape=[kvh, group * seq, ctx])
    attn = b.matmul(x=probs, y=values)  # (kvh, group·S, hd) == (heads, S, hd)
    attn = b.transpose(x=b.reshape(x=attn, shape=[nh, seq, hd]), perm=[0, 2, 1])
    attn = b.reshape(x=attn, shape=[1, nh * hd, 1, seq])
    x = b.add(x=x, y=conv1x1(attn, w.o))

    xn = rms_norm(x, w.mlp_norm, c.rms_norm_eps, axis=1, width=h)
    gate, up = b.split(x=conv1x1(xn, w.gate_up), num_splits=2, axis=1)
    return b.add(x=x, y=conv1x1(b.mul(x=b.silu(x=gate), y=up), w.down))


def _channels_first(x, hidden: int, seq: int):
    """(1, S, H) → (1, H, 1, S)."""
    b = mb()
    return b.reshape(x=b.transpose(x=x, perm=[0, 2, 1]), shape=[1, hidden, 1, seq])


def _transformer(ckpt: Checkpoint, layers: range, x, position_ids, causal_mask, current_pos, kv_cache, seq: int, ctx: int, weights):
    """Decoder layers `layers` on x (1, H, 1, S); the final norm too when they end the model."""
    b = mb()
    c = ckpt.config
    cos_table, sin_table = cos_sin(c, ctx)
    cos = b.gather(x=f16(cos_table), indices=position_ids, axis=0)
    sin = b.gather(x=f16(sin_table), indices=position_ids, axis=0)
    base = b.concat(values=[np.zeros(2, np.int32), current_pos, np.zeros(1, np.int32)], axis=0)
    for i, w in zip(layers, weights):
        x = decoder_layer(c, w, i, x, cos, sin, causal_mask, base, kv_cache, seq, ctx)
    if layers.stop == c.num_layers:
        x = rms_norm(x, ckpt.tensor("model.norm.weight"), c.rms_norm_eps, axis=1, width=c.hidden_size)
    return x


def _state_spec(c: ModelConfig, ctx: int):
    from coremltools.converters.mil.mil import types

    return mb().StateTensorSpec((2 * c.num_layers, c.num_kv_heads, ctx, c.head_dim), dtype=types.fp16)


def _step_specs(seq: int, ctx: int):
    """position_ids, causal_mask, current_pos: the inputs every stateful function shares."""
    from coremltools.converters.mil.mil import types

    b = mb()
    return [
        b.TensorSpec((seq,), dtype=types.int32),
        b.TensorSpec((1, 1, seq, ctx), dtype=types.fp16),
        b.TensorSpec((1,), dtype=types.int32),
    ]


def chunk_program(ckpt: Checkpoint, layers: range, seq: int, ctx: int, layer_cache: dict):
    """A transformer chunk for S = seq tokens (1 for `infer`, batch for `prefill`)."""
    import coremltools as ct
    from coremltools.converters.mil.mil import types

    b = mb()
    c = ckpt.config
    weights = [layer_cache.setdefault(i, layer_weights(ckpt, i)) for i in layers]

    @b.program(
        input_specs=[b.TensorSpec((1, seq, c.hidden_size), dtype=types.fp16), *_step_specs(seq, ctx), _state_spec(c, ctx)],
        opset_version=ct.target.iOS18,
    )
    def prog(hidden_states, position_ids, causal_mask, current_pos, kv_cache):
        x = _channels_first(hidden_states, c.hidden_size, seq)
        x = _transformer(ckpt, layers, x, position_ids, causal_mask, current_pos, kv_cache, seq, ctx, weights)
        x = b.transpose(x=b.reshape(x=x, shape=[1, c.hidden_size, seq]), perm=[0, 2, 1])
        return b.identity(x=x, name="output_hidden_states")

    _rename_io(prog, {"kv_cache": STATE_NAME})
    return prog


EMBEDDINGS_OP = "embeddings_gather"
LM_HEAD_OP = "lm_head_conv"  # + _1.._K; op name prefixes a compression config can be keyed on


def monolithic_program(ckpt: Checkpoint, seq: int, ctx: int, splits: list[int], argmax: bool, layer_cache: dict):
    """The whole model in one function: input_ids → embeddings → every layer → lm_head (ANEMLL's monolithic
    layout). `infer` (seq 1) returns the logits of its token; `prefill` (seq = batch) fills the KV state and
    returns the same outputs for the block's last row, which is padding unless the block is full."""
    import coremltools as ct
    from coremltools.converters.mil.mil import types

    b = mb()
    c = ckpt.config
    layers = range(c.num_layers)
    weights = [layer_cache.setdefault(i, layer_weights(ckpt, i)) for i in layers]
    table = ckpt.tensor("model.embed_tokens.weight")

    @b.program(
        input_specs=[b.TensorSpec((1, seq), dtype=types.int32), *_step_specs(seq, ctx), _state_spec(c, ctx)],
        opset_version=ct.target.iOS18,
    )
    def prog(input_ids, position_ids, causal_mask, current_pos, kv_cache):
        x = _channels_first(b.gather(x=weight_const(table), indices=input_ids, axis=0, name=EMBEDDINGS_OP), c.hidden_size, seq)
        x = _transformer(ckpt, layers, x, position_ids, causal_mask, current_pos, kv_cache, seq, ctx, weights)
        if seq > 1:
            x = b.slice_by_index(x=x, begin=[0, 0, 0, seq - 1], end=[1, c.hidden_size, 1, seq])
        return _lm_head(x, ckpt.tensor("lm_head.weight"), splits, argmax)

    _rename_io(prog, {"kv_cache": STATE_NAME})
    return prog


def embeddings_program(ckpt: Checkpoint, batch: int):
    import coremltools as ct
    from coremltools.converters.mil.mil import get_new_symbol, types

    b = mb()
    table = ckpt.tensor("model.embed_tokens.weight")

    @b.program(input_specs=[b.TensorSpec((1, get_new_symbol()), dtype=types.int32)], opset_version=ct.target.iOS18)
    def prog(input_ids):
        return b.gather(x=weight_const(table), indices=input_ids, axis=0, name="hidden_states")

    return prog


def split_sizes(vocab: int, parts: int | None = None) -> list[int]:
    parts = max(parts or 1, ceil(vocab / MAX_SPLIT))
    size = ceil(vocab / parts)
    return [min(size, vocab - k * size) for k in range(parts) if vocab - k * size > 0]


def _lm_head(x, weight: np.ndarray, splits: list[int], argmax: bool):
    """x (1, H, 1, 1) → logits1..K (1, 1, split_k), or argmax_idx/argmax_val (K,) with per-split winners."""
    b = mb()
    bounds = np.cumsum([0] + splits)
    outs, idx, val = [], [], []
    for k in range(len(splits)):
        logits = conv1x1(x, weight[bounds[k] : bounds[k + 1]], name=f"{LM_HEAD_OP}_{k + 1}")
        if argmax:
            flat = b.reshape(x=logits, shape=[splits[k]])
            idx.append(b.reduce_argmax(x=flat, axis=0, keep_dims=True))
            val.append(b.reduce_max(x=flat, axes=[0], keep_dims=True))
        else:
            outs.append(b.reshape(x=logits, shape=[1, 1, splits[k]], name=f"logits{k + 1}"))
    if argmax:
        return (
            b.cast(x=b.concat(values=idx, axis=0), dtype="int32", name="argmax_idx"),
            b.concat(values=val, axis=0, name="argmax_val"),
        )
    return tuple(outs)


def lm_head_program(ckpt: Checkpoint, splits: list[int], argmax: bool = False):
    import coremltools as ct
    from coremltools.converters.mil.mil import types

    b = mb()
    c = ckpt.config
    weight = ckpt.tensor("lm_head.weight")

    @b.program(input_specs=[b.TensorSpec((1, 1, c.hidden_size), dtype=types.fp16)], opset_version=ct.target.iOS18)
    def prog(hidden_states):
        return _lm_head(b.reshape(x=hidden_states, shape=[1, c.hidden_size, 1, 1]), weight, splits, argmax)

    return prog


def _rename_io(prog, names: dict[str, str]) -> None:
    """MIL's builder names inputs after the Python parameters; Core ML state names need dots."""
    fn = prog.functions["main"]
    for old, new in names.items():
        var = fn.inputs.pop(old)
        var.name = new
        fn.inputs[new] = var
