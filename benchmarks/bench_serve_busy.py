"""How long `anechat serve` makes /health and /v1/models wait while it works (issue 28).

A real server child process on one model. While it is idle, then while it streams long answers (every slot
busy decoding), then while it refuses hostile requests (100,000 messages; a body of 100,000 nested `[`; a
body larger than the limit), a client polls /health and /v1/models every 20 ms and the worst, p99 and median
latencies are printed (the load comes from processes of its own, so the pollers wait for nothing but the
server), with the idle ones beside them as the ratio that means something on a shared
machine. Goal: the worst /health latency while busy under 100 ms.

    python benchmarks/bench_serve_busy.py --model-dir DIR [--seconds 10] [--slots 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


STREAM = """
import sys, time, httpx
url, seconds = sys.argv[1], float(sys.argv[2])
end = time.monotonic() + seconds
body = {"messages": [{"role": "user", "content": "Tell me a long story."}], "max_tokens": 100000, "stream": True,
        "temperature": 1.0}
with httpx.Client(timeout=120) as c:
    while time.monotonic() < end:
        with c.stream("POST", url + "/v1/chat/completions", json=body) as r:
            for _ in r.iter_lines():
                if time.monotonic() > end:
                    break
"""

HOSTILE = """
import sys, time, httpx
url, seconds, paths = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
bodies = [open(p, "rb").read() for p in paths]
end = time.monotonic() + seconds
with httpx.Client(timeout=120) as c:
    while time.monotonic() < end:
        for body in bodies:
            r = c.post(url + "/v1/chat/completions", content=body, headers={"content-type": "application/json"})
            assert r.status_code in (400, 413), r.text
"""


def poll(url: str, stop: threading.Event, out: list[float], path: str) -> None:
    import httpx

    with httpx.Client(timeout=60) as c:
        while not stop.is_set():
            t = time.perf_counter()
            c.get(url + path).raise_for_status()
            out.append(time.perf_counter() - t)
            stop.wait(0.02)


def measure(url: str, seconds: float, busy=None) -> dict[str, list[float]]:
    stop = threading.Event()
    got: dict[str, list[float]] = {"/health": [], "/v1/models": []}
    pollers = [threading.Thread(target=poll, args=(url, stop, got[p], p)) for p in got]
    for t in pollers:
        t.start()
    if busy is not None:
        busy()
    else:
        time.sleep(seconds)
    stop.set()
    for t in pollers:
        t.join()
    return got


def summary(name: str, got: dict[str, list[float]], idle: dict[str, list[float]] | None) -> dict:
    row = {"phase": name}
    for path, xs in got.items():
        worst, median = max(xs) * 1000, statistics.median(xs) * 1000
        p99 = sorted(xs)[int(len(xs) * 0.99)] * 1000  # steadier than the worst on a shared machine
        row[path] = {"n": len(xs), "worst_ms": round(worst, 1), "p99_ms": round(p99, 1), "median_ms": round(median, 1)}
        if idle:
            row[path]["worst_vs_idle_worst"] = round(worst / (max(idle[path]) * 1000), 1)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", required=True, type=Path)
    ap.add_argument("--seconds", type=float, default=10.0, help="how long each phase is polled")
    ap.add_argument("--slots", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    from serve_helpers import Server

    rows = []
    with tempfile.TemporaryDirectory() as home:
        server = Server(a.model_dir, Path(home), "--slots", str(a.slots), "--log-level", "warning")
        try:
            url = server.url
            idle = measure(url, a.seconds)
            rows.append(summary("idle", idle, None))

            def generate() -> None:
                # The load comes from processes of their own: in this one, their parsing of the streams would
                # hold this process's GIL and delay the pollers, which is not the server's doing.
                load = [subprocess.Popen([sys.executable, "-c", STREAM, url, str(a.seconds)]) for _ in range(a.slots)]
                for p in load:
                    p.wait()

            rows.append(summary(f"generating ({a.slots} streams)", measure(url, a.seconds, generate), idle))

            # made once, before the clock runs
            bodies = (json.dumps({"messages": [{"role": "user", "content": "a"}] * 100_000}).encode(),
                      b"[" * 100_000, b"x" * (9 << 20), b"[" + b"[],[]," * ((8 << 20) // 6 - 1) + b"[]]")
            files = []
            for i, body in enumerate(bodies):
                files.append(Path(home) / f"body{i}")
                files[-1].write_bytes(body)

            def hostile() -> None:
                p = subprocess.Popen([sys.executable, "-c", HOSTILE, url, str(a.seconds), *map(str, files)])
                assert p.wait() == 0

            rows.append(summary("refusing hostile requests", measure(url, a.seconds, hostile), idle))
        finally:
            server.stop()
    if a.json:
        print(json.dumps(rows, indent=1))
    else:
        for row in rows:
            cells = "  ".join(f"{p}: worst {v['worst_ms']:.1f} ms, p99 {v['p99_ms']:.1f} ms, median {v['median_ms']:.1f} ms (n={v['n']})"
                              + (f", worst {v['worst_vs_idle_worst']}x idle" if "worst_vs_idle_worst" in v else "")
                              for p, v in row.items() if p != "phase")
            print(f"{row['phase']:>28}: {cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
