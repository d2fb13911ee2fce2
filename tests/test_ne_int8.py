"""Per-block int8 weights on the Neural Engine (apple/coreai-torch #93, apple/coreai-models #279): the first Core
ML run of such a model compares a short probe with the portable runtime; a wrong Neural Engine is left for
CPU_AND_GPU (or the portable runtime) under --backend auto, is exit 4 under --backend coreml, and the verdict is
remembered. Against the contract fake's opt-in defect (tests/coreml_contract.py); for real on a Mac (macos-marked)."""

import logging

import numpy as np
import pytest
from coreml_contract import FakeCoreML
from tiny import tiny_chat_checkpoint

from anechat import cli
from anechat.convert.build import ConvertOptions, convert
from anechat.engine import coreml_probe, diagnose
from anechat.engine.coreml_probe import run_probe as REAL_RUN_PROBE
from anechat.engine.diagnose import disagrees, probe_agreement
from anechat.engine.lm import LanguageModel
from anechat.engine.loader import load_model
from anechat.errors import WrongOutput
from anechat.runtime import coreml
from anechat.runtime.coreml import CoreMLBackend
from anechat.runtime.modeldir import open_model_dir

CAUSE = "per-block int8 weights wrongly"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("neint8")
    ckpt = tiny_chat_checkpoint("qwen3", seed=5)
    convert(ckpt, root / "blocks", ConvertOptions(context=64, batch=8, int8=True))  # blocks of 32 inputs
    convert(ckpt, root / "rows", ConvertOptions(context=64, batch=8, int8=True, int8_block=0))  # one scale per row
    return root


@pytest.fixture
def fake(monkeypatch, tmp_path):
    monkeypatch.setenv("ANECHAT_HOME", str(tmp_path / "home"))
    return FakeCoreML(ne_int8_blocks_defect=True).install(monkeypatch)


@pytest.fixture
def comparisons(fake, monkeypatch):
    """The compute units of each probe comparison that ran (each builds a portable model of the same files)."""
    calls = []

    def counted(md, lm, *a, **k):
        calls.append(fake.loads[-1][2])  # the Core ML model under comparison was the last one loaded
        return probe_agreement(md, lm, *a, **k)

    monkeypatch.setattr(diagnose, "probe_agreement", counted)
    return calls


def agreement_on(path, units):
    md = open_model_dir(path)
    lm = LanguageModel(md, CoreMLBackend(compute_units=units))
    return probe_agreement(md, lm)


def agrees(a):
    return not disagrees(a) and a["max_abs_logit_diff"] < 0.05  # summation order varies with the thread count


def test_the_fake_reads_blocked_scales_per_row_only_on_the_neural_engine(fake, models):
    for units in ("CPU_AND_NE", "ALL"):
        a = agreement_on(models / "blocks", units)
        assert disagrees(a) and a["top1"] < 0.5, (units, a)  # measured 12 % here: far from doctor's 90 %
    for units in ("CPU_AND_GPU", "CPU_ONLY"):
        assert agrees(agreement_on(models / "blocks", units)), units
    # one scale per row has no second block to lose
    assert agrees(agreement_on(models / "rows", "CPU_AND_NE"))
    fake.ne_int8_blocks_defect = False
    assert agrees(agreement_on(models / "blocks", "CPU_AND_NE"))


def test_auto_leaves_a_wrong_neural_engine_for_the_gpu_once(fake, models, comparisons, caplog):
    caplog.set_level(logging.WARNING)
    loaded = load_model(models / "blocks", backend="auto")
    assert loaded.backend.name == "coreml" and loaded.backend.compute_units == "CPU_AND_GPU"
    assert comparisons == ["CPU_AND_NE", "CPU_AND_GPU"] and fake.probes == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    line = warnings[0]
    assert CAUSE in line and "#93" in line and "--int8-block 0" in line and "LUT" in line and line.endswith("using Core ML CPU_AND_GPU")
    # the answers are the portable runtime's (the fake's GPU expands the blocks right); not bit-equal: two
    # runtimes in one process may sum in different orders (threads, packed kernels)
    portable = load_model(models / "blocks", backend="portable")
    assert np.allclose(loaded.lm.prefill([3, 4, 5]), portable.lm.prefill([3, 4, 5]), atol=0.05)
    # the verdicts (wrong on the Neural Engine, right on the GPU) are remembered: no child, no comparison
    caplog.clear()
    again = load_model(models / "blocks", backend="auto")
    assert again.backend.compute_units == "CPU_AND_GPU" and fake.probes == 2 and len(comparisons) == 2
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == warnings


def test_auto_takes_the_portable_runtime_when_the_gpu_is_wrong_too(fake, models, comparisons, caplog):
    fake.defect_units = ("CPU_AND_NE", "ALL", "CPU_AND_GPU")
    loaded = load_model(models / "blocks", backend="auto", compute_units="ALL")
    assert loaded.backend.name == "portable" and comparisons == ["ALL", "CPU_AND_GPU"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and CAUSE in warnings[0] and warnings[0].endswith("using the portable runtime"), warnings


def test_backend_coreml_exits_4_with_the_cause_and_the_fix(fake, models, capsys):
    with pytest.raises(WrongOutput, match=CAUSE):
        load_model(models / "blocks", backend="coreml")
    code = cli.main(["--model-dir", str(models / "blocks"), "--backend", "coreml", "-p", "hello", "--max-tokens", "2"])
    err = capsys.readouterr().err
    assert code == 4 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("anechat: ") and CAUSE in lines[0] and "--int8-block 0" in lines[0], err
    assert fake.probes == 1, "the remembered verdict answers the second start"
    # a pipe run under auto: one warning line, then an answer
    assert cli.main(["--model-dir", str(models / "blocks"), "-p", "hello", "--max-tokens", "2", "--temperature", "0"]) == 0
    err = capsys.readouterr().err
    assert err.count(CAUSE) == 1 and "using Core ML CPU_AND_GPU" in err and "Traceback" not in err


def test_per_row_int8_and_an_agreeing_device_are_not_probed_again(fake, models, comparisons):
    loaded = load_model(models / "rows", backend="auto")
    assert loaded.backend.compute_units == "CPU_AND_NE" and comparisons == [], "per-row int8 pays no comparison"
    fake.ne_int8_blocks_defect = False  # a Neural Engine without the defect: compared once, then trusted
    for _ in range(2):
        loaded = load_model(models / "blocks", backend="auto")
        assert loaded.backend.compute_units == "CPU_AND_NE"
    assert comparisons == ["CPU_AND_NE"] and fake.probes == 2


def test_the_child_reports_a_wrong_neural_engine_with_its_own_exit_code(fake, models, capsys):
    assert coreml_probe.main([str(models / "blocks"), "CPU_AND_NE"]) == coreml_probe.WRONG_OUTPUT_EXIT
    assert CAUSE in capsys.readouterr().err
    assert coreml_probe.main([str(models / "blocks"), "CPU_AND_GPU"]) == 0
    assert coreml_probe.main([str(models / "rows"), "CPU_AND_NE"]) == 0


def test_a_real_child_process_reporting_wrong_answers(fake, models, monkeypatch):
    """The parent's side of the protocol through a real process: exit code 9 and the last stderr line."""
    import sys

    monkeypatch.setattr(coreml_probe, "run_probe", REAL_RUN_PROBE)
    line = "the Neural Engine computes this model's per-block int8 weights wrongly (test)"
    monkeypatch.setattr(coreml_probe, "probe_command", lambda *a: [
        sys.executable, "-c", f"import sys; print({'anechat: ' + line!r}, file=sys.stderr); sys.exit({coreml_probe.WRONG_OUTPUT_EXIT})"])
    for _ in range(2):  # the second start reads the remembered verdict
        with pytest.raises(WrongOutput) as e:
            load_model(models / "blocks", backend="coreml")
        assert str(e.value) == line
    monkeypatch.setattr(coreml_probe, "probe_command", lambda *a: [sys.executable, "-c", "raise SystemExit(0)"])
    assert load_model(models / "blocks", backend="auto").backend.compute_units == "CPU_AND_GPU"


def test_doctor_names_the_cause(fake, models, capsys):
    code = cli.main(["doctor", "--model-dir", str(models / "blocks"), "--tokens", "8"])
    out = capsys.readouterr().out
    assert code == 4, out
    problems = [line for line in out.splitlines() if line.startswith("problem")]
    assert CAUSE in problems[0] and "--int8-block 0" in problems[0], out
    assert any("disagree" in p for p in problems[1:]), "the doctor's own comparison still shows the numbers"


@pytest.mark.macos
@pytest.mark.skipif(coreml.coreml_unavailable_reason() is not None, reason="needs Core ML on macOS 15+")
def test_real_core_ml_with_per_block_int8_answers_like_the_portable_runtime(models, tmp_path, monkeypatch):
    """Whatever this Mac's Neural Engine does with per-block int8, what auto picks answers as the portable runtime."""
    monkeypatch.setenv("ANECHAT_HOME", str(tmp_path))
    loaded, portable = load_model(models / "blocks", backend="auto"), load_model(models / "blocks", backend="portable")
    a = probe_agreement(loaded.model_dir, loaded.lm)
    assert not disagrees(a), (loaded.backend, a)
    assert portable.backend.name == "portable"


def test_bench_measures_where_a_chat_would_run(fake, models, capsys):
    """`anechat bench` loads as a chat does: under auto a wrong Neural Engine leaves it for CPU_AND_GPU (one warning
    line, figures printed), under --backend coreml it is exit 4 with the cause."""
    import json

    code = cli.main(["bench", "--model-dir", str(models / "blocks"), "--prompt-tokens", "8", "--gen", "3", "--runs", "1", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert "CPU_AND_GPU" in result["backend"] and result["decode_tok_s"] > 0, result
    assert err.count(CAUSE) == 1 and "using Core ML CPU_AND_GPU" in err and "Traceback" not in err
    code = cli.main(["bench", "--model-dir", str(models / "blocks"), "--backend", "coreml", "--runs", "1"])
    err = capsys.readouterr().err
    assert code == 4 and CAUSE in err and "Traceback" not in err
