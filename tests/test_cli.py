"""The command line itself: start-up cost, error shape, layering."""

import subprocess
import sys

import pytest

from anechat import __version__


def run(*args, stdin=None, env=None):
    return subprocess.run(
        [sys.executable, "-m", "anechat", *args], input=stdin, capture_output=True, text=True, env=env, timeout=120
    )


def test_version_is_cheap():
    code = (
        "import sys, runpy; sys.argv=['anechat','--version']\n"
        "try: runpy.run_module('anechat', run_name='__main__')\n"
        "except SystemExit: pass\n"
        "heavy=[m for m in ('numpy','coremltools','textual','prompt_toolkit','tokenizers','yaml') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert f"anechat {__version__}" in out
    assert "HEAVY []" in out


@pytest.mark.parametrize(
    "module",
    ["anechat.runtime.select", "anechat.runtime.coreml", "anechat.convert.checkpoint", "anechat.arch", "anechat.commands.convert"],
)
def test_engine_layers_import_no_ui(module):
    code = f"import sys, {module}; print([m for m in sys.modules if m.split('.')[0] in ('textual', 'prompt_toolkit')])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_unknown_flag_is_a_usage_error():
    r = run("--no-such-flag")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr


def test_convert_missing_source_is_one_line(tmp_path):
    r = run("convert", str(tmp_path / "nope.gguf"), "-o", str(tmp_path / "out"))
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("anechat: ")]
    assert len(errors) == 1 and "nope.gguf" in errors[0]
    assert not (tmp_path / "out").exists()
