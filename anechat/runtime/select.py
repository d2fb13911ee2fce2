"""Choosing a backend: Core ML where it can really predict, the portable executor everywhere else."""

from __future__ import annotations

import logging

from anechat.errors import ModelLoadError

log = logging.getLogger(__name__)


def get_backend(name: str = "auto", *, compute_units: str | None = None, strict_fp16: bool = False):
    from anechat.runtime.coreml import coreml_unavailable_reason

    if name not in ("auto", "coreml", "portable"):
        raise ModelLoadError(f"unknown backend {name!r} (choose auto, coreml or portable)")
    if name in ("auto", "coreml") and not strict_fp16:
        reason = coreml_unavailable_reason()
        if reason is None:
            from anechat.runtime.coreml import CoreMLBackend

            return CoreMLBackend(compute_units=compute_units)
        if name == "coreml":
            raise ModelLoadError(f"the Core ML backend is not available: {reason}")
        log.info("using the portable backend: %s", reason)
    elif name == "coreml":
        raise ModelLoadError("--strict-fp16 is a portable-backend mode; it cannot be combined with --backend coreml")
    from anechat.runtime.portable import PortableBackend

    return PortableBackend(strict_fp16=strict_fp16)


def shares_cores(backend) -> bool:
    """Whether the model computes on the CPU cores a UI draws on (the portable runtime, Core ML on the CPU
    only): then every frame the UI draws is time taken from the model."""
    if backend.name == "coreml":
        return not getattr(backend, "uses_neural_engine", False) and getattr(backend, "compute_units", None) != "CPU_AND_GPU"
    return True


def backend_label(backend) -> str:
    """What the status bar and stats say the model runs on."""
    return getattr(backend, "label", None) or ("portable (numpy)" if backend.name == "portable" else backend.name)
