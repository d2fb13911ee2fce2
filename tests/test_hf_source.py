"""HF directory source: safetensors (sharded, bf16), config mapping, tokenizer files, errors."""

import json

import numpy as np
import pytest
from tiny import write_hf_dir

from anechat.convert.checkpoint import load_checkpoint
from anechat.errors import ConversionError


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_round_trip(tmp_path, arch):
    original = write_hf_dir(tmp_path / "m", arch)
    ckpt = load_checkpoint(tmp_path / "m")
    assert ckpt.config.architecture == arch
    assert ckpt.config.attention_bias == (arch == "qwen2") and ckpt.config.qk_norm == (arch == "qwen3")
    for name in original.names():
        np.testing.assert_array_equal(ckpt.tensor(name), original.tensor(name))
    assert "chat_template" in json.loads(ckpt.tokenizer_files["tokenizer_config.json"])


def test_sharded_bf16_and_tied(tmp_path):
    original = write_hf_dir(tmp_path / "m", "llama", shards=3, bf16=True, tie_word_embeddings=True)
    ckpt = load_checkpoint(tmp_path / "m")
    assert ckpt.config.tie_word_embeddings
    w = ckpt.tensor("model.layers.1.mlp.down_proj.weight")
    ref = original.tensor("model.layers.1.mlp.down_proj.weight")
    assert np.abs(w - ref).max() <= np.abs(ref).max() / 128  # bf16 keeps 8 bits of mantissa
    np.testing.assert_array_equal(ckpt.tensor("lm_head.weight"), ckpt.tensor("model.embed_tokens.weight"))


def test_errors(tmp_path):
    with pytest.raises(ConversionError, match="missing config.json"):
        (tmp_path / "empty").mkdir()
        load_checkpoint(tmp_path / "empty")
    write_hf_dir(tmp_path / "m", "llama")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt_neox"}))
    with pytest.raises(ConversionError, match="unsupported architecture 'gpt_neox'"):
        load_checkpoint(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    with pytest.raises(ConversionError, match="truncated"):
        load_checkpoint(tmp_path / "m")
    weights.unlink()
    with pytest.raises(ConversionError, match="no \\*.safetensors"):
        load_checkpoint(tmp_path / "m")
