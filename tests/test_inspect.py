import json
import subprocess
import sys


def test_inspect_reports_parts_io_ops_and_compression(tmp_path, tiny_model_dirs):
    from tiny import tiny_chat_checkpoint

    from anechat.convert.build import ConvertOptions, convert

    convert(tiny_chat_checkpoint(num_layers=1), tmp_path / "m", ConvertOptions(context=16, batch=4, lut_ffn=4, int8=True))
    r = subprocess.run([sys.executable, "-m", "anechat", "inspect", str(tmp_path / "m"), "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    chunk = info["parts"]["chunk 1"]
    assert set(chunk["functions"]) == {"infer", "prefill"} and chunk["default_function"] == "infer"
    infer = chunk["functions"]["infer"]
    assert infer["inputs"]["causal_mask"] == {"dtype": "fp16", "shape": [1, 1, 1, 16]}
    assert list(infer["states"].values())[0]["shape"] == [2, 2, 16, 32]  # head_dim 16 padded to 32 (coremltools #2631)
    assert infer["op_histogram"]["conv"] == 4 and infer["compressed_weights"] == {"LUT": 4}
    assert info["parts"]["lm_head"]["functions"]["main"]["compressed_weights"] == {"linear (int8/int4)": 1}
    text = subprocess.run([sys.executable, "-m", "anechat", "inspect", str(tmp_path / "m")], capture_output=True, text=True, timeout=120)
    assert "function infer (default)" in text.stdout and "compressed weights: LUT ×4" in text.stdout


def test_inspect_missing_dir_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "anechat", "inspect", str(tmp_path / "x")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 3 and r.stderr.startswith("anechat: ") and len(r.stderr.splitlines()) == 1
