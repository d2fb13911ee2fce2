"""GGUF source: tiny GGUFs written the way llama.cpp writes them read back to the original weights."""

import numpy as np
import pytest
from tiny import write_gguf

from anechat.convert.checkpoint import load_checkpoint
from anechat.convert.sources.gguf import unpermute_rope
from anechat.errors import ConversionError


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_f32_round_trip_undoes_rope_permutation(tmp_path, arch):
    path = tmp_path / "m.gguf"
    original = write_gguf(path, arch)
    ckpt = load_checkpoint(path)
    assert ckpt.config.architecture == arch and ckpt.config.tie_word_embeddings
    assert ckpt.config.num_kv_heads == original.config.num_kv_heads
    for name in original.names():
        np.testing.assert_array_equal(ckpt.tensor(name), original.tensor(name), err_msg=name)


@pytest.mark.parametrize("quant, tol", [("F16", 1e-2), ("Q8_0", 0.02), ("Q4_0", 0.3), ("Q4_1", 0.3)])
def test_quantized_tensors_dequantize(tmp_path, quant, tol):
    overrides = dict(hidden_size=256, intermediate_size=256, num_heads=4, num_kv_heads=2, head_dim=64, num_layers=1)
    original = write_gguf(tmp_path / "m.gguf", "llama", quant=quant, **overrides)
    ckpt = load_checkpoint(tmp_path / "m.gguf")
    w = ckpt.tensor("model.layers.0.self_attn.q_proj.weight")
    ref = original.tensor("model.layers.0.self_attn.q_proj.weight")
    assert np.abs(w - ref).max() < tol * np.abs(ref).max()


def test_unpermute_inverts_llama_cpp_permute():
    w = np.arange(8 * 3 * 2, dtype=np.float32).reshape(8 * 2, 3)
    permuted = w.reshape(2, 2, 4, 3).swapaxes(1, 2).reshape(w.shape)
    np.testing.assert_array_equal(unpermute_rope(permuted, 2), w)


def test_tokenizer_and_template_come_along(tmp_path):
    import json

    from tokenizers import Tokenizer

    write_gguf(tmp_path / "m.gguf")
    files = load_checkpoint(tmp_path / "m.gguf").tokenizer_files
    cfg = json.loads(files["tokenizer_config.json"])
    assert cfg["eos_token"] == "<|im_end|>" and "<|im_start|>" in cfg["chat_template"]
    tok = Tokenizer.from_str(files["tokenizer.json"])
    text = "<|im_start|>user\nParis is the capital of France.<|im_end|>"
    enc = tok.encode(text, add_special_tokens=False)
    assert enc.ids[0] == tok.token_to_id("<|im_start|>")
    assert tok.decode(enc.ids, skip_special_tokens=False) == text


def test_not_a_gguf(tmp_path):
    p = tmp_path / "x.gguf"
    p.write_bytes(b"hello world, definitely not gguf" * 10)
    with pytest.raises(ConversionError, match="x.gguf"):
        load_checkpoint(p)


def test_truncated_gguf(tmp_path):
    p = tmp_path / "m.gguf"
    write_gguf(p)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) - 5000])
    with pytest.raises(ConversionError, match="truncated|unreadable"):
        load_checkpoint(p)


def test_unknown_architecture(tmp_path):
    import gguf

    p = tmp_path / "m.gguf"
    w = gguf.GGUFWriter(str(p), "mamba")
    w.add_block_count(1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ConversionError, match="unsupported GGUF architecture 'mamba'"):
        load_checkpoint(p)


def test_unsupported_quant_type(tmp_path):
    p = tmp_path / "m.gguf"
    write_gguf(p, quant="Q2_K", hidden_size=256, intermediate_size=256, num_heads=4, num_kv_heads=2, head_dim=64, num_layers=1)
    with pytest.raises(ConversionError, match="Q2_K"):
        load_checkpoint(p)
