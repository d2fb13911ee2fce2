"""Monolithic models (ANEMLL 0.3.5 layout): one program from input_ids to logits, functions `infer` and
`prefill`. Converted from the same tiny checkpoints as their chunked twins, they must decode the same tokens."""

import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml
from tiny import smollm2_gguf_path, tiny_chat_checkpoint, write_gguf

from anechat.arch.reference import ReferenceModel
from anechat.convert.build import ConvertOptions, convert
from anechat.engine.generate import DoneEvent, Engine
from anechat.engine.lm import LanguageModel, MonolithicForward
from anechat.engine.sampling import SamplingParams
from anechat.engine.tokenizer import ChatTokenizer
from anechat.errors import ModelLoadError, UsageError
from anechat.runtime.modeldir import check_model_dir, open_model_dir
from anechat.runtime.portable import PortableBackend

FP16_TOL = 0.02
OPTIONS = dict(context=64, batch=8)


def ids(n, seed=1, vocab=320):
    return [int(x) for x in np.random.default_rng(seed).integers(3, vocab, size=n)]


def lm_for(path):
    return LanguageModel(open_model_dir(path), PortableBackend())


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "anechat", *map(str, args)], capture_output=True, text=True, timeout=300, **kw)


def greedy(lm, prompt, n):
    tokens = [int(np.argmax(lm.prefill(prompt)))]
    for _ in range(n - 1):
        tokens.append(int(np.argmax(lm.step(tokens[-1]))))
    return tokens


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """{arch: (chunked dir, monolithic dir)} converted from one checkpoint each."""
    root = tmp_path_factory.mktemp("twins")
    out = {}
    for arch in ("llama", "qwen3"):
        ckpt = tiny_chat_checkpoint(arch)
        convert(ckpt, root / f"{arch}-chunked", ConvertOptions(**OPTIONS))
        convert(ckpt, root / f"{arch}-mono", ConvertOptions(**OPTIONS, monolithic=True))
        out[arch] = (root / f"{arch}-chunked", root / f"{arch}-mono")
    return out


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_same_greedy_tokens_as_the_chunked_twin(twins, arch):
    chunked, mono = (lm_for(p) for p in twins[arch])
    assert isinstance(mono.forward, MonolithicForward)
    prompt = ids(21)  # two full prefill blocks and a padded one
    np.testing.assert_allclose(mono.prefill(prompt), chunked.prefill(prompt), atol=1e-4)
    chunked.reset(), mono.reset()
    expected = greedy(chunked, prompt, 32)
    assert greedy(mono, prompt, 32) == expected
    assert mono.cached_ids == chunked.cached_ids == prompt + expected[:-1]


def test_prefill_paths_match_the_reference(twins):
    """Short prompts (all `infer`), a block plus one token, and a block that slides back at the context end."""
    ref = ReferenceModel(tiny_chat_checkpoint("qwen3"))
    mono = lm_for(twins["qwen3"][1])
    for prompt in (ids(1), ids(2, seed=2), ids(9, seed=3), ids(16, seed=4)):
        mono.reset(), ref.reset()
        np.testing.assert_allclose(mono.prefill(prompt), ref.forward(prompt)[-1], atol=FP16_TOL)
    seq = ids(62, seed=5)
    mono.reset(), ref.reset()
    mono.prefill(seq[:50])
    np.testing.assert_allclose(mono.prefill(seq[50:]), ref.forward(seq)[-1], atol=FP16_TOL)
    with pytest.raises(ValueError, match="exceed the context"):
        mono.prefill(ids(5))


def test_one_predict_per_token_and_per_block(twins):
    mono = lm_for(twins["llama"][1])
    calls = []
    for part in mono.parts:
        part.predict = (lambda f, fn: lambda *a, **k: calls.append(fn) or f(*a, **k))(part.predict, part.function_name)
    mono.prefill(ids(17))  # 16 tokens in two prefill blocks, the last through infer
    assert calls == ["prefill", "prefill", "infer"]
    calls.clear()
    mono.step(5)
    assert calls == ["infer"]


def test_prefix_reuse_across_turns(twins):
    lm = lm_for(twins["llama"][1])
    first = ids(20)
    lm.sync(first)
    second = first + ids(7, seed=9)
    reused, logits = lm.sync(second)
    assert reused == 20
    np.testing.assert_allclose(logits, lm_for(twins["llama"][1]).prefill(second), atol=1e-4)
    reused, _ = lm.sync(first[:10] + [5, 6])
    assert reused == 10

    path = twins["llama"][1]
    engine = Engine(lm_for(path), ChatTokenizer.from_dir(path), SamplingParams(temperature=0.0, max_tokens=4))
    msgs = [{"role": "user", "content": "Paris"}]
    done = [e for e in engine.generate(msgs) if isinstance(e, DoneEvent)][0]
    turn2 = msgs + [{"role": "assistant", "content": done.text}, {"role": "user", "content": "the"}]
    stats = [e for e in engine.generate(turn2) if isinstance(e, DoneEvent)][0].stats
    assert stats.reused_tokens >= done.stats.prompt_tokens
    assert stats.prefill_tokens == stats.prompt_tokens - stats.reused_tokens


def test_layout_meta_and_shared_weights(twins):
    path = twins["qwen3"][1]
    assert check_model_dir(path) == []
    meta = yaml.safe_load((path / "meta.yaml").read_text())
    info, params = meta["model_info"], meta["model_info"]["parameters"]
    assert info["model_type"] == "monolithic" and info["version"] == "0.3.5"
    assert params["monolithic_model"] == "qwen_monolithic_full.mlpackage" and params["lut_bits"] == "none"
    assert params["functions"] == ["infer", "prefill"] and "num_chunks" not in params
    md = open_model_dir(path)
    assert md.monolithic == path / "qwen_monolithic_full.mlpackage" and md.parts() == [("monolithic", md.monolithic)]
    assert md.embeddings is None and md.chunks == [] and md.lm_head is None
    assert sorted(p.name for p in path.iterdir() if p.is_dir()) == ["qwen_monolithic_full.mlpackage"]
    weights = list(md.monolithic.rglob("weight.bin"))
    assert len(weights) == 1
    ckpt = tiny_chat_checkpoint("qwen3")
    params_total = sum(ckpt.tensor(n).size for n in ckpt.names())
    # fp16 once for both functions, plus rope tables and small constants
    assert weights[0].stat().st_size < params_total * 2 * 1.3


def test_verify_and_inspect(twins, _isolated_home):
    path = twins["llama"][1]
    assert cli("models", "add", path, "--name", "mono").returncode == 0
    r = cli("models", "verify", "mono")
    assert r.returncode == 0 and r.stdout.strip() == "mono: ok", r.stdout + r.stderr
    r = cli("inspect", path, "--json")
    assert r.returncode == 0, r.stderr
    info = r.stdout and __import__("json").loads(r.stdout)
    assert info["model_type"] == "monolithic" and list(info["parts"]) == ["monolithic"]
    fns = info["parts"]["monolithic"]["functions"]
    assert set(fns) == {"infer", "prefill"}
    assert fns["prefill"]["inputs"]["input_ids"]["shape"] == [1, 8]
    assert set(fns["infer"]["outputs"]) == {"logits1"}
    text = cli("inspect", path).stdout
    assert "monolithic (one program)" in text and "function prefill" in text


def test_argmax_and_per_part_luts(tmp_path):
    ckpt = tiny_chat_checkpoint("llama", num_layers=1)
    convert(ckpt, tmp_path / "a", ConvertOptions(context=32, batch=4, argmax=True, monolithic=True))
    assert check_model_dir(tmp_path / "a") == []
    seq = ids(10)
    expected = [int(x) for x in ReferenceModel(ckpt).forward(seq).argmax(-1)]
    lm = lm_for(tmp_path / "a")
    assert [int(np.argmax(lm.prefill(seq[:1])))] + [int(np.argmax(lm.step(t))) for t in seq[1:]] == expected

    convert(ckpt, tmp_path / "q", ConvertOptions(context=32, batch=4, lut_ffn=4, lut_lmhead=8, int8=True, monolithic=True))
    md = open_model_dir(tmp_path / "q")
    assert md.monolithic.name == "llama_monolithic_full_lut4.mlpackage" and check_model_dir(tmp_path / "q") == []
    ops = [op.type for op in lm_for(tmp_path / "q").forward.infer_part.plan.function.ops]
    # four LUT matrices in the layer, one for the lm_head; the embedding table (no LUT asked) becomes int8
    assert ops.count("constexpr_lut_to_dense") == 5
    assert ops.count("constexpr_blockwise_shift_scale") == 1


def test_monolithic_with_chunks_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="--chunks"):
        convert(tiny_chat_checkpoint(), tmp_path / "m", ConvertOptions(**OPTIONS, chunks=2, monolithic=True))
    write_gguf(tmp_path / "t.gguf")
    r = cli("convert", tmp_path / "t.gguf", "-o", tmp_path / "out", "--monolithic", "--chunks", "2")
    assert r.returncode == 2 and r.stderr.startswith("anechat: ") and len(r.stderr.splitlines()) == 1
    assert "--monolithic" in r.stderr and not (tmp_path / "out").exists()


def test_cli_convert_monolithic(tmp_path):
    write_gguf(tmp_path / "t.gguf")
    r = cli("convert", tmp_path / "t.gguf", "-o", tmp_path / "out", "--monolithic", "--context", "32", "--batch", "4", "--verify")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "llama_monolithic_full.mlpackage" in r.stdout and check_model_dir(tmp_path / "out") == []


def test_missing_part_is_a_clean_load_error(twins, tmp_path):
    path = tmp_path / "m"
    shutil.copytree(twins["llama"][1], path)
    shutil.rmtree(path / "llama_monolithic_full.mlpackage")
    with pytest.raises(ModelLoadError, match="missing monolithic part 'llama_monolithic_full.mlpackage'"):
        open_model_dir(path)
    r = cli("inspect", path)
    assert r.returncode == 4 and r.stderr.startswith("anechat: ") and len(r.stderr.splitlines()) == 1
    r = cli("--model-dir", path, "--max-tokens", "2", input="hi")
    assert r.returncode == 4 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    # ANEMLL's default name when meta.yaml names no part
    meta = yaml.safe_load((path / "meta.yaml").read_text())
    del meta["model_info"]["parameters"]["monolithic_model"]
    meta["model_info"]["parameters"]["lut_bits"] = 4
    (path / "meta.yaml").write_text(yaml.safe_dump(meta))
    with pytest.raises(ModelLoadError, match="llama_monolithic_full_lut4"):
        open_model_dir(path)
    meta["model_info"]["model_type"] = "hybrid"
    (path / "meta.yaml").write_text(yaml.safe_dump(meta))
    with pytest.raises(ModelLoadError, match="model_type 'hybrid' is not supported"):
        open_model_dir(path)


def test_pull_an_anemll_monolithic_model(twins, tmp_path, _isolated_home):
    import os

    from hubserver import Hub
    from test_models_hub import zipped_parts

    hub = Hub({"me/tiny-mono": zipped_parts(twins["qwen3"][1])})
    try:
        registry = _isolated_home / "config" / "models.yaml"
        registry.parent.mkdir(parents=True, exist_ok=True)
        registry.write_text("models:\n  tiny-mono:\n    format: anemll-monolithic\n    sources: [{hf: {repo: me/tiny-mono}}]\n")
        env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
        env.update(ANECHAT_HOME=str(_isolated_home), HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf-home"), HF_HUB_DISABLE_TELEMETRY="1")
        r = cli("models", "pull", "tiny-mono", env=env)
        assert r.returncode == 0, r.stderr
        installed = _isolated_home / "data" / "models" / "tiny-mono"
        assert open_model_dir(installed).monolithic is not None and not list(installed.glob("*.zip"))
        assert cli("models", "verify", "tiny-mono", env=env).stdout.strip() == "tiny-mono: ok"
        r = cli("-m", "tiny-mono", "--max-tokens", "2", input="hi", env=env)
        assert r.returncode == 0, r.stderr
    finally:
        hub.close()


def test_shipped_registry_keeps_the_anemll_monolithic_entry():
    from anechat.models.registry import load_registry

    entry = load_registry().get("anemll-qwen2.5-0.5b-mono")
    assert entry.format == "anemll-monolithic"
    assert entry.sources[0]["hf"]["repo"] == "anemll/anemll-Qwen-Qwen2.5-0.5B-Instruct-ctx2048-monolithic_0.3.5"


@pytest.mark.slow
@pytest.mark.smollm2_long  # the tiny llama and qwen3 twins above cover monolithic = chunked
def test_smollm2_monolithic_matches_chunked(tmp_path, smollm2_converted):
    """The monolithic twin of the session's chunked SmolLM2 (same default options) decodes the same tokens."""
    convert(smollm2_gguf_path(), tmp_path / "m", ConvertOptions(monolithic=True))
    assert check_model_dir(tmp_path / "m") == []
    tok = ChatTokenizer.from_dir(smollm2_converted)
    prompt = tok.encode_chat([{"role": "user", "content": "What is the capital of France?"}])
    assert greedy(lm_for(tmp_path / "m"), prompt, 16) == greedy(lm_for(smollm2_converted), prompt, 16)
