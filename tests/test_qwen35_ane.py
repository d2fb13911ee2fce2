"""What the real-size Qwen 3.5 (tests/test_qwen35_real.py, opt-in) showed, kept fast: a small model of the same
layout whose DeltaNet conv taps are above the palettization size threshold (the tiny reference's are below it,
which hid a LUT failure on every real Qwen 3.5), int8 that touches weights only, ANE-aligned states at the real
shapes, and chunks cut by bytes under iOS's part limit."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from qwen35_real import TEXT_CONFIG, make, tensor_shapes, weight_bin_bytes

from anechat.arch.mil import Int8, Palettized, int8_bytes
from anechat.arch.qwen3_5 import CONV_STATE, DELTA_STATE, Qwen3_5
from anechat.convert.ane.compress import (
    MIN_WEIGHT_ELEMENTS,
    Calibration,
    Lut,
    compressed_fields,
    layer_moments,
    palettize_layer,
)
from anechat.convert.ane.programs import layer_weights
from anechat.convert.build import (
    PART_LIMIT_BYTES,
    ConvertOptions,
    auto_chunks,
    chunk_ranges,
    convert,
    estimated_layer_bytes,
)
from anechat.convert.checkpoint import load_checkpoint
from anechat.errors import ConversionError

# Qwen 3.5's layout in small: 3 DeltaNet + 1 attention layer; 4 + 4 DeltaNet heads of 64 make 768 conv channels,
# so the taps (768 × 4) are above MIN_WEIGHT_ELEMENTS as at real size (6144 × 4).
SMALL = {**TEXT_CONFIG, "vocab_size": 1024, "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 4,
         "layer_types": ["linear_attention"] * 3 + ["full_attention"], "num_attention_heads": 2, "num_key_value_heads": 1,
         "head_dim": 64, "linear_key_head_dim": 64, "linear_value_head_dim": 64, "linear_num_key_heads": 4,
         "linear_num_value_heads": 4}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return load_checkpoint(make(tmp_path_factory.mktemp("qwen35-small") / "m", seed=3, text_config=SMALL))


def test_conv_taps_above_the_size_threshold_stay_fp16_under_a_lut(small):
    w = layer_weights(small, 0)
    assert w.conv.size >= MIN_WEIGHT_ELEMENTS
    moments = layer_moments(w, 0, Calibration(small))  # was: "no calibration input known for weight 'conv'"
    assert set(moments) == {"proj", "out", "gate_up", "down"}
    lut = palettize_layer(w, 0, Lut(4, 1), moments)
    assert all(isinstance(getattr(lut, n), Palettized) for n in moments)
    assert lut.conv is w.conv and lut.norm is w.norm and lut.neg_a is w.neg_a


def test_a_2d_layer_weight_of_no_known_kind_is_refused(small):
    @dataclasses.dataclass(frozen=True)
    class Odd:
        down: np.ndarray
        mystery: np.ndarray

    odd = Odd(np.zeros((64, 64), np.float32), np.zeros((64, 64), np.float32))
    with pytest.raises(ConversionError, match="mystery"):
        compressed_fields(odd, 2)


def test_int8_rounds_each_block_of_32_inputs_to_its_own_grid():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((48, 96)).astype(np.float32) * rng.uniform(0.01, 3, (48, 3)).repeat(32, axis=1).astype(np.float32)
    w[5] = 0.0  # an all-zero row keeps a finite scale
    w[7] = np.abs(w[7])  # a one-sided row: its blocks' grids start at their minimum
    q = Int8.quantize(w)
    assert q.data.dtype == np.int8 and q.scale.dtype == q.offset.dtype == np.float16 and q.scale.shape == q.offset.shape == (48, 3)
    step = np.repeat(q.scale.astype(np.float32), 32, axis=1)
    assert np.all(np.abs(q.dense() - w) <= 0.5 * step + 1e-3 * np.abs(w))
    assert np.all(np.isfinite(q.dense())) and np.all(q.dense()[5] == 0)
    # the one-sided row uses the whole int8 range, not half of it as a symmetric grid would
    assert q.data[7].min() < -100 and q.data[7].max() > 100
    assert np.array_equal(q[8:16].dense(), q.dense()[8:16])
    # rows that do not split into blocks of 32 get one scale each; --int8-block 0 asks for that
    assert Int8.quantize(w[:, :80]).scale.shape == (48, 1) and Int8.quantize(w, 0).scale.shape == (48, 1)


def test_int8_keeps_a_gguf_q8_0_or_q4_1_weight_exact():
    """A GGUF stores Q8_0 as d·q (q in -127..127) and Q4_1 as d·q + m (q in 0..15) per block of 32, d and m fp16:
    int8 with a scale per block of 32 holds both exactly (Q8_0 symmetric, without offsets) or to fp16 precision,
    where one scale per row re-rounds them onto a coarser grid (SmolLM2's GGUF: HF top-1 90.6 % → 100 %)."""
    rng = np.random.default_rng(1)
    rows, blocks = 16, 6
    d = rng.uniform(1e-3, 1e-2, (rows, blocks, 1)).astype(np.float16).astype(np.float32)
    q8 = rng.integers(-127, 128, (rows, blocks, 32))
    q8[..., 0] = 127 * rng.choice([-1, 1], (rows, blocks))  # Q8_0: d = amax / 127
    q8_0 = (d * q8).reshape(rows, -1)
    exact = Int8.quantize(q8_0)
    assert exact.offset is None and np.array_equal(exact.dense(), q8_0)
    m = (-rng.uniform(0, 15, (rows, blocks, 1)) * d).astype(np.float16).astype(np.float32)
    q4 = rng.integers(0, 16, (rows, blocks, 32))
    q4[..., 0], q4[..., 1] = 0, 15  # Q4_1: m = min, d = (max - min) / 15
    q4_1 = (d * q4 + m).reshape(rows, -1)
    close = Int8.quantize(q4_1)
    assert close.offset is not None
    assert np.abs(close.dense() - q4_1).max() <= 2.0**-10 * np.abs(q4_1).max()
    per_row = Int8.quantize(q4_1, 0)
    assert np.abs(per_row.dense() - q4_1).max() > 20 * np.abs(close.dense() - q4_1).max()


def test_int8_quantizes_the_weights_and_nothing_else(small, tmp_path):
    """--int8 once ran coremltools over every constant of ≥ 2048 elements: conv taps, q/k-norm gains, the rope
    tables, the rotate-half matrix, prefill's decay-sum matrix and masks. Now it is the projections, the
    embedding table and the lm_head, as a LUT would be."""
    out = tmp_path / "m"
    convert(small, out, ConvertOptions(context=64, batch=8, int8=True))
    (chunk,) = out.glob("*_FFN_PF_chunk_*.mlpackage")
    import coremltools as ct

    spec = ct.utils.load_spec(str(chunk))
    c = small.config
    projections = set()
    for i in range(c.num_layers):
        w = layer_weights(small, i)
        projections |= {getattr(w, n).shape + (1, 1) for n in compressed_fields(w, i)}
    for fn in ("infer", "prefill"):
        f = spec.mlProgram.functions[fn]
        ops = f.block_specializations[f.opset].operations
        quantized = {tuple(op.outputs[0].type.tensorType.dimensions[k].constant.size for k in range(4))
                     for op in ops if op.type == "constexpr_blockwise_shift_scale"}
        assert quantized == projections, fn
        fp16_consts = [tuple(d.constant.size for d in op.outputs[0].type.tensorType.dimensions) for op in ops if op.type == "const"]
        assert (768, 1, 1, 4) in fp16_consts  # the conv taps
        assert (64, 64) in fp16_consts  # rope cos/sin (context × head_dim)
    for part in ("embeddings", "lm_head"):
        (pkg,) = out.glob(f"*_{part}.mlpackage")
        ops = next(iter(ct.utils.load_spec(str(pkg)).mlProgram.functions.values()))
        assert any(op.type == "constexpr_blockwise_shift_scale" for op in ops.block_specializations[ops.opset].operations), part
    # the chunk is its layers' int8 weights as estimated, plus a few fp16 constants
    estimate = sum(estimated_layer_bytes(layer_weights(small, i), None, True) for i in range(c.num_layers))
    assert estimate <= weight_bin_bytes(chunk) <= 1.1 * estimate
    from anechat.engine.verify import verify_ids

    report = verify_ids(small, out, list(range(3, 40)))
    assert report.top1_agreement >= 0.9, report.format()


def test_the_real_shapes_states_have_last_axes_in_multiples_of_32():
    c = Qwen3_5.config_from_hf({"text_config": TEXT_CONFIG, "tie_word_embeddings": True})
    specs = Qwen3_5.state_specs(c, 1024)
    assert specs[CONV_STATE] == (18, 6144, 1, 32) and specs[DELTA_STATE] == (18, 16, 128, 128)
    assert all(shape[-1] % 32 == 0 for shape in specs.values()), specs


def _real_layer_bytes() -> list[int]:
    """fp16 bytes of each of Qwen3.5-0.8B's layers, from the published shapes."""
    shapes = tensor_shapes()
    return [2 * sum(int(np.prod(s)) for n, s in shapes.items() if f".layers.{i}." in n) for i in range(24)]


def test_chunks_are_cut_by_bytes_under_the_part_limit():
    sizes = _real_layer_bytes()
    assert sum(sizes) > PART_LIMIT_BYTES  # one fp16 chunk of the 0.8B (998 MB) is over the margin
    n = auto_chunks(sizes)
    ranges = chunk_ranges(sizes, n)
    parts = [sum(sizes[r.start : r.stop]) for r in ranges]
    assert n == 2 and max(parts) <= PART_LIMIT_BYTES and [r.start for r in ranges] == [0, 12]
    assert auto_chunks([s * 6 // 16 for s in sizes]) == 1  # LUT6
    # layers of unequal size: the cut balances bytes, not layer counts
    assert chunk_ranges([4, 4, 4, 1, 1, 1, 1, 1, 1], 2) == [range(2), range(2, 9)]
    assert chunk_ranges([1, 1, 1, 1], 2) == [range(2), range(2, 4)]
    assert auto_chunks([600, 600, 600], limit=1000) == 3


def test_estimated_layer_bytes_follow_the_compression(small):
    w = layer_weights(small, 1)
    fp16 = estimated_layer_bytes(w, None, False)
    assert fp16 == 2 * sum(v.size for v in vars(w).values() if isinstance(v, np.ndarray))
    assert estimated_layer_bytes(w, Lut(4, 1), False) < estimated_layer_bytes(w, Lut(6, 4), False) < estimated_layer_bytes(w, None, True) < fp16


QWEN35_2B = {**TEXT_CONFIG, "hidden_size": 2048, "intermediate_size": 6144}  # Qwen3.5-2B: otherwise the 0.8B's


def _shapes_only(text_config: dict):
    """A checkpoint of the real shapes whose tensors are zeros (what the converter's size estimate needs)."""
    from pathlib import Path

    from anechat.convert.checkpoint import Checkpoint

    config = Qwen3_5.config_from_hf({"text_config": text_config, "tie_word_embeddings": True})
    loaders = {Qwen3_5.hf_tensor_name(n): (lambda s=s: np.zeros(s, np.float32)) for n, s in tensor_shapes(text_config).items()}
    return Checkpoint(config=config, source=Path("<shapes>"), loaders=loaders)


@pytest.mark.parametrize(("name", "text_config"), [("qwen3.5-0.8b", TEXT_CONFIG), ("qwen3.5-2b", QWEN35_2B)])
def test_the_registry_settings_fit_ios_and_its_sizes_are_the_conversions(name, text_config):
    """The registry's convert settings keep every part under 950 MB and its size_mb is what they write: one
    chunk estimate per layer plus the tied embedding stored twice (embeddings and lm_head)."""
    from anechat.convert.ane.compress import parse_lut
    from anechat.models.registry import load_registry

    entry = load_registry().get(name)
    opts = entry.convert
    ckpt = _shapes_only(text_config)
    lut, int8 = parse_lut(opts.get("lut_ffn")), bool(opts.get("int8"))
    sizes = [estimated_layer_bytes(layer_weights(ckpt, i), lut, int8) for i in range(ckpt.config.num_layers)]
    chunks = [sum(sizes[r.start : r.stop]) for r in chunk_ranges(sizes, opts.get("chunks") or auto_chunks(sizes))]
    vocab, hidden = ckpt.config.vocab_size, ckpt.config.hidden_size
    table = int8_bytes((vocab, hidden)) if int8 and not opts.get("lut_embeddings") else 2 * vocab * hidden
    parts = [table, *chunks, table]
    assert max(parts) <= PART_LIMIT_BYTES, [round(p / 1e6) for p in parts]
    assert entry.size_mb == pytest.approx(sum(parts) / 1e6, rel=0.01), [round(p / 1e6) for p in parts]
