"""`anechat doctor`: the portable checks and the Core ML reason off a Mac; its macOS branch through the
Core ML contract fake; for real on a Mac (macos-marked)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from anechat import cli
from anechat.convert.build import ConvertOptions, convert
from anechat.runtime import coreml
from coreml_contract import FakeCoreML
from tiny import tiny_chat_checkpoint


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("doctor")
    convert(tiny_chat_checkpoint("llama", seed=2), root / "m", ConvertOptions(context=64, batch=8, chunks=2))
    return root / "m"


def doctor(*args):
    return subprocess.run([sys.executable, "-m", "anechat", "doctor", *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(sys.platform == "darwin", reason="the off-Mac branch")
def test_off_a_mac_it_says_why_and_runs_the_portable_checks(model):
    r = doctor("--model-dir", model)
    assert r.returncode == 0, r.stderr
    assert "Core ML    unavailable: Core ML needs macOS" in r.stdout
    assert "prefill vs infer: top-1 same" in r.stdout and "tok/s" in r.stdout
    assert r.stdout.rstrip().endswith("verdict    ok (portable runtime only)")
    report = json.loads(doctor("--model-dir", model, "--json").stdout)
    assert report["ok"] and report["coreml"] == {"available": False, "reason": report["system"]["coreml_unavailable"]}
    assert report["portable"]["decode_tok_s"] > 0 and report["model"]["structure"] == []


def test_bad_input(model, tmp_path):
    r = doctor("--model-dir", tmp_path / "nope")
    assert r.returncode == 3 and r.stderr.startswith("anechat: ") and "Traceback" not in r.stderr
    r = doctor("--model-dir", model, "--tokens", "1")
    assert r.returncode == 2 and "--tokens" in r.stderr
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "meta.yaml").write_text("model_info: {parameters: {num_chunks: 2}}")
    r = doctor("--model-dir", broken)
    assert r.returncode == 4 and "Traceback" not in r.stderr


def run_doctor(capsys, *args):
    code = cli.main(["doctor", *map(str, args)])
    return code, capsys.readouterr()


@pytest.fixture
def fake(monkeypatch, tmp_path):
    monkeypatch.setenv("ANECHAT_HOME", str(tmp_path / "home"))
    return FakeCoreML().install(monkeypatch)


def test_mac_branch_agreement_speed_and_placement(fake, model, capsys):
    code, out = run_doctor(capsys, "--model-dir", model, "--json")
    assert code == 0, out
    r = json.loads(out.out)
    c = r["coreml"]
    assert c["available"] and c["label"] == "ANE (Core ML)" and c["first_run_s"] > 0
    assert c["agreement"]["top1"] == 1.0 and c["agreement"]["max_abs_logit_diff"] < 0.05
    assert c["decode_tok_s"] > 0 and c["placement"]["ane_ops"] == 1.0
    assert {(p["part"].split("_")[-1], p["function"]) for p in c["placement"]["parts"]} >= {("02of02.mlpackage", "prefill")}
    code, out = run_doctor(capsys, "--model-dir", model)
    assert code == 0 and "compiled copies cached" in out.out and "verdict    ok" in out.out, "the second run reuses"
    assert len(fake.compiles) == 4, "each part compiled once, by the first run's check"
    assert "Neural Engine: 100.0% of ops" in out.out


def test_mac_branch_reports_ops_planned_off_the_ane(fake, model, capsys):
    fake.cpu_ops = ("matmul", "conv", "softmax")
    code, out = run_doctor(capsys, "--model-dir", model, "--json")
    plan = json.loads(out.out)["coreml"]["placement"]
    assert code == 0 and 0 < plan["ane_ops"] < 1


def test_mac_branch_fails_when_core_ml_cannot_run_the_model(fake, model, capsys):
    fake.fail_predict = "infer"
    code, out = run_doctor(capsys, "--model-dir", model)
    assert code == 4 and "problem    Core ML:" in out.out and "Core ML prediction failed" in out.out
    assert "verdict    FAILED" in out.out


def test_mac_branch_fails_when_the_runtimes_disagree(fake, model, capsys, monkeypatch):
    """A Core ML that computes something else (here: a scrambled lm_head) must not pass."""
    real = coreml.CoreMLPart.predict

    def scrambled(self, inputs, state=None):
        out = real(self, inputs, state)
        if "logits1" in out:
            out["logits1"] = np.random.default_rng(0).permutation(out["logits1"].reshape(-1)).reshape(out["logits1"].shape)
        return out

    monkeypatch.setattr(coreml.CoreMLPart, "predict", scrambled)
    code, out = run_doctor(capsys, "--model-dir", model)
    assert code == 1 and "Core ML and the portable runtime disagree" in out.out


@pytest.mark.macos
@pytest.mark.skipif(coreml.coreml_unavailable_reason() is not None, reason="needs Core ML on macOS 15+")
def test_doctor_for_real_on_a_mac(model):
    r = doctor("--model-dir", model, "--json")
    report = json.loads(r.stdout)
    assert r.returncode == 0, report["problems"]
    assert report["coreml"]["agreement"]["top1"] >= 0.9
