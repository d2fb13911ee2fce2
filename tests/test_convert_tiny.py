"""Tiny random models of every architecture, converted and run in the portable runtime, against the
numpy reference forward pass of the same weights."""

import numpy as np
import pytest
import yaml
from tiny import tiny_chat_checkpoint

from anechat.arch.reference import ReferenceModel
from anechat.convert.build import ConvertOptions, convert
from anechat.engine.lm import LanguageModel
from anechat.runtime.modeldir import check_model_dir, open_model_dir
from anechat.runtime.portable import PortableBackend

FP16_TOL = 0.02  # max |logit error| for fp16 weights on tiny models with logits of magnitude ~5


def ids(n, seed=1, vocab=320):
    return [int(x) for x in np.random.default_rng(seed).integers(3, vocab, size=n)]


def lm_for(path, **kw):
    return LanguageModel(open_model_dir(path), PortableBackend(**kw))


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_prefill_and_decode_match_reference(tiny_model_dirs, arch):
    ref = ReferenceModel(tiny_chat_checkpoint(arch))
    seq = ids(40)
    expected = ref.forward(seq)
    lm = lm_for(tiny_model_dirs[arch])
    np.testing.assert_allclose(lm.prefill(seq), expected[-1], atol=FP16_TOL)
    lm.reset()
    stepped = np.stack([lm.prefill(seq[:1])] + [lm.step(t) for t in seq[1:]])
    np.testing.assert_allclose(stepped, expected, atol=FP16_TOL)
    assert (stepped.argmax(-1) == expected.argmax(-1)).mean() >= 0.95


def test_prefill_blocks_then_steps_share_one_state(tiny_model_dirs):
    """prefill (batch 8: two full blocks + a padded one) then infer steps, across two chunks."""
    ref = ReferenceModel(tiny_chat_checkpoint("qwen2")).forward(ids(30))
    lm = lm_for(tiny_model_dirs["qwen2"])
    lm.prefill(ids(30)[:21])
    out = [lm.step(t) for t in ids(30)[21:]]
    np.testing.assert_allclose(np.stack(out), ref[21:], atol=FP16_TOL)
    assert lm.cached_ids == ids(30)


def test_prefill_near_context_end_slides_back(tiny_model_dirs):
    seq = ids(62, seed=3)
    ref = ReferenceModel(tiny_chat_checkpoint("llama")).forward(seq)
    lm = lm_for(tiny_model_dirs["llama"])
    lm.prefill(seq[:50])
    np.testing.assert_allclose(lm.prefill(seq[50:]), ref[-1], atol=FP16_TOL)
    with pytest.raises(ValueError, match="exceed the context"):
        lm.prefill(ids(5))


def test_a_few_new_tokens_go_as_steps_or_a_block_by_what_each_costs_here(tiny_model_dirs):
    """A follow-up turn's cost grows with its new tokens: single `infer` steps where a padded `prefill` block
    costs more than they do (as on the ANE), a block where it costs less (numpy); same logits either way."""
    from anechat.engine.lm import Costs

    seq = ids(30, seed=5)
    expected = ReferenceModel(tiny_chat_checkpoint("qwen3")).forward(seq)
    lm = lm_for(tiny_model_dirs["qwen3"])  # batch 8
    calls: list[bool] = []
    run = lm.forward.run

    def counted(*a, prefill, **k):
        calls.append(prefill)
        return run(*a, prefill=prefill, **k)

    lm.forward.run = counted
    lm.prefill(seq[:20])
    assert lm.costs.block is not None  # measured as it ran
    for costs, new, kinds in ((Costs(step=1.0, block=10.0), seq[20:25], [False] * 5),  # 5 steps < 1 block
                              (Costs(step=1.0, block=3.0), seq[25:30], [True])):  # 1 block < 5 steps
        lm.costs = costs
        calls.clear()
        last = len(lm.cached_ids) + len(new) - 1
        np.testing.assert_allclose(lm.prefill(new), expected[last], atol=FP16_TOL)
        assert calls == kinds
    assert lm.cached_ids == seq
    # A padded block costs what a full one does; on a tie the wider call wins. The narrow prefill, not yet
    # timed, is priced like a block here (the guess at batch 8).
    assert lm.cheaper_by_steps(2) and not lm.cheaper_by_steps(3) and not lm.cheaper_by_steps(9)
    lm.costs = Costs(step=1.0, block=5.0)
    assert lm.cheaper_by_steps(4) and not lm.cheaper_by_steps(8)
    assert lm.plan(9) == [8, 1]  # a block, then the one token left as a step


def test_sync_reuses_prefix_and_equals_fresh_prefill(tiny_model_dirs):
    lm = lm_for(tiny_model_dirs["qwen3"])
    first = ids(20)
    lm.sync(first)
    second = first + ids(7, seed=9)
    reused, logits = lm.sync(second)
    assert reused == 20
    fresh = lm_for(tiny_model_dirs["qwen3"])
    np.testing.assert_allclose(logits, fresh.prefill(second), atol=1e-4)
    reused, _ = lm.sync(first[:10] + [5, 6])  # an edited history: only the common prefix survives
    assert reused == 10


def test_structure_meta_and_ops_budget(tiny_model_dirs):
    for path in tiny_model_dirs.values():
        assert check_model_dir(path) == []
    meta = yaml.safe_load((tiny_model_dirs["qwen3"] / "meta.yaml").read_text())
    params = meta["model_info"]["parameters"]
    assert params["num_chunks"] == 2 and params["context_length"] == 64 and params["batch_size"] == 8
    assert params["ffn"] == "qwen_FFN_PF_chunk_01of02.mlpackage"
    assert meta["model_info"]["architecture"] == "qwen3"
    md = open_model_dir(tiny_model_dirs["qwen3"])
    assert [c.name for c in md.chunks] == ["qwen_FFN_PF_chunk_01of02.mlpackage", "qwen_FFN_PF_chunk_02of02.mlpackage"]


def test_ops_per_layer_budget(tmp_path):
    summary = convert(tiny_chat_checkpoint("qwen3", num_layers=4), tmp_path / "m", ConvertOptions(context=32, batch=4))
    assert summary.ops_per_layer <= 60
    assert "ops per decoder layer" in summary.format()


def test_multifunction_chunk_shares_weights(tiny_model_dirs):
    chunk = open_model_dir(tiny_model_dirs["llama"]).chunks[0]
    weights = list(chunk.rglob("weight.bin"))
    assert len(weights) == 1
    ckpt = tiny_chat_checkpoint("llama")
    layer_params = sum(ckpt.tensor(n).size for n in ckpt.names() if n.startswith("model.layers."))
    # fp16 once (not twice for infer + prefill), plus rope tables and small constants
    assert weights[0].stat().st_size < layer_params * 2 * 1.3


def test_split_lm_head_for_large_vocab(tmp_path):
    ckpt = tiny_chat_checkpoint("llama", vocab_size=40000, hidden_size=16, num_heads=2, num_kv_heads=1,
                                head_dim=8, intermediate_size=16, num_layers=1)
    convert(ckpt, tmp_path / "m", ConvertOptions(context=16, batch=4))
    md = open_model_dir(tmp_path / "m")
    lm = LanguageModel(md, PortableBackend())
    widths = [lm.lm_head.outputs[n].shape[-1] for n in lm._logit_names]
    assert len(widths) == 3 and max(widths) <= 16384 and sum(widths) == 40000
    seq = [5, 39000, 20000]
    np.testing.assert_allclose(lm.prefill(seq), ReferenceModel(ckpt).forward(seq)[-1], atol=FP16_TOL)


@pytest.mark.parametrize(
    "options, tol",
    [
        (dict(lut_ffn=8, lut_lmhead=8, lut_embeddings=8), 0.15),
        (dict(lut_ffn=6), 0.5),
        (dict(lut_ffn=4, lut_lmhead=4), 2.0),
        (dict(int8=True), 0.3),
    ],
)
def test_compressed_variants_stay_close(tmp_path, options, tol):
    ckpt = tiny_chat_checkpoint("llama", num_layers=1)
    convert(ckpt, tmp_path / "m", ConvertOptions(context=32, batch=4, **options))
    seq = ids(12)
    expected = ReferenceModel(ckpt).forward(seq)
    lm = lm_for(tmp_path / "m")
    got = np.stack([lm.prefill(seq[:1])] + [lm.step(t) for t in seq[1:]])
    err = np.abs(got - expected).max()
    assert err < tol, f"{options}: max logit error {err}"
    ops = {op.type for p in (lm.embeddings, *lm.infer, lm.lm_head) for op in p.plan.function.ops}
    assert ("constexpr_lut_to_dense" in ops) == any(k.startswith("lut") for k in options)
    assert ("constexpr_blockwise_shift_scale" in ops) == bool(options.get("int8"))


def test_argmax_in_model(tmp_path):
    ckpt = tiny_chat_checkpoint("llama", num_layers=1)
    convert(ckpt, tmp_path / "m", ConvertOptions(context=32, batch=4, argmax=True))
    md = open_model_dir(tmp_path / "m")
    assert md.argmax_in_model and check_model_dir(tmp_path / "m") == []
    lm = LanguageModel(md, PortableBackend())
    seq = ids(10)
    expected = ReferenceModel(ckpt).forward(seq)
    got = [int(np.argmax(lm.prefill(seq[:1])))] + [int(np.argmax(lm.step(t))) for t in seq[1:]]
    assert got == [int(x) for x in expected.argmax(-1)]


def test_strict_fp16_mode_runs_and_stays_close(tiny_model_dirs):
    seq = ids(16)
    expected = ReferenceModel(tiny_chat_checkpoint("llama")).forward(seq)[-1]
    got = lm_for(tiny_model_dirs["llama"], strict_fp16=True).prefill(seq)
    assert np.abs(got - expected).max() < 0.1
    assert int(np.argmax(got)) == int(np.argmax(expected))


@pytest.mark.parametrize(
    "scaling",
    [
        {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
        {"rope_type": "linear", "factor": 2.0},
    ],
)
def test_rope_scaling_converts_like_the_reference(tmp_path, scaling):
    from anechat.arch.rope import inv_freq

    ckpt = tiny_chat_checkpoint("llama", num_layers=1, rope_scaling=scaling)
    plain = tiny_chat_checkpoint("llama", num_layers=1)
    assert not np.allclose(inv_freq(ckpt.config), inv_freq(plain.config))
    convert(ckpt, tmp_path / "m", ConvertOptions(context=32, batch=4))
    seq = ids(20)
    np.testing.assert_allclose(lm_for(tmp_path / "m").prefill(seq), ReferenceModel(ckpt).forward(seq)[-1], atol=FP16_TOL)


def test_llama3_inv_freq_matches_the_published_formula():
    """HF's _compute_llama3_parameters, restated: long wavelengths divided by factor, short ones kept,
    a smooth blend between."""
    import math

    from tiny import tiny_config

    from anechat.arch.rope import inv_freq

    scaling = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    cfg = tiny_config("llama", head_dim=64, num_heads=2, num_kv_heads=1, hidden_size=128, rope_theta=500000.0, rope_scaling=scaling)
    base = 1.0 / (500000.0 ** (np.arange(0, 64, 2) / 64))
    got = inv_freq(cfg)
    for f, g in zip(base, got):
        wavelen = 2 * math.pi / f
        if wavelen < 8192 / 4:
            assert g == pytest.approx(f)
        elif wavelen > 8192 / 1:
            assert g == pytest.approx(f / 32)
        else:
            smooth = (8192 / wavelen - 1) / (4 - 1)
            assert g == pytest.approx((1 - smooth) * f / 32 + smooth * f)
