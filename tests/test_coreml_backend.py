"""Core ML backend: everything that can run without a Mac here, plus macOS-only tests marked so."""

import sys
from pathlib import Path

import numpy as np
import pytest

from anechat.errors import ModelLoadError
from anechat.runtime import coreml, select
from anechat.runtime.backend import TensorSpec


def test_unavailable_off_macos_even_though_coremltools_imports():
    if sys.platform == "darwin":
        pytest.skip("this machine is a Mac")
    import coremltools  # noqa: F401 — the import works here, prediction does not

    reason = coreml.coreml_unavailable_reason()
    assert reason and "macOS" in reason


def test_old_macos_is_refused(monkeypatch):
    monkeypatch.setattr(coreml.sys, "platform", "darwin")
    monkeypatch.setattr(coreml.platform, "mac_ver", lambda: ("14.6", ("", "", ""), "arm64"))
    assert "macOS 15" in coreml.coreml_unavailable_reason()


def test_macos_without_native_bindings_is_refused(monkeypatch):
    from coremltools.models import model as ct_model

    monkeypatch.setattr(coreml.sys, "platform", "darwin")
    monkeypatch.setattr(coreml.platform, "mac_ver", lambda: ("15.1", ("", "", ""), "arm64"))
    monkeypatch.setattr(ct_model, "_MLModelProxy", None, raising=False)
    assert "native" in coreml.coreml_unavailable_reason()


def test_auto_selects_portable_when_coreml_cannot_predict(monkeypatch):
    monkeypatch.setattr(coreml, "coreml_unavailable_reason", lambda: "no Mac here")
    backend = select.get_backend("auto")
    assert backend.name == "portable"


def test_auto_selects_coreml_when_available(monkeypatch, tmp_path):
    monkeypatch.setattr(coreml, "coreml_unavailable_reason", lambda: None)
    monkeypatch.setattr(coreml, "has_neural_engine", lambda: True)
    monkeypatch.setenv("ANECHAT_HOME", str(tmp_path))
    backend = select.get_backend("auto", compute_units="CPU_ONLY")
    assert backend.name == "coreml" and backend.compute_units == "CPU_ONLY"
    assert backend.cache_root == tmp_path / "cache"
    assert select.backend_label(backend) == "Core ML CPU_ONLY"
    assert select.backend_label(select.get_backend("coreml")) == "ANE (Core ML)"
    monkeypatch.setattr(coreml, "has_neural_engine", lambda: False)  # an Intel Mac: CPU_AND_NE runs on the CPU
    assert select.backend_label(select.get_backend("coreml")) == "Core ML CPU (no Neural Engine)"
    assert select.shares_cores(select.get_backend("coreml"))


def test_forced_coreml_without_coreml_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(coreml, "coreml_unavailable_reason", lambda: "no Mac here")
    with pytest.raises(ModelLoadError, match="not available: no Mac here"):
        select.get_backend("coreml")


def test_strict_fp16_forces_portable(monkeypatch):
    monkeypatch.setattr(coreml, "coreml_unavailable_reason", lambda: None)
    assert select.get_backend("auto", strict_fp16=True).name == "portable"
    with pytest.raises(ModelLoadError, match="strict-fp16"):
        select.get_backend("coreml", strict_fp16=True)


def test_unknown_backend_and_compute_units():
    with pytest.raises(ModelLoadError, match="unknown backend"):
        select.get_backend("gpu")
    with pytest.raises(ValueError, match="compute units"):
        coreml.CoreMLBackend(compute_units="NPU", cache_root=Path("/nonexistent"))


def _fake_package(root: Path, weight: bytes) -> Path:
    pkg = root / "m.mlpackage"
    (pkg / "Data").mkdir(parents=True)
    (pkg / "Manifest.json").write_text("{}")
    (pkg / "Data" / "weight.bin").write_bytes(weight)
    return pkg


def test_compiled_cache_key_follows_content(tmp_path):
    pkg = _fake_package(tmp_path, b"\0" * 100)
    cache = tmp_path / "cache"
    first = coreml.compiled_cache_path(pkg, cache)
    assert first == coreml.compiled_cache_path(pkg, cache), "stable for unchanged content"
    assert first.parent == cache / "compiled" and first.suffix == ".mlmodelc"
    (pkg / "Data" / "weight.bin").write_bytes(b"\1" * 101)
    assert coreml.compiled_cache_path(pkg, cache) != first, "changed weights must not reuse a stale compile"


def test_cached_compile_is_reused_without_compiling(tmp_path, monkeypatch):
    pkg = _fake_package(tmp_path, b"x")
    backend = coreml.CoreMLBackend(cache_root=tmp_path / "cache")
    target = coreml.compiled_cache_path(pkg, backend.cache_root)
    target.mkdir(parents=True)
    import coremltools as ct

    monkeypatch.setattr(ct.utils, "compile_model", lambda *a, **k: pytest.fail("must not recompile"))
    assert backend.compiled(pkg) == target


def test_failed_compile_leaves_no_partial_cache(tmp_path, monkeypatch):
    pkg = _fake_package(tmp_path, b"x")
    backend = coreml.CoreMLBackend(cache_root=tmp_path / "cache")
    import coremltools as ct

    def broken(src, dst):
        Path(dst).mkdir(parents=True)
        raise RuntimeError("compiler exploded")

    monkeypatch.setattr(ct.utils, "compile_model", broken)
    with pytest.raises(ModelLoadError, match="m.mlpackage: Core ML could not compile it: compiler exploded"):
        backend.compiled(pkg)
    assert not any((tmp_path / "cache" / "compiled").iterdir())


def test_inputs_are_cast_to_what_coremltools_takes_and_contiguous():
    specs = {
        "hidden_states": TensorSpec("hidden_states", (1, 2, 4), "float16"),
        "position_ids": TensorSpec("position_ids", (2,), "int32"),
    }
    x = np.arange(16, dtype=np.float32).reshape(1, 4, 4)[:, ::2, :]
    out = coreml.build_inputs({"hidden_states": x, "position_ids": np.array([3, 4], dtype=np.int64)}, specs)
    # coremltools turns float16 arrays into float32 before Core ML turns them back: hand it float32 at once.
    assert out["hidden_states"].dtype == np.float32 and out["hidden_states"].flags.c_contiguous
    assert out["position_ids"].dtype == np.int32  # its native layer refuses int64
    np.testing.assert_array_equal(out["hidden_states"], x)
    with pytest.raises(ModelLoadError, match="missing input 'position_ids'"):
        coreml.build_inputs({"hidden_states": x}, specs)
    with pytest.raises(ModelLoadError, match=r"shape \(1, 3\).*declares \(2,\)"):
        coreml.build_inputs({"hidden_states": x, "position_ids": np.zeros((1, 3))}, specs)


@pytest.mark.macos
@pytest.mark.skipif(coreml.coreml_unavailable_reason() is not None, reason="needs Core ML on macOS 15+")
def test_coreml_runs_a_stateful_program(tmp_path):
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    @mb.program(
        input_specs=[
            mb.TensorSpec((1, 4), dtype=types.fp16),
            mb.StateTensorSpec((1, 4), dtype=types.fp16),
        ],
        opset_version=ct.target.iOS18,
    )
    def prog(x, acc):
        total = mb.add(x=mb.read_state(input=acc), y=x)
        mb.coreml_update_state(state=acc, value=total)
        return mb.identity(x=total, name="y")

    model = ct.convert(prog, minimum_deployment_target=ct.target.iOS18)
    pkg = tmp_path / "acc.mlpackage"
    model.save(str(pkg))
    backend = coreml.CoreMLBackend(cache_root=tmp_path / "cache")
    part = backend.load(pkg)
    state = part.make_state()
    x = np.ones((1, 4), np.float16)
    part.predict({"x": x}, state)
    out = part.predict({"x": x}, state)
    np.testing.assert_allclose(out["y"], 2 * x)
    assert coreml.compiled_cache_path(pkg, backend.cache_root).is_dir()
