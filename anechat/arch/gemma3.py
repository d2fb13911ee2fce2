"""Gemma 3 (text): Gemma 3 270M / 1B / 4B+ language models, from GGUF (`gemma3`) or HF (`gemma3_text`, and the
text half of `gemma3` multimodal checkpoints).

What differs from Llama: embeddings × √hidden; RMSNorm gains are (1 + w) (GGUF stores 1 + w, the Checkpoint
holds HF's w); q/k RMSNorm per head; norms before *and after* attention and MLP; GELU-tanh gated MLP; query
scale query_pre_attn_scalar^-½; 5 of 6 layers attend over a sliding window with their own rope base.

fp16: the residual stream of the trained models leaves fp16's range (|h| ≈ 104,000 on Gemma 3 270M). Every
norm is scale-invariant except the two post-norms whose outputs are added to the stream, so multiplying the
embeddings and those two gains by α scales the whole stream by α and nothing else: exact, no clamping. α is
the power of two (exact in floating point) that brings the stream's peak on a calibration text under
FP16_TARGET. The final norm is scale-invariant: logits are unchanged.

Sliding window in ANEMLL 0.3.5's layout: the sliding layers keep their keys/values in
`model.model.kv_cache_local` (2·local layers, kv heads, window, head_dim), the global ones in
`model.model.kv_cache_global` (…, context, …). While the window is not full (`infer`, `prefill`) slot p holds
position p; once it is (`infer_rotate`, `prefill_rotate`, current_pos ≥ window) the cache shifts left and new
keys go at its end, so slot s holds position pos − window + s. A context the window covers needs no rotation
and keeps every layer in one state, `model.model.kv_cache_0`, as Llama does: M1 and A14 Neural Engines cannot
compile a model whose states differ in shape (ANEMLL 0.3.5's release notes), and the 512-token models then
run there.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import log2, sqrt

import numpy as np

from anechat.arch import reference as npref
from anechat.arch.base import KV_STATE, Architecture, ModelConfig, _eos_list, state_axis
from anechat.arch.llama import attention_inputs, qkv_heads
from anechat.arch.mil import (
    cache_rows,
    conv1x1,
    f16,
    gqa_attention,
    mb,
    rms_norm,
    write_at,
)
from anechat.arch.rope import inv_freq
from anechat.errors import ConversionError

LOCAL_STATE = "model.model.kv_cache_local"
GLOBAL_STATE = "model.model.kv_cache_global"
SLIDING, FULL = "sliding_attention", "full_attention"
FP16_TARGET = 16384.0  # largest residual |h| the scaled graph should see on ordinary text (fp16 max 65,504)


def _layer_types(n: int, pattern: int) -> list[str]:
    """Every `pattern`-th layer is global (Gemma 3: 6)."""
    return [FULL if (i + 1) % pattern == 0 else SLIDING for i in range(n)]


def gain(w: np.ndarray) -> np.ndarray:
    return 1.0 + w


@dataclass(frozen=True)
class LayerWeights:
    attn_norm: np.ndarray
    qkv: np.ndarray
    qk_norm: np.ndarray
    o: np.ndarray
    post_attn_norm: np.ndarray  # × α
    pre_mlp_norm: np.ndarray
    gate_up: np.ndarray
    down: np.ndarray
    post_mlp_norm: np.ndarray  # × α


class Gemma3(Architecture):
    name = "gemma3"
    hf_model_types = ("gemma3_text", "gemma3")
    gguf_names = ("gemma3",)
    qk_norm = True
    default_rope_theta = 1000000.0
    gguf_layer_names = {
        **Architecture.gguf_layer_names,
        "post_attention_norm": "post_attention_layernorm",
        "ffn_norm": "pre_feedforward_layernorm",
        "post_ffw_norm": "post_feedforward_layernorm",
    }
    layer_tensors = (
        *Architecture.layer_tensors, "pre_feedforward_layernorm", "post_feedforward_layernorm",
    )

    # -- configs -------------------------------------------------------------------------------------------
    @classmethod
    def config_from_hf(cls, cfg):
        if "text_config" in cfg:  # Gemma3ForConditionalGeneration: the language model's config is nested
            cfg = {**cfg["text_config"], "tie_word_embeddings": cfg.get("tie_word_embeddings", True)}
        cfg = {"tie_word_embeddings": True, **cfg}
        rope = cfg.get("rope_parameters") or {}
        if FULL in rope:  # transformers ≥ 5: rope parameters per layer type
            cfg.setdefault("rope_theta", rope[FULL].get("rope_theta"))
            cfg.setdefault("rope_local_base_freq", rope.get(SLIDING, {}).get("rope_theta"))
            if rope[FULL].get("rope_type", "default") != "default":
                cfg.setdefault("rope_scaling", rope[FULL])
        config = super().config_from_hf(cfg)
        try:
            types = cfg.get("layer_types") or _layer_types(config.num_layers, int(cfg.get("sliding_window_pattern", 6)))
            config.layer_types = list(types)
            config.sliding_window = int(cfg.get("sliding_window") or 512)
            config.rope_local_theta = float(cfg.get("rope_local_base_freq") or 10000.0)
            config.query_pre_attn_scalar = float(cfg.get("query_pre_attn_scalar") or config.head_dim)
        except (TypeError, ValueError) as e:
            raise ConversionError(f"config.json has a malformed value: {e}") from None
        if config.bos_token_id is None:
            config.bos_token_id = 2
        return cls._checked(config)

    @classmethod
    def config_from_gguf(cls, meta, arch_key):
        config = super().config_from_gguf(meta, arch_key)
        # llama.cpp fixes what the GGUF does not say: every 6th layer global, local rope base 10k.
        config.layer_types = _layer_types(config.num_layers, 6)
        config.sliding_window = int(meta.get(f"{arch_key}.attention.sliding_window") or 512)
        config.rope_local_theta = 10000.0
        config.query_pre_attn_scalar = float(config.head_dim)
        config.eos_token_ids = sorted(set(_eos_list(meta.get("tokenizer.ggml.eos_token_id"))))
        return cls._checked(config)

    @staticmethod
    def _checked(config: ModelConfig) -> ModelConfig:
        types = config.layer_types or []
        if len(types) != config.num_layers or set(types) - {SLIDING, FULL}:
            raise ConversionError(f"layer_types must name {config.num_layers} layers as {SLIDING} or {FULL}")
        if (config.sliding_window or 0) < 1:
            raise ConversionError(f"sliding_window must be positive, got {config.sliding_window}")
        return config

    # -- tensors -------------------------------------------------------------------------------------------
    @classmethod
    def gguf_tensor(cls, name, w, config):
        # llama.cpp's converter stores Gemma's norm gains as 1 + w; the Checkpoint keeps HF's w.
        return w - 1.0 if name.endswith("norm.weight") else w

    @classmethod
    def hf_tensor_name(cls, name):
        for prefix in ("model.language_model.", "language_model.model."):
            if name.startswith(prefix):
                return "model." + name[len(prefix) :]
        if name.startswith(("model.vision_tower", "vision_tower", "model.multi_modal_projector", "multi_modal_projector")):
            return None
        return name

    # -- fp16 scale ------------------------------------------------------------------------------------------
    @classmethod
    def prepare(cls, ckpt) -> None:
        """Choose α from the fp32 reference's residual peaks on a calibration text (once per checkpoint)."""
        c = ckpt.config
        if c.residual_scale is not None:
            return
        ref = npref.ReferenceModel(ckpt)
        ref.forward(calibration_ids(ckpt))
        c.residual_scale = residual_scale(max(ref.peaks))

    @classmethod
    def _alpha(cls, ckpt) -> float:
        if ckpt.config.residual_scale is None:
            cls.prepare(ckpt)
        return float(ckpt.config.residual_scale)

    @classmethod
    def embedding_table(cls, ckpt):
        return ckpt.tensor("model.embed_tokens.weight") * np.float32(sqrt(ckpt.config.hidden_size) * cls._alpha(ckpt))

    @classmethod
    def final_norm(cls, ckpt):
        return gain(ckpt.tensor("model.norm.weight"))

    # -- ANE graph ---------------------------------------------------------------------------------------------
    @classmethod
    def local_length(cls, config: ModelConfig, context: int) -> int:
        return min(_window(config), context)

    @classmethod
    def rotates(cls, config: ModelConfig, context: int) -> bool:
        return _window(config) < context and SLIDING in _types(config)

    @classmethod
    def function_names(cls, config, context):
        if cls.rotates(config, context):
            return ("infer", "prefill", "infer_rotate", "prefill_rotate")
        return ("infer", "prefill")

    @classmethod
    def state_specs(cls, config, context):
        if not cls.rotates(config, context):
            return super().state_specs(config, context)
        kvh, hd = config.num_kv_heads, state_axis(config.head_dim)
        n_local = config.layer_types.count(SLIDING)
        n_global = config.num_layers - n_local
        # Both states are declared even when a family member has no layer of one kind: chunks share them.
        return {
            LOCAL_STATE: (2 * max(n_local, 1), kvh, cls.local_length(config, context), hd),
            GLOBAL_STATE: (2 * max(n_global, 1), kvh, context, hd),
        }

    @classmethod
    def layer_weights(cls, ckpt, i):
        c = ckpt.config
        alpha = cls._alpha(ckpt)
        qkv, _, qk_norm = attention_inputs(ckpt, i, float(c.query_pre_attn_scalar) ** -0.5, gain)
        return LayerWeights(
            attn_norm=gain(ckpt.layer(i, "input_layernorm.weight")),
            qkv=qkv,
            qk_norm=qk_norm,
            o=ckpt.layer(i, "self_attn.o_proj.weight"),
            post_attn_norm=gain(ckpt.layer(i, "post_attention_layernorm.weight")) * alpha,
            pre_mlp_norm=gain(ckpt.layer(i, "pre_feedforward_layernorm.weight")),
            gate_up=np.concatenate([ckpt.layer(i, "mlp.gate_proj.weight"), ckpt.layer(i, "mlp.up_proj.weight")]),
            down=ckpt.layer(i, "mlp.down_proj.weight"),
            post_mlp_norm=gain(ckpt.layer(i, "post_feedforward_layernorm.weight")) * alpha,
        )

    @classmethod
    def decoder_layer(cls, w: LayerWeights, i: int, x, env):

        b = mb()
        c, seq = env.config, env.seq
        h, eps = c.hidden_size, c.rms_norm_eps
        sliding = c.is_sliding(i)
        cos, sin = env.rope_tables(_local_rope(c) if sliding else None)
        q, k, v = qkv_heads(c, w.qkv, None, w.qk_norm, rms_norm(x, w.attn_norm, eps, axis=1, width=h), cos, sin, seq)
        attn = cls._local_attention(q, k, v, i, env) if sliding else cls._global_attention(q, k, v, i, env)
        x = b.add(x=x, y=rms_norm(conv1x1(attn, w.o), w.post_attn_norm, eps, axis=1, width=h))
        gate, up = b.split(x=conv1x1(rms_norm(x, w.pre_mlp_norm, eps, axis=1, width=h), w.gate_up), num_splits=2, axis=1)
        mlp = conv1x1(b.mul(x=b.gelu(x=gate, mode="TANH_APPROXIMATION"), y=up), w.down)
        return b.add(x=x, y=rms_norm(mlp, w.post_mlp_norm, eps, axis=1, width=h))

    @classmethod
    def _cache(cls, c: ModelConfig, i: int, ctx: int) -> tuple[str, int, int]:
        """(state, row in it, layers in it) of layer i: its kind's cache, or the one shared state where nothing
        rotates."""
        if not cls.rotates(c, ctx):
            return KV_STATE, i, c.num_layers
        types = _types(c)
        kind = types[i]
        return LOCAL_STATE if kind == SLIDING else GLOBAL_STATE, types[:i].count(kind), types.count(kind)

    @classmethod
    def _global_attention(cls, q, k, v, i, env):

        c, seq, ctx = env.config, env.seq, env.ctx
        name, row, n = cls._cache(c, i, ctx)
        cache = write_at(env.state(name), k, v, row, n + row, env.base, c.num_kv_heads, seq, c.head_dim)
        keys, values = cache_rows(cache, row, n + row, c.num_kv_heads, ctx, c.head_dim)
        return gqa_attention(q, keys, values, env.mask, c.num_heads, c.num_kv_heads, seq, ctx, c.head_dim)

    @classmethod
    def _local_attention(cls, q, k, v, i, env):

        b = mb()
        c, seq, ctx = env.config, env.seq, env.ctx
        kvh, hd, nh = c.num_kv_heads, c.head_dim, c.num_heads
        width = cls.local_length(c, ctx)
        name, row, n = cls._cache(c, i, ctx)
        state = env.state(name)
        if not env.rotate:
            # Slot p holds position p: the causal mask's first `width` columns are this cache's mask.
            cache = write_at(state, k, v, row, n + row, env.base, kvh, seq, hd)
            keys, values = cache_rows(cache, row, n + row, kvh, width, hd)
            mask = env.mask if width == ctx else b.slice_by_index(x=env.mask, begin=[0, 0, 0, 0], end=[1, 1, seq, width])
            return gqa_attention(q, keys, values, mask, nh, kvh, seq, width, hd)
        # Full window at pos ≥ window: slot s holds position pos − width + s. Attend over those and the new
        # block together — query j sees old slots s > j and new keys t ≤ j, exactly its window — then keep
        # the last `width` of them.
        cache = b.read_state(input=state)
        old_k, old_v = cache_rows(cache, row, n + row, kvh, width, hd)
        keys = b.concat(values=[old_k, b.reshape(x=k, shape=[kvh, seq, hd])], axis=1)
        values = b.concat(values=[old_v, b.reshape(x=v, shape=[kvh, seq, hd])], axis=1)
        j = np.arange(seq)[:, None]
        visible = np.concatenate([np.arange(width)[None, :] > j, np.arange(seq)[None, :] <= j], axis=1)
        mask = f16(np.where(visible, 0.0, -np.inf)[None, None])
        out = gqa_attention(q, keys, values, mask, nh, kvh, seq, width + seq, hd)
        end = [1, kvh, width + seq, hd]
        for r, src in ((row, keys), (n + row, values)):
            kept = b.slice_by_index(x=b.expand_dims(x=src, axes=[0]), begin=[0, 0, seq, 0], end=end)
            cache = b.slice_update(x=cache, update=kept, begin=[r, 0, 0, 0], end=[r + 1, kvh, width, hd])
        b.coreml_update_state(state=state, value=cache)
        return out

    # -- numpy reference ---------------------------------------------------------------------------------------
    @classmethod
    def reference_forward(cls, ref, ids):

        c, w = ref.c, ref.w
        eps = c.rms_norm_eps
        positions = np.arange(ref.pos, ref.pos + len(ids))
        tables = {
            SLIDING: ref.rope(positions, inv_freq(_local_rope(c))),
            FULL: ref.rope(positions),
        }
        scale = float(c.query_pre_attn_scalar) ** -0.5
        x = w["model.embed_tokens.weight"][ids] * np.float32(sqrt(c.hidden_size))
        for i in range(c.num_layers):
            p = f"model.layers.{i}."

            def norm(t, name, p=p):
                return npref.rms_norm(t, gain(w[p + name + ".weight"]), eps)

            h = norm(x, "input_layernorm")
            q = norm(ref.project(h, p + "self_attn.q_proj", c.num_heads), "self_attn.q_norm")
            k = norm(ref.project(h, p + "self_attn.k_proj", c.num_kv_heads), "self_attn.k_norm")
            v = ref.project(h, p + "self_attn.v_proj", c.num_kv_heads)
            cos, sin = tables[c.layer_types[i]]
            window = c.sliding_window if c.is_sliding(i) else None
            out = ref.attend(i, npref.apply_rope(q, cos, sin), npref.apply_rope(k, cos, sin), v, scale, window)
            x = x + norm(out @ w[p + "self_attn.o_proj.weight"].T, "post_attention_layernorm")
            ref.record(i, x)
            h = norm(x, "pre_feedforward_layernorm")
            gate = h @ w[p + "mlp.gate_proj.weight"].T
            up = h @ w[p + "mlp.up_proj.weight"].T
            x = x + norm((gelu_tanh(gate) * up) @ w[p + "mlp.down_proj.weight"].T, "post_feedforward_layernorm")
            ref.record(i, x)
        return npref.rms_norm(x, gain(w["model.norm.weight"]), eps) @ w["lm_head.weight"].T


def _local_rope(c: ModelConfig) -> ModelConfig:
    from dataclasses import replace

    return replace(c, rope_theta=c.rope_local_theta or c.rope_theta, rope_scaling=None)


def _window(c: ModelConfig) -> int:
    """The sliding window (a Gemma 3 config always has one: `_checked` saw to it)."""
    return c.sliding_window or 0


def _types(c: ModelConfig) -> list[str]:
    return c.layer_types or []


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def residual_scale(peak: float) -> float:
    """The largest power of two α ≤ 1 with peak · α ≤ FP16_TARGET."""
    if peak <= FP16_TARGET:
        return 1.0
    return 2.0 ** -int(np.ceil(log2(peak / FP16_TARGET)))


def calibration_ids(ckpt) -> list[int]:
    """The verify sample text in the checkpoint's own tokenizer (BOS first), or a fixed id sweep without one."""
    from anechat.arch.reference import SAMPLE_TEXT

    c = ckpt.config
    tj = ckpt.tokenizer_files.get("tokenizer.json")
    if tj:
        from tokenizers import Tokenizer

        ids = Tokenizer.from_str(tj).encode(SAMPLE_TEXT, add_special_tokens=False).ids
    else:
        ids = list(np.random.default_rng(0).integers(3, c.vocab_size, size=48))
    return ([c.bos_token_id] if c.bos_token_id is not None else []) + [int(t) for t in ids]
