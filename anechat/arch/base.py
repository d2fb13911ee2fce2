"""What every decoder-only architecture anechat converts has in common.

An architecture file owns everything about its family: how its checkpoints describe themselves (HF
config.json keys, GGUF metadata keys and tensor names), its decoder block in the ANE graph (built from the
shared MIL blocks) and its plain numpy reference forward pass. The shared machinery (sources, converter,
reference model) reads only the normalised `ModelConfig` and calls the family's hooks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from anechat.errors import ConversionError

if TYPE_CHECKING:
    import numpy as np


KV_STATE = "model.model.kv_cache_0"  # ANEMLL's name of the one KV state every chunk shares


STATE_ALIGN = 32


def state_axis(n: int) -> int:
    """A state's last axis, padded to a multiple of 32 fp16 values (64 bytes): the ANE fails stateful models
    whose states are not so aligned (coremltools #2631: 270 fails, 256 works). Readers and writers slice the
    first `n`; the padding stays zero. Real heads (64, 128, 256) are unchanged."""
    return -(-n // STATE_ALIGN) * STATE_ALIGN


@dataclass
class ModelConfig:
    architecture: str  # registry name: "llama", "qwen2", "qwen3", "gemma3"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    # HF-style dict ({"rope_type": "llama3", "factor": ..., ...}) or None
    rope_scaling: dict[str, Any] | None = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # q/k/v projections carry a bias (Qwen2)
    qk_norm: bool = False  # RMSNorm on each head of q and k before rope (Qwen3)
    bos_token_id: int | None = None
    eos_token_ids: list[int] = field(default_factory=list)
    # Sliding-window attention (Gemma 3): layer_types[i] is "sliding_attention" or "full_attention"
    sliding_window: int | None = None
    layer_types: list[str] | None = None
    rope_local_theta: float | None = None  # rope base of the sliding layers (rope_theta is the global one)
    query_pre_attn_scalar: float | None = None  # attention scale is this ** -0.5 instead of head_dim ** -0.5
    # α folded into the converted weights so the residual stream stays in fp16's range (None: not scaled)
    residual_scale: float | None = None
    # Rotary embedding on the first fraction of head_dim only (Qwen 3.5: 0.25)
    partial_rotary_factor: float = 1.0
    # Gated DeltaNet layers (Qwen 3.5: layer_types[i] == "linear_attention")
    linear_conv_kernel: int | None = None
    linear_key_head_dim: int | None = None
    linear_value_head_dim: int | None = None
    linear_num_key_heads: int | None = None
    linear_num_value_heads: int | None = None

    def is_sliding(self, layer: int) -> bool:
        return bool(self.sliding_window and self.layer_types and self.layer_types[layer] == "sliding_attention")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def validate(self) -> None:
        # sizes from a user's file: range-checked before anything divides by them or allocates from them
        for name, top in (("vocab_size", 1 << 22), ("hidden_size", 1 << 16), ("intermediate_size", 1 << 18),
                          ("num_layers", 1024), ("num_heads", 1024), ("num_kv_heads", 1024), ("head_dim", 4096)):
            if not 0 < getattr(self, name) <= top:
                raise ConversionError(f"config value {name} must be between 1 and {top}, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ConversionError(
                f"num_heads ({self.num_heads}) is not a multiple of num_kv_heads ({self.num_kv_heads})"
            )
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "head_dim"):
            if getattr(self, name) <= 0:
                raise ConversionError(f"config value {name} must be positive, got {getattr(self, name)}")
        if self.head_dim % 2:
            raise ConversionError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")


def _eos_list(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    return [int(value)]


class Architecture:
    """One decoder family. Subclasses set the class attributes and may refine the parsers."""

    name: ClassVar[str]
    hf_model_types: ClassVar[tuple[str, ...]]
    gguf_names: ClassVar[tuple[str, ...]]
    attention_bias: ClassVar[bool] = False
    qk_norm: ClassVar[bool] = False
    default_rope_theta: ClassVar[float] = 10000.0

    # llama.cpp's per-layer tensor names (blk.N.<key>) → HF's (model.layers.N.<value>), and the global ones
    gguf_layer_names: ClassVar[dict[str, str]] = {
        "attn_norm": "input_layernorm",
        "attn_q": "self_attn.q_proj",
        "attn_k": "self_attn.k_proj",
        "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj",
        "attn_q_norm": "self_attn.q_norm",
        "attn_k_norm": "self_attn.k_norm",
        "ffn_norm": "post_attention_layernorm",
        "ffn_gate": "mlp.gate_proj",
        "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
    }
    gguf_global_names: ClassVar[dict[str, str]] = {
        "token_embd.weight": "model.embed_tokens.weight",
        "output_norm.weight": "model.norm.weight",
        "output.weight": "lm_head.weight",
    }
    # Per-layer weights every layer must have (HF suffixes, ".weight" implied)
    layer_tensors: ClassVar[tuple[str, ...]] = (
        "input_layernorm", "post_attention_layernorm", "self_attn.q_proj", "self_attn.k_proj",
        "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
    )


    @classmethod
    def prepare(cls, ckpt) -> None:
        """Decide what conversion needs to know beyond the config (e.g. an fp16 scale), before any graph."""

    @classmethod
    def gguf_tensor(cls, name: str, w: np.ndarray, config: ModelConfig) -> np.ndarray:
        """A dequantized GGUF tensor (under its HF name) turned into HF's convention."""
        return w

    @classmethod
    def hf_tensor_name(cls, name: str) -> str | None:
        """The name a safetensors tensor has in a Checkpoint (None: not part of the text model)."""
        return name

    @classmethod
    def required_tensors(cls, config: ModelConfig) -> list[str]:
        needed = ["model.embed_tokens.weight", "model.norm.weight"]
        for i in range(config.num_layers):
            needed += [f"model.layers.{i}.{s}.weight" for s in cls.layer_tensors]
            if config.qk_norm:
                needed += [f"model.layers.{i}.self_attn.q_norm.weight", f"model.layers.{i}.self_attn.k_norm.weight"]
        return needed

    @classmethod
    def embedding_table(cls, ckpt) -> np.ndarray:
        """The table the embeddings part gathers rows from (a family may fold a scale into it)."""
        return ckpt.tensor("model.embed_tokens.weight")

    @classmethod
    def final_norm(cls, ckpt) -> np.ndarray:
        """The gain of the final RMSNorm as the graph multiplies by it."""
        return ckpt.tensor("model.norm.weight")

    @classmethod
    def function_names(cls, config: ModelConfig, context: int) -> tuple[str, ...]:
        """The functions of a transformer chunk."""
        return ("infer", "prefill")

    @classmethod
    def state_specs(cls, config: ModelConfig, context: int) -> dict[str, tuple[int, ...]]:
        """KV state name → shape (one state shared by every chunk unless a family splits it)."""
        return {KV_STATE: (2 * config.num_layers, config.num_kv_heads, context, state_axis(config.head_dim))}

    @classmethod
    def recurrent_states(cls, config: ModelConfig) -> tuple[str, ...]:
        """States that carry a summary of every token so far (a recurrent layer's), not one slot per position:
        they cannot be rewound to a prefix, so the engine snapshots them."""
        return ()

    @classmethod
    def layer_weights(cls, ckpt, i: int):
        raise NotImplementedError

    @classmethod
    def decoder_layer(cls, w, i: int, x, env):
        """Layer i on x (1, H, 1, S) in the ANE graph; env carries the inputs, states and rope tables."""
        raise NotImplementedError

    @classmethod
    def reference_forward(cls, ref, ids: np.ndarray) -> np.ndarray:
        """The plain numpy forward pass: logits (len(ids), vocab) after what ref already holds."""
        raise NotImplementedError

    @classmethod
    def config_from_hf(cls, cfg: dict[str, Any]) -> ModelConfig:
        try:
            heads = int(cfg["num_attention_heads"])
            hidden = int(cfg["hidden_size"])
            config = ModelConfig(
                architecture=cls.name,
                vocab_size=int(cfg["vocab_size"]),
                hidden_size=hidden,
                intermediate_size=int(cfg["intermediate_size"]),
                num_layers=int(cfg["num_hidden_layers"]),
                num_heads=heads,
                num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
                head_dim=int(cfg.get("head_dim") or hidden // heads),
                rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
                rope_theta=float(cfg.get("rope_theta", cls.default_rope_theta)),
                rope_scaling=cfg.get("rope_scaling"),
                max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
                tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                attention_bias=bool(cfg.get("attention_bias", cls.attention_bias)),
                qk_norm=cls.qk_norm,
                bos_token_id=cfg.get("bos_token_id"),
                eos_token_ids=_eos_list(cfg.get("eos_token_id")),
            )
        except KeyError as e:
            raise ConversionError(f"config.json lacks {e.args[0]!r}, needed for {cls.name}") from None
        except (TypeError, ValueError, ArithmeticError, AttributeError) as e:
            raise ConversionError(f"config.json has a malformed value: {e}") from None
        config.validate()
        return config

    @classmethod
    def config_from_gguf(cls, meta: dict[str, Any], arch_key: str) -> ModelConfig:
        """`meta` maps GGUF metadata keys to plain Python values; `arch_key` is general.architecture."""

        def get(key: str, default: Any = None) -> Any:
            return meta.get(f"{arch_key}.{key}", default)

        try:
            heads = int(get("attention.head_count"))
            hidden = int(get("embedding_length"))
            vocab = get("vocab_size") or len(meta.get("tokenizer.ggml.tokens") or [])
            config = ModelConfig(
                architecture=cls.name,
                vocab_size=int(vocab),
                hidden_size=hidden,
                intermediate_size=int(get("feed_forward_length")),
                num_layers=int(get("block_count")),
                num_heads=heads,
                num_kv_heads=int(get("attention.head_count_kv") or heads),
                head_dim=int(get("attention.key_length") or get("rope.dimension_count") or hidden // heads),
                rms_norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-6)),
                rope_theta=float(get("rope.freq_base", cls.default_rope_theta)),
                rope_scaling=cls._gguf_rope_scaling(get),
                max_position_embeddings=int(get("context_length", 2048)),
                tie_word_embeddings=False,  # the GGUF reader decides from the tensors present
                attention_bias=cls.attention_bias,
                qk_norm=cls.qk_norm,
                bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
                eos_token_ids=_eos_list(meta.get("tokenizer.ggml.eos_token_id")),
            )
        except TypeError:
            raise ConversionError(f"GGUF metadata lacks required {arch_key}.* hyper-parameters") from None
        except (ValueError, ArithmeticError) as e:
            raise ConversionError(f"GGUF metadata has a malformed {arch_key}.* hyper-parameter: {e}") from None
        config.validate()
        return config

    @staticmethod
    def _gguf_rope_scaling(get) -> dict[str, Any] | None:
        kind = get("rope.scaling.type")
        if not kind or kind == "none":
            return None
        if kind == "linear":
            return {"rope_type": "linear", "factor": float(get("rope.scaling.factor", 1.0))}
        raise ConversionError(f"GGUF rope scaling type {kind!r} is not supported")


@dataclass
class Checkpoint:
    config: ModelConfig
    source: Path
    # name -> loader returning float32 (dequantized) array; loaders keep memory low for big models
    loaders: dict[str, Callable[[], np.ndarray]]
    # file name -> content, written verbatim into the converted model dir
    # (at least "tokenizer.json" and "tokenizer_config.json")
    tokenizer_files: dict[str, str] = field(default_factory=dict)

    def names(self) -> list[str]:
        return list(self.loaders)

    def has(self, name: str) -> bool:
        return name in self.loaders

    def tensor(self, name: str) -> np.ndarray:
        try:
            loader = self.loaders[name]
        except KeyError:
            raise ConversionError(f"{self.source.name}: missing tensor {name}") from None
        return np.asarray(loader(), dtype=np.float32)

    def layer(self, i: int, suffix: str) -> np.ndarray:
        return self.tensor(f"model.layers.{i}.{suffix}")
