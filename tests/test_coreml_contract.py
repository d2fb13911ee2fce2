"""The Core ML backend against the contract fake of coremltools (tests/coreml_contract.py): what a Mac would
enforce, enforced here — compile destinations, the compiled-model cache, function names, input dtypes and
shapes, one state shared by every chunk, warm-up, and the fallback of backend auto."""

import os
from pathlib import Path

import numpy as np
import pytest
from coreml_contract import FakeCoreML
from tiny import tiny_chat_checkpoint

from anechat import cli
from anechat.convert.build import ConvertOptions, convert
from anechat.engine.coreml_probe import run_probe as REAL_RUN_PROBE
from anechat.engine.loader import load_model
from anechat.errors import ModelLoadError
from anechat.runtime import coreml
from anechat.runtime.coreml import CoreMLBackend, compiled_cache_path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("coreml")
    ckpt = tiny_chat_checkpoint("qwen3", seed=5)
    convert(ckpt, root / "chunked", ConvertOptions(context=64, batch=8, chunks=2, narrow=4))
    convert(ckpt, root / "mono", ConvertOptions(context=64, batch=8, monolithic=True, narrow=4))
    return root


@pytest.fixture
def fake(monkeypatch, tmp_path):
    monkeypatch.setenv("ANECHAT_HOME", str(tmp_path / "home"))
    return FakeCoreML().install(monkeypatch)


def greedy(lm, prompt, n=12):
    tokens = [int(np.argmax(lm.prefill(prompt)))]
    for _ in range(n - 1):
        tokens.append(int(np.argmax(lm.step(tokens[-1]))))
    return tokens


def test_the_fake_refuses_what_coremltools_refuses(fake, models, tmp_path):
    import coremltools as ct

    pkg = next((models / "chunked").glob("*_embeddings.mlpackage"))
    # what anechat's compile used to ask for: every .mlpackage failed to compile on a Mac
    with pytest.raises(Exception, match='must have ".mlmodelc" file extension'):
        ct.utils.compile_model(str(pkg), str(tmp_path / "x.mlmodelc.partial"))
    with pytest.raises(ValueError, match="Invalid model file path"):
        ct.utils.compile_model(str(tmp_path / "x.bin"), str(tmp_path / "x.mlmodelc"))
    compiled = ct.utils.compile_model(str(pkg), str(tmp_path / "x.mlmodelc"))
    with pytest.raises(TypeError, match="compute_units"):
        ct.models.CompiledMLModel(compiled, compute_units="CPU_AND_NE")
    chunk = next((models / "chunked").glob("*_chunk_01of02.mlpackage"))
    compiled_chunk = ct.utils.compile_model(str(chunk), str(tmp_path / "c.mlmodelc"))
    with pytest.raises(RuntimeError, match="not found"):
        ct.models.CompiledMLModel(compiled_chunk, ct.ComputeUnit.CPU_AND_NE, function_name="decode")
    infer = ct.models.CompiledMLModel(compiled_chunk, ct.ComputeUnit.CPU_AND_NE, function_name="infer")
    feed = {"hidden_states": np.zeros((1, 1, 64), np.float32), "position_ids": np.zeros(1, np.int64),
            "causal_mask": np.zeros((1, 1, 1, 64), np.float32), "current_pos": np.zeros(1, np.int32)}
    with pytest.raises(RuntimeError, match="Unsupported array type"):
        infer.predict(feed, infer.make_state())
    feed["position_ids"] = np.zeros(1, np.int32)
    with pytest.raises(RuntimeError, match="stateful"):
        infer.predict(feed)
    out = infer.predict(feed, infer.make_state())
    assert out["output_hidden_states"].dtype == np.float32  # fp16 outputs come back as float32


def test_compiles_into_the_cache_once(fake, models, tmp_path):
    backend = CoreMLBackend(cache_root=tmp_path / "cache")
    pkg = next((models / "chunked").glob("*_embeddings.mlpackage"))
    target = backend.compiled(pkg)
    assert target.suffix == ".mlmodelc" and (target / "model.mil").is_file()
    assert target == compiled_cache_path(pkg, backend.cache_root)
    assert backend.compiled(pkg) == target and len(fake.compiles) == 1
    assert [p.name for p in target.parent.iterdir()] == [target.name], "no scratch directory left behind"


def test_a_changed_package_or_toolchain_gets_a_new_compile_and_the_old_copy_goes(fake, models, tmp_path, monkeypatch):
    import shutil

    backend = CoreMLBackend(cache_root=tmp_path / "cache")
    pkg = tmp_path / "src" / "llama_embeddings.mlpackage"
    shutil.copytree(next((models / "chunked").glob("*_embeddings.mlpackage")), pkg)
    other = tmp_path / "other" / "llama_embeddings.mlpackage"  # same name, another model
    shutil.copytree(pkg, other)
    first, elsewhere = backend.compiled(pkg), backend.compiled(other)
    assert first != elsewhere
    stale = first.parent / ".compiling-dead"
    stale.mkdir()
    os.utime(stale, (1, 1))
    manifest = pkg / "Manifest.json"
    manifest.write_text(manifest.read_text() + " ")
    second = backend.compiled(pkg)
    assert second != first and not first.exists() and not stale.exists()
    assert elsewhere.is_dir(), "another model's compiled copy is kept"
    monkeypatch.setattr(coreml, "toolchain_tag", lambda: "macos26.1-ct9.1")
    assert compiled_cache_path(pkg, backend.cache_root) != second


def test_two_processes_compiling_the_same_package(fake, models, tmp_path, monkeypatch):
    """The other process renames its compile into place first: ours is dropped, theirs used, no error."""
    import shutil

    import coremltools as ct

    backend = CoreMLBackend(cache_root=tmp_path / "cache")
    pkg = next((models / "chunked").glob("*_embeddings.mlpackage"))
    target = compiled_cache_path(pkg, backend.cache_root)
    real = ct.utils.compile_model

    def racing(src, dst):
        out = real(src, dst)
        shutil.copytree(out, target)  # the other process wins the rename
        (target / "theirs").write_text("")
        return out

    monkeypatch.setattr(ct.utils, "compile_model", racing)
    assert backend.compiled(pkg) == target and (target / "theirs").exists()
    assert [p.name for p in target.parent.iterdir()] == [target.name]


@pytest.mark.parametrize("layout", ["chunked", "mono"])
def test_core_ml_answers_like_the_portable_runtime(fake, models, layout):
    path = models / layout
    portable = load_model(path, backend="portable")
    loaded = load_model(path, backend="coreml")
    assert loaded.backend.name == "coreml" and loaded.backend.label == "ANE (Core ML)"
    assert fake.predicts > 0, "the model is warmed up at load"
    assert {units for _, _, units in fake.loads} == {"CPU_AND_NE"}
    functions = {fn for _, fn, _ in fake.loads}
    assert functions == ({"main", "infer", "prefill", "prefill_narrow"} if layout == "chunked" else {"infer", "prefill", "prefill_narrow"})
    for prompt in ([5], [5, 9, 11], list(range(3, 24))):
        loaded.lm.reset(), portable.lm.reset()
        assert greedy(loaded.lm, prompt) == greedy(portable.lm, prompt)


@pytest.mark.parametrize("layout", ["chunked", "mono"])
def test_the_narrow_prefill_through_core_ml(fake, models, layout):
    """Warm-up compiles and times the narrow prefill with the others; a follow-up the costs send through it
    answers as the portable runtime does; a narrow prefill the ANE rejects fails the load, not an answer."""
    from anechat.engine.lm import Costs

    loaded = load_model(models / layout, backend="coreml")
    lm = loaded.lm
    assert lm.widths == [1, 4, 8] and None not in (lm.costs.step, lm.costs.block, lm.costs.narrow)
    portable = load_model(models / layout, backend="portable").lm
    prompt = list(range(3, 23))
    lm.reset(), portable.reset()
    lm.prefill(prompt), portable.prefill(prompt)
    used = []
    for part in lm.forward.blocks[4] if layout == "chunked" else [lm.forward.blocks[4]]:
        predict = part.predict
        part.predict = lambda *a, predict=predict, **k: used.append(1) or predict(*a, **k)
    lm.costs = portable.costs = Costs(step=1.0, block=6.0, narrow=2.0)
    np.testing.assert_allclose(lm.prefill([7, 8, 9]), portable.prefill([7, 8, 9]), atol=1e-3)
    assert used, "the follow-up ran through prefill_narrow"
    fake.fail_predict = "prefill_narrow"
    with pytest.raises(ModelLoadError, match="prefill_narrow: Core ML prediction failed"):
        load_model(models / layout, backend="coreml")


def test_a_model_core_ml_cannot_run(fake, models, caplog, capsys, monkeypatch):
    fake.fail_predict = "prefill"
    path = models / "chunked"
    with pytest.raises(ModelLoadError, match="chunk_01of02.mlpackage:prefill: Core ML prediction failed: E5RT"):
        load_model(path, backend="coreml")
    loaded = load_model(path, backend="auto")
    assert loaded.backend.name == "portable"
    assert "Core ML cannot run this model" in caplog.text and "using the portable runtime" in caplog.text
    # what a user sees: one warning line, then the answer; --backend coreml fails with exit 4
    code = cli.main(["--model-dir", str(path), "-p", "hello", "--max-tokens", "3", "--temperature", "0"])
    err = capsys.readouterr().err
    assert code == 0 and "using the portable runtime" in err and "Traceback" not in err
    assert cli.main(["--model-dir", str(path), "--backend", "coreml", "-p", "hello"]) == 4
    assert "Core ML prediction failed" in capsys.readouterr().err


def test_intel_mac_is_not_labelled_ane(fake, monkeypatch):
    monkeypatch.setattr(coreml, "has_neural_engine", lambda: False)
    backend = CoreMLBackend(cache_root=Path("/nonexistent"))
    assert backend.label == "Core ML CPU (no Neural Engine)" and not backend.uses_neural_engine


def test_first_core_ml_run_is_probed_once_in_a_child(fake, models):
    load_model(models / "chunked", backend="coreml")
    load_model(models / "chunked", backend="coreml")
    assert fake.probes == 1, "a model that survived its first run is not probed again"


@pytest.mark.parametrize("child", ["import os, signal; os.kill(os.getpid(), signal.SIGSEGV)", "import sys; print('anechat: E5RT said no', file=sys.stderr); sys.exit(4)"])
def test_a_child_killed_or_failing_at_the_first_prediction(fake, models, monkeypatch, caplog, child):
    """Core ML may kill the process at the first predict of a model the ANE compiler rejects: the child takes
    the blow; --backend coreml fails with the reason, auto falls back to the portable runtime."""
    import sys

    from anechat.engine import coreml_probe

    monkeypatch.setattr(coreml_probe, "run_probe", REAL_RUN_PROBE)
    monkeypatch.setattr(coreml_probe, "probe_command", lambda *a: [sys.executable, "-c", child])
    reason = "SIGSEGV" if "SIGSEGV" in child else "E5RT said no"
    with pytest.raises(ModelLoadError, match=reason):
        load_model(models / "chunked", backend="coreml")
    assert load_model(models / "chunked", backend="auto").backend.name == "portable"
    assert reason in caplog.text
    assert fake.predicts == 0, "the parent never ran the model on Core ML"


def test_the_child_warms_the_model_up(fake, models, capsys):
    from anechat.engine import coreml_probe

    assert coreml_probe.main([str(models / "mono"), "CPU_AND_NE"]) == 0 and fake.predicts > 0
    fake.fail_predict = "infer"
    assert coreml_probe.main([str(models / "mono"), "CPU_AND_NE"]) == 4
    assert "Core ML prediction failed" in capsys.readouterr().err


@pytest.mark.macos
@pytest.mark.skipif(coreml.coreml_unavailable_reason() is not None, reason="needs Core ML on macOS 15+")
@pytest.mark.parametrize("layout", ["chunked", "mono"])
def test_real_core_ml_answers_like_the_portable_runtime(models, layout, tmp_path, monkeypatch):
    monkeypatch.setenv("ANECHAT_HOME", str(tmp_path))
    loaded, portable = load_model(models / layout, backend="coreml"), load_model(models / layout, backend="portable")
    prompt = list(range(3, 24))
    assert greedy(loaded.lm, prompt, 8) == greedy(portable.lm, prompt, 8)
