"""Pulling from a Hugging Face hub (a local server on 127.0.0.1 speaking the protocol huggingface_hub uses)."""

import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from hubserver import Hub
from tiny import write_hf_dir


def dir_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def zipped_parts(model_dir: Path, evil: bool = False) -> dict[str, bytes]:
    """An ANEMLL-style upload: meta.yaml and tokenizer files, each part as NAME.mlpackage.zip."""
    files = {}
    for p in sorted(model_dir.iterdir()):
        if p.is_dir():
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w") as z:
                for f in sorted(p.rglob("*")):
                    if f.is_file():
                        z.write(f, str(f.relative_to(model_dir)))
                if evil:
                    z.writestr("../../escaped.txt", "gotcha")
            files[p.name + ".zip"] = buf.getvalue()
        else:
            files[p.name] = p.read_bytes()
    return files


@pytest.fixture
def hub_env(tmp_path, _isolated_home, tiny_model_dirs):
    write_hf_dir(tmp_path / "hf", "qwen3", num_layers=1)
    hub = Hub({
        "me/tiny-hf": dir_files(tmp_path / "hf"),
        "me/tiny-anemll": zipped_parts(tiny_model_dirs["llama"]),
        "me/evil": zipped_parts(tiny_model_dirs["llama"], evil=True),
    })
    registry = _isolated_home / "config" / "models.yaml"
    registry.parent.mkdir(parents=True, exist_ok=True)
    registry.write_text(
        "models:\n"
        "  tiny-hf:\n    format: convert\n    convert: {context: 32, batch: 4}\n"
        "    sources: [{hf: {repo: me/tiny-hf, files: ['*.json', '*.safetensors']}}]\n"
        "  tiny-anemll:\n    format: anemll\n    sources: [{hf: {repo: me/tiny-anemll}}]\n"
        "  evil:\n    format: anemll\n    sources: [{hf: {repo: me/evil}}]\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(ANECHAT_HOME=str(_isolated_home), HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf-home"), HF_HUB_DISABLE_TELEMETRY="1")
    yield env, hub
    hub.close()


def cli(*args, env):
    return subprocess.run([sys.executable, "-m", "anechat", *map(str, args)], capture_output=True, text=True, env=env, timeout=600)


def test_pull_converts_a_hub_checkpoint(hub_env, _isolated_home):
    env, hub = hub_env
    r = cli("models", "pull", "tiny-hf", env=env)
    assert r.returncode == 0, r.stderr
    assert any(path.endswith("/model.safetensors") for _, path in hub.requests)
    assert cli("models", "verify", "tiny-hf", env=env).stdout.strip() == "tiny-hf: ok"
    r = subprocess.run([sys.executable, "-m", "anechat", "-m", "tiny-hf", "--max-tokens", "2"], input="hi",
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr


def test_pull_an_anemll_model_with_zipped_parts(hub_env, _isolated_home):
    env, _ = hub_env
    r = cli("models", "pull", "tiny-anemll", env=env)
    assert r.returncode == 0, r.stderr
    installed = _isolated_home / "data" / "models" / "tiny-anemll"
    assert not list(installed.glob("*.zip")) and list(installed.glob("*.mlpackage"))
    assert cli("models", "verify", "tiny-anemll", env=env).returncode == 0


def test_unsafe_zip_is_refused_and_nothing_registered(hub_env, _isolated_home, tmp_path):
    env, _ = hub_env
    r = cli("models", "pull", "evil", env=env)
    assert r.returncode == 1 and "unsafe archive member" in r.stderr
    models = _isolated_home / "data" / "models"
    assert not list(models.iterdir())
    assert not list(_isolated_home.rglob("escaped.txt")) and not (tmp_path / "escaped.txt").exists()


def test_offline_uses_only_the_local_cache(hub_env):
    env, hub = hub_env
    r = cli("models", "pull", "tiny-hf", "--offline", env=env)
    assert r.returncode == 1 and "could not fetch" in r.stderr
    assert cli("models", "pull", "tiny-hf", env=env).returncode == 0
    served = len(hub.requests)
    r = cli("models", "pull", "tiny-hf", "--offline", "--force", env=env)
    assert r.returncode == 0, r.stderr
    assert len(hub.requests) == served  # nothing asked of the network


def test_dropped_connection_mid_file_is_recovered(hub_env, _isolated_home):
    """The server announces the whole file, sends half and hangs up. huggingface_hub (2.x) fetches the file
    again within the same pull; the installed model is complete and verifies."""
    env, hub = hub_env
    hub.drop_once.add("model.safetensors")
    r = cli("models", "pull", "tiny-hf", env=env)
    assert r.returncode == 0, r.stderr
    gets = [p for m, p in hub.requests if m == "GET" and p.endswith("/model.safetensors")]
    assert len(gets) == 2
    assert cli("models", "verify", "tiny-hf", env=env).stdout.strip() == "tiny-hf: ok"


@pytest.mark.parametrize("damaged", ["model.safetensors", "config.json"])
def test_checksum_mismatch_is_refetched(hub_env, damaged):
    """The server sends a file with one byte flipped (same size, so huggingface_hub's size check passes) under
    the right hash: the pull notices, deletes it from the cache, fetches it again and installs good bytes.
    Covers both hub hash kinds: sha256 (LFS) and git blob sha1 (small text files)."""
    env, hub = hub_env
    hub.corrupt[damaged] = 1
    r = cli("models", "pull", "tiny-hf", env=env)
    assert r.returncode == 0, r.stderr
    assert f"{damaged}: checksum mismatch, fetching it again" in r.stdout + r.stderr
    gets = [p for m, p in hub.requests if m == "GET" and p.endswith("/" + damaged)]
    assert len(gets) == 2
    assert cli("models", "verify", "tiny-hf", env=env).stdout.strip() == "tiny-hf: ok"
    hf_home = Path(env["HF_HOME"])
    cached = next(p for p in hf_home.rglob(damaged) if "snapshots" in p.parts)
    assert cached.read_bytes() == hub.repos["me/tiny-hf"][damaged]


def test_checksum_mismatch_twice_fails_and_registers_nothing(hub_env, _isolated_home):
    env, hub = hub_env
    hub.corrupt["model.safetensors"] = 2
    r = cli("models", "pull", "tiny-hf", env=env)
    assert r.returncode == 1
    assert "checksum mismatch after fetching again: model.safetensors" in r.stderr
    assert "Traceback" not in r.stderr
    assert not list((_isolated_home / "data" / "models").iterdir())


def test_damaged_cache_offline_is_refused_and_keeps_the_installed_model(hub_env, _isolated_home):
    env, hub = hub_env
    assert cli("models", "pull", "tiny-hf", env=env).returncode == 0
    blob = next(p for p in Path(env["HF_HOME"]).rglob("model.safetensors") if "snapshots" in p.parts).resolve()
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    r = cli("models", "pull", "tiny-hf", "--offline", "--force", env=env)
    assert r.returncode == 1
    assert "checksum mismatch in the local cache (offline: cannot fetch again): model.safetensors" in r.stderr
    assert cli("models", "verify", "tiny-hf", env=env).stdout.strip() == "tiny-hf: ok"


def test_pull_qwen35_from_its_registry_entry(tmp_path, _isolated_home):
    """The shipped qwen3.5-0.8b entry against a hub serving a tiny model in Qwen's real layout (nested text_config,
    model.language_model.*, a vision tower): the same repo and file patterns; only the conversion is made small."""
    import yaml

    from anechat.models.registry import load_registry

    shipped = yaml.safe_load((Path(__file__).parents[1] / "anechat" / "data" / "models.yaml").read_text())["models"]["qwen3.5-0.8b"]
    repo = shipped["sources"][0]["hf"]["repo"]
    hub = Hub({repo: dir_files(Path(__file__).parent / "data" / "qwen35-tiny")})
    registry = _isolated_home / "config" / "models.yaml"
    registry.parent.mkdir(parents=True, exist_ok=True)
    registry.write_text(yaml.safe_dump({"models": {"qwen3.5-0.8b": {**shipped, "convert": {"context": 64, "batch": 4}}}}))
    assert load_registry().get("qwen3.5-0.8b").architecture == "qwen3_5"
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(ANECHAT_HOME=str(_isolated_home), HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf-home"), HF_HUB_DISABLE_TELEMETRY="1")
    try:
        r = cli("models", "pull", "qwen3.5-0.8b", env=env)
        assert r.returncode == 0, r.stderr
        assert any(path.endswith("/model.safetensors") for _, path in hub.requests)
        r = subprocess.run([sys.executable, "-m", "anechat", "-m", "qwen3.5-0.8b", "--max-tokens", "3"], input="The engine",
                           capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, r.stderr
        model_dir = next(p.parent for p in _isolated_home.rglob("meta.yaml"))
        r = cli("inspect", model_dir, env=env)
        assert "(recurrent)" in r.stdout, r.stderr
    finally:
        hub.close()
