"""Bad input to `anechat convert`: one clear line, non-zero exit, nothing half-written left behind."""

import subprocess
import sys

import pytest
from tiny import tiny_chat_checkpoint, write_gguf

from anechat.convert import build
from anechat.convert.build import ConvertOptions, convert
from anechat.errors import ConversionError, UsageError

SMALL = dict(context=32, batch=4)


def cli(*args):
    return subprocess.run([sys.executable, "-m", "anechat", "convert", *map(str, args)], capture_output=True, text=True, timeout=300)


def leftovers(parent):
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


def test_existing_output_is_refused_then_replaced_with_force(tmp_path):
    out = tmp_path / "m"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ConversionError, match="already exists"):
        convert(tiny_chat_checkpoint(num_layers=1), out, ConvertOptions(**SMALL))
    assert (out / "keep.txt").read_text() == "mine"
    convert(tiny_chat_checkpoint(num_layers=1), out, ConvertOptions(**SMALL, force=True))
    assert (out / "meta.yaml").is_file() and not (out / "keep.txt").exists()
    assert leftovers(tmp_path) == []


def test_unwritable_output(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConversionError, match="cannot write"):
        convert(tiny_chat_checkpoint(num_layers=1), blocker / "m", ConvertOptions(**SMALL))


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(context=16, batch=32), "cannot exceed"),
        (dict(chunks=9), "between 1 and"),
        (dict(lut_ffn=3), "none, auto, 4, 6 or 8"),
        (dict(context=0), "positive"),
    ],
)
def test_bad_options(tmp_path, options, message):
    with pytest.raises(UsageError, match=message):
        convert(tiny_chat_checkpoint(num_layers=2), tmp_path / "m", ConvertOptions(**{**SMALL, **options}))
    assert list(tmp_path.iterdir()) == []


def test_failure_midway_leaves_nothing(tmp_path, monkeypatch):
    def explode(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(build, "write_metadata", explode)
    with pytest.raises(RuntimeError):
        convert(tiny_chat_checkpoint(num_layers=1), tmp_path / "m", ConvertOptions(**SMALL))
    assert list(tmp_path.iterdir()) == []


def test_interrupt_midway_leaves_nothing(tmp_path, monkeypatch):
    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(build, "write_metadata", interrupt)
    with pytest.raises(KeyboardInterrupt):
        convert(tiny_chat_checkpoint(num_layers=1), tmp_path / "m", ConvertOptions(**SMALL))
    assert list(tmp_path.iterdir()) == []


def test_cli_converts_a_gguf_and_verifies(tmp_path):
    write_gguf(tmp_path / "m.gguf", "qwen3", num_layers=2)
    r = cli(tmp_path / "m.gguf", "-o", tmp_path / "out", "--context", 64, "--batch", 8, "--chunks", 2, "--verify")
    assert r.returncode == 0, r.stderr
    assert "ops per decoder layer" in r.stdout and "top-1 agreement 100.0%" in r.stdout
    assert "Traceback" not in r.stderr and "Failed to load" not in r.stderr
    # Each stage of a long conversion and check is named as it starts (the Ticker repeats it with layers,
    # passes or tokens done and the elapsed time while it lasts: tests/test_first_run.py).
    for stage in ("chunk 2/2 (layers 1-1): infer — building the graph", "chunk 2/2 (layers 1-1): prefill — Core ML passes",
                  "chunk 2/2 (layers 1-1): merging 2 functions", "verifying: the numpy reference (fp32) reads",
                  "verifying: the converted model, one token at a time", "verifying: again with every op rounded to fp16"):
        assert stage in r.stderr, r.stderr


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.write_bytes(b"GGUF" + b"\0" * 3), "m.gguf"),
        (lambda p: p.write_text("not a model"), "m.gguf"),
    ],
)
def test_cli_bad_sources_are_one_line(tmp_path, make, message):
    src = tmp_path / "m.gguf"
    make(src)
    r = cli(src, "-o", tmp_path / "out")
    assert r.returncode == 1
    errors = [line for line in r.stderr.splitlines() if line.startswith("anechat: ")]
    assert len(errors) == 1 and message in errors[0] and r.stderr.rstrip().endswith(errors[0]), r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_cli_existing_output_and_bad_option(tmp_path):
    write_gguf(tmp_path / "m.gguf", num_layers=1)
    (tmp_path / "out").mkdir()
    r = cli(tmp_path / "m.gguf", "-o", tmp_path / "out")
    assert r.returncode == 1 and "--force" in r.stderr
    r = cli(tmp_path / "m.gguf", "-o", tmp_path / "out2", "--batch", 1000)
    assert r.returncode == 2 and "cannot exceed" in r.stderr
