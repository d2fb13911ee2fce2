"""Qwen 3.5 (text): a hybrid of Gated DeltaNet layers (linear attention with a recurrent state) and gated full
attention, three to one. Sources: HF's `Qwen3_5ForConditionalGeneration` layout (config.json with a nested
`text_config`, weights under `model.language_model.*`; the vision tower `model.visual.*` and the multi-token
prediction head `mtp.*` are not part of a text chat) and the text-only `Qwen3_5ForCausalLM` layout.
The specification is transformers' models/qwen3_5/modeling_qwen3_5.py.

DeltaNet layer: in_proj_qkv → depthwise causal conv1d (K taps) + SiLU → q, k l2-normalised (q also × d_k^-½),
key heads repeated to the value heads; β = sigmoid(in_proj_b x); g = −exp(A_log)·softplus(in_proj_a x + dt_bias);
per value head a d_k × d_v state S: S ← e^g S; S ← S + k (β (v − kᵀS))ᵀ; o = qᵀS; then RMSNorm over d_v × w
× silu(in_proj_z x) and out_proj. Full-attention layer: q_proj yields query and gate per head; q/k RMSNorm
(1 + w); rotary on the first partial_rotary_factor of head_dim (with text positions the three multimodal rope
sections carry the same position, so it is plain rope); output × sigmoid(gate) before o_proj. Norms (1 + w).

ANE form: the full layers' keys/values live in ANEMLL's `model.model.kv_cache_0` (2·full layers rows); each
DeltaNet layer keeps its last K−1 conv inputs in `model.model.conv_state` and its S in
`model.model.delta_state`, one row per DeltaNet layer, shared by every chunk like the KV cache. Key heads are
repeated to value heads in the weights (q/k rows of in_proj_qkv and the conv taps), not in the graph.
Every state's last axis is a multiple of 32 (a state whose last axis is not fails on the ANE, coremltools
#2631): the conv state's K−1 columns sit at the start of a row padded to 32 (CONV_WIDTH), as ANEMLL's Qwen 3.5
port pads it. Padding adds no op; transposing it to (…, K−1, channels) instead would add two transposes per
DeltaNet layer and function to save 6 MB of state at 0.8B (0.7 → 7.1 MB, against 1 GB of weights).

`prefill` runs its block as one chunk of the delta rule in WY form (`_delta_chunked`, ~46 ops a DeltaNet layer
beyond `infer`'s); the unrolled recurrence (`_delta_rule` token after token, ~450) is kept for measurement
(benchmarks/bench_qwen35_prefill.py): the same state, 4× the ops and 3.6× the conversion time, no faster in the
portable runtime. Either leaves the state token-by-token decoding would. A prefill block is padded past its real
tokens; the engine repeats the last real position in `position_ids` for the padding, and the graph turns those
tokens into no-ops (β = 0, decay 1) and keeps the conv state at the last real token: tokens whose
position_ids − current_pos ≠ their index in the block are padding. Those K−1 columns are taken from the conv
window by one matmul with a 0/1 selection matrix built once per block (a shift by the block's real length):
no runtime-index gather on activations. The delta state holds S × V_SCALE.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from anechat.arch import reference as npref
from anechat.arch.base import KV_STATE, Architecture, ModelConfig
from anechat.arch.mil import cache_rows, conv1x1, f16, gqa_attention, mb, rms_norm, write_at
from anechat.arch.rope import inv_freq
from anechat.errors import ConversionError

LINEAR, FULL = "linear_attention", "full_attention"
# The recurrent state S and the output o = qᵀS are small on some heads (|o| ~ 1e-5 on the tiny reference): in
# fp16 they sink into the subnormals, and the gated RMSNorm, which normalises o per head, amplifies what is left.
# S, δ and o are linear in v, so v carries this power of two (and so S and o do) and the norm's ε its square:
# the same normalised output, in fp16's good range.
V_SCALE = 64.0
CONV_STATE = "model.model.conv_state"
STATE_ALIGN = 32  # every state's last axis is a multiple of this (ANE)
DELTA_STATE = "model.model.delta_state"


def gain(w: np.ndarray) -> np.ndarray:
    return 1.0 + w


def _types(c: ModelConfig) -> list[str]:
    return c.layer_types or []


def _rows(c: ModelConfig, i: int) -> tuple[int, int]:
    """(row among the layers of its kind, layers of that kind) of layer i."""
    types = _types(c)
    return types[:i].count(types[i]), types.count(types[i])


@dataclass(frozen=True)
class Dims:
    nk: int  # key heads
    nv: int  # value heads (key heads are repeated to these)
    dk: int
    dv: int
    kernel: int

    @property
    def conv_dim(self) -> int:
        """Channels of the conv (and its state) once key heads are repeated: q, k (nv·dk each), v (nv·dv)."""
        return 2 * self.nv * self.dk + self.nv * self.dv


def conv_width(kernel: int) -> int:
    """The conv state's last axis: K−1 columns padded to a multiple of STATE_ALIGN."""
    return -(-(kernel - 1) // STATE_ALIGN) * STATE_ALIGN


def dims(c: ModelConfig) -> Dims:
    return Dims(int(c.linear_num_key_heads or 0), int(c.linear_num_value_heads or 0), int(c.linear_key_head_dim or 0),
                int(c.linear_value_head_dim or 0), int(c.linear_conv_kernel or 0))


def rotary_dim(c: ModelConfig) -> int:
    return int(c.head_dim * c.partial_rotary_factor)


def _rotary_inv_freq(c: ModelConfig) -> np.ndarray:
    return inv_freq(replace(c, head_dim=rotary_dim(c)))


@dataclass(frozen=True)
class DeltaWeights:
    in_norm: np.ndarray  # w of the (1 + w) gain, as the graph applies it
    proj: np.ndarray  # rows: q, k (repeated to value heads), v, z, b, a
    conv: np.ndarray  # (conv_dim, K)
    neg_a: np.ndarray  # −exp(A_log), (nv,)
    dt_bias: np.ndarray
    norm: np.ndarray  # (dv,) gated RMSNorm gain (plain w)
    out: np.ndarray
    mlp_norm: np.ndarray
    gate_up: np.ndarray
    down: np.ndarray


@dataclass(frozen=True)
class AttentionWeights:
    in_norm: np.ndarray
    qkv: np.ndarray  # q, k, v rows
    gate: np.ndarray  # the gate half of q_proj
    qk_norm: np.ndarray  # (1, heads + kv_heads, 1, hd), q gains × hd^-½
    o: np.ndarray
    mlp_norm: np.ndarray
    gate_up: np.ndarray
    down: np.ndarray


def _repeat_heads(w: np.ndarray, heads: int, group: int) -> np.ndarray:
    """Rows of `heads` heads → each head's rows `group` times in a row (transformers' repeat_interleave)."""
    return np.repeat(w.reshape(heads, -1, *w.shape[1:]), group, axis=0).reshape(-1, *w.shape[1:])


def _query_and_gate(q_proj: np.ndarray, heads: int, hd: int) -> tuple[np.ndarray, np.ndarray]:
    """q_proj's rows hold per head hd query rows then hd gate rows."""
    w = q_proj.reshape(heads, 2, hd, -1)
    return w[:, 0].reshape(heads * hd, -1), w[:, 1].reshape(heads * hd, -1)


class Qwen3_5(Architecture):
    name = "qwen3_5"
    hf_model_types = ("qwen3_5", "qwen3_5_text")
    gguf_names = ()
    qk_norm = True
    default_rope_theta = 10000000.0
    layer_tensors = ("input_layernorm", "post_attention_layernorm", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
    delta_tensors = ("in_proj_qkv.weight", "in_proj_z.weight", "in_proj_a.weight", "in_proj_b.weight", "conv1d.weight",
                     "A_log", "dt_bias", "norm.weight", "out_proj.weight")
    # How `prefill` runs the delta rule over its block: "chunked" (the WY form as one chunk, ~46 ops a layer)
    # or "unrolled" (the recurrence token after token, ~7 ops a token); benchmarks/bench_qwen35_prefill.py
    # measures both.
    prefill_form = "chunked"
    attention_tensors = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight", "q_norm.weight", "k_norm.weight")

    # -- config --------------------------------------------------------------------------------------------------
    @classmethod
    def config_from_hf(cls, cfg):
        if "text_config" in cfg:  # Qwen3_5ForConditionalGeneration: the language model's config is nested
            cfg = {"tie_word_embeddings": cfg.get("tie_word_embeddings", False), **cfg["text_config"]}
        rope = cfg.get("rope_parameters") or {}
        cfg = {**cfg, "rope_theta": cfg.get("rope_theta", rope.get("rope_theta", cls.default_rope_theta))}
        if rope.get("rope_type", "default") != "default":
            raise ConversionError(f"Qwen 3.5 rope type {rope.get('rope_type')!r} is not supported")
        config = super().config_from_hf(cfg)
        try:
            config.partial_rotary_factor = float(rope.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 0.25)))
            config.linear_conv_kernel = int(cfg["linear_conv_kernel_dim"])
            config.linear_key_head_dim = int(cfg["linear_key_head_dim"])
            config.linear_value_head_dim = int(cfg["linear_value_head_dim"])
            config.linear_num_key_heads = int(cfg["linear_num_key_heads"])
            config.linear_num_value_heads = int(cfg["linear_num_value_heads"])
            interval = int(cfg.get("full_attention_interval", 4))
            types = cfg.get("layer_types") or [FULL if (i + 1) % interval == 0 else LINEAR for i in range(config.num_layers)]
            config.layer_types = list(types)
        except KeyError as e:
            raise ConversionError(f"config.json lacks {e.args[0]!r}, needed for {cls.name}") from None
        except (TypeError, ValueError) as e:
            raise ConversionError(f"config.json has a malformed value: {e}") from None
        return cls._checked(config)

    @staticmethod
    def _checked(c: ModelConfig) -> ModelConfig:
        types = _types(c)
        if len(types) != c.num_layers or set(types) - {LINEAR, FULL}:
            raise ConversionError(f"layer_types must name {c.num_layers} layers as {LINEAR} or {FULL}")
        d = dims(c)
        if min(d.nk, d.nv, d.dk, d.dv, d.kernel) < 1 or d.nv % d.nk:
            raise ConversionError("the linear-attention head counts and sizes must be positive, value heads a multiple of key heads")
        if rotary_dim(c) % 2 or rotary_dim(c) < 2:
            raise ConversionError(f"partial_rotary_factor {c.partial_rotary_factor} leaves no even rotary dimension")
        return c

    # -- tensors -------------------------------------------------------------------------------------------------
    @classmethod
    def hf_tensor_name(cls, name):
        if name.startswith("model.language_model."):
            return "model." + name[len("model.language_model."):]
        if name.startswith(("model.visual.", "visual.", "mtp.")):
            return None
        return name

    @classmethod
    def required_tensors(cls, config):
        needed = ["model.embed_tokens.weight", "model.norm.weight"]
        for i, kind in enumerate(_types(config)):
            p = f"model.layers.{i}."
            needed += [f"{p}{s}.weight" for s in cls.layer_tensors]
            mixer, names = ("linear_attn.", cls.delta_tensors) if kind == LINEAR else ("self_attn.", cls.attention_tensors)
            needed += [p + mixer + n for n in names]
        return needed

    @classmethod
    def embedding_table(cls, ckpt):
        return ckpt.tensor("model.embed_tokens.weight")

    @classmethod
    def final_norm(cls, ckpt):
        return gain(ckpt.tensor("model.norm.weight"))

    # -- states --------------------------------------------------------------------------------------------------
    @classmethod
    def state_specs(cls, config, context):
        d = dims(config)
        n_linear = _types(config).count(LINEAR)
        n_full = config.num_layers - n_linear
        # Every state is declared even when a model has no layer of one kind: the chunks share them.
        return {
            KV_STATE: (2 * max(n_full, 1), config.num_kv_heads, context, config.head_dim),
            CONV_STATE: (max(n_linear, 1), d.conv_dim, 1, conv_width(d.kernel)),
            DELTA_STATE: (max(n_linear, 1), d.nv, d.dk, d.dv),
        }

    @classmethod
    def recurrent_states(cls, config):
        return (CONV_STATE, DELTA_STATE)

    # -- weights -------------------------------------------------------------------------------------------------
    @classmethod
    def layer_weights(cls, ckpt, i):
        c = ckpt.config
        mlp = {
            "mlp_norm": ckpt.layer(i, "post_attention_layernorm.weight"),
            "gate_up": np.concatenate([ckpt.layer(i, "mlp.gate_proj.weight"), ckpt.layer(i, "mlp.up_proj.weight")]),
            "down": ckpt.layer(i, "mlp.down_proj.weight"),
        }
        in_norm = ckpt.layer(i, "input_layernorm.weight")
        if _types(c)[i] == FULL:
            hd, nh, kvh = c.head_dim, c.num_heads, c.num_kv_heads
            q, g = _query_and_gate(ckpt.layer(i, "self_attn.q_proj.weight"), nh, hd)
            qn = gain(ckpt.layer(i, "self_attn.q_norm.weight")) * hd**-0.5
            kn = gain(ckpt.layer(i, "self_attn.k_norm.weight"))
            return AttentionWeights(
                in_norm=in_norm,
                qkv=np.concatenate([q, ckpt.layer(i, "self_attn.k_proj.weight"), ckpt.layer(i, "self_attn.v_proj.weight")]),
                gate=g,
                qk_norm=np.concatenate([np.tile(qn, (nh, 1)), np.tile(kn, (kvh, 1))])[None, :, None, :],
                o=ckpt.layer(i, "self_attn.o_proj.weight"),
                **mlp,
            )
        d = dims(c)
        group = d.nv // d.nk
        key_dim = d.nk * d.dk

        def la(name: str) -> np.ndarray:
            return ckpt.layer(i, "linear_attn." + name)

        qkv = la("in_proj_qkv.weight")
        conv = la("conv1d.weight").reshape(qkv.shape[0], d.kernel)

        def repeated(w: np.ndarray) -> np.ndarray:
            q, k, v = w[:key_dim], w[key_dim : 2 * key_dim], w[2 * key_dim :]
            return np.concatenate([_repeat_heads(q, d.nk, group), _repeat_heads(k, d.nk, group), v])

        return DeltaWeights(
            in_norm=in_norm,
            proj=np.concatenate([repeated(qkv), la("in_proj_z.weight"), la("in_proj_b.weight"), la("in_proj_a.weight")]),
            conv=repeated(conv),
            neg_a=-np.exp(la("A_log")),
            dt_bias=la("dt_bias"),
            norm=la("norm.weight"),
            out=la("out_proj.weight"),
            **mlp,
        )

    # -- ANE graph -----------------------------------------------------------------------------------------------
    @classmethod
    def decoder_layer(cls, w, i, x, env):
        b = mb()
        c = env.config
        h, eps = c.hidden_size, c.rms_norm_eps
        xn = _norm_one_plus(x, w.in_norm, eps, h)
        mixed = cls._attention(w, i, xn, env) if isinstance(w, AttentionWeights) else cls._delta_net(w, i, xn, env)
        x = b.add(x=x, y=mixed)
        gate, up = b.split(x=conv1x1(_norm_one_plus(x, w.mlp_norm, eps, h), w.gate_up), num_splits=2, axis=1)
        return b.add(x=x, y=conv1x1(b.mul(x=b.silu(x=gate), y=up), w.down))

    @classmethod
    def _rope_tables(cls, env):
        """cos/sin (S, hd) of this step's positions: the rotary part, then 1 and 0 for the part left alone."""

        def make():
            b = mb()
            c = env.config
            rot = rotary_dim(c)
            angles = np.outer(np.arange(env.ctx, dtype=np.float64), _rotary_inv_freq(c))
            angles = np.concatenate([angles, angles], axis=1)
            pad = c.head_dim - rot
            cos = np.concatenate([np.cos(angles), np.ones((env.ctx, pad))], axis=1)
            sin = np.concatenate([np.sin(angles), np.zeros((env.ctx, pad))], axis=1)
            return (b.gather(x=f16(cos), indices=env.position_ids, axis=0), b.gather(x=f16(sin), indices=env.position_ids, axis=0))

        return env.memo("qwen3_5_rope", make)

    @classmethod
    def _attention(cls, w: AttentionWeights, i, xn, env):
        b = mb()
        c, seq, ctx = env.config, env.seq, env.ctx
        hd, nh, kvh = c.head_dim, c.num_heads, c.num_kv_heads
        qkv = b.transpose(x=b.reshape(x=conv1x1(xn, w.qkv), shape=[1, nh + 2 * kvh, hd, seq]), perm=[0, 1, 3, 2])
        qk, v = b.split(x=qkv, split_sizes=[nh + kvh, kvh], axis=1)
        qk = b.mul(x=rms_norm(qk, None, c.rms_norm_eps, axis=-1, width=hd), y=f16(w.qk_norm))
        cos, sin = cls._rope_tables(env)
        qk = b.add(x=b.mul(x=qk, y=cos), y=b.mul(x=b.matmul(x=qk, y=f16(partial_rotate_half(hd, rotary_dim(c)))), y=sin))
        q, k = b.split(x=qk, split_sizes=[nh, kvh], axis=1)
        row, n = _rows(c, i)
        cache = write_at(env.state(KV_STATE), k, v, row, n + row, env.base, kvh, seq, hd)
        keys, values = cache_rows(cache, row, n + row, kvh, ctx, hd)
        attn = gqa_attention(q, keys, values, env.mask, nh, kvh, seq, ctx, hd)
        return conv1x1(b.mul(x=attn, y=b.sigmoid(x=conv1x1(xn, w.gate))), w.o)

    @classmethod
    def _valid(cls, env):
        """For a prefill block: (valid (1, 1, 1, S) fp16 — 1 for real tokens, 0 for padding; keep (K−1+S, K−1)
        fp16, 0/1: window @ keep is the K−1 columns of the conv window ending at the last real token)."""

        def make():
            b = mb()
            seq, k = env.seq, dims(env.config).kernel
            offset = b.sub(x=env.position_ids, y=env.current_pos)  # j for real tokens, the last real j for padding
            real = b.equal(x=offset, y=np.arange(seq, dtype=np.int32))
            valid = b.reshape(x=b.cast(x=real, dtype="fp16"), shape=[1, 1, 1, seq])
            last = b.slice_by_index(x=offset, begin=[seq - 1], end=[seq])
            # Columns of [old K−1 | S new]: the real tokens end at column K−1 + last, keep the K−1 before it too.
            wanted = b.reshape(x=b.add(x=last, y=np.arange(1, k, dtype=np.int32)), shape=[1, k - 1])
            keep = b.equal(x=wanted, y=np.arange(k - 1 + seq, dtype=np.int32).reshape(-1, 1))
            return valid, b.cast(x=keep, dtype="fp16")

        return env.memo("qwen3_5_valid", make)

    @classmethod
    def _delta_net(cls, w: DeltaWeights, i, xn, env):
        b = mb()
        c, seq = env.config, env.seq
        d = dims(c)
        nv, dk, dv, k = d.nv, d.dk, d.dv, d.kernel
        row, _ = _rows(c, i)
        mixed, z, beta_in, a_in = b.split(x=conv1x1(xn, w.proj), split_sizes=[d.conv_dim, nv * dv, nv, nv], axis=1)

        # Causal conv over [the last K−1 inputs | this block's]; the state keeps the last K−1 real ones.
        conv_state = env.state(CONV_STATE)
        conv_cache = b.read_state(input=conv_state)
        old = b.slice_by_index(x=conv_cache, begin=[row, 0, 0, 0], end=[row + 1, d.conv_dim, 1, k - 1])
        window = b.concat(values=[old, mixed], axis=3)  # (1, conv_dim, 1, K−1+S)
        act = b.silu(x=b.conv(x=window, weight=f16(w.conv.reshape(d.conv_dim, 1, 1, k)), groups=d.conv_dim))
        # g = −A·softplus(a + dt_bias) with A = −neg_a as two fp16 terms (A rounded to fp16 alone moves the
        # tiny reference's logits by 0.4: the decay compounds over the tokens).
        hi = f16(w.neg_a)
        a_parts = np.stack([hi.astype(np.float32), w.neg_a - hi.astype(np.float32)]).reshape(2, nv, 1, 1)
        g = b.mul(x=b.softplus(x=b.add(x=a_in, y=f16(w.dt_bias.reshape(1, nv, 1, 1)))), y=f16(a_parts))
        g = b.reduce_sum(x=g, axes=[0], keep_dims=True)
        beta = b.sigmoid(x=beta_in)
        if seq == 1:
            kept = b.slice_by_index(x=window, begin=[0, 0, 0, 1], end=[1, d.conv_dim, 1, k])
        else:
            valid, keep = cls._valid(env)
            kept = b.matmul(x=window, y=keep)  # (1, conv_dim, 1, K−1): exact, one 1 per column
            beta, g = b.mul(x=beta, y=valid), b.mul(x=g, y=valid)  # padding: nothing written, nothing decays
        conv_cache = b.slice_update(x=conv_cache, update=kept, begin=[row, 0, 0, 0], end=[row + 1, d.conv_dim, 1, k - 1])
        b.coreml_update_state(state=conv_state, value=conv_cache)

        # Heads: q, k l2-normalised (as RMSNorm / √d_k; q also × d_k^-½), v × V_SCALE, to (heads, S, d).
        qk, v = b.split(x=act, split_sizes=[2 * nv * dk, nv * dv], axis=1)
        qk = b.transpose(x=b.reshape(x=qk, shape=[2 * nv, dk, seq]), perm=[0, 2, 1])
        scale = np.concatenate([np.full(nv, 1.0 / dk), np.full(nv, dk**-0.5)]).reshape(2 * nv, 1, 1)
        qk = b.mul(x=rms_norm(qk, None, 1e-6 / dk, axis=-1, width=dk), y=f16(scale))
        q, kk = b.split(x=qk, num_splits=2, axis=0)
        v = b.mul(x=b.transpose(x=b.reshape(x=v, shape=[nv, dv, seq]), perm=[0, 2, 1]), y=np.float16(V_SCALE))
        decay = b.reshape(x=b.exp(x=g), shape=[nv, seq, 1]) if seq == 1 or cls.prefill_form == "unrolled" else None
        beta = b.reshape(x=beta, shape=[nv, seq, 1])

        delta_state = env.state(DELTA_STATE)
        cache = b.read_state(input=delta_state)
        s = b.slice_by_index(x=cache, begin=[row, 0, 0, 0], end=[row + 1, nv, dk, dv], squeeze_mask=[True, False, False, False])
        if seq > 1 and cls.prefill_form == "chunked":
            o, s = _delta_chunked(q, kk, v, beta, b.reshape(x=g, shape=[nv, seq, 1]), s, seq)
        else:
            o, s = _delta_rule(q, kk, v, beta, decay, s, seq)
        cache = b.slice_update(x=cache, update=b.expand_dims(x=s, axes=[0]), begin=[row, 0, 0, 0], end=[row + 1, nv, dk, dv])
        b.coreml_update_state(state=delta_state, value=cache)

        # Gated RMSNorm per head, then out_proj.
        z = b.silu(x=b.transpose(x=b.reshape(x=z, shape=[nv, dv, seq]), perm=[0, 2, 1]))
        o = b.mul(x=rms_norm(o, w.norm, c.rms_norm_eps * V_SCALE**2, axis=-1, width=dv), y=z)  # (nv, S, dv)
        o = b.reshape(x=b.transpose(x=o, perm=[0, 2, 1]), shape=[1, nv * dv, 1, seq])
        return conv1x1(o, w.out)

    # -- numpy reference -----------------------------------------------------------------------------------------
    @classmethod
    def reference_forward(cls, ref, ids):
        c, w = ref.c, ref.w
        eps = c.rms_norm_eps
        cos, sin = ref.rope(np.arange(ref.pos, ref.pos + len(ids)), _rotary_inv_freq(c))
        x = w["model.embed_tokens.weight"][ids]
        for i, kind in enumerate(_types(c)):
            p = f"model.layers.{i}."
            h = npref.rms_norm(x, gain(w[p + "input_layernorm.weight"]), eps)
            x = x + (_reference_attention(ref, i, h, cos, sin) if kind == FULL else _reference_delta(ref, i, h))
            h = npref.rms_norm(x, gain(w[p + "post_attention_layernorm.weight"]), eps)
            gate = h @ w[p + "mlp.gate_proj.weight"].T
            x = x + (_silu(gate) * (h @ w[p + "mlp.up_proj.weight"].T)) @ w[p + "mlp.down_proj.weight"].T
            ref.record(i, x)
        return npref.rms_norm(x, gain(w["model.norm.weight"]), eps) @ w["lm_head.weight"].T


def _norm_one_plus(x, w: np.ndarray, eps: float, width: int):
    """RMSNorm × (1 + w) as n + n·w: 1 + w rounded to fp16 moves the tiny reference's logits by 1.2 (w itself is
    exact in fp16, as Qwen's bf16 weights are)."""
    b = mb()
    n = rms_norm(x, None, eps, axis=1, width=width)
    return b.add(x=n, y=b.mul(x=n, y=f16(w.reshape(1, -1, 1, 1))))


def partial_rotate_half(head_dim: int, rot: int) -> np.ndarray:
    """P with x @ P == rotate_half of x's first `rot` dims, zero elsewhere (x·cos + (x·P)·sin with cos 1 and
    sin 0 past `rot` is partial rope in one matmul)."""
    half = rot // 2
    p = np.zeros((head_dim, head_dim), np.float32)
    p[np.arange(half) + half, np.arange(half)] = -1.0
    p[np.arange(half), np.arange(half) + half] = 1.0
    return p


def _delta_rule(q, k, v, beta, decay, s, seq: int):
    """The gated delta rule over S tokens in the graph, one token after another: q, k (nv, S, dk), v (nv, S, dv),
    beta, decay (nv, S, 1), state s (nv, dk, dv) → outputs (nv, S, dv) and the final state."""
    b = mb()
    parts = [q, k, v, beta, decay]
    if seq > 1:
        parts = [b.split(x=t, num_splits=seq, axis=1) for t in parts]
    outs = []
    for t in range(seq):
        q_t, k_t, v_t, beta_t, decay_t = (p[t] for p in parts) if seq > 1 else parts
        s = b.mul(x=s, y=decay_t)
        remembered = b.matmul(x=k_t, y=s)  # (nv, 1, dv)
        delta = b.mul(x=b.sub(x=v_t, y=remembered), y=beta_t)
        s = b.add(x=s, y=b.matmul(x=k_t, y=delta, transpose_x=True))
        outs.append(b.matmul(x=q_t, y=s))
    return (outs[0] if seq == 1 else b.concat(values=outs, axis=1)), s


def _block_masks(seq: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Lower triangle (with and without the diagonal), and per doubling level s = 1, 2, 4, … the entries inside a
    2s-block but outside its two s-blocks (where the next level's inverse gains its off-diagonal block)."""
    i, j = np.arange(seq)[:, None], np.arange(seq)[None, :]
    levels, size = [], 1
    while size < seq:
        levels.append(((i // (2 * size) == j // (2 * size)) & (i // size != j // size) & (i > j)).astype(np.float32))
        size *= 2
    return (i >= j).astype(np.float32), (i > j).astype(np.float32), levels


def _decay_sums(seq: int) -> np.ndarray:
    """(S·(S+1), S) 0/1: row (i, 0) sums g over t ≤ i (G_i), row (i, j+1) over j < t ≤ i (G_i − G_j, 0 for j ≥ i).
    Each difference is summed directly: from a running sum G it would carry G's fp16 rounding (0.25 at |G| ≈ 300,
    a fast-decaying head over 64 tokens) into every e^(G_i − G_j)."""
    t = np.arange(seq)[None, None, :]
    i = np.arange(seq)[:, None, None]
    j = np.arange(-1, seq)[None, :, None]
    return ((j < t) & (t <= i)).astype(np.float32).reshape(seq * (seq + 1), seq)


def _delta_chunked(q, k, v, beta, g, s0, seq: int):
    """The gated delta rule over a block as one chunk (the WY form of transformers' chunked kernel, with the
    triangular solve done by doubling). With G the running sum of g and Λ_ij = e^(G_i − G_j) for j ≤ i:
    δ = (I + M)⁻¹ (β v − β e^G K S₀) where M = strict-lower(β_i k_i·k_j Λ_ij); o = e^G q S₀ + (q kᵀ ⊙ Λ) δ;
    S = e^(G_last) S₀ + Kᵀ (e^(G_last − G) δ). (I + M)⁻¹ is built blockwise: with T the inverse of the diagonal
    s-blocks, T − T (M on the off-diagonal s-blocks of each 2s-block) T inverts the 2s-blocks exactly, so every
    intermediate is a piece of the true inverse (no power series to overflow fp16)."""
    b = mb()
    nv = q.shape[0]
    tril, strict, levels = _block_masks(seq)
    # e^G (nv, S, 1) and e^(G_i − G_j) (nv, S, S) from one matmul of the sums and one exp; every exponent ≤ 0.
    sums = b.exp(x=b.reshape(x=b.matmul(x=f16(_decay_sums(seq)), y=g), shape=[nv, seq, seq + 1]))
    gamma, pairwise = b.split(x=sums, split_sizes=[1, seq], axis=2)
    decay = b.mul(x=pairwise, y=f16(tril))
    last = b.slice_by_index(x=sums, begin=[0, seq - 1, 0], end=[nv, seq, seq + 1])  # (nv, 1, S+1)
    gamma_last, carry = b.split(x=last, split_sizes=[1, seq], axis=2)
    m = b.mul(x=b.mul(x=b.matmul(x=k, y=k, transpose_y=True), y=decay), y=b.mul(x=beta, y=f16(strict)))
    t = b.sub(x=f16(np.eye(seq)), y=b.mul(x=m, y=f16(levels[0])))
    for level in levels[1:]:
        t = b.sub(x=t, y=b.matmul(x=t, y=b.matmul(x=b.mul(x=m, y=f16(level)), y=t)))
    u = b.matmul(x=t, y=b.mul(x=v, y=beta))
    w = b.matmul(x=t, y=b.mul(x=k, y=b.mul(x=beta, y=gamma)))
    delta = b.sub(x=u, y=b.matmul(x=w, y=s0))
    scores = b.mul(x=b.matmul(x=q, y=k, transpose_y=True), y=decay)
    out = b.add(x=b.matmul(x=b.mul(x=q, y=gamma), y=s0), y=b.matmul(x=scores, y=delta))
    carried = b.mul(x=delta, y=b.transpose(x=carry, perm=[0, 2, 1]))
    s = b.add(x=b.mul(x=s0, y=gamma_last), y=b.matmul(x=k, y=carried, transpose_x=True))
    return out, s


def _silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _l2norm(x: np.ndarray) -> np.ndarray:
    return x / np.sqrt((x * x).sum(-1, keepdims=True) + 1e-6)


def _reference_attention(ref, i: int, h: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    c, w = ref.c, ref.w
    p = f"model.layers.{i}.self_attn."
    s, hd, eps = h.shape[0], c.head_dim, c.rms_norm_eps
    qg = (h @ w[p + "q_proj.weight"].T).reshape(s, c.num_heads, 2 * hd)
    q, gate = qg[..., :hd], qg[..., hd:].reshape(s, -1)
    q = npref.rms_norm(q, gain(w[p + "q_norm.weight"]), eps).transpose(1, 0, 2)
    k = npref.rms_norm((h @ w[p + "k_proj.weight"].T).reshape(s, c.num_kv_heads, hd), gain(w[p + "k_norm.weight"]), eps)
    k = k.transpose(1, 0, 2)
    v = (h @ w[p + "v_proj.weight"].T).reshape(s, c.num_kv_heads, hd).transpose(1, 0, 2)
    rot = rotary_dim(c)

    def rope(t: np.ndarray) -> np.ndarray:
        return np.concatenate([npref.apply_rope(t[..., :rot], cos, sin), t[..., rot:]], axis=-1)

    out = ref.attend(i, rope(q), rope(k), v, hd**-0.5)
    return (out * _sigmoid(gate)) @ w[p + "o_proj.weight"].T


def _reference_delta(ref, i: int, h: np.ndarray) -> np.ndarray:
    """Transformers' recurrent form, token by token, with the conv and recurrent states kept in ref.recurrent."""
    c, w = ref.c, ref.w
    p = f"model.layers.{i}.linear_attn."
    d = dims(c)
    s = h.shape[0]
    key_dim = d.nk * d.dk
    mixed = h @ w[p + "in_proj_qkv.weight"].T  # (S, conv channels)
    taps = w[p + "conv1d.weight"].reshape(mixed.shape[1], d.kernel)
    conv_in, state = ref.recurrent.get(i, (np.zeros((d.kernel - 1, mixed.shape[1]), np.float32), np.zeros((d.nv, d.dk, d.dv), np.float32)))
    window = np.concatenate([conv_in, mixed])
    act = _silu(np.stack([(window[t : t + d.kernel] * taps.T).sum(0) for t in range(s)]))
    q = act[:, :key_dim].reshape(s, d.nk, d.dk)
    k = act[:, key_dim : 2 * key_dim].reshape(s, d.nk, d.dk)
    v = act[:, 2 * key_dim :].reshape(s, d.nv, d.dv)
    group = d.nv // d.nk
    q = np.repeat(_l2norm(q), group, axis=1) * d.dk**-0.5
    k = np.repeat(_l2norm(k), group, axis=1)
    beta = _sigmoid(h @ w[p + "in_proj_b.weight"].T)
    a = h @ w[p + "in_proj_a.weight"].T + w[p + "dt_bias"]
    g = -np.exp(w[p + "A_log"]) * np.logaddexp(a, 0)
    out = np.zeros((s, d.nv, d.dv), np.float32)
    for t in range(s):
        state = state * np.exp(g[t])[:, None, None]
        delta = (v[t] - np.einsum("hk,hkv->hv", k[t], state)) * beta[t][:, None]
        state = state + k[t][:, :, None] * delta[:, None, :]
        out[t] = np.einsum("hk,hkv->hv", q[t], state)
    ref.recurrent[i] = (window[-(d.kernel - 1):], state)
    z = (h @ w[p + "in_proj_z.weight"].T).reshape(s, d.nv, d.dv)
    out = npref.rms_norm(out, w[p + "norm.weight"], c.rms_norm_eps) * _silu(z)
    return out.reshape(s, -1) @ w[p + "out_proj.weight"].T
