"""Weight compression of a converted part.

LUTs are computed here, in numpy (palettize.py: exact weighted 1-D k-means per group of output channels,
errors weighted by the calibration activations), and written into the program as iOS18
`constexpr_lut_to_dense` ops; nothing depends on scikit-learn and nothing falls back to another method.
Linear int8 (`--int8`, for the parts without a LUT) is computed here too (arch/mil.py's Int8: an fp16 scale and
offset per block of 32 input elements, each block's grid chosen for the least error) and written as
`constexpr_blockwise_shift_scale`.

What is compressed, by either method, is the same set of weights: the embedding table, the lm_head and each
layer's projections (the fields of LAYER_INPUTS). Everything else stays fp16 and is never seen here: norm
gains, biases, q/k-norm gains, rope tables, masks and the other constants a graph builds, and the weight kinds
of KEPT_FP16. A 2-D layer weight of neither kind is an error, so a new family's weight cannot slip through
unnoticed."""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import signal
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

import numpy as np

from anechat.arch.mil import INT8_BLOCK, Int8, Palettized
from anechat.convert.ane.palettize import BITS, palettize_matrix
from anechat.errors import ConversionError, UsageError

log = logging.getLogger(__name__)
MIN_WEIGHT_ELEMENTS = 2048  # smaller projections (tiny test models) stay fp16
# Weights in a palettization below which worker processes cost more than they save (SmolLM2-135M: 95 M).
PARALLEL_MIN_ELEMENTS = 8_000_000
EMBEDDINGS = "model.embed_tokens.weight"
LM_HEAD = "lm_head.weight"
# Output channels sharing one palette when `--lut-* BITS` gives no group size, chosen on SmolLM2 (see
# benchmarks/bench_lut.py): a palette of 2**bits fp16 values costs 16·2**bits / (group · in) bits per weight.
DEFAULT_GROUP = {4: 1, 6: 4, 8: 16}
# The input of each fused projection of programs.LayerWeights: its calibration statistics are that weight's.
LAYER_INPUTS = {"qkv": "self_attn.q_proj.weight", "o": "self_attn.o_proj.weight", "gate_up": "mlp.gate_proj.weight", "down": "mlp.down_proj.weight",
                # Qwen 3.5: the attention gate, the DeltaNet's fused input projection and its output projection
                "gate": "self_attn.q_proj.weight", "proj": "linear_attn.in_proj_qkv.weight", "out": "linear_attn.out_proj.weight"}
# Layer weights deliberately kept fp16, and why.
KEPT_FP16 = {
    # Qwen 3.5's DeltaNet conv taps (channels × 4): a depthwise conv, not a projection, so no input statistics
    # weigh its errors; each tap multiplies one channel's every activation, and the taps are 0.1 % of a layer's
    # bytes (0.8B: 6144 × 4 of a layer's 21.5 M weights), so compressing them saves nothing worth the risk.
    "conv": "depthwise conv taps",
}


@dataclasses.dataclass(frozen=True)
class Lut:
    bits: int
    group_size: int

    def __str__(self) -> str:
        return f"{self.bits},{self.group_size}"


def parse_lut(text: str | int | None, flag: str = "--lut") -> Lut | None:
    """`none`, `BITS` or `BITS,GROUP` (GROUP output channels per palette; ANEMLL's `--lut` takes the same)."""
    if text is None or str(text).strip().lower() in ("", "none"):
        return None
    parts = str(text).split(",")
    try:
        bits = int(parts[0])
        group = int(parts[1]) if len(parts) > 1 else DEFAULT_GROUP.get(bits, 1)
    except ValueError:
        bits = group = 0
    if len(parts) > 2 or bits not in BITS or group < 1:
        raise UsageError(f"{flag} must be none, auto, 4, 6 or 8, optionally with a group size (e.g. 4,16), got {text!r}")
    return Lut(bits, group)


def _group_for(rows: int, lut: Lut, what: str) -> int:
    if rows % lut.group_size:
        raise ConversionError(f"{what}: LUT group size {lut.group_size} does not divide its {rows} output channels")
    return lut.group_size


class Calibration:
    """Each linear weight's input second moments on the calibration text, computed once per conversion."""

    def __init__(self, checkpoint) -> None:
        self.checkpoint = checkpoint
        self._moments: dict[str, np.ndarray] | None = None

    def run(self) -> None:
        self.moments(None)

    def moments(self, name: str | None) -> np.ndarray | None:
        if self._moments is None:
            from anechat.convert.calibrate import calibration_ids, input_moments

            tokenizer = self.checkpoint.tokenizer_files.get("tokenizer.json")
            if tokenizer is None:
                raise ConversionError("LUT calibration needs the checkpoint's tokenizer.json")
            self._moments = input_moments(self.checkpoint, calibration_ids(tokenizer))
        if name is None:
            return None
        try:
            return self._moments[name]
        except KeyError:
            raise ConversionError(f"no calibration statistics for {name}") from None


def palettize_weight(weight: np.ndarray, lut: Lut, what: str, input_weights: np.ndarray | None = None) -> Palettized:
    return palettize_matrix(weight, lut.bits, _group_for(weight.shape[0], lut, what), input_weights)


def compressed_fields(weights, layer: int | None = None) -> list[str]:
    """The fields of a programs.LayerWeights that LUT or int8 compress: its projections (LAYER_INPUTS) big
    enough to repay it. A 2-D weight that is neither a projection nor in KEPT_FP16 is an error."""
    names = []
    for f in dataclasses.fields(weights):
        v = getattr(weights, f.name)
        if not isinstance(v, np.ndarray) or v.ndim != 2 or f.name in KEPT_FP16:
            continue
        if f.name not in LAYER_INPUTS:
            where = "" if layer is None else f"layer {layer}: "
            raise ConversionError(f"{where}no calibration input known for weight {f.name!r} (neither a projection nor kept fp16)")
        if v.size >= MIN_WEIGHT_ELEMENTS:
            names.append(f.name)
    return names


def layer_moments(weights, layer: int, calibration: Calibration) -> dict[str, np.ndarray | None]:
    """The calibration statistics of each projection of a programs.LayerWeights that palettize_layer changes."""
    return {name: calibration.moments(f"model.layers.{layer}.{LAYER_INPUTS[name]}") for name in compressed_fields(weights, layer)}


def int8_layer(weights, layer: int | None = None, block: int = INT8_BLOCK):
    """A programs.LayerWeights with its projections as linear int8 (the same weights a LUT would cover)."""
    return dataclasses.replace(weights, **{name: Int8.quantize(getattr(weights, name), block) for name in compressed_fields(weights, layer)})


def palettize_layer(weights, layer: int, lut: Lut, moments: dict[str, np.ndarray | None]):
    """A programs.LayerWeights with the projections named in `moments` palettized (norms, biases and qk-norm
    gains stay fp16)."""
    changes = {name: palettize_weight(getattr(weights, name), lut, f"layer {layer} {name}", m) for name, m in moments.items()}
    return dataclasses.replace(weights, **changes)


def _workers(elements: int, jobs: int) -> int:
    """Processes for a palettization: one per core (at most 8) when the job is big enough to repay starting
    them (about a fifth of a second each)."""
    if elements < PARALLEL_MIN_ELEMENTS or jobs < 2:
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        cores = os.cpu_count() or 1
    return max(1, min(cores, jobs, 8))


def _worker_init() -> None:
    # Ctrl+C reaches the whole process group: the parent handles it and shuts the pool down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def palettize_layers(layers: Iterable[int], load: Callable[[int], Any], lut: Lut, calibration: Calibration) -> dict[int, Any]:
    """{layer: palettized programs.LayerWeights} for `load(layer)`'s weights. Layers are independent, so a big
    job runs on every core, in fresh processes ("spawn": forking a process that holds Core ML or threads is
    unsafe on macOS); at most two layers per worker are loaded ahead."""
    layers = list(layers)
    if not layers:
        return {}
    first = load(layers[0])

    def jobs():
        for i in layers:
            weights = first if i == layers[0] else load(i)
            yield weights, i, lut, layer_moments(weights, i, calibration)

    elements = len(layers) * sum(getattr(first, name).size for name in compressed_fields(first))
    workers = _workers(elements, len(layers))
    if workers == 1:
        return {job[1]: palettize_layer(*job) for job in jobs()}
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init)
    try:
        pending: dict[Future, int] = {}
        results: dict[int, Any] = {}
        for job in jobs():
            pending[pool.submit(palettize_layer, *job)] = job[1]
            if len(pending) >= 2 * workers:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    results[pending.pop(f)] = f.result()
        for f in list(pending):
            results[pending.pop(f)] = f.result()
        return {i: results[i] for i in layers}
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


INT8 = "int8"


class LutCheckpoint:
    """A checkpoint whose embedding table and lm_head come back palettized (a Lut) or as int8 (INT8), for the
    programs that read them with `tensor()`; everything else is the wrapped checkpoint's."""

    def __init__(self, checkpoint, calibration: Calibration | None, embeddings: Lut | str | None, lm_head: Lut | str | None,
                 int8_block: int = INT8_BLOCK) -> None:
        self._checkpoint, self._calibration, self._int8_block = checkpoint, calibration, int8_block
        self._luts = {EMBEDDINGS: embeddings, LM_HEAD: lm_head}
        self._cache: dict[str, Palettized | Int8] = {}

    def __getattr__(self, name: str):
        return getattr(self._checkpoint, name)

    def tensor(self, name: str):
        lut = self._luts.get(name)
        if lut is None:
            return self._checkpoint.tensor(name)
        if name not in self._cache:
            weight = self._checkpoint.tensor(name)
            if lut == INT8:
                self._cache[name] = Int8.quantize(weight, self._int8_block)
            else:
                assert isinstance(lut, Lut) and self._calibration is not None
                # lm_head errors count by its input; a table row is read whole, so its values count alike.
                moments = self._calibration.moments(name) if name == LM_HEAD else None
                self._cache[name] = palettize_weight(weight, lut, name, moments)
        return self._cache[name]
