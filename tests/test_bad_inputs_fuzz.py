"""Fuzzing the parsers of user-controlled files: any input ends in anechat's own error or in success —
never another exception (which the CLI would report as an internal error)."""

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anechat.errors import AnechatError

FIXTURE = (Path(__file__).parent / "fixtures" / "mil" / "accumulate.mil").read_text()
FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

MIL_TOKENS = ["program(1.3)", "{", "}", "[", "]", "(", ")", "<", ">", ",", "=", ";", "->", "func", "main", "<ios18>",
              "tensor", "state", "fp16", "int32", "bool", "string", "uint64", "list", "dict", "const", "BLOBFILE",
              "x", "y", "name", "val", "0", "-1", "1e999", "0x1p+0", "nan", "inf", "99999999999999999999", "\"s\"",
              "\"\\x\"", "\"\\u12\"", "true", "[1, 4]", "(path = string(\"@model_path/weights/weight.bin\"), offset = uint64(64))"]


def _mutations(text: str):
    """Fixture text with a slice deleted, duplicated or replaced by MIL tokens."""
    n = len(text)
    return st.tuples(st.integers(0, n), st.integers(0, 200), st.lists(st.sampled_from(MIL_TOKENS), max_size=8)).map(
        lambda t: text[: t[0]] + " ".join(t[2]) + text[t[0] + t[1]:])


@FAST
@given(st.one_of(_mutations(FIXTURE), st.text(max_size=300), st.lists(st.sampled_from(MIL_TOKENS), max_size=40).map(" ".join)))
def test_mil_text_parser(tmp_path, text):
    from anechat.runtime.milexec.miltext import parse_mil

    (tmp_path / "weights").mkdir(exist_ok=True)
    (tmp_path / "weights" / "weight.bin").write_bytes(b"\0" * 200)
    try:
        parse_mil(text, "model.mil", tmp_path)
    except AnechatError as e:
        assert "\n" not in str(e) and str(e).startswith("model.mil")


def test_mil_text_parser_deep_nesting():
    from anechat.runtime.milexec.miltext import parse_mil

    for text in ("[" * 100_000, "program(1.3) {" + "func main<ios18>() {" + "x = f(a = " + "(" * 100_000):
        with pytest.raises(AnechatError, match="model.mil:"):
            parse_mil(text)


YAML_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(10 ** 30), 10 ** 30), st.floats(), st.text(max_size=20))
YAML_VALUES = st.recursive(YAML_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                                  st.dictionaries(st.text(max_size=12), inner, max_size=4)),
                           max_leaves=12)
PARAM_KEYS = ["context_length", "batch_size", "num_chunks", "model_prefix", "split_lm_head", "embeddings", "lm_head", "ffn",
              "vocab_size", "sliding_window", "model_type", "architecture", "lut_ffn", "argmax_in_model", "monolithic_model"]


def _meta_docs():
    params = st.dictionaries(st.sampled_from(PARAM_KEYS), YAML_VALUES, max_size=6)
    info = st.fixed_dictionaries({"parameters": st.one_of(params, YAML_VALUES)},
                                 optional={"name": YAML_VALUES, "model_type": YAML_VALUES, "architecture": YAML_VALUES})
    return st.one_of(YAML_VALUES, st.fixed_dictionaries({"model_info": st.one_of(info, YAML_VALUES)},
                                                        optional={"anechat": YAML_VALUES}))


@FAST
@given(st.one_of(_meta_docs(), st.text(max_size=200)))
def test_meta_yaml(tmp_path, doc):
    import yaml

    from anechat.runtime.modeldir import open_model_dir

    text = doc if isinstance(doc, str) else yaml.safe_dump(doc)
    (tmp_path / "meta.yaml").write_text(text, encoding="utf-8")
    try:
        open_model_dir(tmp_path)
    except AnechatError as e:
        assert "\n" not in str(e)


ENTRY_KEYS = ["title", "format", "sources", "architecture", "context", "size_mb", "download_mb", "convert", "notes", "license"]


def _registry_docs():
    source = st.one_of(YAML_VALUES, st.fixed_dictionaries({"hf": st.one_of(YAML_VALUES, st.fixed_dictionaries({"repo": YAML_VALUES}))}),
                       st.fixed_dictionaries({"pypi": st.dictionaries(st.sampled_from(["package", "member", "parts", "sha256"]), YAML_VALUES)}))
    entry = st.one_of(YAML_VALUES, st.dictionaries(st.sampled_from(ENTRY_KEYS), st.one_of(YAML_VALUES, st.sampled_from(["convert", "anemll"]),
                                                                                          st.lists(source, max_size=2)), max_size=6))
    names = st.one_of(st.text(max_size=12), st.sampled_from(["ok-name", "../x", ".", "a/b", ""]))
    return st.one_of(YAML_VALUES, st.fixed_dictionaries({"models": st.one_of(YAML_VALUES, st.dictionaries(names, entry, max_size=3))},
                                                        optional={"default": YAML_VALUES}))


@FAST
@given(st.one_of(_registry_docs(), st.text(max_size=200)))
def test_registry_loader(_isolated_home, doc):
    import yaml

    from anechat.models.registry import load_registry, user_path

    path = user_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc), encoding="utf-8")
    try:
        registry = load_registry()
    except AnechatError as e:
        assert "\n" not in str(e)
        return
    from anechat.names import check_model_name

    for name in registry.entries:
        check_model_name(name)  # every entry that loads has a safe name
