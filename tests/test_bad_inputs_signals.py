"""Killed processes and closed streams (issue 16), in real subprocesses: a convert killed with SIGTERM or
SIGKILL leaves nothing behind once the next anechat command has run; SIGTERM in pipe mode ends like Ctrl+C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from phase_driver import CASES as PHASE_CASES
from phase_driver import SERVE_REQUEST, command
from tiny import tiny_chat_checkpoint, write_gguf

LOCK = ".anechat-partial.lock"


def _env(home: Path, tmp: Path) -> dict:
    return {**os.environ, "ANECHAT_HOME": str(home), "TMPDIR": str(tmp), "PYTHONPATH": os.environ.get("PYTHONPATH", "")}


def _anechat(*args, env, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "anechat", *map(str, args)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **kw)


def _wait_for_partial(out: Path, proc: subprocess.Popen, timeout: float = 120) -> Path:
    """The convert's partial directory, once its lock is in place (so the process owns it)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for p in out.glob(".*.partial"):
            if (p / LOCK).is_file() and any(p.glob("*.mlpackage")):
                return p
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError("no partial directory appeared")


def _everything(*roots: Path) -> list[str]:
    return sorted(str(p) for root in roots for p in root.rglob("*"))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_killed_convert_leaves_nothing_after_the_next_command(tmp_path, _isolated_home, sig):
    src = tmp_path / "src.gguf"
    write_gguf(src, "llama", num_layers=2)
    out, scratch = tmp_path / "out", tmp_path / "tmp"
    out.mkdir()
    scratch.mkdir()
    env = _env(_isolated_home, scratch)
    proc = _anechat("convert", src, "-o", out / "model", "--context", "32", "--batch", "4", "--chunks", "2", env=env)
    partial = _wait_for_partial(out, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    if sig == signal.SIGTERM:
        assert proc.returncode == 128 + signal.SIGTERM
        assert err.decode().strip().splitlines()[-1] == "anechat: terminated"
        assert _everything(out, scratch) == []  # cleaned up by the process itself
    else:
        assert proc.returncode == -signal.SIGKILL and partial.is_dir()
    nxt = subprocess.run([sys.executable, "-m", "anechat", "models", "list"], env=env, capture_output=True, text=True, timeout=120)
    assert nxt.returncode == 0, nxt.stderr
    if sig == signal.SIGKILL:
        assert f"removed {partial}" in nxt.stderr
    assert _everything(out, scratch) == []  # no partial directory, no coremltools tmp*.mlpackage
    assert not (out / "model").exists()


def test_a_live_convert_keeps_its_partial(tmp_path, _isolated_home):
    """Cleanup removes only what a dead process left: a partial whose owner holds its lock stays."""
    from anechat import partials

    work = tmp_path / ".model.abc.partial"
    work.mkdir()
    said: list[str] = []
    with partials.tracked(work):
        assert partials.remove_stale(said.append) == [] and work.is_dir()
    assert said == []


def test_a_journal_entry_cannot_aim_the_cleanup_elsewhere(tmp_path, _isolated_home):
    import json

    from anechat import partials
    from anechat.paths import cache_dir

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / LOCK).write_text("1\n")  # even with a lock file in it: not named like a partial
    journal = cache_dir() / "partials"
    journal.mkdir(parents=True)
    (journal / "x.json").write_text(json.dumps({"path": str(victim), "pid": 1}))
    (journal / "y.json").write_text("garbage")
    assert partials.remove_stale(lambda _: None) == []
    assert victim.is_dir() and not (journal / "y.json").exists()


@pytest.fixture(scope="module")
def endless_model(tmp_path_factory):
    """A tiny model that, greedy, answers "tell me a story" without ever stopping (checked below)."""
    from anechat.convert.build import ConvertOptions, convert

    out = tmp_path_factory.mktemp("signals-model") / "tiny"
    convert(tiny_chat_checkpoint("llama", num_layers=1), out, ConvertOptions(context=32, batch=4))
    return out


def test_sigterm_in_pipe_mode_ends_like_ctrl_c(tmp_path, _isolated_home, endless_model):
    env = _env(_isolated_home, tmp_path)
    proc = _anechat("--model-dir", endless_model, "--temperature", "0", "--max-tokens", "1000000", "--session", "new",
                    "-p", "tell me a story", env=env, bufsize=0)
    first = proc.stdout.read(1)  # the answer is streaming
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    out = first + out
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err.decode().strip().splitlines()[-1] == "anechat: terminated"
    assert out.endswith(b"\n") and len(out) > 1
    from anechat.sessions.store import Store

    with Store.open() as store:
        messages = store.chat_messages(store.resolve("last"))
    assert messages[-1]["role"] == "assistant"
    assert messages[-1]["content"] + "\n" == out.decode()  # the saved answer is all that was shown


def test_closed_and_full_stdout_in_a_real_process(tmp_path, _isolated_home):
    env = _env(_isolated_home, tmp_path)
    closed = subprocess.run([sys.executable, "-m", "anechat", "config", "path"], env=env, capture_output=False,
                            stdout=None, stderr=subprocess.PIPE, timeout=60, close_fds=True,
                            preexec_fn=lambda: os.close(1))
    assert closed.returncode == 1 and closed.stderr.decode().splitlines() == ["anechat: cannot write the output: stdout is closed"]
    with open("/dev/full", "wb") as full:
        r = subprocess.run([sys.executable, "-m", "anechat", "config", "path"], env=env, stdout=full, stderr=subprocess.PIPE, timeout=60)
    assert r.returncode == 1 and r.stderr.decode().splitlines() == ["anechat: cannot write the output: No space left on device"]


# --- issue 28: every phase ends on a signal -----------------------------------------------------------------


def _ends_on(proc: subprocess.Popen, sig: int) -> str:
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)  # generous: the goal is 1 s
    assert proc.returncode == 128 + sig, err
    last = err.decode().strip().splitlines()[-1]  # (after huggingface_hub's progress bar, which ends in no newline)
    assert last.endswith("anechat: terminated" if sig == signal.SIGTERM else "anechat: interrupted"), err
    return err.decode()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_a_pull_whose_download_stalls(tmp_path, _isolated_home, tiny_model_dirs, sig):
    """huggingface_hub downloads on a pool of threads; a stalled file must not hold the exit."""
    from hubserver import Hub
    from test_models_hub import zipped_parts

    files = zipped_parts(tiny_model_dirs["llama"])
    hub = Hub({"me/tiny-anemll": files})
    hub.stall = {next(n for n in files if n.endswith(".zip"))}
    registry = _isolated_home / "config" / "models.yaml"
    registry.parent.mkdir(parents=True, exist_ok=True)
    registry.write_text("models:\n  tiny-anemll:\n    format: anemll\n    sources: [{hf: {repo: me/tiny-anemll}}]\n")
    env = {k: v for k, v in _env(_isolated_home, tmp_path).items() if k != "HF_HUB_OFFLINE"}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf-home"), HF_HUB_DISABLE_TELEMETRY="1")
    try:
        proc = _anechat("models", "pull", "tiny-anemll", env=env, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        assert hub.stalled.wait(120), proc.communicate()
        _ends_on(proc, sig)
    finally:
        hub.close()


def test_sigterm_ends_a_bench(tmp_path, _isolated_home, endless_model):
    env = _env(_isolated_home, tmp_path)
    proc = _anechat("bench", "--model-dir", endless_model, "--prompt-tokens", "8", "--gen", "20", "--runs", "100000",
                    env=env)
    time.sleep(3)  # loaded and measuring, or still loading: either phase must end
    assert proc.poll() is None, proc.communicate()
    _ends_on(proc, signal.SIGTERM)


def test_cancel_stops_a_prefill_between_blocks(endless_model):
    """Ctrl+C in pipe mode, a client gone, a stopping server: all set the generation's cancel flag, which a
    long prompt's prefill looks at between blocks (the decode loop, between tokens)."""
    import threading

    from anechat.engine.generate import DoneEvent, Engine
    from anechat.engine.loader import load_model
    from anechat.engine.sampling import SamplingParams

    loaded = load_model(endless_model, backend="portable")
    engine = Engine(loaded.lm, loaded.tokenizer)
    cancel = threading.Event()
    forward = loaded.lm.forward
    real_run, blocks = forward.run, []

    def run(tokens, *a, prefill=False, **k):
        if prefill:
            blocks.append(tokens.shape)
            if len(blocks) == 2:
                cancel.set()  # a signal arrives during the second block
        return real_run(tokens, *a, prefill=prefill, **k)

    forward.run = run
    prompt = [5 + i % 50 for i in range(24)]  # six blocks of 4
    events = list(engine.generate_ids(prompt, SamplingParams(max_tokens=5), cancel=cancel))
    forward.run = real_run
    assert isinstance(events[-1], DoneEvent) and events[-1].finish_reason == "cancelled"
    assert len(blocks) == 2 and len(events) == 1  # no block, no token after the cancel
    assert loaded.lm.cached_ids == []  # the half-written prompt is forgotten
    again = list(engine.generate_ids(prompt, SamplingParams(max_tokens=2, temperature=0)))
    assert again[-1].finish_reason in ("length", "stop")  # and the model is usable again


# Phases the tiny model gets through in milliseconds are made to last by tests/phase_driver.py (which repeats
# the phase's real work); its CASES are (phase, command) pairs.


class _Stderr:
    """The process's stderr lines, collected as they come; wait() for one that matches."""

    def __init__(self, proc: subprocess.Popen) -> None:
        import threading

        self.lines: list[str] = []
        self.proc = proc
        self.seen = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for raw in self.proc.stderr:
            with self.seen:
                self.lines.append(raw.decode(errors="replace"))
                self.seen.notify_all()
        with self.seen:
            self.lines.append("")  # (the end)
            self.seen.notify_all()

    def wait(self, pattern: str, timeout: float = 120, running: bool = True) -> re.Match:
        found: list[re.Match] = []

        def hit() -> bool:
            found[:] = [m for m in map(re.compile(pattern).search, self.lines) if m]
            return bool(found) or (self.lines[-1:] == [""])

        with self.seen:
            self.seen.wait_for(hit, timeout)
        assert found and (self.proc.poll() is None or not running), "".join(self.lines)
        return found[0]

    def __str__(self) -> str:
        return "".join(self.lines)


# SIGTERM in every case; Ctrl+C where it takes another path (asyncio's own SIGINT handler in pipe mode,
# uvicorn's in a running server, the main thread's default handler elsewhere). The benchmark runs all of them.
SIGNAL_CASES = [(phase, kind, signal.SIGTERM) for phase, kind in PHASE_CASES] + [
    (phase, kind, signal.SIGINT) for phase, kind in PHASE_CASES
    if kind == "pipe" or (phase, kind) in (("checksums", "verify"), ("load", "serve"), ("decode", "serve"))
]


@pytest.mark.parametrize(("phase", "kind", "sig"), SIGNAL_CASES, ids=[f"{p}-{k}-{s.name}" for p, k, s in SIGNAL_CASES])
def test_a_signal_ends_the_command_in_every_phase(tmp_path, _isolated_home, endless_model, phase, kind, sig):
    """Ctrl+C and SIGTERM end the command mid-phase, with its exit code and one line; the phase's work
    runs without end, so only the signal can end it. The goal is 1 s (benchmarks/bench_signal_exit.py prints
    it per phase); the bound here is generous for a loaded machine."""
    from anechat.models import store as models

    if kind == "verify":
        models.add(endless_model, "tiny")
    driver = Path(__file__).parent / "phase_driver.py"
    proc = subprocess.Popen([sys.executable, str(driver), phase, *command(kind, endless_model)],
                            env=_env(_isolated_home, tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = _Stderr(proc)
    try:
        if kind == "serve" and phase != "load":  # a request in flight
            port = err.wait(r"at http://[^ ]+:(\d+)/v1").group(1)
            import threading

            import httpx

            threading.Thread(target=lambda: _quietly(httpx.post, f"http://127.0.0.1:{port}/v1/chat/completions",
                                                     json=SERVE_REQUEST, timeout=120), daemon=True).start()
        err.wait(f"phase-driver: in {phase}")
        time.sleep(0.3)  # inside the phase's work, not at its first instruction
        t = time.monotonic()
        proc.send_signal(sig)
        proc.wait(timeout=60)
        took = time.monotonic() - t
    finally:
        if proc.poll() is None:
            proc.kill()
    err.wait("^$", running=False)  # every line read
    lines = [x for x in err.lines if x.strip()]
    print(f"{phase} in {kind}: exit {took:.2f} s after {sig.name}")
    if kind == "serve" and phase != "load":
        # a running server logs its stop; Ctrl+C is how it is meant to stop, not an error (exit 0)
        assert proc.returncode == (0 if sig == signal.SIGINT else 128 + sig), str(err)
        assert lines[-1].rstrip().endswith("INFO stopped"), str(err)
    else:
        assert proc.returncode == 128 + sig, str(err)
        assert lines[-1].strip() == ("anechat: terminated" if sig == signal.SIGTERM else "anechat: interrupted"), str(err)
    assert not any("Traceback" in x for x in lines), str(err)
    assert took < 15, took  # generous (see the docstring)
    if kind == "pipe" and phase != "load":  # the question was saved before the work began
        from anechat.sessions.store import Store

        with Store.open() as store:
            messages = store.chat_messages(store.resolve("last"))
        assert messages[0] == {"role": "user", "content": "tell me a story"}, messages


def _quietly(call, *a, **k) -> None:
    import contextlib

    import httpx

    with contextlib.suppress(httpx.HTTPError):  # the server went away under the request: what the test does
        call(*a, **k)


# --- the interactive UIs: SIGTERM in a real terminal (tmux) -------------------------------------------------


@pytest.mark.skipif(__import__("shutil").which("tmux") is None, reason="needs tmux (.ci/run installs it)")
@pytest.mark.parametrize("ui", ["repl", "tui"])
def test_sigterm_ends_the_interactive_ui_mid_answer(tmp_path, _isolated_home, endless_model, ui):
    """The answer being written stops and is saved as stopped, the terminal is given back (no full-screen
    leftovers, the line discipline restored), one line says so, exit 143."""
    import shlex
    import uuid

    from test_tui_tmux import screen, tmux, wait_for

    from anechat.sessions.store import Store

    name = f"anechat-{uuid.uuid4().hex[:8]}"
    pid_file, done, tty = tmp_path / "pid", tmp_path / "exit-code", tmp_path / "stty"
    anechat = (f"exec {shlex.quote(sys.executable)} -m anechat --model-dir {shlex.quote(str(endless_model))} "
               f"--temperature 0 --max-tokens 1000000" + (" --plain" if ui == "repl" else ""))
    cmd = (f"sh -c {shlex.quote(f'echo $$ > {pid_file}; {anechat}')}; echo $? > {done}; stty -a > {tty}; sleep 30")
    env = {**_env(_isolated_home, tmp_path), "TERM": "xterm-256color"}
    subprocess.run(["tmux", "new-session", "-d", "-s", name, "-x", "100", "-y", "30", cmd], check=True, env=env)
    try:
        wait_for(name, lambda s: ("portable" in s and "Message" in s) if ui == "tui" else "Ctrl+D quits" in s, 90,
                 "the UI with the model loaded")
        tmux("send-keys", "-t", name, "-l", "tell me a story")
        tmux("send-keys", "-t", name, "Enter")
        with Store.open() as store:  # the answer is being written
            end = time.monotonic() + 60
            while time.monotonic() < end and not any(m.role == "assistant" and m.content
                                                     for s in store.list_sessions() for m in store.messages(s.id)):
                time.sleep(0.1)
        pid = int(pid_file.read_text())
        t = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        while not done.exists() and time.monotonic() - t < 60:
            time.sleep(0.02)
        took = time.monotonic() - t
        print(f"{ui}: exit {took:.2f} s after SIGTERM")
        assert done.exists() and done.read_text().strip() == "143", screen(name)
        time.sleep(0.3)
        after = screen(name)
        assert "anechat: terminated" in after and "Traceback" not in after, after
        if ui == "tui":
            assert "Message" not in after, after  # the full screen is gone
        assert " icanon" in tty.read_text() and " echo " in tty.read_text()  # a usable terminal again
        with Store.open() as store:
            (session,) = store.list_sessions()
            messages = store.messages(session.id)
        assert [m.role for m in messages] == ["user", "assistant"] and messages[1].cut_short and messages[1].content
        assert took < 15, took  # generous: the goal is 1 s
    finally:
        tmux("kill-session", "-t", name)


def test_a_signal_waits_for_the_answer_piece_being_shown_and_saved():
    """Pipe mode shows and saves each piece of the answer inside `held()`: a SIGTERM (or Ctrl+C) arriving
    between the two is raised once both are done, so the saved answer is what was shown; a second signal
    while the block runs (a write blocked on a reader that stopped) is raised at once."""
    from anechat.signals import Terminated, held, interrupt, sigterm_as_interrupt

    steps = []
    with sigterm_as_interrupt(), pytest.raises(Terminated), held():
        steps.append("shown")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # the handler has run by now (between bytecodes)
        steps.append("saved")
    assert steps == ["shown", "saved"]
    previous = signal.signal(signal.SIGINT, interrupt)
    try:
        with sigterm_as_interrupt(), pytest.raises(KeyboardInterrupt), held():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            steps.append("still held")
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            steps.append("never")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert steps[-1] == "still held"
