"""Op kernels of the portable executor: small programs built with coremltools' MIL builder, saved as
.mlpackage, loaded back and executed, compared with independent numpy computations."""

import coremltools as ct
import numpy as np
import pytest
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.mil import types

from anechat.runtime.portable import PortableBackend

RNG = np.random.default_rng(0)


def run(tmp_path, build, inputs: dict, precision=ct.precision.FLOAT32, states=(), calls=1, expect_op=None):
    specs = [mb.TensorSpec(v.shape, dtype=types.fp32 if v.dtype == np.float32 else types.int32) for v in inputs.values()]
    specs += [mb.StateTensorSpec(shape, dtype=types.fp16) for shape in states]

    # the MIL builder names inputs after the function's parameters: give it one with the right names
    names = list(inputs) + [f"state{i}" for i in range(len(states))]
    namespace = {"build": build}
    exec(f"def main({', '.join(names)}):\n    return build({', '.join(names)})", namespace)
    prog = mb.program(input_specs=specs, opset_version=ct.target.iOS18)(namespace["main"])
    model = ct.convert(prog, minimum_deployment_target=ct.target.iOS18, compute_precision=precision, skip_model_load=True)
    path = tmp_path / "p.mlpackage"
    model.save(str(path))
    part = PortableBackend().load(path)
    if expect_op:
        assert expect_op in {op.type for op in part.plan.function.ops}, f"{expect_op} was rewritten by coremltools"
    state = part.make_state() if states else None
    for _ in range(calls):
        out = part.predict(inputs, state)
    return out, state


def rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def single(out):
    assert len(out) == 1
    return next(iter(out.values()))


BINARY = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "real_div": np.divide,
    "maximum": np.maximum, "minimum": np.minimum,
}


@pytest.mark.parametrize("op", sorted(BINARY))
def test_binary_broadcasting(tmp_path, op):
    x, y = rand(2, 1, 4), rand(3, 1) + 3.0
    out, _ = run(tmp_path, lambda a, b: getattr(mb, op)(x=a, y=b), {"x": x, "y": y}, expect_op=op)
    np.testing.assert_allclose(single(out), BINARY[op](x, y), rtol=1e-5)


@pytest.mark.parametrize("op, ref", [("less", np.less), ("greater_equal", np.greater_equal), ("equal", np.equal)])
def test_comparison_and_select(tmp_path, op, ref):
    x, y = rand(3, 4), rand(3, 4)
    out, _ = run(tmp_path, lambda a, b: mb.select(cond=getattr(mb, op)(x=a, y=b), a=a, b=b), {"x": x, "y": y}, expect_op="select")
    np.testing.assert_allclose(single(out), np.where(ref(x, y), x, y))


UNARY = {
    "exp": np.exp, "tanh": np.tanh, "abs": np.abs,
    "sigmoid": lambda v: 1 / (1 + np.exp(-v)),
    "softplus": lambda v: np.log1p(np.exp(v)),
    "silu": lambda v: v / (1 + np.exp(-v)),
    "relu": lambda v: np.maximum(v, 0),
    "sqrt": lambda v: np.sqrt(np.abs(v)),
    "rsqrt": lambda v: 1 / np.sqrt(np.abs(v)),
}


@pytest.mark.parametrize("op", sorted(UNARY))
def test_unary(tmp_path, op):
    x = rand(2, 5)
    feed = np.abs(x) + 0.1 if op in ("sqrt", "rsqrt") else x
    out, _ = run(tmp_path, lambda a: getattr(mb, op)(x=a), {"x": feed})
    np.testing.assert_allclose(single(out), UNARY[op](feed), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["EXACT", "TANH_APPROXIMATION", "SIGMOID_APPROXIMATION"])
def test_gelu_modes(tmp_path, mode):
    from math import erf

    x = rand(7)
    out, _ = run(tmp_path, lambda a: mb.gelu(x=a, mode=mode), {"x": x}, expect_op="gelu")
    exact = np.array([0.5 * v * (1 + erf(v / np.sqrt(2))) for v in x])
    np.testing.assert_allclose(single(out), exact, atol=2e-2 if mode != "EXACT" else 1e-5)


@pytest.mark.parametrize("op, ref", [("reduce_sum", np.sum), ("reduce_mean", np.mean), ("reduce_max", np.max), ("reduce_min", np.min)])
def test_reductions_negative_axes(tmp_path, op, ref):
    x = rand(2, 3, 4)
    out, _ = run(tmp_path, lambda a: getattr(mb, op)(x=a, axes=[-1, 0], keep_dims=True), {"x": x}, expect_op=op)
    np.testing.assert_allclose(single(out), ref(x, axis=(0, 2), keepdims=True), rtol=1e-5)


def test_argmax_and_softmax(tmp_path):
    x = rand(3, 6)
    out, _ = run(tmp_path, lambda a: (mb.reduce_argmax(x=a, axis=-1), mb.softmax(x=a, axis=0)), {"x": x})
    values = list(out.values())
    np.testing.assert_array_equal(values[0], x.argmax(-1))
    e = np.exp(x - x.max(0))
    np.testing.assert_allclose(values[1], e / e.sum(0), rtol=1e-5)


def test_layer_norm_with_gamma_beta(tmp_path):
    x, g, b = rand(2, 6, 1, 3), rand(6), rand(6)
    out, _ = run(tmp_path, lambda a: mb.layer_norm(x=a, axes=[1], gamma=g, beta=b, epsilon=1e-5), {"x": x}, expect_op="layer_norm")
    mean = x.mean(1, keepdims=True)
    var = x.var(1, keepdims=True)
    np.testing.assert_allclose(single(out), (x - mean) / np.sqrt(var + 1e-5) * g[:, None, None] + b[:, None, None], rtol=1e-4, atol=1e-5)


def test_rms_norm_via_layer_norm_trick(tmp_path):
    """The converter's RMSNorm: LayerNorm over [x, -x] equals x / rms(x)."""
    from anechat.arch.mil import rms_norm

    x, w = rand(1, 8, 1, 3), rand(8)
    out, _ = run(tmp_path, lambda a: rms_norm(mb.cast(x=a, dtype="fp16"), w, 1e-6, axis=1, width=8), {"x": x}, precision=ct.precision.FLOAT16)
    ref = x / np.sqrt((x * x).mean(1, keepdims=True) + 1e-6) * w[:, None, None]
    np.testing.assert_allclose(single(out), ref, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("shape,axis,weighted", [((1, 8, 1, 1), 1, True), ((1, 4, 1, 16), 3, True), ((1, 4, 1, 16), -1, False),
                                                 ((1, 8, 1, 5), 1, True)])
def test_rms_norm_fused(tmp_path, packed, shape, axis, weighted):
    """The fused RMSNorm in fp32 on decode's shapes (hidden state, per-head q/k norms: with numba one kernel
    call over the rows) and prefill's (axis not last), against the formula."""
    from anechat.arch.mil import rms_norm

    x, w = rand(*shape), rand(shape[axis]) if weighted else None
    width = shape[axis]
    # the converter's helper writes fp16 constants (gamma and eps rounded to fp16); the runtime computes in fp32
    run(tmp_path, lambda a: rms_norm(mb.cast(x=a, dtype="fp16"), w, 1e-6, axis=axis, width=width), {"x": x},
        precision=ct.precision.FLOAT16)
    part = PortableBackend(packed=packed).load(tmp_path / "p.mlpackage")
    assert "anechat_rms_norm" in {op.type for op in part.plan.function.ops}
    ref = x / np.sqrt((x.astype(np.float64) ** 2).mean(axis, keepdims=True) + float(np.float16(1e-6)))
    if w is not None:
        ref = ref * w.astype(np.float16).astype(np.float32).reshape([width if i == axis % 4 else 1 for i in range(4)])
    np.testing.assert_allclose(single(part.predict({"x": x})), ref, rtol=1e-5, atol=1e-6)


def test_matmul_transposes_and_broadcast(tmp_path):
    x, y = rand(2, 3, 4), rand(5, 4)
    out, _ = run(tmp_path, lambda a, b: mb.matmul(x=a, y=b, transpose_y=True), {"x": x, "y": y}, expect_op="matmul")
    np.testing.assert_allclose(single(out), x @ y.T, rtol=1e-5)
    w = rand(4, 6)
    out, _ = run(tmp_path, lambda a: mb.matmul(x=a, y=w, transpose_x=True), {"x": rand(4, 3)}, expect_op="matmul")
    assert single(out).shape == (3, 6)


def test_linear(tmp_path):
    x, w, b = rand(2, 4), rand(3, 4), rand(3)
    out, _ = run(tmp_path, lambda a: mb.linear(x=a, weight=w, bias=b), {"x": x}, expect_op="linear")
    np.testing.assert_allclose(single(out), x @ w.T + b, rtol=1e-5)


def _conv_ref(x, w, b, stride, pad, groups):
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    xp = np.pad(x, [(0, 0), (0, 0), (pad, pad), (pad, pad)])
    oh, ow = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    out = np.zeros((n, o, oh, ow), np.float64)
    og = o // groups
    for oc in range(o):
        g = oc // og
        for i in range(oh):
            for j in range(ow):
                patch = xp[:, g * cg : (g + 1) * cg, i * stride : i * stride + kh, j * stride : j * stride + kw]
                out[:, oc, i, j] = (patch * w[oc]).sum(axis=(1, 2, 3)) + b[oc]
    return out


@pytest.mark.parametrize("kernel, stride, pad, groups", [(1, 1, 0, 1), (3, 1, 1, 1), (3, 2, 1, 2)])
def test_conv(tmp_path, kernel, stride, pad, groups):
    x = rand(1, 4, 6, 5)
    w, b = rand(6, 4 // groups, kernel, kernel), rand(6)
    build = lambda a: mb.conv(x=a, weight=w, bias=b, strides=[stride, stride], pad_type="custom", pad=[pad] * 4, groups=groups)  # noqa: E731
    out, _ = run(tmp_path, build, {"x": x}, expect_op="conv")
    np.testing.assert_allclose(single(out), _conv_ref(x, w, b, stride, pad, groups), rtol=1e-4, atol=1e-4)


def test_shape_ops(tmp_path):
    x = rand(2, 3, 4)

    def build(a):
        t = mb.transpose(x=a, perm=[2, 0, 1])
        r = mb.reshape(x=t, shape=[4, 6])
        e = mb.expand_dims(x=r, axes=[0, -1])
        s = mb.squeeze(x=e, axes=[0])
        return mb.tile(x=s, reps=[1, 2, 1])

    out, _ = run(tmp_path, build, {"x": x})
    np.testing.assert_array_equal(single(out), np.tile(x.transpose(2, 0, 1).reshape(4, 6)[..., None], (1, 2, 1)))


def test_concat_split(tmp_path):
    x, y = rand(2, 3), rand(2, 5)

    def build(a, b):
        c = mb.concat(values=[a, b, a], axis=-1)
        p, q = mb.split(x=c, split_sizes=[4, 7], axis=1)
        r, _ = mb.split(x=mb.concat(values=[a, a], axis=0), num_splits=2, axis=0)
        return p, q, r

    out, _ = run(tmp_path, build, {"x": x, "y": y})
    cat = np.concatenate([x, y, x], -1)
    v = list(out.values())
    np.testing.assert_array_equal(v[0], cat[:, :4])
    np.testing.assert_array_equal(v[1], cat[:, 4:])
    np.testing.assert_array_equal(v[2], x)


def test_slice_by_index_masks_strides_negative(tmp_path):
    x = rand(4, 6, 5)

    def build(a):
        return (
            mb.slice_by_index(x=a, begin=[1, 0, -3], end=[3, 6, -1], stride=[1, 2, 1], end_mask=[False, True, False]),
            mb.slice_by_index(x=a, begin=[2, 0, 0], end=[3, 6, 5], squeeze_mask=[True, False, False]),
            mb.slice_by_size(x=a, begin=[1, 2, 0], size=[2, -1, 3]),
        )

    out, _ = run(tmp_path, build, {"x": x})
    v = list(out.values())
    np.testing.assert_array_equal(v[0], x[1:3, ::2, -3:-1])
    np.testing.assert_array_equal(v[1], x[2])
    np.testing.assert_array_equal(v[2], x[1:3, 2:, 0:3])


def test_gather_variants(tmp_path):
    x = rand(5, 3)
    idx = np.array([[4, 0], [1, 1]], np.int32)
    out, _ = run(tmp_path, lambda a, i: mb.gather(x=a, indices=i, axis=0), {"x": x, "i": idx}, expect_op="gather")
    np.testing.assert_array_equal(single(out), x[idx])
    along = np.array([[0, 2, 1], [1, 1, 0]], np.int32)
    out, _ = run(tmp_path, lambda a, i: mb.gather_along_axis(x=a, indices=i, axis=0), {"x": x, "i": along}, expect_op="gather_along_axis")
    np.testing.assert_array_equal(single(out), np.take_along_axis(x, along, 0))


def test_cast_and_band_part(tmp_path):
    x = rand(4, 4) * 10
    out, _ = run(tmp_path, lambda a: (mb.cast(x=a, dtype="int32"), mb.band_part(x=a, lower=1, upper=0)), {"x": x})
    v = list(out.values())
    np.testing.assert_array_equal(v[0], x.astype(np.int32))
    np.testing.assert_array_equal(v[1], np.tril(np.triu(x, -1), 0))


def test_state_updates_in_place_and_is_shared(tmp_path):
    """A stateful program: read_state → slice_update at a dynamic position → coreml_update_state."""
    shape = (2, 8)

    def build(v, pos, st):
        cache = mb.read_state(input=st)
        begin = mb.concat(values=[np.zeros(1, np.int32), pos], axis=0)
        end = mb.add(x=begin, y=np.array([2, 1], np.int32))
        cache = mb.slice_update(x=cache, update=mb.cast(x=v, dtype="fp16"), begin=begin, end=end)
        mb.coreml_update_state(state=st, value=cache)
        return mb.reduce_sum(x=mb.cast(x=cache, dtype="fp32"), axes=[1])

    v = np.ones((2, 1), np.float32)
    model_inputs = {"v": v, "pos": np.array([3], np.int32)}
    out, state = run(tmp_path, build, model_inputs, precision=ct.precision.FLOAT16, states=[shape], calls=1)
    buf = next(iter(state.buffers.values()))
    assert buf[:, 3].tolist() == [1, 1] and buf.sum() == 2
    part = PortableBackend().load(tmp_path / "p.mlpackage")
    part.predict({"v": 2 * v, "pos": np.array([5], np.int32)}, state)  # another part, the same state
    assert buf[:, 5].tolist() == [2, 2] and buf.sum() == 6


@pytest.mark.parametrize("nbits", [4, 6, 8])
def test_lut_expansion_matches_coremltools(tmp_path, nbits):
    w = rand(32, 16)

    @mb.program(input_specs=[mb.TensorSpec((1, 16))], opset_version=ct.target.iOS18)
    def prog(x):
        return mb.linear(x=x, weight=w)

    model = ct.convert(prog, minimum_deployment_target=ct.target.iOS18, compute_precision=ct.precision.FLOAT32, skip_model_load=True)
    cfg = ct.optimize.coreml.OpPalettizerConfig(nbits=nbits, mode="uniform", granularity="per_grouped_channel", group_size=8, weight_threshold=1)
    model = ct.optimize.coreml.palettize_weights(model, ct.optimize.coreml.OptimizationConfig(global_config=cfg))
    model.save(str(tmp_path / "lut.mlpackage"))
    dense = ct.optimize.coreml.decompress_weights(model)._mil_program.functions["main"].operations
    expected = next(op.outputs[0].val for op in dense if op.op_type == "const" and op.outputs[0].shape == (32, 16))
    assert np.abs(expected - w).max() > 0  # really quantized
    part = PortableBackend().load(tmp_path / "lut.mlpackage")
    assert "constexpr_lut_to_dense" in {op.type for op in part.plan.function.ops}
    x = rand(1, 16)
    np.testing.assert_allclose(part.predict({"x": x})[next(iter(part.outputs))], x @ expected.T, rtol=1e-4, atol=1e-4)


def test_attention_fusion_is_exact_and_follows_the_mask(tmp_path):
    """matmul(q,kᵀ) → reshape → add(mask) → softmax → reshape → matmul(·,v) runs fused over the visible
    columns; results equal the unfused program, also when the caller reuses and edits one mask array."""
    kvh, g, s, ctx, hd = 2, 2, 3, 16, 8

    def build(q, k, v, mask):
        scores = mb.matmul(x=q, y=k, transpose_y=True)
        scores = mb.add(x=mb.reshape(x=scores, shape=[kvh, g, s, ctx]), y=mask)
        probs = mb.reshape(x=mb.softmax(x=scores, axis=-1), shape=[kvh, g * s, ctx])
        return mb.matmul(x=probs, y=v)

    q, k, v = rand(kvh, g * s, hd), rand(kvh, ctx, hd), rand(kvh, ctx, hd)
    mask = np.full((1, 1, s, ctx), -np.inf, np.float32)
    mask[..., :5] = 0
    out, _ = run(tmp_path, build, {"q": q, "k": k, "v": v, "mask": mask})
    part = PortableBackend().load(tmp_path / "p.mlpackage")
    assert "anechat_attention" in {op.type for op in part.plan.function.ops}  # the plan runs the fused form

    def reference(m):
        sc = (q @ np.swapaxes(k, -1, -2)).reshape(kvh, g, s, ctx) + m
        e = np.exp(sc - sc.max(-1, keepdims=True))
        return (e / e.sum(-1, keepdims=True)).reshape(kvh, g * s, ctx) @ v

    np.testing.assert_allclose(single(out), reference(mask), rtol=1e-5, atol=1e-6)
    feed = {"q": q, "k": k, "v": v, "mask": mask}
    mask[..., :12] = 0  # the same array, edited in place: no stale visible-column count
    np.testing.assert_allclose(part.predict(feed)[next(iter(part.outputs))], reference(mask), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("packed", [False, True])
def test_attention_of_one_query_position(tmp_path, packed):
    """Decode's shape (one mask row; with numba, one JIT kernel call): masked columns inside the visible
    range (a sliding window's) and -inf included, against the unfused formula."""
    kvh, g, ctx, hd = 3, 3, 32, 16

    def build(q, k, v, mask):
        scores = mb.matmul(x=q, y=k, transpose_y=True)
        scores = mb.add(x=mb.reshape(x=scores, shape=[kvh, g, 1, ctx]), y=mask)
        probs = mb.reshape(x=mb.softmax(x=scores, axis=-1), shape=[kvh, g, ctx])
        return mb.matmul(x=probs, y=v)

    q, k, v = rand(kvh, g, hd), rand(kvh, ctx, hd), rand(kvh, ctx, hd)
    mask = np.full((1, 1, 1, ctx), -np.inf, np.float32)
    mask[..., 4:20] = 0
    mask[..., 9] = -1e4
    run(tmp_path, build, {"q": q, "k": k, "v": v, "mask": mask})
    part = PortableBackend(packed=packed).load(tmp_path / "p.mlpackage")
    assert "anechat_attention" in {op.type for op in part.plan.function.ops}
    sc = (q @ np.swapaxes(k, -1, -2)) + mask.reshape(-1)
    e = np.exp(sc - sc.max(-1, keepdims=True))
    want = (e / e.sum(-1, keepdims=True)) @ v
    got = part.predict({"q": q, "k": k, "v": v, "mask": mask})[next(iter(part.outputs))]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_depthwise_causal_conv_over_time(tmp_path):
    """Gated DeltaNet's conv1d: one filter of K taps per channel along the time axis, no padding."""
    x, w = rand(1, 6, 1, 9), rand(6, 1, 1, 4)
    out, _ = run(tmp_path, lambda a: mb.conv(x=a, weight=w, groups=6), {"x": x}, expect_op="conv")
    np.testing.assert_allclose(single(out), _conv_ref(x, w, np.zeros(6), 1, 0, 6), rtol=1e-4, atol=1e-4)
