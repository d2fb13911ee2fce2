import json
import subprocess
import sys


def test_bench_json_reports_the_figures(tiny_model_dirs):
    r = subprocess.run(
        [sys.executable, "-m", "anechat", "bench", "--model-dir", str(tiny_model_dirs["llama"]), "--prompt-tokens", "12",
         "--gen", "4", "--runs", "2", "--json"],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    for key in ("prefill_tok_s", "decode_tok_s", "ttft_ms", "host_overhead_ms_per_token", "peak_rss_mb"):
        assert out[key] > 0, key
    assert out["decode_tok_s_min"] <= out["decode_tok_s"] <= out["decode_tok_s_max"]


def test_bench_refuses_more_tokens_than_the_context(tiny_model_dirs):
    r = subprocess.run(
        [sys.executable, "-m", "anechat", "bench", "--model-dir", str(tiny_model_dirs["llama"]), "--prompt-tokens", "60", "--gen", "10"],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 2 and "exceeds the model's context of 64" in r.stderr
