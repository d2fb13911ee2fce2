"""Smoke test of anechat as users install it: a wheel built from this checkout, installed (not editable) into a
fresh virtual environment, run from a directory where the checkout cannot be imported.

    python3 .ci/smoke_install.py [--keep]

It checks `anechat --version`, converts the tiny Qwen 3.5 in tests/data with the installed `anechat convert`,
answers in pipe mode, opens the full-screen chat in a real terminal (tmux, 80x24), sends a message typed in
one burst with its Enter and waits for the answer's stats, and has `anechat serve` answer one request. Everything
it writes is under one temporary directory, removed at the end unless --keep. Exit 0 when every step passed,
1 with the failing step's name and what it saw.

Only the standard library is used here: this script must not need anything the wheel is being tested for.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
TINY_HF = CHECKOUT / "tests" / "data" / "qwen35-tiny"


class SmokeFailure(Exception):
    pass


def run(cmd: list[str], *, env: dict[str, str], cwd: Path, timeout: float, stdin: str | None = None) -> str:
    try:
        done = subprocess.run(cmd, env=env, cwd=cwd, input=stdin, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise SmokeFailure(f"{' '.join(cmd)}: no exit within {timeout:.0f} s") from exc
    if done.returncode != 0:
        raise SmokeFailure(f"{' '.join(cmd)}: exit {done.returncode}\n{done.stdout}\n{done.stderr}")
    return done.stdout


STARTED = time.monotonic()


def step(name: str):
    print(f"smoke: [{time.monotonic() - STARTED:5.0f} s] {name} ...", flush=True)


def build_and_install(work: Path) -> Path:
    step("building the wheel (pip wheel --no-deps .)")
    dist = work / "dist"
    # Built from a copy so the checkout gets no build/ directory and an untracked file cannot slip in unnoticed
    src = work / "src"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=CHECKOUT, capture_output=True, text=True, check=True)
    for rel in filter(None, files.stdout.split("\0")):
        if rel.startswith(("tests/", "benchmarks/", ".ci/")):
            continue
        target = src / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        origin = CHECKOUT / rel
        if origin.is_dir():  # a tracked symlink to a directory (anechat/data/themes)
            shutil.copytree(origin, target)
        else:
            shutil.copyfile(origin, target)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(src), "-w", str(dist)], check=True)
    wheels = list(dist.glob("anechat-*.whl"))
    if len(wheels) != 1:
        raise SmokeFailure(f"expected one wheel in {dist}, found {wheels}")
    step("installing it into a fresh virtual environment")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, str(wheels[0])], check=True)
    return venv


def user_env(work: Path, venv: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(
        PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        VIRTUAL_ENV=str(venv),
        ANECHAT_HOME=str(work / "home"),
        HF_HUB_OFFLINE="1",
        TERM="xterm-256color",
    )
    return env


def check_installed(env: dict[str, str], cwd: Path, venv: Path) -> None:
    step("anechat --version, from the install only")
    where = run([str(venv / "bin" / "python"), "-c", "import anechat; print(anechat.__file__)"],
                env=env, cwd=cwd, timeout=60).strip()
    if not where.startswith(str(venv)) or str(CHECKOUT) in where:
        raise SmokeFailure(f"anechat was imported from {where}, not from the fresh install in {venv}")
    version = run(["anechat", "--version"], env=env, cwd=cwd, timeout=60)
    if "anechat" not in version:
        raise SmokeFailure(f"anechat --version printed {version!r}")


def convert_tiny(env: dict[str, str], cwd: Path) -> Path:
    step(f"anechat convert {TINY_HF.relative_to(CHECKOUT)}")
    model = cwd / "qwen35-tiny-ane"
    run(["anechat", "convert", str(TINY_HF), "-o", str(model), "--context", "128", "--batch", "16"],
        env=env, cwd=cwd, timeout=600)
    return model


def pipe_mode(env: dict[str, str], cwd: Path, model: Path) -> None:
    step("pipe mode answers")
    out = run(["anechat", "--model-dir", str(model), "--temperature", "0", "--max-tokens", "8"],
              env=env, cwd=cwd, timeout=300, stdin="Hello, who are you?\n")
    if not out.strip():
        raise SmokeFailure("pipe mode printed no answer")


def tmux(*args: str, env: dict[str, str] | None = None) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=False, env=env).stdout


def wait_screen(name: str, predicate, timeout: float, what: str, done: Path) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = tmux("capture-pane", "-p", "-t", name)
        if predicate(text):
            return text
        if done.exists():
            text = tmux("capture-pane", "-p", "-t", name)
            raise SmokeFailure(f"full-screen chat: anechat exited {done.read_text().strip()} while waiting for "
                               f"{what}; the screen was:\n{text}")
        time.sleep(0.25)
    raise SmokeFailure(f"full-screen chat: timed out waiting for {what}; the screen was:\n{text}")


def type_line(name: str, text: str) -> None:
    # Text and Enter in one burst, as a fast typist or a script sends them: the Enter must not be lost.
    tmux("send-keys", "-t", name, "-l", text, ";", "send-keys", "-t", name, "Enter")


def full_screen_chat(env: dict[str, str], cwd: Path, model: Path) -> None:
    step("the full-screen chat opens at 80x24 and answers")
    if shutil.which("tmux") is None:
        raise SmokeFailure("tmux is not installed (.ci/run installs it)")
    name = f"anechat-smoke-{uuid.uuid4().hex[:8]}"
    done = cwd / "tui-exit-code"
    cmd = f"anechat --model-dir '{model}' --temperature 0 --max-tokens 8; echo $? > '{done}'; sleep 600"
    subprocess.run(["tmux", "new-session", "-d", "-s", name, "-x", "80", "-y", "24", "-c", str(cwd), cmd],
                   check=True, env=env)
    try:
        wait_screen(name, lambda s: "portable" in s and "Message" in s, 120, "the UI with the model loaded", done)
        type_line(name, "Hello there")
        wait_screen(name, lambda s: "TTFT" in s and "Hello there" in s, 120, "an answer and its stats", done)
        type_line(name, "/quit")
        deadline = time.monotonic() + 60
        while not done.exists() and time.monotonic() < deadline:
            time.sleep(0.25)
        after = tmux("capture-pane", "-p", "-t", name)
        if not done.exists() or done.read_text().strip() != "0" or "Traceback" in after:
            code = done.read_text().strip() if done.exists() else "none"
            raise SmokeFailure(f"full-screen chat did not quit cleanly (exit {code}); the screen was:\n{after}")
    finally:
        tmux("kill-session", "-t", name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_one_request(env: dict[str, str], cwd: Path, model: Path) -> None:
    step("anechat serve answers one request")
    port = free_port()
    log = (cwd / "serve.log").open("w")
    server = subprocess.Popen(["anechat", "serve", "--model-dir", str(model), "--port", str(port)],
                              env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                raise SmokeFailure(f"anechat serve exited {server.returncode}:\n{(cwd / 'serve.log').read_text()}")
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=5) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SmokeFailure("anechat serve: /health did not answer within 120 s")
            time.sleep(0.5)
        body = json.dumps({"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8,
                           "temperature": 0}).encode()
        request = urllib.request.Request(f"{base}/v1/chat/completions", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as reply:
            answer = json.loads(reply.read())
        if not answer.get("choices") or answer["choices"][0]["message"]["role"] != "assistant":
            raise SmokeFailure(f"anechat serve answered {answer}")
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (it is printed)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="anechat-smoke-"))
    try:
        venv = build_and_install(work)
        cwd = work / "user"
        cwd.mkdir()
        env = user_env(work, venv)
        check_installed(env, cwd, venv)
        model = convert_tiny(env, cwd)
        pipe_mode(env, cwd, model)
        full_screen_chat(env, cwd, model)
        serve_one_request(env, cwd, model)
    except (SmokeFailure, subprocess.CalledProcessError) as exc:
        print(f"smoke: FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"smoke: kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"smoke: the installed wheel works ({time.monotonic() - STARTED:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
