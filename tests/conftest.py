import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """No test may touch the user's real data, config or cache dirs."""
    home = tmp_path_factory.mktemp("anechat-home")
    monkeypatch.setenv("ANECHAT_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


@pytest.fixture(scope="session")
def smollm2_converted(tmp_path_factory):
    """The real SmolLM2-135M converted with the default options, once per session (read-only for tests:
    the end-to-end tests and the monolithic comparison share it)."""
    from tiny import smollm2_gguf_path

    from anechat.convert.build import ConvertOptions, convert

    out = tmp_path_factory.mktemp("smollm2") / "smollm2-ane"
    summary = convert(smollm2_gguf_path(), out, ConvertOptions())
    print(summary.format())
    return out


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory):
    """Converted tiny models, built once per test session: {name: model dir}."""
    from tiny import tiny_chat_checkpoint

    from anechat.convert.build import ConvertOptions, convert

    root = tmp_path_factory.mktemp("tiny-models")
    variants = {
        # qwen3 has a narrow prefill; llama and qwen2 do not, as ANEMLL's models and anechat's before it
        "llama": ("llama", ConvertOptions(context=64, batch=8)),
        "qwen2": ("qwen2", ConvertOptions(context=64, batch=8, chunks=2)),
        "qwen3": ("qwen3", ConvertOptions(context=64, batch=8, chunks=2, narrow=4)),
    }
    out = {}
    for name, (arch, options) in variants.items():
        out[name] = root / name
        convert(tiny_chat_checkpoint(arch), out[name], options)
    return out
