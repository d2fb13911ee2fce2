"""Core ML state ops. State buffers live in the compute dtype and are updated in place: the KV cache is
never copied or converted per token."""

from __future__ import annotations

import numpy as np

from anechat.runtime.milexec.ops import OpArgs, kernel


@kernel("read_state")
def read_state(a: OpArgs):
    return (lambda buffer: buffer), ["input"]


def _write(buffer, value):
    if value is not buffer:
        np.copyto(buffer, value)
    return buffer


@kernel("write_state")
def write_state(a: OpArgs):
    return _write, ["input", "data"]


@kernel("coreml_update_state")
def coreml_update_state(a: OpArgs):
    return _write, ["state", "value"]
