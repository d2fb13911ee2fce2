"""What a user installs: the wheel built from the tracked files holds every file of the package.

The rest of the suite runs against the checkout (an editable install), where a file pyproject forgets to ship is
still on disk; this test is the one that sees the wheel. .ci/smoke_install.py then runs the installed wheel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

CHECKOUT = Path(__file__).resolve().parent.parent


def tracked(prefix: str = "") -> list[str]:
    if shutil.which("git") is None or not (CHECKOUT / ".git").exists():
        pytest.fail("the packaging test reads the tracked files: it needs git and a git checkout")
    out = subprocess.run(["git", "ls-files", "-z", "--", prefix or "."], cwd=CHECKOUT, capture_output=True,
                         text=True, check=True).stdout
    return [f for f in out.split("\0") if f]


def package_files() -> set[str]:
    """Every tracked file under anechat/, a tracked link to a directory standing for the files in it."""
    files = set()
    for rel in tracked("anechat"):
        path = CHECKOUT / rel
        if path.is_dir():
            for root, _dirs, names in os.walk(path):
                files.update(str(Path(root, n).relative_to(CHECKOUT)).replace(os.sep, "/") for n in names)
        else:
            files.add(rel)
    return {f for f in files if "__pycache__" not in f.split("/")}


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory) -> set[str]:
    # Built from a copy of the tracked files, as from a fresh clone: nothing untracked on this disk can help it
    src = tmp_path_factory.mktemp("src")
    for rel in tracked():
        if rel.startswith(("tests/", "benchmarks/", ".ci/")):
            continue
        origin, target = CHECKOUT / rel, src / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if origin.is_dir():
            shutil.copytree(origin, target)
        else:
            shutil.copyfile(origin, target)
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(src), "-w", str(dist)],
                   check=True, capture_output=True)
    (wheel,) = dist.glob("anechat-*.whl")
    with zipfile.ZipFile(wheel) as z:
        return {n for n in z.namelist() if not n.startswith("anechat-")}


def test_the_wheel_holds_every_non_python_file_of_the_package(wheel_names):
    data = {f for f in package_files() if not f.endswith(".py")}
    assert "anechat/tui/app.tcss" in data and "anechat/data/models.yaml" in data  # the test sees what it must
    missing = sorted(data - wheel_names)
    assert not missing, f"files the code reads at run time but the wheel leaves out: {missing}"


def test_the_wheel_holds_every_module_and_nothing_else(wheel_names):
    assert wheel_names == package_files(), sorted(wheel_names ^ package_files())
