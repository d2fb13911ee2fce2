"""Models ANEMLL's own converter made (tests/data/anemll/: 0.3.4 and 0.3.5, chunked, monolithic, argmax, Gemma 3's
sliding window; each directory's README says how), opened exactly as ANEMLL wrote them. Each loads, passes
`inspect` (naming the file each part resolved to), `inspect --ane`, `doctor`, `models add` + `models verify`,
answers two chat turns, and agrees with transformers' fp32 logits (reference.npz: teacher-forced top-1 100 %,
greedy ids equal) on the portable runtime and through the Core ML contract fake.

Nothing here knows a model's sizes: `ANEMLL_MODELS=DIR` runs the same tests over another set made the same way
(DIR/NAME/anemll/ as ANEMLL wrote it, DIR/NAME/reference.npz)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from coreml_contract import FakeCoreML

from anechat import cli
from anechat.engine.generate import DoneEvent
from anechat.engine.lm import LanguageModel
from anechat.engine.sampling import SamplingParams
from anechat.runtime.anechecks import check_model
from anechat.runtime.coreml import CoreMLBackend
from anechat.runtime.modeldir import open_model_dir
from anechat.runtime.portable import PortableBackend

DATA = Path(os.environ.get("ANEMLL_MODELS") or Path(__file__).parent / "data" / "anemll")
MODELS = sorted(p.name for p in DATA.iterdir() if (p / "reference.npz").is_file() and (p / "anemll" / "meta.yaml").is_file())


def test_the_reference_set_is_there():
    assert MODELS, f"no ANEMLL-made models under {DATA}"


@pytest.fixture(params=MODELS)
def case(request) -> Path:
    return DATA / request.param


@pytest.fixture(params=["portable", "coreml-contract"])
def backend(request, monkeypatch, tmp_path):
    if request.param == "portable":
        return PortableBackend()
    monkeypatch.setenv("ANECHAT_HOME", str(tmp_path / "home"))
    fake = FakeCoreML().install(monkeypatch)
    be = CoreMLBackend(cache_root=tmp_path / "cache")
    be.fake = fake  # the test reads the fake's counters
    return be


def listing(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under root with its size and modification time: what "unchanged" means here."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


def cut_points(lm: LanguageModel, n: int) -> list[int]:
    """Prompt lengths that end inside, at and past a prefill block, the sliding window and the reference."""
    b = lm.batch_size
    window = lm.window or 0
    points = {1, 2, b - 1, b, b + 1, 2 * b + 3, window + 1, window + b + 1, n}
    return sorted(p for p in points if 1 <= p <= min(n, lm.context_length))


def test_agrees_with_transformers(case, backend):
    ref = np.load(case / "reference.npz")
    ids, logits, greedy = [int(x) for x in ref["ids"]], ref["logits"], [int(x) for x in ref["greedy_ids"]]
    lm = LanguageModel(open_model_dir(case / "anemll"), backend)
    # teacher-forced, one token at a time
    rows = np.stack([lm.prefill(ids[:1])] + [lm.step(t) for t in ids[1:]])
    assert rows.shape == logits.shape
    assert (rows.argmax(-1) == logits.argmax(-1)).all(), "teacher-forced top-1 below 100 %"
    # prompts of every length that matters, through the prefill functions
    for n in cut_points(lm, len(ids)):
        lm.reset()
        assert int(np.argmax(lm.prefill(ids[:n]))) == int(logits[n - 1].argmax()), f"prefill of {n} tokens"
    # greedy continuation
    lm.reset()
    prompt = int(ref["greedy_prompt"]) if "greedy_prompt" in ref else 8  # the README: a continuation of ids[:8]
    out = [int(np.argmax(lm.prefill(ids[:prompt])))]
    while len(out) < len(greedy):
        out.append(int(np.argmax(lm.step(out[-1]))))
    assert out == greedy
    # a second turn reuses the first's cache
    lm.reset()
    first, whole = ids[: len(ids) // 3], ids[: len(ids) - 3]
    lm.sync(first)
    reused, last = lm.sync(whole)
    assert reused == len(first) and int(np.argmax(last)) == int(logits[len(whole) - 1].argmax())
    if isinstance(backend, CoreMLBackend):
        assert backend.fake.predicts > len(ids)  # it really went through the fake


def run(capsys, *args) -> tuple[int, str]:
    """A command in this process: exit code, then stdout (where JSON goes) followed by stderr."""
    code = cli.main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out + "\n" + out.err


def first_json(text: str) -> dict:
    return json.JSONDecoder().raw_decode(text[text.index("{"):])[0]


def test_every_command_takes_it_as_anemll_wrote_it(case, capsys, tmp_path, monkeypatch):
    model = case / "anemll"
    before = listing(model)
    md = open_model_dir(model)

    code, text = run(capsys, "inspect", model)
    assert code == 0, text
    assert text.count("\n  resolved: ") == len(md.parts())
    if "_chunk_" not in str(md.parameters.get("ffn", "_chunk_")):  # ANEMLL 0.3.4's unchunked ffn name
        assert "rebuilt from model_prefix, lut_ffn and num_chunks" in text

    code, text = run(capsys, "inspect", "--ane", "--json", model)
    info = first_json(text)
    assert len(info["parts"]) == len(md.parts()) and all(len(p["checks"]) >= 10 for p in info["parts"])
    assert code == (0 if info["ready"] else 1)
    for p in info["parts"]:
        for c in p["checks"]:
            assert c["source"] and c["fix"] and c["status"] in ("ok", "warn", "fail")

    code, text = run(capsys, "doctor", "--model-dir", model)
    assert code == 0 and "verdict    ok" in text and "ANE checks " in text, text

    home = tmp_path / "home"
    monkeypatch.setenv("ANECHAT_HOME", str(home))
    code, text = run(capsys, "models", "add", model, "--name", "anemll-made")
    assert code == 0, text
    code, text = run(capsys, "models", "verify", "anemll-made")
    assert code == 0 and text.strip().endswith("anemll-made: ok"), text
    code, text = run(capsys, "-m", "anemll-made", "-p", "hello", "--max-tokens", "3", "--session", "new", "--json")
    assert code == 0 and first_json(text)["stats"]["decode_tokens"] >= 1, text
    code, text = run(capsys, "-m", "anemll-made", "-p", "and again", "--max-tokens", "3", "--resume", "--json")
    assert code == 0 and first_json(text)["stats"]["prompt_tokens"] > 0, text
    assert listing(model) == before, "a command wrote into the model directory"


def test_two_chat_turns_in_one_session(case, backend):
    from anechat.engine.generate import Engine
    from anechat.engine.tokenizer import ChatTokenizer

    md = open_model_dir(case / "anemll")
    lm = LanguageModel(md, backend)
    engine = Engine(lm, ChatTokenizer.from_dir(md.path))
    params = SamplingParams(temperature=0, max_tokens=4)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    first = [e for e in engine.generate(messages, params) if isinstance(e, DoneEvent)][0]
    messages += [{"role": "assistant", "content": first.text}, {"role": "user", "content": "And of Italy?"}]
    second = [e for e in engine.generate(messages, params) if isinstance(e, DoneEvent)][0]
    assert first.stats.decode_tokens >= 1 and second.stats.decode_tokens >= 1
    # the second turn prefills only what changed, unless the sliding window has moved past the first turn
    # (its cache no longer holds what an earlier position needs)
    moved = lm.window is not None and first.stats.prompt_tokens + first.stats.decode_tokens > lm.window
    assert second.stats.reused_tokens > 0 or moved, second.stats


def test_doctor_through_the_contract_fake(case, capsys, monkeypatch, tmp_path):
    """doctor's Core ML branch (what it does on a Mac): compile, first run, load, warm-up, teacher-forced
    agreement with the portable runtime."""
    monkeypatch.setenv("ANECHAT_HOME", str(tmp_path / "home"))
    fake = FakeCoreML().install(monkeypatch)
    code, text = run(capsys, "doctor", "--model-dir", case / "anemll", "--json", "--tokens", "12")
    report = first_json(text)
    assert code == 0 and report["ok"], text
    assert report["coreml"]["agreement"]["top1"] == 1.0 and fake.predicts > 0


def test_ane_checks_flag_and_never_refuse(case):
    """ANEMLL's tiny models keep head_dim 16 in their KV states: flagged (#2631), yet everything above ran."""
    parts = check_model(case / "anemll")
    for p in parts:
        states = [r for r in p.results if r.check.id == "state-last-axis"]
        assert len(states) == 1
        program_states = {t.shape for fn in _program(case, p.path).functions.values() for t in fn.states.values()}
        misaligned = any(s[-1] % 32 for s in program_states)
        assert (states[0].status == "fail") == misaligned


def _program(case: Path, name: str):
    from anechat.runtime.milexec.backend import read_program

    return read_program(case / "anemll" / name)
