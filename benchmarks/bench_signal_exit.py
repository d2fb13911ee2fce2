"""How long anechat takes to end after Ctrl+C (SIGINT) or SIGTERM, per phase (issue 28). Goal: under 1 s.

Each case of tests/phase_driver.py (model load, tokenizing, prefill, decode, checksums, doctor, bench, serve
with a request in flight) runs in a real process with that phase's work repeated without end; once the
phase has run for `--into` seconds the signal is sent, and the time until the process has ended is
measured. Printed per case: the median and worst exit latency over `--runs` runs, with the exit code.

    python benchmarks/bench_signal_exit.py [--model-dir DIR] [--runs 3] [--into 0.3] [--only PHASE] [--json]

Without --model-dir a tiny model that answers "tell me a story" without end is converted first (the decode
cases need one: with another model they may end by themselves).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))


def tiny_model(root: Path) -> Path:
    from tiny import tiny_chat_checkpoint

    from anechat.convert.build import ConvertOptions, convert

    out = root / "tiny"
    convert(tiny_chat_checkpoint("llama", num_layers=1), out, ConvertOptions(context=32, batch=4))
    return out


def one(phase: str, kind: str, model: Path, home: Path, sig: int, into: float) -> tuple[float, int]:
    from phase_driver import SERVE_REQUEST, command

    env = {**os.environ, "ANECHAT_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, str(TESTS / "phase_driver.py"), phase, *command(kind, model)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    seen = threading.Condition()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            with seen:
                lines.append(line)
                seen.notify_all()

    threading.Thread(target=read, daemon=True).start()

    def wait(pattern: str) -> re.Match:
        found: list[re.Match] = []

        def hit() -> bool:
            found[:] = [m for m in map(re.compile(pattern).search, lines) if m]
            return bool(found) or proc.poll() is not None

        with seen:
            seen.wait_for(hit, 120)
        if not found:
            proc.kill()
            raise RuntimeError(f"{phase} in {kind}: never reached\n{''.join(lines)}")
        return found[0]

    try:
        if kind == "serve" and phase != "load":
            import httpx

            port = wait(r"at http://[^ ]+:(\d+)/v1").group(1)

            def request() -> None:
                with contextlib.suppress(httpx.HTTPError):  # the server goes away under it: the point
                    httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=SERVE_REQUEST, timeout=120)

            threading.Thread(target=request, daemon=True).start()
        wait(f"phase-driver: in {phase}")
        time.sleep(into)
        t = time.perf_counter()
        proc.send_signal(sig)
        proc.wait(timeout=60)
        return time.perf_counter() - t, proc.returncode
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", type=Path)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--into", type=float, default=0.3, help="seconds into the phase the signal is sent")
    ap.add_argument("--only", help="only the cases of this phase")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    from phase_driver import CASES

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = a.model_dir or tiny_model(root)
        home = root / "home"
        os.environ["ANECHAT_HOME"] = str(home)
        from anechat.models import store

        store.add(model, "tiny")  # for `models verify tiny`
        for phase, kind in CASES:
            if a.only and phase != a.only:
                continue
            for sig in (signal.SIGINT, signal.SIGTERM):
                took, codes = [], set()
                for _ in range(a.runs):
                    seconds, code = one(phase, kind, model, home, sig, a.into)
                    took.append(seconds)
                    codes.add(code)
                row = {"phase": phase, "command": kind, "signal": signal.Signals(sig).name,
                       "median_s": round(statistics.median(took), 3), "worst_s": round(max(took), 3),
                       "exit_codes": sorted(codes)}
                rows.append(row)
                if not a.json:
                    print(f"{phase:>10} in {kind:<6} {row['signal']:<7}: median {row['median_s']:.3f} s, "
                          f"worst {row['worst_s']:.3f} s, exit {','.join(map(str, row['exit_codes']))}", flush=True)
    if a.json:
        print(json.dumps(rows, indent=1))
    else:
        worst = max(rows, key=lambda r: r["worst_s"])
        print(f"worst: {worst['worst_s']:.3f} s ({worst['phase']} in {worst['command']}, {worst['signal']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
