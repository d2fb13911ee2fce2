"""Hostile chat templates (issue 28): a model directory from the internet is untrusted input. Rendering is
bounded in time, output and memory — nested loops, recursion through macros, strings grown in a loop —
each ends with one clear error naming the template and the bound (exit 4 from the CLI), and a rendering
in progress stops when its caller cancels (Ctrl+C, SIGTERM, a client that left)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_bad_inputs import Sandbox
from tiny import tiny_chat_checkpoint

from anechat.engine import template as T
from anechat.engine.template import Cancelled, TemplateError, render_chat_template

MSGS = [{"role": "user", "content": "hi"}]
NORMAL = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
LOOPS = "{% for a in range(9999) %}{% for b in range(9999) %}{% for c in range(9999) %}{% endfor %}{% endfor %}{% endfor %}"
# Ten million characters: within the output bound, but far more than a small context can hold.
HUGE = "{% for i in range(2000) %}{{ 'y' * 5000 }}{% endfor %}"
# Slow (or huge) only for a message that asks for it, so one model serves every kind of request.
SLOW_ON_DEMAND = ("{% if messages[-1]['content'] == 'slow' %}" + LOOPS + "{% elif messages[-1]['content'] == 'huge' %}"
                  + HUGE + "{% endif %}" + NORMAL)

HOSTILE = {
    "three nested ranges": LOOPS,
    "two large ranges": "{% for a in range(99999) %}{% for b in range(99999) %}{% endfor %}{% endfor %}",
    "endless macro recursion": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "a string doubled in a loop": "{% set ns = namespace(x='ab') %}{% for i in range(60) %}{% set ns.x = ns.x ~ ns.x %}"
                                  "{% endfor %}{{ ns.x | length }}",
    "a huge repetition": "{{ 'x' * 10**10 }}",
    "a huge list": "{{ ([1] * 10**9) | length }}",
    "output without end": "{% for i in range(99999) %}{{ 'y' * 5000 }}{% endfor %}",
    "a padded string": "{{ 'x' | center(10**10) }}",
    "a huge power": "{{ 7 ** (10 ** 12) }}",
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_template_ends_with_one_clear_error(name):
    t = time.monotonic()
    with pytest.raises(TemplateError) as e:
        render_chat_template(HOSTILE[name], MSGS, seconds=2, source="the chat template /m/chat_template.jinja")
    message = str(e.value)
    assert "\n" not in message and "/m/chat_template.jinja" in message, message
    assert time.monotonic() - t < 30  # generous: the bound is 2 s
    # the renderer is usable again at once
    assert render_chat_template(NORMAL, MSGS) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_the_time_bound_is_named():
    with pytest.raises(TemplateError, match=r"the chat template X did not finish rendering within the bound of 1 s"):
        render_chat_template(LOOPS, MSGS, seconds=1, source="the chat template X")
    with pytest.raises(TemplateError, match="output passed the bound"):
        render_chat_template("{% for i in range(1000) %}{{ messages[0]['content'] }}{% endfor %}", MSGS, limit=100)


def test_cancel_stops_a_rendering_in_progress():
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    t = time.monotonic()
    with pytest.raises(Cancelled):
        render_chat_template(LOOPS, MSGS, cancel=cancel)
    assert time.monotonic() - t < T.RENDER_SECONDS  # it did not wait for the deadline
    assert render_chat_template("{{ messages[0]['content'] }}", MSGS) == "hi"


def test_renders_wait_their_turn_and_the_waiters_can_cancel():
    """Renders from several threads (server slots, the engine) share one helper, one at a time."""
    results: list[str] = []
    threads = [threading.Thread(target=lambda i=i: results.append(render_chat_template("{{ n }}", MSGS, n=i)))
               for i in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(results) == [str(i) for i in range(8)]
    blocker = threading.Thread(target=lambda: pytest.raises(TemplateError, render_chat_template, LOOPS, MSGS, seconds=3))
    blocker.start()
    time.sleep(0.3)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        render_chat_template(NORMAL, MSGS, cancel=cancel)
    blocker.join()


def test_the_helper_leaves_when_its_parent_is_killed(tmp_path):
    """A parent killed with SIGKILL cannot stop its helper: the helper notices and leaves by itself."""
    script = ("import sys, threading; from anechat.engine import template as T\n"
              "threading.Thread(target=T.render_chat_template, args=(sys.argv[1], []), daemon=True).start()\n"
              "import time; time.sleep(1.5); print(T._helper.proc.pid, flush=True); time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", script, LOOPS], stdout=subprocess.PIPE, text=True)
    helper = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    end = time.monotonic() + 30
    while time.monotonic() < end and _alive(helper):
        time.sleep(0.1)
    assert not _alive(helper)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")  # a zombie (exited, not yet reaped by init) is gone too
    return not (status.exists() and "\nState:\tZ" in status.read_text())


def test_ordinary_templates_render_as_before():
    """The same text as jinja2 in this process: tojson, loops with loop.*, namespace, raise_exception."""
    t = ("{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{{ loop.index }}:{{ m | tojson }}"
         "{% endfor %}{{ ns.n }}{{ bos_token }}{% if messages|length > 5 %}{{ raise_exception('too many') }}{% endif %}")
    msgs = [{"role": "user", "content": "é \"q\""}, {"role": "assistant", "content": "a"}]
    here = T.render_here(t, dict(messages=msgs, bos_token="<s>", add_generation_prompt=True, eos_token=""))
    assert render_chat_template(t, msgs, bos_token="<s>") == here
    with pytest.raises(TemplateError, match="too many"):
        render_chat_template(t, msgs * 3)


# --- the CLI -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slow_template_model(tmp_path_factory):
    """A tiny model whose template never ends when the last message is "slow"."""
    from anechat.convert.build import ConvertOptions, convert

    out = tmp_path_factory.mktemp("slow-template") / "tiny"
    convert(tiny_chat_checkpoint("llama", num_layers=1), out, ConvertOptions(context=64, batch=4))
    (out / "chat_template.jinja").write_text(SLOW_ON_DEMAND)
    return out


def test_pipe_mode_names_the_template_and_the_bound(tmp_path, _isolated_home, capsys, monkeypatch, slow_template_model):
    monkeypatch.setattr(T, "RENDER_SECONDS", 1.0)
    box = Sandbox(tmp_path, _isolated_home, capsys, monkeypatch)
    line = box.fails(4, "--model-dir", slow_template_model, "-p", "slow", match="within the bound of 1 s")
    assert str(slow_template_model / "chat_template.jinja") in line
    code, out, _ = box.run("--model-dir", slow_template_model, "-p", "hello", "--max-tokens", "2")
    assert code == 0


def test_a_prompt_no_context_can_hold_is_refused_untokenized(tmp_path, _isolated_home, capsys, monkeypatch,
                                                              slow_template_model):
    """A template may write megabytes within its output bound: tokenizing them would take seconds (tens of
    seconds for 10 MB) for a prompt that cannot fit anyway."""
    from anechat.engine.tokenizer import ChatTokenizer

    real = ChatTokenizer.encode

    def encode(self, text, *a, **k):
        out = real(self, text, *a, **k)
        assert len(text) < 100_000, "tokenized a prompt that cannot fit"
        return out

    monkeypatch.setattr(ChatTokenizer, "encode", encode)
    box = Sandbox(tmp_path, _isolated_home, capsys, monkeypatch)
    line = box.fails(4, "--model-dir", slow_template_model, "-p", "huge", match="longer than the model's context of 64")
    assert str(slow_template_model / "chat_template.jinja") in line
    assert box.run("--model-dir", slow_template_model, "-p", "hello", "--max-tokens", "2")[0] == 0


def test_tokenizing_lets_other_threads_and_a_cancel_in(slow_template_model):
    """The tokenizers library's encode() holds the GIL for its whole run; anechat's releases it (the server's
    event loop, a signal handler run meanwhile), and a cancelled caller does not wait for a long text."""
    from anechat.engine.tokenizer import ChatTokenizer

    tok = ChatTokenizer.from_dir(slow_template_model)
    text = "The quick brown fox jumps over the lazy dog. " * 20_000
    ticks, done = [0], threading.Event()

    def tick():
        while not done.is_set():
            ticks[0] += 1
            time.sleep(0.001)

    ticker = threading.Thread(target=tick)
    ticker.start()
    ids = tok.encode(text)
    done.set()
    ticker.join()
    assert ids == tok.tok.encode(text).ids and ticks[0] >= 20, ticks
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        tok.encode(text * 4, cancel=cancel)


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds the helper through Linux's /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_rendering_ends_the_command(tmp_path, _isolated_home, slow_template_model, sig):
    env = {**os.environ, "ANECHAT_HOME": str(_isolated_home), "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "anechat", "--model-dir", str(slow_template_model), "-p", "slow",
                             "--session", "new"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    helper = _wait_for_helper(proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err
    assert err.decode().strip().splitlines()[-1] == ("anechat: terminated" if sig == signal.SIGTERM else "anechat: interrupted")
    end = time.monotonic() + 10
    while time.monotonic() < end and _alive(helper):
        time.sleep(0.05)
    assert not _alive(helper)  # the rendering did not go on without its parent


def _wait_for_helper(proc: subprocess.Popen, timeout: float = 120) -> int:
    """The pid of the rendering helper once the command has started it (Linux: /proc's children list)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None, proc.communicate()
        kids = []
        for task in Path(f"/proc/{proc.pid}/task").glob("*"):
            kids += (task / "children").read_text().split() if (task / "children").exists() else []
        for kid in kids:
            cmd = Path(f"/proc/{kid}/cmdline").read_bytes() if Path(f"/proc/{kid}/cmdline").exists() else b""
            if b"serve_forever" in cmd:
                time.sleep(0.5)  # rendering
                return int(kid)
        time.sleep(0.05)
    raise AssertionError("the template helper did not start")
