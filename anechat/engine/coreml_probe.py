"""The first Core ML run of a model happens in a child process.

Core ML compiles a model for the Neural Engine at its first prediction, and a model the ANE compiler rejects
may kill the process there instead of raising (ANEMLL users meet this as a crash at the first prompt). So
the first time a model (per compiled version, compute units and toolchain) is loaded with Core ML, a child
process loads it and warms it up; if the child dies or fails, the load fails with the reason — and backend
"auto" falls back to the portable runtime — instead of the chat dying. A success is remembered.

A model with per-block int8 weights may also run and answer garbage: apple/coreai-models #279 (iOS 27, iPhone
16 Pro Max: cosine 0.367 on the Neural Engine, 0.999 on the GPU) and apple/coreai-torch #93 (an M5's Neural
Engine reads blocked input-axis scales as one scale per row). For such a model, off the CPU-only path, the
child also compares a short teacher-forced probe with the portable runtime by doctor's rule; a disagreement
is a WrongOutput, remembered like a success so later starts do not probe again.

    python -m anechat.engine.coreml_probe MODEL_DIR COMPUTE_UNITS
"""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
from pathlib import Path

from anechat.errors import AnechatError, ModelLoadError, WrongOutput, exit_code

# The child's exit code for "runs, but answers wrongly" (no user sees it: the parent raises WrongOutput).
WRONG_OUTPUT_EXIT = 9


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
    """Seconds the child took (compiling, loading, warming up), or None when this model already passed.
    ModelLoadError when the child died or failed; WrongOutput when it found the answers wrong, now or at an
    earlier start (the verdict is kept beside the success marker, as `.wrong`)."""
    import time

    marker = marker_path(md, backend)
    wrong = marker.with_suffix(".wrong")
    if marker.is_file():
        return None
    if wrong.is_file():
        raise WrongOutput(wrong.read_text(encoding="utf-8", errors="replace").strip()
                          or f"Core ML {backend.compute_units} answered otherwise than the portable runtime at this model's first run")
    started = time.perf_counter()
    code, last = run_probe(Path(md.path), backend.compute_units)
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        raise ModelLoadError(f"Core ML killed the process at the first prediction ({name}); the Neural Engine compiler likely rejects this model")
    if code == WRONG_OUTPUT_EXIT:
        message = last.removeprefix("anechat: ")
        wrong.parent.mkdir(parents=True, exist_ok=True)
        wrong.write_text(message + "\n", encoding="utf-8")
        raise WrongOutput(message)
    if code != 0:
        raise ModelLoadError(last.removeprefix("anechat: ") or f"the Core ML check exited with {code}")
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    return time.perf_counter() - started


def wrong_output(md, backend, lm) -> str | None:
    """The one line that says why this model's answers cannot be trusted on these compute units, or None.
    Only per-block int8 models pay for the comparison, and not on the CPU alone (no report there)."""
    from anechat.engine.diagnose import disagrees, probe_agreement
    from anechat.runtime.anechecks import has_int8_blocks

    if backend.runs_on_cpu or not has_int8_blocks(md.path):
        return None
    a = probe_agreement(md, lm)
    if not disagrees(a):
        return None
    where = "the Neural Engine" if backend.uses_neural_engine else f"Core ML {backend.compute_units}"
    return (f"{where} computes this model's per-block int8 weights wrongly (top-1 {a['top1']:.0%} of {a['positions']} "
            "probe positions vs the portable runtime; apple/coreai-torch #93, apple/coreai-models #279); "
            "reconvert with `--int8 --int8-block 0` or a LUT to run it there")


def main(argv: list[str] | None = None) -> int:
    from anechat.engine.lm import LanguageModel
    from anechat.runtime.coreml import CoreMLBackend
    from anechat.runtime.modeldir import open_model_dir

    path, units = (argv if argv is not None else sys.argv[1:])[:2]
    try:
        md = open_model_dir(Path(path))
        backend = CoreMLBackend(compute_units=units)
        lm = LanguageModel(md, backend)
        lm.warm_up()
        wrong = wrong_output(md, backend, lm)
    except AnechatError as e:
        print(f"anechat: {e}", file=sys.stderr)
        return exit_code(e)
    if wrong:
        print(f"anechat: {wrong}", file=sys.stderr)
        return WRONG_OUTPUT_EXIT
    return 0


if __name__ == "__main__":
    sys.exit(main())
