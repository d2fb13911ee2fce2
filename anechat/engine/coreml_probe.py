"""The first Core ML run of a model happens in a child process.

Core ML compiles a model for the Neural Engine at its first prediction, and a model the ANE compiler rejects
may kill the process there instead of raising (ANEMLL users meet this as a crash at the first prompt). So
the first time a model (per compiled version, compute units and toolchain) is loaded with Core ML, a child
process loads it and warms it up; if the child dies or fails, the load fails with the reason — and backend
"auto" falls back to the portable runtime — instead of the chat dying. A success is remembered.

    python -m anechat.engine.coreml_probe MODEL_DIR COMPUTE_UNITS
"""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
from pathlib import Path

from anechat.errors import EXIT_MODEL_LOAD, AnechatError, ModelLoadError


def marker_path(md, backend) -> Path:
    from anechat.runtime.coreml import package_digest, toolchain_tag

    h = hashlib.sha256(f"{Path(md.path).resolve()}|{backend.compute_units}|{toolchain_tag()}".encode())
    for _, part in md.parts():
        h.update(package_digest(part).encode())
    return backend.cache_root / "probed" / f"{h.hexdigest()[:32]}.ok"


def probe_command(model_path: Path, compute_units: str) -> list[str]:
    return [sys.executable, "-m", "anechat.engine.coreml_probe", str(model_path), compute_units]


def run_probe(model_path: Path, compute_units: str) -> tuple[int, str]:
    """(exit code, last stderr line) of the child; a negative code is the signal that killed it."""
    r = subprocess.run(probe_command(model_path, compute_units), capture_output=True, text=True)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    return r.returncode, lines[-1] if lines else ""


def ensure_first_run_survives(md, backend) -> float | None:
    """Seconds the child took (compiling, loading, warming up), or None when this model already passed."""
    import time

    marker = marker_path(md, backend)
    if marker.is_file():
        return None
    started = time.perf_counter()
    code, last = run_probe(Path(md.path), backend.compute_units)
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        raise ModelLoadError(f"Core ML killed the process at the first prediction ({name}); the Neural Engine compiler likely rejects this model")
    if code != 0:
        raise ModelLoadError(last.removeprefix("anechat: ") or f"the Core ML check exited with {code}")
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    from anechat.engine.lm import ChunkedLM
    from anechat.runtime.coreml import CoreMLBackend
    from anechat.runtime.modeldir import open_model_dir

    path, units = (argv if argv is not None else sys.argv[1:])[:2]
    try:
        lm = ChunkedLM(open_model_dir(Path(path)), CoreMLBackend(compute_units=units))
        lm.warm_up()
    except AnechatError as e:
        print(f"anechat: {e}", file=sys.stderr)
        return e.exit_code or EXIT_MODEL_LOAD
    return 0


if __name__ == "__main__":
    sys.exit(main())
