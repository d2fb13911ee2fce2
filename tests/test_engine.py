"""The generation engine on tiny converted models, and its text layer."""

import asyncio
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anechat.engine.context import PromptTooLong, fit_messages, shift_tokens
from anechat.engine.generate import DoneEvent, Engine, TokenEvent
from anechat.engine.lm import LanguageModel
from anechat.engine.sampling import Sampler, SamplingParams
from anechat.engine.stops import StopMatcher
from anechat.engine.template import TemplateError, render_chat_template
from anechat.engine.tokenizer import ChatTokenizer
from anechat.errors import UsageError
from anechat.runtime.modeldir import open_model_dir
from anechat.runtime.portable import PortableBackend


@pytest.fixture
def engine(tiny_model_dirs):
    path = tiny_model_dirs["llama"]
    lm = LanguageModel(open_model_dir(path), PortableBackend())
    return Engine(lm, ChatTokenizer.from_dir(path), SamplingParams(temperature=0.0, max_tokens=12))


def text_of(events):
    return "".join(e.text for e in events if isinstance(e, TokenEvent))


def done_of(events):
    return [e for e in events if isinstance(e, DoneEvent)][0]


def test_generation_stats_and_prefix_reuse(engine):
    msgs = [{"role": "system", "content": "Be"}, {"role": "user", "content": "Paris"}]
    events = list(engine.generate(msgs, SamplingParams(temperature=0, max_tokens=4)))
    done = done_of(events)
    assert done.stats.prompt_tokens > 0 and done.stats.reused_tokens == 0
    assert done.stats.decode_tokens > 0 and done.text == text_of(events)
    # The first token's event carries the TTFT the stats give at the end (a UI shows one figure throughout).
    tokens = [e for e in events if e is not done]
    assert tokens[0].ttft_s == done.stats.ttft_s > 0 and all(e.ttft_s is None for e in tokens[1:])
    turn2 = msgs + [{"role": "assistant", "content": done.text}, {"role": "user", "content": "the"}]
    stats2 = done_of(list(engine.generate(turn2, SamplingParams(temperature=0, max_tokens=4)))).stats
    assert stats2.dropped_messages == 0
    # the second turn prefills only its new tokens, not the history
    assert stats2.reused_tokens >= done.stats.prompt_tokens
    assert stats2.prefill_tokens == stats2.prompt_tokens - stats2.reused_tokens
    assert stats2.prefill_tokens <= stats2.prompt_tokens - done.stats.prompt_tokens


def test_greedy_is_deterministic_and_seeds_reproduce(engine):
    msgs = [{"role": "user", "content": "The quick brown fox"}]
    assert text_of(engine.generate(msgs)) == text_of(engine.generate(msgs))
    hot = SamplingParams(temperature=1.5, seed=7, max_tokens=12)
    a, b = text_of(engine.generate(msgs, hot)), text_of(engine.generate(msgs, hot))
    assert a == b


def test_context_shift_keeps_generating(engine):
    params = SamplingParams(temperature=0.9, seed=1, max_tokens=150)  # context is 64
    done = done_of(list(engine.generate([{"role": "user", "content": "tell"}], params)))
    if done.finish_reason == "length":
        assert done.stats.context_shifts >= 1 and done.stats.decode_tokens == 150
    assert len(engine.lm.cached_ids) <= engine.lm.context_length


def test_stop_strings(engine):
    free = text_of(engine.generate([{"role": "user", "content": "Paris"}], SamplingParams(temperature=0, max_tokens=12)))
    assert len(free) > 3
    stop = free[2:4]
    events = list(engine.generate([{"role": "user", "content": "Paris"}], stop=[stop]))
    assert stop not in text_of(events) and free.startswith(text_of(events))
    assert done_of(events).finish_reason == "stop"


def test_async_stream_batches_tokens_but_never_holds_back_the_end(engine):
    async def main():
        params = SamplingParams(temperature=0, max_tokens=8)
        return [e async for e in engine.chat([{"role": "user", "content": "go"}], params, coalesce_s=3600)]

    # Batches an hour apart: the first token comes at once, and the rest with the end, which is never
    # held back (if it were, this would wait out the hour and hit the timeout).
    events = asyncio.run(asyncio.wait_for(main(), timeout=120))
    assert isinstance(events[-1], DoneEvent) and len(events) > 2


def test_async_stream_cancel_within_a_token(engine):
    async def main(seed):
        ticks = 0
        got = []

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        t = asyncio.create_task(ticker())
        cancel = threading.Event()
        params = SamplingParams(temperature=1.0, seed=seed, max_tokens=40)
        async for event in engine.chat([{"role": "user", "content": "go"}], params, cancel=cancel, coalesce_s=0):
            got.append(event)
            if len(got) == 2:
                at_cancel.append(len(engine.lm.cached_ids))
                cancel.set()
        t.cancel()
        return got, ticks

    # The tiny model can finish its whole answer before the loop hands over the second event; such a
    # run tests nothing, so another seed is tried.
    for seed in range(3, 11):
        at_cancel = []
        got, ticks = asyncio.run(main(seed))
        done = got[-1]
        assert isinstance(done, DoneEvent)
        if done.finish_reason == "cancelled":
            break
    assert done.finish_reason == "cancelled"
    assert len(engine.lm.cached_ids) <= at_cancel[0] + 1  # at most the token in flight finished
    assert ticks > 0  # the loop kept running while the model worked
    # the state is consistent: the next turn reuses the prompt
    stats = done_of(list(engine.generate([{"role": "user", "content": "go"}]))).stats
    assert stats.reused_tokens == stats.prompt_tokens - 1


def test_fit_messages_drops_oldest_turns_keeps_system_and_last(tiny_model_dirs):
    tok = ChatTokenizer.from_dir(tiny_model_dirs["llama"])
    msgs = [{"role": "system", "content": "sys"}]
    for i in range(10):
        msgs += [{"role": "user", "content": f"question {i} about Paris"}, {"role": "assistant", "content": "answer " * 3}]
    msgs.append({"role": "user", "content": "last one"})
    ids, dropped = fit_messages(tok, msgs, context=64, max_tokens=8)
    text = tok.decode(ids)
    assert dropped > 0 and "sys" in text and "last one" in text and len(ids) + 8 <= 64
    with pytest.raises(PromptTooLong, match="context holds 64"):
        fit_messages(tok, [{"role": "user", "content": "Paris " * 100}], context=64, max_tokens=8)


def test_shift_tokens_keeps_head_and_recent_tail():
    out = shift_tokens(list(range(10)), list(range(100)), context=64)
    assert out[:10] == list(range(10)) and out[-32:] == list(range(68, 100))


# --- sampler -------------------------------------------------------------------------------------------------


def draws(params, logits, n=3000, history=()):
    s = Sampler(params)
    return np.array([s(logits, history) for _ in range(n)])


LOGITS = np.log(np.array([0.4, 0.3, 0.15, 0.1, 0.05], np.float64)).astype(np.float32)


def test_greedy_and_validation():
    assert Sampler(SamplingParams(temperature=0))(LOGITS) == 0
    with pytest.raises(UsageError, match="top_p"):
        SamplingParams(top_p=0).validate()
    with pytest.raises(UsageError, match="temperature"):
        SamplingParams(temperature=-1).validate()


def test_temperature_one_matches_softmax():
    freq = np.bincount(draws(SamplingParams(temperature=1.0, seed=0), LOGITS), minlength=5) / 3000
    np.testing.assert_allclose(freq, np.exp(LOGITS) / np.exp(LOGITS).sum(), atol=0.03)


def test_low_temperature_sharpens():
    freq = np.bincount(draws(SamplingParams(temperature=0.3, seed=0), LOGITS), minlength=5) / 3000
    assert freq[0] > 0.6


def test_top_k_top_p_min_p():
    assert set(draws(SamplingParams(temperature=1, top_k=2, seed=1), LOGITS)) <= {0, 1}
    assert set(draws(SamplingParams(temperature=1, top_p=0.6, seed=1), LOGITS)) <= {0, 1}
    assert set(draws(SamplingParams(temperature=1, min_p=0.3, seed=1), LOGITS)) <= {0, 1, 2}


def test_repeat_penalty_lowers_repeated_tokens():
    base = (draws(SamplingParams(temperature=1, seed=2), LOGITS) == 0).mean()
    pen = (draws(SamplingParams(temperature=1, seed=2, repeat_penalty=3.0), LOGITS, history=[0]) == 0).mean()
    assert pen < base - 0.1


def test_seed_reproduces():
    p = SamplingParams(temperature=1, seed=42)
    assert (draws(p, LOGITS, 50) == draws(p, LOGITS, 50)).all()


# --- text ---------------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=40))
def test_detokenizer_round_trips_any_text(tiny_model_dirs, text):
    tok = ChatTokenizer.from_dir(tiny_model_dirs["llama"])
    ids = tok.encode(text)
    d = tok.detokenizer()
    streamed = "".join(d.push(i) for i in ids) + d.flush()
    assert streamed == tok.decode(ids, skip_special_tokens=True)
    assert "\ufffd" not in streamed or "\ufffd" in text


def test_detokenizer_holds_back_split_characters(tiny_model_dirs):
    tok = ChatTokenizer.from_dir(tiny_model_dirs["llama"])
    ids = tok.encode(" 🙂 東京")
    d = tok.detokenizer()
    pieces = [d.push(i) for i in ids]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) + d.flush() == " 🙂 東京"


def test_stop_matcher_across_chunks():
    m = StopMatcher(["</end>"])
    out = []
    for chunk in ["Hello </", "en", "d> ignored"]:
        text, stopped = m.feed(chunk)
        out.append(text)
        if stopped:
            break
    assert "".join(out) == "Hello " and stopped
    m = StopMatcher(["STOP"])
    assert m.feed("ST") == ("", False) and m.feed("AY") == ("STAY", False)


def test_template_renders_and_sandbox_blocks_hostile_templates():
    msgs = [{"role": "user", "content": "hi"}]
    assert render_chat_template("{{ messages[0]['content'] }}!", msgs) == "hi!"
    hostile = [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__.os.system('id') }}",
        "{% for m in messages %}{{ m.__class__.__init__.__globals__ }}{% endfor %}",
        "{{ messages.append(1) }}",
    ]
    for t in hostile:
        with pytest.raises(TemplateError):
            render_chat_template(t, msgs)
    with pytest.raises(TemplateError, match="does not parse"):
        render_chat_template("{% for %}", msgs)
    with pytest.raises(TemplateError, match="only user"):
        render_chat_template("{{ raise_exception('only user') }}", msgs)


def test_thinking_toggle_reaches_the_template():
    t = "{% if enable_thinking is defined and not enable_thinking %}<think></think>{% endif %}{{ messages[0]['content'] }}"
    msgs = [{"role": "user", "content": "q"}]
    assert render_chat_template(t, msgs, enable_thinking=False) == "<think></think>q"
    assert render_chat_template(t, msgs, enable_thinking=True) == "q"


def test_no_ui_imports_in_engine():
    import subprocess
    import sys

    code = (
        "import sys, anechat.engine.generate, anechat.engine.lm, anechat.engine.loader, anechat.commands.chat, "
        "anechat.runtime.portable, anechat.convert.build\n"
        "print([m for m in sys.modules if m.split('.')[0] in ('textual', 'prompt_toolkit')])"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.strip().endswith("[]"), r.stderr


def test_detokenizer_keeps_spaces_with_sentencepiece_style_tokenizers():
    """Metaspace decoders drop the leading '▁' of a token decoded alone; streaming must not lose the space."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from anechat.engine.detok import IncrementalDetokenizer

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    text = "the quick brown fox jumps over the lazy dog and the capital of France is Paris " * 5
    tok.train_from_iterator([text], trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>"], show_progress=False))
    sentence = "the lazy fox is in Paris and the dog is quick"
    ids = tok.encode(sentence).ids
    assert "".join(tok.decode([i]) for i in ids) != sentence  # decoding token by token loses the spaces
    d = IncrementalDetokenizer(tok)
    streamed = "".join(d.push(i) for i in ids) + d.flush()
    assert streamed == tok.decode(ids) == sentence


def test_the_heap_is_frozen_only_while_a_generation_runs(engine):
    """Full garbage collections would walk the model and the UI while holding the GIL the decoder needs."""
    import gc

    from anechat.engine.heap import heap_frozen

    gc.unfreeze()
    events = engine.generate([{"role": "user", "content": "hi"}], SamplingParams(temperature=0.0, max_tokens=3))
    next(events)
    assert gc.get_freeze_count() > 0
    with heap_frozen():  # a second generation (another tab) overlapping the first keeps it frozen
        list(events)
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0
    events = engine.generate([{"role": "user", "content": "hi"}], SamplingParams(temperature=0.0, max_tokens=3))
    next(events)
    events.close()  # a cancelled consumer unfreezes too
    assert gc.get_freeze_count() == 0


def test_nucleus_looked_for_near_the_last_one_is_the_same_set():
    """The sampler first looks for the top-p set among the tokens near where the last one ended; what it
    finds there must be exactly the set over the whole vocabulary, or nothing."""
    from anechat.engine.sampling import BINS, _nucleus

    rng = np.random.default_rng(3)
    vocab = 5000
    shapes = {"zipf": -2.0 * np.log1p(rng.permutation(vocab)), "flat": rng.standard_normal(vocab),
              "peaked": np.where(np.arange(vocab) < 3, 9.0, rng.standard_normal(vocab)),
              "ties": np.repeat(rng.standard_normal(50), vocab // 50)}
    for name, logits in shapes.items():
        for temp in (0.3, 0.8, 1.5):
            z = (logits / temp).astype(np.float32)
            gap = z.max() - z
            probs = np.exp(-gap)
            for top_p in (0.5, 0.9, 0.95, 0.999):
                mass = top_p * float(probs.sum())
                whole, edge = _nucleus(probs, gap, mass)
                for below in (1, 4, edge, edge + 1, edge + 16, BINS - 1):
                    near = _nucleus(probs, gap, mass, below)
                    if near is None:
                        assert below <= edge, (name, temp, top_p, below)
                    else:
                        assert np.array_equal(near[0], whole) and near[1] == edge, (name, temp, top_p, below)


def test_sampling_draws_do_not_depend_on_where_the_nucleus_is_looked_for():
    from anechat.engine.sampling import BINS

    logits_seq = [(-2.0 * np.log1p(np.random.default_rng(i).permutation(4000))).astype(np.float32) for i in range(60)]
    logits_seq += [np.random.default_rng(100 + i).standard_normal(4000).astype(np.float32) for i in range(20)]
    params = SamplingParams(temperature=0.8, top_p=0.9, seed=7)
    fast, slow = Sampler(params), Sampler(params)
    drawn_fast, drawn_slow = [], []
    for logits in logits_seq:
        drawn_fast.append(fast(logits))
        slow._below = BINS  # never looks near the last nucleus first
        drawn_slow.append(slow(logits))
    assert drawn_fast == drawn_slow


def test_a_model_without_a_template_continues_the_conversation_as_one_document():
    from anechat.engine.tokenizer import continuation_text

    assert continuation_text([{"role": "user", "content": "The capital of France is"}]) == "The capital of France is"
    convo = [
        {"role": "system", "content": "Facts about Europe. "},
        {"role": "user", "content": "The capital of France is"},
        {"role": "assistant", "content": " Paris."},
        {"role": "user", "content": "The capital of Spain is"},
    ]
    # the reply continues its message exactly; a new message starts a line; no role labels anywhere
    assert continuation_text(convo) == "Facts about Europe.\n\nThe capital of France is Paris.\nThe capital of Spain is"
    assert continuation_text([{"role": "assistant", "content": "a\n"}, {"role": "user", "content": "b"}]) == "a\nb"
