"""What ANEMLL's files may look like beyond the models in tests/data/anemll/ (test_anemll_models.py): the layouts
ANEMLL's chat accepts (compiled parts, LUT suffixes, 0.3.4's unchunked ffn name, intermediate packages left
beside the combined ones, meta.yaml without sizes), made from those real files by renaming, compiling or
editing meta.yaml; and what no real file here has (update_mask inputs, a single `logits` output), made by
editing anechat's own conversions (anemll_fixtures.py)."""

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from anemll_fixtures import as_anemll, declare_update_mask, rename_output
from coreml_contract import FakeCoreML
from tiny import tiny_chat_checkpoint

from anechat.arch.reference import ReferenceModel
from anechat.convert.build import ConvertOptions, convert
from anechat.engine.lm import LanguageModel
from anechat.errors import ModelLoadError
from anechat.runtime.coreml import CoreMLBackend
from anechat.runtime.milexec.miltext_write import dump_mil
from anechat.runtime.milexec.proto import read_mlpackage
from anechat.runtime.modeldir import check_model_dir, head_splits, open_model_dir
from anechat.runtime.portable import PortableBackend

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


def test_anechat_conversions_keep_the_logits_of_the_prefill_block(made):
    lm = LanguageModel(open_model_dir(made / "chunked"), PortableBackend())
    assert lm.forward.prefill_gives_logits


def test_chunks_declaring_update_mask_are_given_one(made, ckpt, backend, tmp_path):
    def edit(program):
        for fn in program.functions.values():
            declare_update_mask(fn, CTX)

    edits = {f"llama_FFN_PF_chunk_0{i}of02": edit for i in (1, 2)}
    d = as_anemll(made / "chunked", tmp_path / "m", edits=edits)
    assert not check_model_dir(d)
    assert_reference(LanguageModel(open_model_dir(d), backend), ckpt, prompts=(1, 9, 17))


def test_monolithic_update_mask_has_its_declared_size(made, ckpt, backend, tmp_path):
    """ANEMLL 0.3.5 sizes update_mask by max(state length, sliding window), which may exceed the context."""
    d = as_anemll(made / "mono", tmp_path / "m", edits={"llama_monolithic_full": lambda p: declare_update_mask(p.functions["prefill"], CTX + 16)})
    assert not check_model_dir(d)
    lm = LanguageModel(open_model_dir(d), backend)
    assert lm.forward.prefill_part.inputs["update_mask"].shape == (1, 1, CTX + 16, BATCH)
    assert_reference(lm, ckpt, prompts=(1, 9, 17))


def test_single_output_named_logits(made, ckpt, tmp_path):
    d = as_anemll(made / "chunked", tmp_path / "m", edits={"llama_lm_head": lambda p: rename_output(p.functions["main"], "logits1", "logits")})
    assert not check_model_dir(d)
    assert_reference(LanguageModel(open_model_dir(d), PortableBackend()), ckpt, prompts=(1, 9))


ANEMLL_SPLITS = [54, 54, 53, 53, 53, 53]  # divmod(320, 6): the first `rem` heads one larger (ceil would say 54 each)


def test_argmax_head_that_says_nothing_of_its_vocabulary(tmp_path, monkeypatch):
    from anechat.runtime import modeldir

    d = real("llama-035-argmax", tmp_path, drop_params=("vocab_size", "lm_head_chunk_sizes"))
    md = open_model_dir(d)
    head = PortableBackend().load(md.lm_head)
    fake_head = type("H", (), {"outputs": {"argmax_idx": type("S", (), {"shape": (6,)})()}, "path": head.path, "function_name": None})()
    monkeypatch.setattr(modeldir, "argmax_widths", lambda *a: None)
    with pytest.raises(ModelLoadError, match="add vocab_size"):
        head_splits(md, fake_head)
    md.vocab_size = 320
    assert head_splits(md, fake_head) == ANEMLL_SPLITS


# -- layouts made from the real files ANEMLL wrote (tests/data/anemll/) ----------------------------------------

DATA = Path(__file__).parent / "data" / "anemll"


def real(name: str, tmp_path: Path, *, drop_params=(), set_params=None) -> Path:
    """A copy of one of ANEMLL's models, meta.yaml's parameters edited."""
    dst = tmp_path / name
    shutil.copytree(DATA / name / "anemll", dst)
    meta = yaml.safe_load((dst / "meta.yaml").read_text())
    params = meta["model_info"]["parameters"]
    for key in drop_params:
        params.pop(key, None)
    params.update(set_params or {})
    (dst / "meta.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    return dst


def reference(name: str):
    ref = np.load(DATA / name / "reference.npz")
    return [int(x) for x in ref["ids"]], ref["logits"]


def assert_agrees(d: Path, name: str, backend=None, n: int = 24):
    ids_, logits = reference(name)
    lm = LanguageModel(open_model_dir(d), backend or PortableBackend())
    rows = np.stack([lm.prefill(ids_[:1])] + [lm.step(t) for t in ids_[1:n]])
    assert (rows.argmax(-1) == logits[:n].argmax(-1)).all()
    lm.reset()
    assert int(np.argmax(lm.prefill(ids_[:n]))) == int(logits[n - 1].argmax())


def compile_parts(d: Path) -> None:
    """Every .mlpackage replaced by an .mlmodelc (text model.mil + weights), as ANEMLL ships them."""
    for pkg in sorted(d.glob("*.mlpackage")):
        dump_mil(read_mlpackage(pkg), d / (pkg.stem + ".mlmodelc"))
        shutil.rmtree(pkg)


def resolved(d: Path) -> dict[str, str]:
    return {r.role: r.path.name for r in open_model_dir(d).resolved}


def test_compiled_parts_are_preferred_and_packages_are_the_fallback(tmp_path):
    d = real("llama-034-c2", tmp_path)
    shutil.copytree(d / "llama_lm_head.mlpackage", tmp_path / "keep.mlpackage")
    compile_parts(d)
    shutil.copytree(tmp_path / "keep.mlpackage", d / "llama_lm_head.mlpackage")  # both forms of the head
    names = resolved(d)
    assert names["embeddings"] == "llama_embeddings.mlmodelc" and names["lm_head"] == "llama_lm_head.mlmodelc"
    assert names["transformer chunk 2"] == "llama_FFN_PF_chunk_02of02.mlmodelc"
    assert_agrees(d, "llama-034-c2")
    # meta.yaml naming the package while only the compiled part exists
    d2 = real("llama-035-argmax", tmp_path / "b", set_params={"embeddings": "llama_embeddings.mlpackage"})
    compile_parts(d2)
    assert resolved(d2)["embeddings"] == "llama_embeddings.mlmodelc"


@pytest.mark.parametrize("version", ["0.3.4", "0.3.5"])
def test_lut_suffixes_as_anemll_names_them(tmp_path, version):
    """LUT parts are PREFIX_part_lutN (bits only, "4,16" → _lut4). 0.3.4 writes `ffn: PREFIX_FFN_PF_lutN` and
    its chat rebuilds the chunk names; on Linux both versions name the plain part in meta.yaml with `none` when
    the compiled LUT part is missing, while the package on disk keeps its suffix."""
    d = real("llama-034-c2", tmp_path)
    for pkg in list(d.glob("*.mlpackage")):
        stem = pkg.stem.replace("_FFN_PF", "_FFN_PF_lut4").replace("_embeddings", "_embeddings_lut6").replace("_lm_head", "_lm_head_lut6")
        pkg.rename(d / (stem + ".mlpackage"))
    if version == "0.3.4":
        edit = {"lut_ffn": "4,16", "ffn": "llama_FFN_PF_lut4.mlmodelc", "lut_embeddings": "none", "lut_lmhead": "none"}
    else:
        edit = {"lut_ffn": 4, "ffn": "llama_FFN_PF_lut4_chunk_01of02.mlmodelc", "embeddings": "llama_embeddings.mlmodelc",
                "lut_embeddings": "none", "lm_head": "llama_lm_head.mlmodelc"}
    meta = yaml.safe_load((d / "meta.yaml").read_text())
    meta["model_info"]["parameters"].update(edit)
    (d / "meta.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    names = resolved(d)
    assert names["embeddings"] == "llama_embeddings_lut6.mlpackage" and names["lm_head"] == "llama_lm_head_lut6.mlpackage"
    assert names["transformer chunk 1"] == "llama_FFN_PF_lut4_chunk_01of02.mlpackage"
    assert names["transformer chunk 2"] == "llama_FFN_PF_lut4_chunk_02of02.mlpackage"
    assert_agrees(d, "llama-034-c2", n=18)


def test_intermediate_packages_beside_the_combined_ones_are_ignored(tmp_path):
    d = real("qwen3-034-c1", tmp_path)
    chunk = d / "qwen_FFN_PF_chunk_01of01.mlpackage"
    for leftover in ("qwen_FFN_chunk_01of01", "qwen_prefill_chunk_01of01", "qwen_FFN_PF_chunk_01of02"):
        shutil.copytree(chunk, d / f"{leftover}.mlpackage")
    assert resolved(d)["transformer chunk 1"] == chunk.name
    assert not check_model_dir(d)


def test_an_unchunked_single_ffn_file_is_used_when_nothing_else_is_there(tmp_path):
    d = real("llama-034-c1", tmp_path)
    (d / "llama_FFN_PF_chunk_01of01.mlpackage").rename(d / "llama_FFN_PF.mlpackage")
    assert resolved(d)["transformer chunk 1"] == "llama_FFN_PF.mlpackage"
    assert_agrees(d, "llama-034-c1", n=12)


@pytest.mark.parametrize("fault, message", [
    ("no-chunk-2", "missing transformer chunk llama_FFN_PF_chunk_02of02"),
    ("chunk-count", "num_chunks is 3 but the transformer chunk"),
    ("no-head", "missing lm_head part 'llama_lm_head.mlmodelc'"),
    ("split-rotate", "split_rotate layout"),
])
def test_what_cannot_be_found_is_named(tmp_path, fault, message):
    d = real("llama-035-argmax" if fault == "no-head" else "llama-034-c2", tmp_path)
    meta = yaml.safe_load((d / "meta.yaml").read_text())
    params = meta["model_info"]["parameters"]
    if fault == "no-chunk-2":
        shutil.rmtree(d / "llama_FFN_PF_chunk_02of02.mlpackage")
    elif fault == "chunk-count":
        params.update(num_chunks=3, ffn="llama_FFN_PF_chunk_01of02.mlmodelc")
    elif fault == "no-head":
        shutil.rmtree(d / "llama_lm_head.mlpackage")
    else:
        params["split_rotate"] = True
    (d / "meta.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    with pytest.raises(ModelLoadError, match=re.escape(message)):
        open_model_dir(d)


@pytest.mark.parametrize("meta", ["chunk-sizes", "vocab-size", "neither"])
def test_argmax_heads_with_or_without_their_sizes_in_meta(tmp_path, backend, meta):
    """0.3.5 --argmax: meta.yaml's lm_head_chunk_sizes, else vocab_size, else the sizes the head's program
    computes over."""
    drop = {"chunk-sizes": (), "vocab-size": ("lm_head_chunk_sizes",), "neither": ("lm_head_chunk_sizes", "vocab_size")}[meta]
    d = real("llama-035-argmax", tmp_path, drop_params=drop)
    lm = LanguageModel(open_model_dir(d), backend)
    assert lm.vocab_size == 512 and list(lm._offsets) == list(range(0, 512, 64))
    assert_agrees(d, "llama-035-argmax", backend=backend, n=16)


def test_gemma3_without_sliding_window_in_meta_gets_anemlls_default(tmp_path):
    d = real("gemma3-035-c1", tmp_path, drop_params=("sliding_window",))
    assert open_model_dir(d).sliding_window == 512  # ANEMLL 0.3.5's chat: 512 for a gemma3 prefix
