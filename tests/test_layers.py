"""The layer order is a contract (pyproject.toml, checked by import-linter in CI): these tests show that the
tree keeps it, that an import against it fails the check, and that no module escapes it."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import anechat

tomllib = pytest.importorskip("tomllib")  # Python ≥ 3.11; CI runs 3.11

ROOT = Path(anechat.__file__).parent.parent
LINT = [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()"]


def lint_imports(tree: Path) -> subprocess.CompletedProcess:
    return subprocess.run(LINT, cwd=tree, env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=120)


def copy_tree(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "anechat", tmp_path / "anechat", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    return tmp_path


def contracts() -> list[dict]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def test_the_tree_keeps_its_layers():
    r = lint_imports(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout


@pytest.mark.parametrize("where, line, broken", [
    # the example: the chat core reaching up into a CLI command
    ("chat/present.py", "from anechat.commands.chat import run_pipe", "anechat.chat.present -> anechat.commands.chat"),
    # hidden in a function, as the old stats import was: still seen
    ("engine/loader.py", "def _f():\n    from anechat.models import store\n", "anechat.engine.loader -> anechat.models.store"),
    ("runtime/select.py", "import textual", "anechat.runtime.select -> textual"),
])
def test_an_import_against_the_layers_fails_the_check(tmp_path, where, line, broken):
    tree = copy_tree(tmp_path)
    with open(tree / "anechat" / where, "a", encoding="utf-8") as f:
        f.write("\n" + line + "\n")
    r = lint_imports(tree)
    assert r.returncode != 0 and "BROKEN" in r.stdout, r.stdout + r.stderr
    assert broken in r.stdout


def test_every_module_has_a_layer():
    """Deleting a layer (or adding a package no layer names) fails here: every top-level module of the
    package is in the layers contract."""
    (layers,) = [c for c in contracts() if c["type"] == "layers"]
    named = {m.strip() for layer in layers["layers"] for m in layer.replace(":", "|").split("|")}
    package = ROOT / "anechat"
    modules = {f"anechat.{p.stem}" for p in package.glob("*.py") if p.stem != "__init__"}
    modules |= {f"anechat.{p.name}" for p in package.iterdir() if (p / "__init__.py").exists()}
    assert modules <= named, f"not in any layer: {sorted(modules - named)}"
    assert named <= modules, f"layers name modules that do not exist: {sorted(named - modules)}"


def test_the_front_ends_stay_out_of_the_core():
    forbidden = [c for c in contracts() if c["type"] == "forbidden"]
    assert any({"textual", "prompt_toolkit"} <= set(c["forbidden_modules"])
               and {"anechat.engine", "anechat.runtime", "anechat.chat", "anechat.sessions"} <= set(c["source_modules"])
               for c in forbidden)
