"""A real terminal: tmux runs `anechat` on a converted model; we type, read the screen, quit."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid

import pytest

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux (.ci/run installs it)")


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=False).stdout


def screen(name: str) -> str:
    return tmux("capture-pane", "-p", "-t", name)


def wait_for(name: str, predicate, timeout: float, what: str) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = screen(name)
        if predicate(text):
            return text
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; the screen was:\n{text}")


def test_tmux_question_answer_gauge_and_quit(tiny_model_dirs, tmp_path):
    name = f"anechat-{uuid.uuid4().hex[:8]}"
    done = tmp_path / "exit-code"
    cmd = (f"{shlex.quote(sys.executable)} -m anechat --model-dir {shlex.quote(str(tiny_model_dirs['llama']))} "
           f"--temperature 0 --max-tokens 24; echo $? > {shlex.quote(str(done))}; sleep 5")
    env = {**os.environ, "TERM": "xterm-256color"}
    subprocess.run(["tmux", "new-session", "-d", "-s", name, "-x", "110", "-y", "30", cmd], check=True, env=env)
    try:
        wait_for(name, lambda s: "portable" in s and "Message" in s, 60, "the UI with the model loaded")
        tmux("send-keys", "-t", name, "-l", "What is 2+2?")
        tmux("send-keys", "-t", name, "Enter")
        text = wait_for(name, lambda s: re.search(r"TTFT \d+ ms", s) is not None, 60, "an answer and its stats")
        rate = re.search(r"(\d+\.\d) tok/s", text)
        assert rate and float(rate.group(1)) > 0, text
        assert "What is 2+2?" in text
        tmux("send-keys", "-t", name, "-l", "/quit")
        tmux("send-keys", "-t", name, "Enter")
        deadline = time.monotonic() + 30
        while not done.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert done.exists(), screen(name)
        after = screen(name)  # Textual draws on stderr; whatever it left behind is on the screen
        assert done.read_text().strip() == "0", after
        assert "Traceback" not in after
    finally:
        tmux("kill-session", "-t", name)


def test_tmux_keys_typed_at_startup_and_alt_enter(tiny_model_dirs, tmp_path):
    # Issue 17: keys typed while anechat starts go into the input; Alt+Enter (ESC CR from tmux) adds a line.
    name = f"anechat-{uuid.uuid4().hex[:8]}"
    cmd = (f"{shlex.quote(sys.executable)} -m anechat --model-dir {shlex.quote(str(tiny_model_dirs['llama']))} "
           f"--temperature 0 --max-tokens 4; sleep 5")
    env = {**os.environ, "TERM": "xterm-256color"}
    subprocess.run(["tmux", "new-session", "-d", "-s", name, "-x", "100", "-y", "24", cmd], check=True, env=env)
    try:
        time.sleep(0.3)  # anechat is still importing: these keys wait in the terminal
        tmux("send-keys", "-t", name, "-l", "early")
        wait_for(name, lambda s: "portable" in s, 60, "the UI with the model loaded")
        tmux("send-keys", "-t", name, "M-Enter")
        tmux("send-keys", "-t", name, "-l", "second line")
        text = wait_for(name, lambda s: "second line" in s, 20, "the second line")
        lines = text.splitlines()
        first = next(i for i, line in enumerate(lines) if "early" in line)
        assert "second line" in lines[first + 1], text  # a new line in the input, and nothing was sent
        assert "TTFT" not in text
    finally:
        tmux("kill-session", "-t", name)


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_tmux_keys_in_one_burst_are_applied_in_order(tiny_model_dirs, size):
    """Issue 27: text and Enter sent in one burst are sent and answered; Alt+Enter and Ctrl+J in a burst put the
    newline where they were pressed (each `send-keys` below is one write to the terminal)."""
    name = f"anechat-{uuid.uuid4().hex[:8]}"
    cmd = (f"{shlex.quote(sys.executable)} -m anechat --model-dir {shlex.quote(str(tiny_model_dirs['llama']))} "
           f"--temperature 0 --max-tokens 4; sleep 5")
    env = {**os.environ, "TERM": "xterm-256color"}
    subprocess.run(["tmux", "new-session", "-d", "-s", name, "-x", str(size[0]), "-y", str(size[1]), cmd],
                   check=True, env=env)
    try:
        wait_for(name, lambda s: "portable" in s and "Message" in s, 60, "the UI with the model loaded")
        tmux("send-keys", "-t", name, "What is the capital of Italy?", "Enter")
        text = wait_for(name, lambda s: re.search(r"TTFT \d+ ms", s) is not None, 60, "the answer and its stats")
        assert text.count("What is the capital of Italy?") == 1, text
        for newline in ("M-Enter", "C-j"):
            tmux("send-keys", "-t", name, "abc def 0123456789", newline, "second line")
            text = wait_for(name, lambda s: "second line" in s, 20, "the second line")
            lines = text.splitlines()
            first = next(i for i, line in enumerate(lines) if "abc def 0123456789" in line)
            assert "abc def 0123456789" in lines[first] and "second line" in lines[first + 1], text
            assert lines[first + 1].strip(" │╰╭─").startswith("second line"), text
            tmux("send-keys", "-t", name, "C-a")  # TextArea: start of line; clear with the input's own keys
            tmux("send-keys", "-t", name, "C-k", "C-k", "Up", "C-a", "C-k")
            wait_for(name, lambda s: "second line" not in s and "abc def" not in s, 20, "the input cleared")
    finally:
        tmux("kill-session", "-t", name)
