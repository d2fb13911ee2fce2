"""Qwen 3.5 (Gated DeltaNet hybrid) against transformers: tests/data/qwen35-tiny is a random-weight model in the
layout Qwen publishes (nested text_config, model.language_model.*, a vision tower to skip), made by
../shared/reference/qwen35_tiny_make.py with transformers 5.23; qwen35_tiny_reference.npz holds transformers' fp32
logits over 150 ids and a greedy continuation. The converted chunks run in the portable runtime."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from anechat.arch.reference import ReferenceModel
from anechat.convert.build import ConvertOptions, convert
from anechat.convert.checkpoint import load_checkpoint
from anechat.engine.lm import SNAPSHOT_EVERY, LanguageModel
from anechat.runtime.modeldir import open_model_dir
from anechat.runtime.portable import PortableBackend

DATA = Path(__file__).parent / "data"
MODEL = DATA / "qwen35-tiny"
REF = dict(np.load(DATA / "qwen35_tiny_reference.npz"))
IDS = [int(t) for t in REF["ids"]]
LOGITS = REF["logits"]
STD = float(LOGITS.std())
MARGIN = np.sort(LOGITS, -1)[:, -1] - np.sort(LOGITS, -1)[:, -2]
TOL = 0.05 * STD  # the bound on |logit error|


@pytest.fixture(scope="module")
def ckpt():
    return load_checkpoint(MODEL)


def lm_for(path, **kw) -> LanguageModel:
    return LanguageModel(open_model_dir(path), PortableBackend(**kw))


def decode(lm: LanguageModel, ids) -> np.ndarray:
    return np.stack([lm.step(t) for t in ids])


def greedy(lm: LanguageModel, prompt, n: int) -> list[int]:
    out = [int(np.argmax(lm.prefill([int(t) for t in prompt])))]
    while len(out) < n:
        out.append(int(np.argmax(lm.step(out[-1]))))
    return out


def assert_matches_reference(logits: np.ndarray, rows: slice = slice(None)) -> None:
    ref = LOGITS[rows]
    assert np.abs(logits - ref).max() <= TOL
    assert (logits.argmax(-1) == ref.argmax(-1)).all()


# -- checkpoint and numpy reference ----------------------------------------------------------------------------

def test_the_published_layout_reads_as_a_text_model(ckpt):
    c = ckpt.config
    assert c.architecture == "qwen3_5" and c.tie_word_embeddings and c.partial_rotary_factor == 0.25
    assert c.layer_types == ["linear_attention"] * 3 + ["full_attention"] + ["linear_attention"] * 3 + ["full_attention"]
    assert (c.linear_num_key_heads, c.linear_num_value_heads, c.linear_key_head_dim, c.linear_conv_kernel) == (2, 4, 32, 4)
    assert not any("visual" in n or n.startswith("mtp.") for n in ckpt.names())
    assert ckpt.has("model.layers.0.linear_attn.A_log") and ckpt.has("model.layers.3.self_attn.q_norm.weight")


def test_the_text_only_causal_lm_layout_reads_the_same(tmp_path, ckpt):
    """Qwen3_5ForCausalLM: a flat qwen3_5_text config, weights under model.* (an MTP head beside them)."""
    cfg = json.loads((MODEL / "config.json").read_text())
    flat = {**cfg["text_config"], "model_type": "qwen3_5_text", "architectures": ["Qwen3_5ForCausalLM"]}
    (tmp_path / "config.json").write_text(json.dumps(flat))
    tensors = _raw_tensors(MODEL / "model.safetensors")
    text = {n.replace("model.language_model.", "model."): t for n, t in tensors.items() if n.startswith("model.language_model.")}
    text["mtp.fc.weight"] = ("BF16", [2, 2], bytes(8))
    _write_raw(tmp_path / "model.safetensors", text)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / f).write_text((MODEL / f).read_text())
    other = load_checkpoint(tmp_path)
    assert other.config.to_dict() == ckpt.config.to_dict()
    assert sorted(other.names()) == sorted(ckpt.names())
    np.testing.assert_array_equal(other.tensor("model.layers.0.linear_attn.in_proj_qkv.weight"),
                                  ckpt.tensor("model.layers.0.linear_attn.in_proj_qkv.weight"))


def _raw_tensors(path: Path) -> dict:
    """name → (dtype, shape, bytes) of a safetensors file, bf16 included (numpy has no bfloat16)."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    body = raw[8 + n :]
    return {k: (v["dtype"], v["shape"], body[v["data_offsets"][0] : v["data_offsets"][1]]) for k, v in header.items() if k != "__metadata__"}


def _write_raw(path: Path, tensors: dict) -> None:
    header, offset = {}, 0
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    path.write_bytes(len(blob).to_bytes(8, "little") + blob + b"".join(t[2] for t in tensors.values()))


def test_the_numpy_reference_agrees_with_transformers(ckpt):
    ref = ReferenceModel(ckpt)
    assert_matches_reference(ref.forward(IDS))
    ref.reset()  # a prefix then one token at a time: the recurrent states carry over
    assert_matches_reference(np.concatenate([ref.forward(IDS[:70]), np.stack([ref.forward([t])[0] for t in IDS[70:]])]))
    ref.reset()
    assert ref.greedy(REF["greedy_prompt"], len(REF["greedy_ids"])) == [int(t) for t in REF["greedy_ids"]]


# -- converted -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory, ckpt):
    path = tmp_path_factory.mktemp("qwen35") / "m"
    convert(ckpt, path, ConvertOptions(context=150, batch=8))
    return path


def test_recurrent_states_sit_beside_the_kv_cache(qwen_dir):
    params = yaml.safe_load((qwen_dir / "meta.yaml").read_text())["model_info"]["parameters"]
    assert params["recurrent_states"] == ["model.model.conv_state", "model.model.delta_state"]
    lm = lm_for(qwen_dir)
    shapes = {n.replace("_", "."): s.shape for n, s in lm.infer[0].states.items()}
    # 2 full layers' keys and values; 6 DeltaNet layers: K−1 = 3 conv columns (padded to 32: the ANE refuses a
    # state whose last axis is not a multiple of 32) of 2·4·32 + 4·32 channels, 4 × 32 × 32
    assert shapes == {"model.model.kv.cache.0": (4, 2, 150, 64), "model.model.conv.state": (6, 384, 1, 32),
                      "model.model.delta.state": (6, 4, 32, 32)}
    assert lm.recurrent == [n for n in lm.infer[0].states if "kv_cache" not in n.replace(".", "_")]


def test_the_ane_layout_every_state_aligned_and_no_activation_gathers(qwen_dir):
    """coremltools #2631: a state whose last axis is not a multiple of 32 fails on the ANE. The prefill keeps the
    conv window at the last real token by a 0/1 matmul: the only gathers left read the rope tables (constants)."""
    from qwen35_real import chunk_facts

    (chunk,) = qwen_dir.glob("*_FFN_PF_chunk_*.mlpackage")
    facts = chunk_facts(chunk)
    assert set(facts) == {"infer", "prefill"}
    for fn in facts.values():
        assert all(shape[-1] % 32 == 0 for shape in fn["states"].values()), fn["states"]
        assert fn["activation_gathers"] == []


def test_decoding_token_by_token_matches_transformers(qwen_dir):
    assert_matches_reference(decode(lm_for(qwen_dir), IDS))


def test_prefill_then_decode_equals_decode_only(qwen_dir):
    """Blocks of 8 with a padded last one (45 = 5·8 + 5), then single steps; near the context's end (150) a block
    cannot fit and the tail runs token by token."""
    stepped = decode(lm_for(qwen_dir), IDS)
    lm = lm_for(qwen_dir)
    after = np.concatenate([lm.prefill(IDS[:45])[None], decode(lm, IDS[45:])])
    np.testing.assert_allclose(after, stepped[44:], atol=0.01 * STD)
    assert (after.argmax(-1) == stepped[44:].argmax(-1)).all()
    lm.reset()
    for cut in (5, 16, 150):  # a padded block, a padded one and a full one, then blocks up to 144 and a tail of steps
        logits = lm.prefill(IDS[len(lm.cached_ids):cut])
        assert_matches_reference(logits[None], slice(cut - 1, cut))
    assert lm.cached_ids == IDS


def test_greedy_continuation_is_transformers(qwen_dir):
    assert greedy(lm_for(qwen_dir), REF["greedy_prompt"], len(REF["greedy_ids"])) == [int(t) for t in REF["greedy_ids"]]


FP16_CLEAR_MARGIN = 1.5  # logits; see assert_strict_fp16_close


def assert_strict_fp16_close(logits: np.ndarray) -> None:
    """Every op rounded to fp16 as on the ANE: the logits stay within 0.3 x their standard deviation of
    transformers' fp32 ones, and the top token is transformers' wherever its lead over the runner-up is clearly
    above fp16 noise.

    Why these bounds, measured on this model (the tokens above):
    - the largest |error| is 0.18 x std (2.2 logits, on large logits: the error is relative); 0.3 leaves 1.6x.
    - what flips a top token is the error of its lead over a near competitor: over every competitor within 3
      logits of the top it is at most 0.68 logits (99th percentile 0.47). FP16_CLEAR_MARGIN = 1.5 logits is 2.2x
      that, and covers 104 of the 150 tokens.
    - the overall top-1 rate is not asserted: the reference has 25 leads under 0.68 logits, and which of them
      flip depends on the order sums run in (146 of 150 agree on three layouts here and on the CI machine,
      147+ on earlier builds). transformers computing in float16 flips 1 of 150; we round every op, not only
      the storage, so a few near-ties more is the expected cost, not a defect.
    """
    assert np.abs(logits - LOGITS).max() <= 0.3 * STD
    clear = MARGIN > FP16_CLEAR_MARGIN
    assert clear.sum() >= 100
    np.testing.assert_array_equal(logits[clear].argmax(-1), LOGITS[clear].argmax(-1))


def test_strict_fp16_keeps_the_top_token(qwen_dir):
    assert_strict_fp16_close(decode(lm_for(qwen_dir, strict_fp16=True), IDS))


def test_a_fork_keeps_its_own_recurrent_state(qwen_dir):
    lm = lm_for(qwen_dir)
    lm.prefill(IDS[:30])
    twin = lm.fork()
    assert twin.snapshots == [] and twin.cached_ids == []
    assert_matches_reference(twin.prefill(IDS[:20])[None], slice(19, 20))
    assert_matches_reference(lm.prefill(IDS[30:40])[None], slice(39, 40))


# -- the engine: turns, /retry, /undo ----------------------------------------------------------------------------

def _engine(path):
    from anechat.engine.generate import Engine
    from anechat.engine.sampling import SamplingParams
    from anechat.engine.tokenizer import ChatTokenizer

    return Engine(lm_for(path), ChatTokenizer.from_dir(path), SamplingParams(temperature=0.0, max_tokens=12))


def _answer(engine, messages) -> tuple[list[int], object]:
    from anechat.engine.generate import DoneEvent

    ids, done = [], None
    for event in engine.generate(messages):
        if isinstance(event, DoneEvent):
            done = event
        else:
            ids.append(event.token_id)
    return ids, done


def test_a_chat_with_retry_and_undo_gives_what_fresh_runs_give(qwen_dir):
    """Three turns, then /retry of the last and /undo + a new turn: every answer is the one a model that never
    saw the conversation gives, and an appended turn prefills only its new tokens."""
    chat = _engine(qwen_dir)

    def fresh(messages):
        return _answer(_engine(qwen_dir), messages)[0]

    history: list[dict] = []
    for question in ["The engine", "Paris is", "converted models"]:
        history.append({"role": "user", "content": question})
        cached = list(chat.lm.cached_ids)
        answer, done = _answer(chat, history)
        assert answer == fresh(history)
        # Reuse reaches where the re-rendered history departs from the cached tokens (the random model's answers
        # do not all re-tokenize to what it generated), give or take one snapshot interval.
        prompt = chat.lm.cached_ids[: done.stats.prompt_tokens]
        common = next((i for i, (a, b) in enumerate(zip(cached, prompt)) if a != b), min(len(cached), len(prompt)))
        assert common - SNAPSHOT_EVERY <= done.stats.reused_tokens <= common
        history.append({"role": "assistant", "content": done.text})
    # /retry: the last answer dropped and asked again
    retried, _ = _answer(chat, history[:-1])
    assert retried == fresh(history[:-1])
    # /undo the last exchange, then a different question
    history = history[:-2] + [{"role": "user", "content": "The river"}]
    answer, done = _answer(chat, history)
    assert answer == fresh(history)
    assert done.stats.reused_tokens > 0  # restarted from the snapshot at the end of turn 2's prompt, not from zero


# -- other layouts ------------------------------------------------------------------------------------------

def _two_layers(ckpt):
    """Layers 2 (DeltaNet) and 3 (full attention) of the tiny model as a model of their own: the layouts' plumbing
    at a fraction of the conversion time, checked against the numpy reference (itself checked above)."""
    from dataclasses import replace

    from anechat.arch.base import Checkpoint

    config = replace(ckpt.config, num_layers=2, layer_types=ckpt.config.layer_types[2:4])
    loaders = {}
    for name, load in ckpt.loaders.items():
        if name.startswith("model.layers."):
            i, rest = name[len("model.layers."):].split(".", 1)
            if int(i) in (2, 3):
                loaders[f"model.layers.{int(i) - 2}.{rest}"] = load
        else:
            loaders[name] = load
    return Checkpoint(config=config, source=ckpt.source, loaders=loaders, tokenizer_files=ckpt.tokenizer_files)


@pytest.mark.parametrize("layout", [{"chunks": 2}, {"monolithic": True}], ids=["chunks2", "monolithic"])
def test_two_chunks_and_monolithic_run_the_states_they_share(tmp_path, ckpt, layout):
    small = _two_layers(ckpt)
    path = tmp_path / "m"
    convert(small, path, ConvertOptions(context=64, batch=8, **layout))
    expected = ReferenceModel(small).forward(IDS[:50])
    tol = 0.05 * float(expected.std())
    lm = lm_for(path)
    stepped = decode(lm, IDS[:50])
    np.testing.assert_allclose(stepped, expected, atol=tol)
    lm.reset()
    after = np.concatenate([lm.prefill(IDS[:21])[None], decode(lm, IDS[21:50])])
    np.testing.assert_allclose(after, expected[20:], atol=tol)
    assert (after.argmax(-1) == expected[20:].argmax(-1)).all()


def test_narrow_prefill_blocks_carry_the_recurrent_states(tmp_path, ckpt):
    """Narrow blocks (padding repeats the last real position, so the states stop at the last real token) give
    the reference's logits; near the context end no block slides back over a recurrent state: steps instead."""
    from anechat.engine.lm import Costs

    small = _two_layers(ckpt)
    path = tmp_path / "m"
    convert(small, path, ConvertOptions(context=64, batch=8, narrow=4))
    expected = ReferenceModel(small).forward(IDS[:64])
    tol = 0.05 * float(expected.std())
    lm = lm_for(path)
    widths: list[tuple[int, int]] = []
    run = lm.forward.run

    def counted(tokens, inputs, *a, prefill, **k):
        widths.append((tokens.shape[1] if prefill else 1, int(inputs["current_pos"][0])))
        return run(tokens, inputs, *a, prefill=prefill, **k)

    lm.forward.run = counted
    for cut in (6, 13, 30, 58, 64):
        lm.costs = Costs(step=1.0, block=6.0, narrow=0.5)
        _, logits = lm.sync(IDS[:cut])
        np.testing.assert_allclose(logits, expected[cut - 1], atol=tol)
    assert (4, 0) in widths and (4, 6) in widths
    assert all(pos + width <= 64 for width, pos in widths) and (4, 58) in widths and (1, 62) in widths


# -- the acceptance: --context 256 --batch 64, three layouts (5–8 min: python3 -m pytest -m qwen35) ---

@pytest.mark.qwen35
@pytest.mark.parametrize("layout", [{}, {"chunks": 2}, {"monolithic": True}], ids=["chunked", "chunks2", "monolithic"])
def test_acceptance_context_256_batch_64(tmp_path, ckpt, layout):
    path = tmp_path / "m"
    convert(ckpt, path, ConvertOptions(context=256, batch=64, **layout))
    lm = lm_for(path)
    assert_matches_reference(decode(lm, IDS))
    for cut in (64, 100, 150):
        lm.reset()
        assert_matches_reference(lm.prefill(IDS[:cut])[None], slice(cut - 1, cut))
    lm.reset()
    lm.prefill(IDS[:100])
    assert_matches_reference(decode(lm, IDS[100:]), slice(100, None))
    assert greedy(lm_for(path), REF["greedy_prompt"], len(REF["greedy_ids"])) == [int(t) for t in REF["greedy_ids"]]
    assert_strict_fp16_close(decode(lm_for(path, strict_fp16=True), IDS))


def test_inspect_marks_the_recurrent_states(qwen_dir):
    from anechat.inspect import format_report, inspect_model_dir

    info = inspect_model_dir(qwen_dir)
    assert info["recurrent_states"] == ["model.model.conv_state", "model.model.delta_state"]
    report = format_report(info)
    assert "recurrent states (one summary of every token" in report
    marked = [line for line in report.splitlines() if line.endswith("(recurrent)")]
    assert len(marked) == 4 and all("conv_state" in m or "delta_state" in m for m in marked)  # infer + prefill


def test_lut_palettizes_the_deltanet_and_gate_projections(tmp_path, ckpt):
    small = _two_layers(ckpt)
    convert(small, tmp_path / "m", ConvertOptions(context=64, batch=4, lut_ffn="8,4"))
    program = (tmp_path / "m").glob("*chunk_01of01.mlpackage")
    from anechat.inspect import describe_part

    fn = describe_part(next(program))["functions"]["infer"]
    assert fn["compressed_weights"]  # the fused DeltaNet input, its output, q/k/v, gate, o, gate/up, down
    expected = ReferenceModel(small).forward(IDS[:40])
    assert (decode(lm_for(tmp_path / "m"), IDS[:40]).argmax(-1) == expected.argmax(-1)).all()


def test_core_ml_backend_snapshots_through_mlstate(tmp_path, ckpt, monkeypatch):
    """Through the contract fake of coremltools: the recurrent states are read and written with MLState's
    read_state / write_state, and a rewound history answers as the portable runtime does."""
    from coreml_contract import FakeCoreML

    from anechat.engine.loader import load_model

    monkeypatch.setenv("ANECHAT_HOME", str(tmp_path / "home"))
    FakeCoreML().install(monkeypatch)
    convert(_two_layers(ckpt), tmp_path / "m", ConvertOptions(context=64, batch=4))
    coreml = load_model(tmp_path / "m", backend="coreml").lm
    portable = load_model(tmp_path / "m", backend="portable").lm
    for history in (IDS[:20], IDS[:30], IDS[:12] + IDS[40:50], IDS[:30]):  # append, rewind, rewind to a snapshot
        _, a = coreml.sync(history)
        _, b = portable.sync(history)
        np.testing.assert_allclose(a, b, atol=1e-3 * float(np.abs(b).max()))
        fresh = lm_for(tmp_path / "m")
        np.testing.assert_allclose(b, fresh.prefill(history), atol=0.01 * float(np.abs(b).max()))
