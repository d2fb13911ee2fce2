"""The narrow prefill: a second prefill function of fewer rows in the same chunks, so a follow-up turn's cost
grows with its new tokens. The engine picks steps, narrow blocks or full blocks by what each has cost; the
logits are the same whichever it picks; models without the function (ANEMLL's, older anechat's) run as before."""

import numpy as np
import pytest
import yaml
from tiny import tiny_chat_checkpoint

from anechat.arch.reference import ReferenceModel
from anechat.convert.build import ConvertOptions
from anechat.engine.lm import Costs, LanguageModel
from anechat.errors import ModelLoadError, UsageError
from anechat.runtime.modeldir import check_model_dir, open_model_dir
from anechat.runtime.portable import PortableBackend

FP16_TOL = 0.02
SAME = 1e-4  # one model, the same tokens through different functions: fp32 compute, rounding apart


def ids(n, seed=1, vocab=320):
    return [int(x) for x in np.random.default_rng(seed).integers(3, vocab, size=n)]


def lm_for(path):
    return LanguageModel(open_model_dir(path), PortableBackend())


def counting(lm) -> list[int]:
    """The width of every call lm makes from now on: 1 for `infer`, the block's rows for a prefill."""
    widths: list[int] = []
    run = lm.forward.run

    def counted(tokens, *a, prefill, **k):
        widths.append(tokens.shape[1] if prefill else 1)
        return run(tokens, *a, prefill=prefill, **k)

    lm.forward.run = counted
    return widths


def test_the_converter_adds_the_narrow_function_and_names_it(tiny_model_dirs):
    meta = yaml.safe_load((tiny_model_dirs["qwen3"] / "meta.yaml").read_text())
    assert meta["anechat"]["prefill_narrow"] == {"function": "prefill_narrow", "batch_size": 4}
    # ANEMLL's keys keep their meaning: batch_size is still the (full) prefill's rows
    assert meta["model_info"]["parameters"]["batch_size"] == 8
    assert check_model_dir(tiny_model_dirs["qwen3"]) == []
    md = open_model_dir(tiny_model_dirs["qwen3"])
    assert (md.narrow.function, md.narrow.rows) == ("prefill_narrow", 4)
    # from --batch 32 up a quarter of it by default; smaller batches get none unless asked
    assert ConvertOptions(batch=64).narrow_rows() == 16 and ConvertOptions(batch=8).narrow_rows() is None
    assert ConvertOptions(batch=64, narrow=0).narrow_rows() is None
    for bad in (1, 8, 9, -1):
        with pytest.raises(UsageError, match="--narrow-batch"):
            ConvertOptions(context=64, batch=8, narrow=bad).validate(2)


def test_the_engine_picks_the_narrow_block_where_it_is_cheaper_and_the_logits_agree(tiny_model_dirs):
    seq = ids(40, seed=5)
    expected = ReferenceModel(tiny_chat_checkpoint("qwen3")).forward(seq)
    lm = lm_for(tiny_model_dirs["qwen3"])  # batch 8, narrow 4, two chunks
    assert lm.widths == [1, 4, 8]
    lm.prefill(seq[:20])
    lm.costs = Costs(step=1.0, block=6.0, narrow=2.5)
    widths = counting(lm)
    # 4 new tokens: one narrow block (2.5) beats 4 steps (4) and a padded full block (6)
    np.testing.assert_allclose(lm.prefill(seq[20:24]), expected[23], atol=FP16_TOL)
    assert widths == [4]
    # 11 tokens: three narrow blocks (7.5) beat a full and a narrow one (8.5); 2 go as steps, 3 as a narrow block
    assert lm.plan(11) == [4, 4, 4] and lm.plan(2) == [1, 1] and lm.plan(3) == [4]
    lm.costs = Costs(step=1.0, block=3.0, narrow=2.5)
    # blocks for the bulk, then whatever costs least for the rest: 9 = 8 + 1, 10 = 8 + 1 + 1, 11 = 8 + 4
    assert lm.plan(9) == [8, 1] and lm.plan(10) == [8, 1, 1] and lm.plan(11) == [8, 4] and lm.plan(13) == [8, 8]
    widths.clear()
    np.testing.assert_allclose(lm.prefill(seq[24:35]), expected[34], atol=FP16_TOL)
    assert widths == [8, 4]
    assert lm.cached_ids == seq[:35]

    # the same follow-up through steps, full blocks and narrow blocks: the same logits
    outs = {}
    for name, costs in (("steps", Costs(1.0, 100.0, 100.0)), ("full", Costs(100.0, 1.0, 100.0)), ("narrow", Costs(100.0, 100.0, 1.0))):
        lm.reset()
        lm.costs = Costs()
        lm.prefill(seq[:20])
        lm.costs = costs
        widths.clear()
        outs[name] = lm.prefill(seq[20:27])
        assert set(widths) == {"steps": {1}, "full": {8}, "narrow": {4}}[name]
    np.testing.assert_allclose(outs["narrow"], outs["steps"], atol=SAME)
    np.testing.assert_allclose(outs["narrow"], outs["full"], atol=SAME)
    np.testing.assert_allclose(outs["narrow"], expected[26], atol=FP16_TOL)


def test_costs_not_yet_timed_are_guessed_from_those_that_are(tiny_model_dirs):
    lm = lm_for(tiny_model_dirs["qwen3"])
    assert lm.call_costs() == {1: 1.0, 8: 2.0, 4: 2.0}  # nothing timed: in steps
    lm.costs = Costs(step=0.01, block=0.5)
    assert lm.call_costs() == {1: 0.01, 8: 0.5, 4: 0.5}  # the narrow block: priced by the block's guess ratio
    lm.costs = Costs(step=0.125, block=0.5, narrow=0.3)
    assert lm.call_costs() == {1: 0.125, 8: 0.5, 4: 0.3}
    widths = counting(lm)
    lm.prefill(ids(5))  # the first call of each width is not timed (it compiles, fills buffers) ...
    assert widths == [4, 1] and lm.costs.narrow == 0.3 and lm.costs.step == 0.125 and lm.costs.ran == {1, 4}
    lm.reset()
    lm.prefill(ids(5))  # ... the later ones are
    assert widths == [4, 1, 4, 1] and lm.costs.narrow != 0.3 and lm.costs.step != 0.125


def test_a_narrow_block_near_the_context_end_slides_back(tiny_model_dirs):
    seq = ids(63, seed=7)
    expected = ReferenceModel(tiny_chat_checkpoint("qwen3")).forward(seq)
    lm = lm_for(tiny_model_dirs["qwen3"])
    lm.prefill(seq[:60])
    lm.costs = Costs(step=1.0, block=6.0, narrow=1.5)
    widths = counting(lm)
    np.testing.assert_allclose(lm.prefill(seq[60:63]), expected[62], atol=FP16_TOL)  # rows 60..63 of 64
    assert widths == [4]


def test_a_model_without_the_narrow_function_runs_as_before(tiny_model_dirs, tmp_path):
    import shutil

    seq = ids(30, seed=2)
    expected = ReferenceModel(tiny_chat_checkpoint("llama")).forward(seq)
    md = open_model_dir(tiny_model_dirs["llama"])
    assert md.narrow is None
    lm = LanguageModel(md, PortableBackend())
    assert lm.widths == [1, 8] and list(lm.forward.blocks) == [8]
    assert {p.function_name for p in lm.parts} == {None, "infer", "prefill"}
    widths = counting(lm)
    lm.prefill(seq[:20])
    lm.costs = Costs(step=1.0, block=3.0, narrow=0.1)  # a narrow cost means nothing without the function
    np.testing.assert_allclose(lm.prefill(seq[20:30]), expected[29], atol=FP16_TOL)
    assert widths[-3:] == [8, 1, 1] and 4 not in widths
    # a meta.yaml naming a narrow function the chunks lack, or naming it badly: one clear line
    broken = tmp_path / "m"
    shutil.copytree(tiny_model_dirs["llama"], broken)
    meta = yaml.safe_load((broken / "meta.yaml").read_text())
    meta["anechat"]["prefill_narrow"] = {"function": "prefill_narrow", "batch_size": 4}
    (broken / "meta.yaml").write_text(yaml.safe_dump(meta))
    assert any("no function 'prefill_narrow'" in p for p in check_model_dir(broken))
    with pytest.raises(ModelLoadError, match="no function 'prefill_narrow'"):
        lm_for(broken)
    for bad, why in (({"function": "prefill_narrow", "batch_size": 8}, "from 2 to batch_size"), ("yes", "must be a mapping"),
                     ({"function": "prefill", "batch_size": 4}, "cannot be 'prefill'")):
        meta["anechat"]["prefill_narrow"] = bad
        (broken / "meta.yaml").write_text(yaml.safe_dump(meta))
        with pytest.raises(ModelLoadError, match=why):
            open_model_dir(broken)


def test_anemll_models_have_no_narrow_prefill():
    from pathlib import Path

    root = Path(__file__).parent / "data" / "anemll"
    for d in sorted(p for p in root.iterdir() if (p / "meta.yaml").is_file()):
        assert open_model_dir(d).narrow is None, d.name


def test_the_ane_checks_and_inspect_cover_the_narrow_function(tiny_model_dirs):
    from anechat.runtime.anechecks import check_model
    from anechat.runtime.milexec.backend import read_program

    md = open_model_dir(tiny_model_dirs["qwen3"])
    for chunk in md.chunks:
        program = read_program(chunk)
        assert set(program.functions) == {"infer", "prefill", "prefill_narrow"}
        assert program.functions["prefill_narrow"].inputs["causal_mask"].shape == (1, 1, 4, 64)
    results = check_model(tiny_model_dirs["qwen3"])
    assert all(r.status == "ok" for part in results for r in part.results)
    from anechat.inspect import format_report, inspect_model_dir

    info = inspect_model_dir(tiny_model_dirs["qwen3"])
    assert info["narrow_prefill"] == {"function": "prefill_narrow", "rows": 4}
    text = format_report(info)
    assert "prefill batch 8 (and 4: prefill_narrow, for short follow-ups)" in text and "function prefill_narrow:" in text
    assert inspect_model_dir(tiny_model_dirs["llama"])["narrow_prefill"] is None
