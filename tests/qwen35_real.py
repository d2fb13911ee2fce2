"""A random-weight Qwen 3.5 at the exact shapes of Qwen/Qwen3.5-0.8B (its real weights cannot be downloaded
here), written as Qwen publishes it: `Qwen3_5ForConditionalGeneration`'s config.json with a nested
`text_config`, bf16 safetensors under `model.language_model.*`, tied embeddings. numpy only (no torch).

    python tests/qwen35_real.py OUTDIR [--seed N]

Shapes from the model card and config mirrors: hidden 1024, 24 layers as 6 × (3 Gated DeltaNet + 1 gated
attention), DeltaNet 16 key + 16 value heads of 128 with a 4-tap conv, attention 8 query / 2 KV heads of 256 with
25 % partial rotary, intermediate 3584, vocabulary 248,320. The vision tower is left out (a text chat skips it).
The tokenizer is tests/data/qwen35-tiny's (1,024 byte-level BPE ids, all inside the real vocabulary, with its
ChatML template): the rows past 1,024 are real rows of the embedding and the lm_head, only never the input.
Weights are drawn as tests/data/qwen35-tiny's were (far from their init, so every path moves the logits), then
rounded to bf16."""

from __future__ import annotations

import json
import shutil
import struct
import sys
from pathlib import Path

import numpy as np

TINY = Path(__file__).parent / "data" / "qwen35-tiny"
TEXT_CONFIG = {
    "model_type": "qwen3_5_text",
    "vocab_size": 248320,
    "hidden_size": 1024,
    "intermediate_size": 3584,
    "num_hidden_layers": 24,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "head_dim": 256,
    "linear_conv_kernel_dim": 4,
    "linear_key_head_dim": 128,
    "linear_value_head_dim": 128,
    "linear_num_key_heads": 16,
    "linear_num_value_heads": 16,
    "full_attention_interval": 4,
    "layer_types": (["linear_attention"] * 3 + ["full_attention"]) * 6,
    "max_position_embeddings": 262144,
    "rms_norm_eps": 1e-6,
    "hidden_act": "silu",
    "attention_bias": False,
    "tie_word_embeddings": True,
    "eos_token_id": 2,  # the tiny tokenizer's <|im_end|>
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000000.0, "partial_rotary_factor": 0.25,
                        "mrope_section": [11, 11, 10], "mrope_interleaved": True},
}


def tensor_shapes(tc: dict = TEXT_CONFIG) -> dict[str, tuple[int, ...]]:
    h, inter = tc["hidden_size"], tc["intermediate_size"]
    nk, nv, dk, dv = (tc[k] for k in ("linear_num_key_heads", "linear_num_value_heads", "linear_key_head_dim", "linear_value_head_dim"))
    nh, kvh, hd = tc["num_attention_heads"], tc["num_key_value_heads"], tc["head_dim"]
    p = "model.language_model."
    shapes: dict[str, tuple[int, ...]] = {p + "embed_tokens.weight": (tc["vocab_size"], h)}
    for i, kind in enumerate(tc["layer_types"]):
        q = f"{p}layers.{i}."
        shapes[q + "input_layernorm.weight"] = (h,)
        if kind == "linear_attention":
            conv = 2 * nk * dk + nv * dv
            shapes.update({
                q + "linear_attn.in_proj_qkv.weight": (conv, h), q + "linear_attn.in_proj_z.weight": (nv * dv, h),
                q + "linear_attn.in_proj_b.weight": (nv, h), q + "linear_attn.in_proj_a.weight": (nv, h),
                q + "linear_attn.conv1d.weight": (conv, 1, tc["linear_conv_kernel_dim"]),
                q + "linear_attn.A_log": (nv,), q + "linear_attn.dt_bias": (nv,), q + "linear_attn.norm.weight": (dv,),
                q + "linear_attn.out_proj.weight": (h, nv * dv),
            })
        else:
            shapes.update({
                q + "self_attn.q_proj.weight": (2 * nh * hd, h), q + "self_attn.k_proj.weight": (kvh * hd, h),
                q + "self_attn.v_proj.weight": (kvh * hd, h), q + "self_attn.o_proj.weight": (h, nh * hd),
                q + "self_attn.q_norm.weight": (hd,), q + "self_attn.k_norm.weight": (hd,),
            })
        shapes.update({q + "post_attention_layernorm.weight": (h,), q + "mlp.gate_proj.weight": (inter, h),
                       q + "mlp.up_proj.weight": (inter, h), q + "mlp.down_proj.weight": (h, inter)})
    shapes[p + "norm.weight"] = (h,)
    return shapes


def _draw(rng: np.random.Generator, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """The tiny reference's recipe (qwen35_tiny_make.py), in numpy."""
    if name.endswith("A_log"):
        return np.log(rng.uniform(0.5, 8, shape))
    if name.endswith("dt_bias"):
        return rng.standard_normal(shape, np.float32) * 0.5
    if "norm" in name:
        return rng.standard_normal(shape, np.float32) * 0.3 + (1.0 if name.endswith("linear_attn.norm.weight") else 0.0)
    if "conv1d" in name:
        return rng.standard_normal(shape, np.float32) * 0.4
    if "embed_tokens" in name:
        return rng.standard_normal(shape, np.float32)
    return rng.standard_normal(shape, np.float32) * (1.2 / shape[-1] ** 0.5)


def _bf16_bits(a: np.ndarray) -> np.ndarray:
    """float32 → bf16 bit patterns, rounded to nearest even."""
    u = np.ascontiguousarray(a, np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def make(out: Path, seed: int = 0, text_config: dict | None = None) -> Path:
    """Write the model into `out` (created; tensors streamed one at a time, 1.5 GB at the real shapes);
    `text_config` replaces TEXT_CONFIG (the unit tests' small models of the same layout)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    text_config = text_config or TEXT_CONFIG
    shapes = tensor_shapes(text_config)
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in shapes.items():
        size = 2 * int(np.prod(shape))
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    rng = np.random.default_rng(seed)
    tmp = out / "model.safetensors.partial"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for name, shape in shapes.items():
            f.write(_bf16_bits(_draw(rng, name, shape)).tobytes())
    tmp.rename(out / "model.safetensors")
    config = {"architectures": ["Qwen3_5ForConditionalGeneration"], "model_type": "qwen3_5", "dtype": "bfloat16",
              "tie_word_embeddings": True, "text_config": text_config}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(TINY / name, out / name)
    return out


def chunk_facts(package: Path) -> dict[str, dict]:
    """Per function of a converted chunk: its states' shapes, and the gathers whose `x` is not a constant
    (runtime-index gathers on activations; the rope tables are constants gathered by position)."""
    import coremltools as ct

    spec = ct.utils.load_spec(str(package))
    facts = {}
    for f in spec.description.functions:
        fn = spec.mlProgram.functions[f.name]
        ops = fn.block_specializations[fn.opset].operations
        consts = {o.outputs[0].name for o in ops if o.type.startswith("const")}
        facts[f.name] = {
            "states": {s.name: tuple(s.type.stateType.arrayType.shape) for s in f.state},
            "activation_gathers": [o.outputs[0].name for o in ops if o.type.startswith("gather") and o.inputs["x"].arguments[0].name not in consts],
        }
    return facts


def weight_bin_bytes(package: Path) -> int:
    return sum(f.stat().st_size for f in Path(package).rglob("weight.bin"))


if __name__ == "__main__":
    args = sys.argv[1:]
    seed = int(args[args.index("--seed") + 1]) if "--seed" in args else 0
    print(make(Path(args[0]), seed))
