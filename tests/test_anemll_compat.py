"""ANEMLL-built models (0.3.4 chunked, 0.3.5 monolithic, argmax heads, .mlmodelc parts) run in anechat with
the answers of the numpy reference — on the portable runtime and through the Core ML contract fake."""

import numpy as np
import pytest

from anechat.convert.build import ConvertOptions, convert
from anechat.convert.numpy_reference import ReferenceModel
from anechat.engine.lm import ChunkedLM
from anechat.errors import ModelLoadError
from anechat.runtime.coreml import CoreMLBackend
from anechat.runtime.modeldir import check_model_dir, head_splits, open_model_dir
from anechat.runtime.portable import PortableBackend
from anemll_fixtures import as_anemll, declare_update_mask, first_row_without_norm, rename_output
from coreml_contract import FakeCoreML
from tiny import tiny_chat_checkpoint

CTX, BATCH, HIDDEN = 64, 8, 64
FP16_TOL = 0.02


def ids(n, seed=1):
    return [int(x) for x in np.random.default_rng(seed).integers(3, 320, size=n)]


@pytest.fixture(scope="module")
def ckpt():
    return tiny_chat_checkpoint("llama", seed=3)


@pytest.fixture(scope="module")
def made(tmp_path_factory, ckpt):
    root = tmp_path_factory.mktemp("anemll")
    convert(ckpt, root / "chunked", ConvertOptions(context=CTX, batch=BATCH, chunks=2))
    convert(ckpt, root / "mono", ConvertOptions(context=CTX, batch=BATCH, monolithic=True))
    return root


@pytest.fixture(params=["portable", "coreml"])
def backend(request, monkeypatch, tmp_path):
    if request.param == "portable":
        return PortableBackend()
    FakeCoreML().install(monkeypatch)
    return CoreMLBackend(cache_root=tmp_path / "cache")


def assert_reference(lm, ckpt, prompts=(1, 3, 4, 9, 17, 30)):
    ref = ReferenceModel(ckpt)
    for n in prompts:
        prompt = ids(n, seed=n)
        lm.reset(), ref.reset()
        np.testing.assert_allclose(lm.prefill(prompt), ref.forward(prompt)[-1], atol=FP16_TOL, err_msg=f"{n} tokens")
    # a second turn reuses the first's keys and values
    lm.reset(), ref.reset()
    first = ids(12, seed=40)
    lm.sync(first)
    whole = first + ids(11, seed=41)
    reused, logits = lm.sync(whole)
    assert reused == 12
    np.testing.assert_allclose(logits, ref.forward(whole)[-1], atol=FP16_TOL)


def test_chunked_with_anemll_last_chunk_prefill(made, ckpt, backend, tmp_path):
    """ANEMLL's last chunk returns row 0 of a prefill block, unnormalised: the last prompt token must go
    through `infer` (taking row > 0 crashed; row 0 gave wrong logits)."""
    d = as_anemll(made / "chunked", tmp_path / "m", edits={"llama_FFN_PF_chunk_02of02": lambda p: first_row_without_norm(p.functions["prefill"], HIDDEN)})
    assert not check_model_dir(d)
    md = open_model_dir(d)
    assert md.chunks[0].suffix == ".mlmodelc" and not md.made_by_anechat
    lm = ChunkedLM(md, backend)
    assert not lm.forward.prefill_gives_logits
    assert_reference(lm, ckpt)


def test_anechat_conversions_keep_the_logits_of_the_prefill_block(made):
    lm = ChunkedLM(open_model_dir(made / "chunked"), PortableBackend())
    assert lm.forward.prefill_gives_logits


def test_chunks_declaring_update_mask_are_given_one(made, ckpt, backend, tmp_path):
    def edit(program):
        for fn in program.functions.values():
            declare_update_mask(fn, CTX)

    edits = {f"llama_FFN_PF_chunk_0{i}of02": edit for i in (1, 2)}
    d = as_anemll(made / "chunked", tmp_path / "m", edits=edits)
    assert not check_model_dir(d)
    assert_reference(ChunkedLM(open_model_dir(d), backend), ckpt, prompts=(1, 9, 17))


def test_monolithic_update_mask_has_its_declared_size(made, ckpt, backend, tmp_path):
    """ANEMLL 0.3.5 sizes update_mask by max(state length, sliding window), which may exceed the context."""
    d = as_anemll(made / "mono", tmp_path / "m", edits={"llama_monolithic_full": lambda p: declare_update_mask(p.functions["prefill"], CTX + 16)})
    assert not check_model_dir(d)
    lm = ChunkedLM(open_model_dir(d), backend)
    assert lm.forward.prefill_part.inputs["update_mask"].shape == (1, 1, CTX + 16, BATCH)
    assert_reference(lm, ckpt, prompts=(1, 9, 17))


def test_single_output_named_logits(made, ckpt, tmp_path):
    d = as_anemll(made / "chunked", tmp_path / "m", edits={"llama_lm_head": lambda p: rename_output(p.functions["main"], "logits1", "logits")})
    assert not check_model_dir(d)
    assert_reference(ChunkedLM(open_model_dir(d), PortableBackend()), ckpt, prompts=(1, 9))


def argmax_head(ckpt, sizes, out_dir):
    """An lm_head with argmax in the model, split as ANEMLL splits it, compiled to .mlmodelc text."""
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    from anechat.runtime.milexec.miltext_write import dump_mil
    from anechat.runtime.milexec.proto import read_mlpackage

    w = ckpt.tensor("lm_head.weight").astype(np.float16)
    bounds = np.cumsum([0] + list(sizes))

    @mb.program(input_specs=[mb.TensorSpec((1, 1, HIDDEN), dtype=types.fp16)], opset_version=ct.target.iOS18)
    def prog(hidden_states):
        idx, val = [], []
        for k in range(len(sizes)):
            logits = mb.matmul(x=hidden_states, y=w[bounds[k] : bounds[k + 1]].T)  # (1, 1, V_k)
            idx.append(mb.reduce_argmax(x=logits, axis=-1, keep_dims=False))
            val.append(mb.reduce_max(x=logits, axes=[-1], keep_dims=False))
        return mb.reshape(x=mb.concat(values=idx, axis=-1), shape=[len(sizes)], name="argmax_idx"), mb.reshape(
            x=mb.concat(values=val, axis=-1), shape=[len(sizes)], name="argmax_val"
        )

    model = ct.convert(prog, minimum_deployment_target=ct.target.iOS18, compute_precision=ct.precision.FLOAT16)
    pkg = out_dir.parent / "head.mlpackage"
    model.save(str(pkg))
    dump_mil(read_mlpackage(pkg), out_dir)


ANEMLL_SPLITS = [54, 54, 53, 53, 53, 53]  # divmod(320, 6): the first `rem` heads one larger (ceil would say 54 each)


@pytest.mark.parametrize("meta", ["chunk-sizes", "vocab-size", "neither"])
def test_argmax_heads_split_as_anemll_splits_them(made, ckpt, backend, tmp_path, meta):
    drop = {"chunk-sizes": (), "vocab-size": ("lm_head_chunk_sizes",), "neither": ("lm_head_chunk_sizes", "vocab_size")}[meta]
    d = as_anemll(
        made / "chunked", tmp_path / "m", drop_params=drop,
        set_params={"argmax_in_model": True, "split_lm_head": 6, "lm_head_chunk_sizes": ANEMLL_SPLITS},
    )
    argmax_head(ckpt, ANEMLL_SPLITS, d / "llama_lm_head.mlmodelc")
    assert not check_model_dir(d)
    lm = ChunkedLM(open_model_dir(d), backend)
    assert lm.vocab_size == 320 and list(lm._offsets) == [0, 54, 108, 161, 214, 267]
    ref = ReferenceModel(ckpt)
    for seed in range(24):
        prompt = ids(5, seed=seed)
        lm.reset(), ref.reset()
        expected = ref.forward(prompt)[-1]
        top2 = np.sort(expected)[-2:]
        if top2[1] - top2[0] > 0.05:  # fp16 may swap a near-tie
            assert int(np.argmax(lm.prefill(prompt))) == int(np.argmax(expected))


def test_argmax_head_that_says_nothing_of_its_vocabulary(made, tmp_path, monkeypatch):
    from anechat.runtime import modeldir

    d = as_anemll(made / "chunked", tmp_path / "m", drop_params=("vocab_size",), set_params={"argmax_in_model": True})
    md = open_model_dir(d)
    head = PortableBackend().load(md.lm_head)
    monkeypatch.setattr(modeldir, "argmax_widths", lambda *a: None)
    fake_head = type("H", (), {"outputs": {"argmax_idx": type("S", (), {"shape": (6,)})()}, "path": head.path, "function_name": None})()
    with pytest.raises(ModelLoadError, match="add vocab_size"):
        head_splits(md, fake_head)
    md.vocab_size = 320
    assert head_splits(md, fake_head) == ANEMLL_SPLITS
