"""Text model.mil (compiled .mlmodelc) programs, the mlpackage ↔ text round trip, and bad model files."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from anechat.errors import ModelLoadError
from anechat.runtime.milexec.miltext import parse_mil, read_mlmodelc
from anechat.runtime.milexec.miltext_write import BlobWriter, dump_mil
from anechat.runtime.milexec.proto import read_mlpackage
from anechat.runtime.portable import PortableBackend

FIXTURES = Path(__file__).parent / "fixtures" / "mil"
W = np.arange(16, dtype=np.float16).reshape(4, 4) / 8


def fixture_model(tmp_path, name="accumulate") -> Path:
    d = tmp_path / f"{name}.mlmodelc"
    (d / "weights").mkdir(parents=True)
    shutil.copy(FIXTURES / f"{name}.mil", d / "model.mil")
    blobs = BlobWriter()
    assert blobs.add(W, "fp16") == 64
    blobs.write(d / "weights" / "weight.bin")
    return d


def test_fixture_covers_the_grammar_and_runs(tmp_path):
    d = fixture_model(tmp_path)
    program = read_mlmodelc(d)
    assert set(program.functions) == {"main", "twice"} and program.default_function == "main"
    main = program.functions["main"]
    assert list(main.inputs) == ["x", "pos"] and list(main.states) == ["acc"]
    assert main.states["acc"].shape == (2, 4) and main.outputs == ["out", "top"]
    note = next(op for op in main.ops if op.outputs == ["note"])
    assert note.attributes["val"] == 'a "quoted" string'
    mask = next(op for op in main.ops if op.outputs == ["mask"]).attributes["val"]
    assert mask[0, 1] == -np.inf and mask[0, 2] == 3.0

    backend = PortableBackend()
    part = backend.load(d)
    state = part.make_state()
    x = np.array([[1, 2, 3, 4]], np.float16)
    out = part.predict({"x": x, "pos": np.array([1], np.int32)}, state)
    y = x.astype(np.float32) @ W.astype(np.float32).T
    np.testing.assert_allclose(out["top"], y, rtol=1e-3)
    np.testing.assert_allclose(out["out"], -y + mask.astype(np.float32), rtol=1e-3)
    np.testing.assert_allclose(state.buffers["acc"][1], y[0], rtol=1e-3)
    assert state.buffers["acc"][0].sum() == 0
    twice = backend.load(d, "twice")
    np.testing.assert_array_equal(twice.predict({"x": x})["z"], 2 * x)


def test_mlpackage_and_its_text_form_execute_identically(tmp_path, tiny_model_dirs):
    chunk = next(tiny_model_dirs["qwen3"].glob("*chunk_01of02.mlpackage"))
    text_dir = dump_mil(read_mlpackage(chunk), tmp_path / "chunk.mlmodelc")
    backend = PortableBackend()
    rng = np.random.default_rng(0)
    feed = {
        "hidden_states": rng.standard_normal((1, 8, 64)).astype(np.float16),
        "position_ids": np.arange(8, dtype=np.int32),
        "causal_mask": np.triu(np.full((8, 64), -np.inf, np.float16), 1)[None, None],
        "current_pos": np.array([0], np.int32),
    }
    results = []
    for path in (chunk, text_dir):
        part = backend.load(path, "prefill")
        state = part.make_state()
        results.append((part.predict(feed, state)["output_hidden_states"], next(iter(state.buffers.values())).copy()))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])


def test_compressed_weights_survive_the_text_round_trip(tmp_path):
    from tiny import tiny_chat_checkpoint

    from anechat.convert.build import ConvertOptions, convert

    convert(tiny_chat_checkpoint(num_layers=1), tmp_path / "m", ConvertOptions(context=16, batch=4, lut_lmhead=4))
    head = next((tmp_path / "m").glob("*lm_head*.mlpackage"))
    text_dir = dump_mil(read_mlpackage(head), tmp_path / "head.mlmodelc")
    assert "constexpr_lut_to_dense" in (text_dir / "model.mil").read_text()
    x = {"hidden_states": np.random.default_rng(1).standard_normal((1, 1, 64)).astype(np.float16)}
    a = PortableBackend().load(head).predict(x)
    b = PortableBackend().load(text_dir).predict(x)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


@pytest.mark.parametrize(
    "text, message",
    [
        ("program(1.3)\n{\n  func main<ios18>(tensor<fp16, [1]> x) {\n  } -> (x)\n}\n", ":5: expected ';'"),
        ("program(1.3)\n{\n  func main<ios18>(tensor<fp16, [1]> x) {\n    tensor<fp16, [1]> y = add(x = x, y = x)[name = string(\"y\")]\n  } -> (y);\n}\n", ":5: expected ';'"),
        ("program(1.3)\n{\n}\n", "no functions"),
        ("program(1.3)\n{ func main<ios18>(tensor<fp16, [1]> x) { } -> (x); } trailing", "after the end"),
        ("programme(1.3)", "expected 'program'"),
        ("program(1.3) { func main<ios18>(tensor<fp16, [1]> x) { tensor<fp16, [1]> y = add(x = x, y = x)[name = string(\"y\")] @ } -> (y); }", "unexpected character"),
    ],
)
def test_malformed_text_names_file_and_line(text, message):
    with pytest.raises(ModelLoadError, match=message) as e:
        parse_mil(text, "bad/model.mil")
    assert str(e.value).startswith("bad/model.mil:")


def test_unknown_op_fails_at_load_with_its_name(tmp_path):
    d = tmp_path / "u.mlmodelc"
    d.mkdir()
    (d / "model.mil").write_text(
        "program(1.3)\n{\n  func main<ios18>(tensor<fp16, [2]> x) {\n"
        '    tensor<fp16, [2]> y = frobnicate(x = x)[name = string("y")];\n  } -> (y);\n}\n'
    )
    with pytest.raises(ModelLoadError, match="unsupported op 'frobnicate'"):
        PortableBackend().load(d)


def _corrupt(tmp_path, edit) -> Path:
    d = fixture_model(tmp_path)
    weights = d / "weights" / "weight.bin"
    data = bytearray(weights.read_bytes())
    edit(data)
    weights.write_bytes(bytes(data))
    return d


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda b: b.__delitem__(slice(100, None)), "truncated|past the end"),
        (lambda b: b.__setitem__(slice(64, 68), b"\0\0\0\0"), "bad sentinel"),
        (lambda b: b.__setitem__(slice(68, 72), (99).to_bytes(4, "little")), "unknown dtype code 99"),
        (lambda b: b.__setitem__(slice(72, 80), (4).to_bytes(8, "little")), "holds 4 bytes"),
        (lambda b: b.__delitem__(slice(40, None)), "truncated weight file"),
    ],
)
def test_bad_weight_files_name_the_file(tmp_path, edit, message):
    d = _corrupt(tmp_path, edit)
    with pytest.raises(ModelLoadError, match=message) as e:
        PortableBackend().load(d)
    assert "weight.bin" in str(e.value)


def test_blob_offset_past_end_and_escaping_paths(tmp_path):
    d = fixture_model(tmp_path)
    mil = d / "model.mil"
    mil.write_text(mil.read_text().replace("offset = uint64(64)", "offset = uint64(999999)"))
    with pytest.raises(ModelLoadError, match="past the end"):
        PortableBackend().load(d)
    mil.write_text(mil.read_text().replace("@model_path/weights/weight.bin", "@model_path/../../etc/passwd"))
    with pytest.raises(ModelLoadError, match="outside the model"):
        PortableBackend().load(d)


def test_missing_and_wrong_parts(tmp_path):
    with pytest.raises(ModelLoadError, match="missing model part"):
        PortableBackend().load(tmp_path / "nope.mlpackage")
    (tmp_path / "x.mlpackage").mkdir()
    with pytest.raises(ModelLoadError, match="no Manifest.json"):
        PortableBackend().load(tmp_path / "x.mlpackage")
    (tmp_path / "y.mlmodelc").mkdir()
    with pytest.raises(ModelLoadError, match="no model.mil"):
        PortableBackend().load(tmp_path / "y.mlmodelc")
    d = fixture_model(tmp_path)
    with pytest.raises(ModelLoadError, match="no function 'prefill'"):
        PortableBackend().load(d, "prefill")


def test_input_shape_mismatch_is_clear(tmp_path):
    part = PortableBackend().load(fixture_model(tmp_path), "twice")
    with pytest.raises(ModelLoadError, match=r"input 'x' has shape \(1, 5\), expected \(1, 4\)"):
        part.predict({"x": np.zeros((1, 5), np.float16)})
