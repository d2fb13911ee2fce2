"""`anechat inspect --ane`: dimensions, load limits, ops off the ANE, fp16 activation range, speed estimate."""

import json
import subprocess
import sys

import pytest
from tiny import tiny_chat_checkpoint


def inspect_ane(path, *extra):
    return subprocess.run([sys.executable, "-m", "anechat", "inspect", "--ane", str(path), *extra], capture_output=True, text=True, timeout=300)


def test_tiny_model_is_ready_and_estimated(tiny_model_dirs):
    from anechat.readiness import ANE_BANDWIDTH, ane_readiness

    r = ane_readiness(tiny_model_dirs["qwen2"])  # two chunks
    assert [p.role for p in r.parts] == ["embeddings", "chunk 1", "chunk 2", "lm_head"]
    assert r.calls_per_token == 4 and len(r.layer_max) == 2 and all(0 < m < 100 for m in r.layer_max)
    assert r.ok, r.problems()
    emb = r.parts[0]
    assert emb.off_ane == {} and emb.flexible_inputs == ["input_ids"]  # a 320-row table is no concern
    # every chunk and lm_head weight once, one embedding row
    assert r.bytes_per_token == sum(p.weight_bytes for p in r.parts[1:]) + emb.weight_bytes // 320
    est = r.decode_estimates()
    assert set(est) == set(ANE_BANDWIDTH) and est["M4 Max"] == pytest.approx(118.9e9 / r.bytes_per_token)
    text = r.format()
    assert "verdict: ready" in text and "estimate" in text and "hollance" in text
    assert "flexible input shapes (input_ids): fine for the embeddings" in text  # not a warning next to "ready"
    r.parts[1].flexible_inputs = ["hidden_states"]  # a chunk with flexible shapes would not run on the ANE
    assert r.problems() == ["chunk 1: flexible input shapes (hidden_states) keep it off the ANE"]
    assert "NOT READY" in r.format()


def test_cli_json_and_exit_code(tiny_model_dirs):
    res = inspect_ane(tiny_model_dirs["llama"], "--json")
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["ready"] and info["problems"] == [] and info["calls_per_token"] == 3
    assert len(info["layer_max_abs_activation"]) == 2


def test_overflowing_layer_is_flagged(tmp_path):
    from anechat.convert.build import ConvertOptions, convert

    ckpt = tiny_chat_checkpoint(num_layers=3)
    loud = ckpt.loaders["model.layers.1.mlp.down_proj.weight"]() * 3e4  # layer 1 pushes the residual past fp16
    ckpt.loaders["model.layers.1.mlp.down_proj.weight"] = lambda: loud
    convert(ckpt, tmp_path / "m", ConvertOptions(context=64, batch=8))
    res = inspect_ane(tmp_path / "m")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "NOT READY" in res.stdout and "layer 1: activations overflow fp16" in res.stdout
    assert "layer 0: activations overflow" not in res.stdout


def test_a_large_embedding_table_is_named_as_likely_off_the_ane(tmp_path):
    from anechat.convert.build import ConvertOptions, convert
    from anechat.readiness import ane_readiness

    ckpt = tiny_chat_checkpoint("llama", vocab_size=20000, hidden_size=16, num_heads=2, num_kv_heads=1,
                                head_dim=8, intermediate_size=16, num_layers=1)
    convert(ckpt, tmp_path / "m", ConvertOptions(context=16, batch=4))
    parts = {p.role: p for p in ane_readiness(tmp_path / "m", activations=False).parts}
    assert "gather" in parts["embeddings"].off_ane and parts["chunk 1"].off_ane == {}


def test_size_and_dimension_limits_are_flagged():
    from anechat.readiness import GB, PartReport

    part = PartReport("chunk 1", "x.mlpackage", int(1.5 * GB), 20000, "conv logits", [], {"conv": 1}, {})
    problems = part.problems()
    assert any("20000" in p and "16384" in p for p in problems)
    assert any("iOS" in p for p in problems) and not any("macOS" in p for p in problems)


def test_convert_prints_readiness_and_takes_lut_groups(tmp_path):
    from tiny import write_gguf

    write_gguf(tmp_path / "t.gguf")
    r = subprocess.run(
        [sys.executable, "-m", "anechat", "convert", str(tmp_path / "t.gguf"), "-o", str(tmp_path / "out"),
         "--context", "32", "--batch", "4", "--lut-ffn", "4,16", "--lut-lmhead", "6"],
        capture_output=True, text=True, timeout=600,
    )
    assert r.returncode == 0, r.stderr
    assert "ANE readiness" in r.stdout and "verdict: ready" in r.stdout and "calibrate" in r.stdout
    import yaml

    meta = yaml.safe_load((tmp_path / "out" / "meta.yaml").read_text())
    assert meta["model_info"]["parameters"]["lut_ffn"] == 4 and meta["anechat"]["lut"] == {"ffn": "4,16", "lmhead": "6,4"}
    bad = subprocess.run([sys.executable, "-m", "anechat", "convert", str(tmp_path / "t.gguf"), "-o", str(tmp_path / "bad"), "--lut-ffn", "5"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1 and "--lut-ffn" in bad.stderr
