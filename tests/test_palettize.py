"""anechat's own LUT palettization: the 1-D k-means is optimal, the LUTs land in the program as
constexpr_lut_to_dense and the portable runtime expands them exactly as the LUT says."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anechat.arch.mil import Palettized
from anechat.convert.ane.compress import Lut, parse_lut
from anechat.convert.ane.palettize import _histogram, kmeans_1d, palettize_matrix
from anechat.errors import ConversionError, UsageError


def brute_force(x, w, k):
    """The least weighted squared error over every split of the sorted points into ≤ k contiguous runs."""
    best = np.inf
    n = len(x)
    for cuts in itertools.combinations(range(1, n), min(k, n) - 1):
        bounds = (0, *cuts, n)
        cost = 0.0
        for a, b in zip(bounds[:-1], bounds[1:]):
            if w[a:b].sum() > 0:
                mean = (w[a:b] * x[a:b]).sum() / w[a:b].sum()
                cost += (w[a:b] * (x[a:b] - mean) ** 2).sum()
        best = min(best, cost)
    return best


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 9),
    k=st.integers(1, 5),
    seed=st.integers(0, 2**32 - 1),
)
def test_kmeans_1d_is_optimal_and_its_centroids_reach_the_optimum(n, k, seed):
    rng = np.random.default_rng(seed)
    x = np.sort(rng.normal(size=(3, n)).round(1), axis=1)  # rounding makes ties
    w = rng.random((3, n)) * (rng.random((3, n)) > 0.2)  # and zero weights
    centroids, cost = kmeans_1d(x, w, k)
    assert centroids.shape == (3, k) and np.all(np.diff(centroids, axis=1) >= 0) and np.isfinite(centroids).all()
    for g in range(3):
        optimum = brute_force(x[g], w[g], k)
        assert cost[g] == pytest.approx(optimum, abs=1e-9)
        nearest = ((x[g][:, None] - centroids[g][None]) ** 2).min(axis=1)
        assert (w[g] * nearest).sum() == pytest.approx(optimum, abs=1e-9)


def test_merging_equal_values_keeps_the_optimum_exact():
    rng = np.random.default_rng(3)
    x = np.sort(rng.integers(-20, 20, size=(4, 300)).astype(np.float64) / 8, axis=1)  # ≤ 40 distinct values
    w = rng.random(x.shape)
    hx, hw = _histogram(x, w, 64)
    assert hx.shape[1] <= 64 and np.allclose(hw.sum(1), w.sum(1))
    (_, merged), (_, raw) = kmeans_1d(hx, hw, 8), kmeans_1d(x, w, 8)
    # equal values merged into one weighted point change no clustering cost but the constant scatter (0)
    np.testing.assert_allclose(merged, raw, rtol=1e-9, atol=1e-12)


def test_palettize_matrix_groups_palettes_and_weights():
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((32, 48)).astype(np.float32)
    p = palettize_matrix(weight, 4, group_size=8)
    assert p.indices.shape == (32, 48) and p.indices.dtype == np.uint8 and p.indices.max() < 16
    assert p.lut.shape == (4, 1, 16, 1) and p.lut.dtype == np.float16 and p.group_size == 8
    dense = p.dense()
    for r in range(32):  # each row only uses its group's palette
        assert set(np.unique(dense[r])) <= set(p.lut[r // 8].ravel().astype(np.float32))
    # per output channel beats a palette per 8 channels; 6 bits beat 4
    err = lambda q: float(((q.dense() - weight) ** 2).sum())  # noqa: E731
    assert err(palettize_matrix(weight, 4, 1)) < err(p) < err(palettize_matrix(weight, 4, 32))
    assert err(palettize_matrix(weight, 6, 8)) < err(p)
    # a column that matters more is kept closer
    column_weight = np.ones(48)
    column_weight[:4] = 1000.0
    aware = palettize_matrix(weight, 4, 8, column_weight)
    col_err = lambda q: float(((q.dense() - weight)[:, :4] ** 2).sum())  # noqa: E731
    assert col_err(aware) < col_err(p)
    # rows come off a palettized matrix on group boundaries only (the lm_head is split that way)
    assert isinstance(p[8:24], Palettized) and p[8:24].lut.shape[0] == 2
    with pytest.raises(ConversionError, match="cut a LUT group"):
        p[4:20]


def test_group_size_must_divide_the_output_channels():
    with pytest.raises(ValueError, match="does not divide"):
        palettize_matrix(np.ones((10, 8), np.float32), 4, group_size=4)


@pytest.mark.parametrize(
    "text, expected",
    [("none", None), ("4", Lut(4, 1)), ("6", Lut(6, 4)), ("8", Lut(8, 16)), ("4,16", Lut(4, 16)), (6, Lut(6, 4))],
)
def test_parse_lut(text, expected):
    assert parse_lut(text) == expected


@pytest.mark.parametrize("text", ["3", "4,0", "4,x", "4,16,2", "auto8"])
def test_parse_lut_rejects(text):
    with pytest.raises(UsageError, match="none, auto, 4, 6 or 8"):
        parse_lut(text, "--lut-ffn")


@pytest.mark.parametrize("bits, group", [(4, 1), (6, 4), (8, 16)])
def test_lut_program_round_trips_through_the_portable_runtime(tmp_path, bits, group):
    """A program whose only weight is a LUT: the runtime's expansion equals the palette entries the indices
    name, bit for bit."""
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    from anechat.arch.mil import weight_const
    from anechat.runtime.portable import PortableBackend

    rng = np.random.default_rng(bits)
    p = palettize_matrix(rng.standard_normal((32, 40)).astype(np.float32), bits, group)

    @mb.program(input_specs=[mb.TensorSpec((32, 40, 1, 1), dtype=types.fp16)], opset_version=ct.target.iOS18)
    def prog(x):
        return mb.add(x=x, y=weight_const(p, trailing_axes=2), name="out")

    model = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS18, skip_model_load=True)
    model.save(str(tmp_path / "lut.mlpackage"))
    part = PortableBackend().load(tmp_path / "lut.mlpackage")
    assert "constexpr_lut_to_dense" in [op.type for op in part.plan.function.ops]
    out = part.predict({"x": np.zeros((32, 40, 1, 1), np.float16)})["out"]
    expected = np.take_along_axis(np.repeat(p.lut.reshape(-1, 2**bits), group, axis=0), p.indices.astype(np.int64), axis=1)
    np.testing.assert_array_equal(out.reshape(32, 40), expected)


def test_mean_kl_is_zero_for_equal_logits_and_grows_with_the_difference():
    from anechat.engine.verify import mean_kl

    rng = np.random.default_rng(0)
    a = rng.standard_normal((5, 50)).astype(np.float32)
    assert mean_kl(a, a) == pytest.approx(0.0, abs=1e-12) and mean_kl(a, a + 3.0) == pytest.approx(0.0, abs=1e-9)
    assert 0 < mean_kl(a, a + 0.1 * rng.standard_normal(a.shape)) < mean_kl(a, a + rng.standard_normal(a.shape))


def test_gemma3_converts_with_luts_on_every_part(tmp_path):
    """Gemma 3 scales its embedding table (a Palettized times a scalar) and calibrates through its own
    reference forward pass."""
    from tiny import tiny_chat_checkpoint

    from anechat.convert.build import ConvertOptions, convert
    from anechat.engine.verify import verify_ids
    from anechat.runtime.modeldir import open_model_dir
    from anechat.runtime.portable import PortableBackend

    ckpt = tiny_chat_checkpoint("gemma3", num_layers=1)
    convert(ckpt, tmp_path / "m", ConvertOptions(context=32, batch=4, lut_ffn=4, lut_embeddings=8, lut_lmhead=8))
    md = open_model_dir(tmp_path / "m")
    backend = PortableBackend()
    parts = [backend.load(path, "infer" if role.startswith("chunk") else None) for role, path in md.parts()]
    assert all("constexpr_lut_to_dense" in {op.type for op in part.plan.function.ops} for part in parts)
    report = verify_ids(ckpt, tmp_path / "m", list(range(3, 20)))
    assert report.top1_agreement >= 0.9 and np.isfinite(report.kl)


def test_sort_key_orders_fp16_like_the_floats():
    from anechat.convert.ane.palettize import _sort_key

    rng = np.random.default_rng(5)
    half = np.concatenate([rng.standard_normal(500) * 10.0 ** rng.integers(-6, 4, 500),
                           [0.0, -0.0, np.inf, -np.inf, 65504, -65504, 6e-8, -6e-8]]).astype(np.float16)
    order = np.argsort(_sort_key(half[None]), axis=1, kind="stable")[0]
    assert np.all(np.diff(half[order].astype(np.float64)) >= 0)


def test_layers_palettized_in_worker_processes_equal_the_serial_result(monkeypatch):
    """A big job is spread over processes; the palettes and indices must not depend on where they ran."""
    from tiny import tiny_chat_checkpoint

    from anechat.convert.ane import compress
    from anechat.convert.ane.programs import layer_weights

    ckpt = tiny_chat_checkpoint("llama", num_layers=3)
    calibration = compress.Calibration(ckpt)
    lut = Lut(4, 1)
    serial = compress.palettize_layers(range(3), lambda i: layer_weights(ckpt, i), lut, calibration)
    monkeypatch.setattr(compress, "PARALLEL_MIN_ELEMENTS", 0)
    monkeypatch.setattr(compress.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert compress._workers(1, 3) == 2
    parallel = compress.palettize_layers(range(3), lambda i: layer_weights(ckpt, i), lut, calibration)
    assert sorted(parallel) == [0, 1, 2]
    for i in range(3):
        for name in compress.layer_moments(layer_weights(ckpt, i), i, calibration):
            a, b = getattr(serial[i], name), getattr(parallel[i], name)
            assert isinstance(b, Palettized)
            np.testing.assert_array_equal(a.indices, b.indices)
            np.testing.assert_array_equal(a.lut, b.lut)
