"""`convert()`: a checkpoint in, an ANEMLL-layout model directory out, written atomically."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from anechat import partials
from anechat.arch.mil import INT8_BLOCK, int8_bytes
from anechat.checksums import RECORD, write_record
from anechat.convert.checkpoint import Checkpoint, load_checkpoint
from anechat.errors import ConversionError, UsageError
from anechat.paths import dir_size


class Progress(Protocol):
    """How the converter reports: `progress(step)` when a step starts, then the same step with how far it has
    got, as a fraction or as `done` of `total` `unit`s (layers, passes)."""

    def __call__(self, step: str, fraction: float | None = None, /, *, done: float | None = None,
                 total: float | None = None, unit: str = "") -> None: ...


ANEMLL_FORMAT_VERSION = "0.3.4"
MONOLITHIC_FORMAT_VERSION = "0.3.5"  # the ANEMLL release that introduced the monolithic layout
FORMAT = 1
PARTS = ("ffn", "lmhead", "embeddings")
# iOS refuses a model part over 1 GB (decimal); the chunks are cut so that each stays under this, leaving room
# for the constants a chunk adds to its layers' weights (rope tables, masks, a final norm).
PART_LIMIT_BYTES = 950_000_000
# A second, narrower prefill function beside `prefill` (same chunk, weights stored once): a follow-up turn of a
# few tokens pays for a block of this many rows instead of `batch` (anechat's own; ANEMLL's chat loads its
# functions by name and never sees it). meta.yaml's `anechat.prefill_narrow` names it and its rows.
NARROW_FUNCTION = "prefill_narrow"
NARROW_FROM_BATCH = 32


@dataclass
class ConvertOptions:
    context: int = 512
    batch: int = 64
    narrow: int | None = None  # rows of the narrow prefill: None = batch // 4 from batch 32 up, else none; 0 = none
    chunks: int | None = None  # None: the fewest whose parts stay under PART_LIMIT_BYTES
    # LUT per part: None, bits (4, 6, 8), "BITS,GROUP" (output channels per palette) or "auto" (autolut.py)
    lut_ffn: int | str | None = None
    lut_lmhead: int | str | None = None
    lut_embeddings: int | str | None = None
    int8: bool = False
    int8_block: int = INT8_BLOCK  # input elements per int8 scale; 0: one scale per output channel
    argmax: bool = False
    monolithic: bool = False
    name: str | None = None
    prefix: str | None = None
    force: bool = False

    def check_flags(self) -> None:
        """What can be refused before the checkpoint is read."""
        if self.monolithic and self.chunks not in (None, 1):
            raise UsageError(f"--monolithic puts every layer in one program; it cannot be combined with --chunks {self.chunks}")
        if self.int8_block < 0:
            raise UsageError(f"--int8-block must be 0 (one scale per output channel) or a block size, got {self.int8_block}")
        from anechat.convert.ane.compress import parse_lut

        for part in PARTS:
            if part not in self.auto_parts():
                parse_lut(getattr(self, f"lut_{part}"), f"--lut-{part}")

    def auto_parts(self) -> list[str]:
        return [part for part in PARTS if str(getattr(self, f"lut_{part}")).strip().lower() == "auto"]

    def validate(self, num_layers: int) -> None:
        self.check_flags()
        if self.context < 1 or self.batch < 1:
            raise UsageError("--context and --batch must be positive")
        if self.batch > self.context:
            raise UsageError(f"--batch ({self.batch}) cannot exceed --context ({self.context})")
        if self.narrow and not 2 <= self.narrow < self.batch or self.narrow is not None and self.narrow < 0:
            raise UsageError(f"--narrow-batch must be 0 (none) or from 2 to --batch − 1 ({self.batch - 1}), got {self.narrow}")
        if self.chunks is not None and not 1 <= self.chunks <= num_layers:
            raise UsageError(f"--chunks must be between 1 and the model's {num_layers} layers, got {self.chunks}")

    def narrow_rows(self) -> int | None:
        """Rows of the narrow prefill function, or None when there is none."""
        if self.narrow is None:  # below 32 rows a block is cheap enough: no third function to convert
            return self.batch // 4 if self.batch >= NARROW_FROM_BATCH else None
        return self.narrow or None

    def luts(self) -> dict:
        """Part ("ffn", "lmhead", "embeddings") → its compress.Lut, or None (`auto` is resolved by convert())."""
        from anechat.convert.ane.compress import parse_lut

        if self.auto_parts():
            raise ConversionError(f"--lut-{self.auto_parts()[0]} auto was not resolved before building")
        return {part: parse_lut(getattr(self, f"lut_{part}"), f"--lut-{part}") for part in PARTS}

    def lut_bits(self, part: str) -> int | None:
        lut = self.luts()[part]
        return lut.bits if lut else None


@dataclass
class ConvertSummary:
    outdir: Path
    parts: list[tuple[str, int]] = field(default_factory=list)  # (file name, bytes on disk)
    ops_per_layer: float = 0.0
    bytes_per_token: int = 0
    steps: list[tuple[str, float]] = field(default_factory=list)  # (step, seconds)
    notes: list[str] = field(default_factory=list)  # e.g. what `--lut-ffn auto` chose and why

    def format(self) -> str:
        lines = [f"converted into {self.outdir}"]
        for name, size in self.parts:
            lines.append(f"  {name:48s} {size / 1e6:9.1f} MB")
        total = sum(s for _, s in self.parts)
        lines.append(f"  {'total':48s} {total / 1e6:9.1f} MB")
        lines.append(f"  ops per decoder layer (infer): {self.ops_per_layer:.1f}")
        lines.append(f"  weight bytes read per decoded token: {self.bytes_per_token / 1e6:.1f} MB")
        lines.append("  time: " + ", ".join(f"{s} {t:.1f}s" for s, t in self.steps))
        lines.extend(f"  {note}" for note in self.notes)
        return "\n".join(lines)


def _lut_tag(bits: int | None) -> str:
    return f"_lut{bits}" if bits else ""


def part_names(prefix: str, options: ConvertOptions) -> tuple[str, list[str], str]:
    emb = f"{prefix}_embeddings{_lut_tag(options.lut_bits('embeddings'))}.mlpackage"
    n = options.chunks or 1
    chunks = [f"{prefix}_FFN_PF{_lut_tag(options.lut_bits('ffn'))}_chunk_{i:02d}of{n:02d}.mlpackage" for i in range(1, n + 1)]
    head = f"{prefix}_lm_head{_lut_tag(options.lut_bits('lmhead'))}.mlpackage"
    return emb, chunks, head


def monolithic_name(prefix: str, options: ConvertOptions) -> str:
    """ANEMLL's name for the one part of a monolithic model (its LUT tag is the transformer's)."""
    return f"{prefix}_monolithic_full{_lut_tag(options.lut_bits('ffn'))}.mlpackage"


def chunk_ranges(layer_bytes: list[int], chunks: int) -> list[range]:
    """Consecutive layers in `chunks` parts whose largest holds the fewest bytes (layers differ: Qwen 3.5's
    DeltaNet layers are 1.2 × its attention layers), by a small DP over the cut points; among equal maxima
    the cuts come as early as they can."""
    n = len(layer_bytes)
    prefix = np.concatenate([[0], np.cumsum(layer_bytes)])
    best = np.full((chunks + 1, n + 1), np.inf)
    cut = np.zeros((chunks + 1, n + 1), int)
    best[0, 0] = 0
    for k in range(1, chunks + 1):
        for end in range(k, n + 1):
            starts = np.arange(k - 1, end)
            cost = np.maximum(best[k - 1, starts], prefix[end] - prefix[starts])
            cut[k, end] = starts[int(np.argmin(cost))]
            best[k, end] = cost.min()
    bounds = [n]
    for k in range(chunks, 0, -1):
        bounds.append(int(cut[k, bounds[-1]]))
    bounds.reverse()
    return [range(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def auto_chunks(layer_bytes: list[int], limit: int = PART_LIMIT_BYTES) -> int:
    """The fewest chunks whose every part stays under `limit` (one layer per chunk if nothing else does)."""
    for chunks in range(1, len(layer_bytes) + 1):
        if max(sum(layer_bytes[r.start : r.stop]) for r in chunk_ranges(layer_bytes, chunks)) <= limit:
            return chunks
    return len(layer_bytes)


def estimated_layer_bytes(weights, lut, int8: bool, int8_block: int = INT8_BLOCK) -> int:
    """What a programs.LayerWeights will weigh in weight.bin once compressed as asked (fp16 elsewhere)."""
    import dataclasses

    from anechat.convert.ane.compress import compressed_fields

    compressed = set(compressed_fields(weights)) if lut or int8 else set()
    total = 0
    for f in dataclasses.fields(weights):
        w = getattr(weights, f.name)
        if not isinstance(w, np.ndarray):
            continue
        if f.name not in compressed:
            total += 2 * w.size
        elif lut:  # indices + a palette of 2**bits fp16 values per group of output channels
            total += w.size * lut.bits // 8 + 2 * 2**lut.bits * (w.shape[0] // lut.group_size)
        else:
            total += int8_bytes(w.shape, int8_block)
    return total


_TQDM_COUNT = re.compile(r"(\d+)/(\d+) \[")


class _PassCounter(io.StringIO):
    """Where coremltools' tqdm bars go instead of the terminal: each redraw's "done/total [" becomes a call of
    `count(done, total)`, so a long Core ML pass pipeline reports how far it has got in our own words."""

    def __init__(self, count: Callable[[int, int], None]) -> None:
        super().__init__()
        self.count = count

    def write(self, text: str) -> int:
        found = _TQDM_COUNT.findall(text)
        if found:
            done, total = found[-1]
            self.count(int(done), int(total))
        return len(text)


@contextlib.contextmanager
def _quiet(passes: Callable[[int, int], None] | None = None):
    """coremltools reports every pass with tqdm bars and warns about renamed state names: noise here (the bars'
    counts go to `passes` when given)."""
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    sink = io.StringIO() if passes is None else _PassCounter(passes)
    with warnings.catch_warnings(), contextlib.redirect_stderr(sink):
        warnings.simplefilter("ignore")
        yield


def _to_model(prog, inputs=None, passes: Callable[[int, int], None] | None = None):
    import coremltools as ct

    with _quiet(passes):
        return ct.convert(
            prog,
            convert_to="mlprogram",
            minimum_deployment_target=ct.target.iOS18,
            compute_precision=ct.precision.FLOAT16,
            inputs=inputs,
            skip_model_load=True,
        )


def _save(model, path: Path) -> None:
    with _quiet():
        model.save(str(path))


def _weight_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("weight.bin"))


def _count_layer_ops(package: Path, layers: int) -> float:
    import coremltools as ct

    with _quiet():
        spec = ct.utils.load_spec(str(package))
    fn = spec.mlProgram.functions["infer"]
    ops = [op for op in fn.block_specializations[fn.opset].operations if not op.type.startswith(("const",))]
    return len(ops) / max(layers, 1)


def _save_multifunction(work: Path, name: str, build_function, functions: tuple[str, ...] = ("infer", "prefill"),
                        progress: Progress | None = None, what: str = "") -> None:
    """An `infer` + `prefill` (+ `infer_rotate` + `prefill_rotate`) package: each function converted on its
    own, then merged; coremltools stores the weights the functions share once. Each stage is reported as
    `what: function — stage` (building the graph reports its layers, Core ML its passes)."""
    import coremltools as ct

    report = progress or _silent
    tmp = work / "_functions"
    tmp.mkdir(exist_ok=True)
    desc = ct.utils.MultiFunctionDescriptor()
    for fn in functions:
        prog = build_function(fn)
        stage = f"{what}: {fn} — Core ML passes"
        report(stage)

        def passes(done: int, total: int, stage: str = stage) -> None:
            report(stage, done=done, total=total, unit="passes")

        model = _to_model(prog, passes=passes)
        path = tmp / f"{fn}.mlpackage"
        report(f"{what}: {fn} — writing the weights")
        _save(model, path)
        desc.add_function(str(path), src_function_name="main", target_function_name=fn)
    desc.default_function_name = "infer"
    report(f"{what}: merging {len(functions)} functions (shared weights stored once)")
    with _quiet():
        ct.utils.save_multifunction(desc, str(work / name))
    _keep_metadata(tmp / f"{functions[0]}.mlpackage", work / name)
    shutil.rmtree(tmp)


def _keep_metadata(source: Path, package: Path) -> None:
    """save_multifunction drops the model's user-defined metadata; the coremltools version among it is what
    Core ML's known failures are checked against (anechat.runtime.anechecks), so it is copied back."""
    from coremltools.proto import Model_pb2

    from anechat.runtime.milexec.proto import package_model_file

    def spec(path: Path):
        model = Model_pb2.Model()
        model.ParseFromString(package_model_file(path).read_bytes())
        return model

    merged = spec(package)
    merged.description.metadata.userDefined.update(spec(source).description.metadata.userDefined)
    package_model_file(package).write_bytes(merged.SerializeToString())


def _step_timer(progress: Progress, summary: ConvertSummary):
    def step(name: str, fn) -> None:
        t = time.perf_counter()
        progress(name, None)
        fn()
        summary.steps.append((name, time.perf_counter() - t))

    return step


class _Compression:
    """The compression of one conversion: palettized or int8 layers (a layer cache programs.py reuses) and a
    checkpoint that hands out the compressed embedding table and lm_head; the calibration runs once, as its
    own step. `--int8` covers exactly the weights a LUT would (compress.py), for the parts without a LUT."""

    def __init__(self, ckpt: Checkpoint, options: ConvertOptions, step, calibration=None) -> None:
        from anechat.convert.ane.compress import INT8, Calibration, LutCheckpoint

        self.luts = options.luts()
        self.int8 = options.int8
        self.int8_block = options.int8_block
        self.calibration = calibration or Calibration(ckpt)
        self.ckpt: Any = ckpt  # the Checkpoint, or a LutCheckpoint wrapping it
        if (self.luts["ffn"] or self.luts["lmhead"]) and calibration is None:
            step("calibrate", self.calibration.run)
        emb, head = ((self.luts[p] or (INT8 if self.int8_for(p) else None)) for p in ("embeddings", "lmhead"))
        if emb or head:
            self.ckpt = LutCheckpoint(ckpt, self.calibration, emb, head, self.int8_block)

    def compresses_layers(self) -> bool:
        return bool(self.luts["ffn"]) or self.int8

    def layer_cache(self, layers: range) -> dict:
        from anechat.convert.ane.compress import int8_layer, palettize_layers
        from anechat.convert.ane.programs import layer_weights

        lut = self.luts["ffn"]
        if lut is None:
            return {i: int8_layer(layer_weights(self.ckpt, i), i, self.int8_block) for i in layers} if self.int8 else {}
        return palettize_layers(layers, lambda i: layer_weights(self.ckpt, i), lut, self.calibration)

    def int8_for(self, part: str) -> bool:
        """--int8 applies to the parts without a LUT."""
        return self.int8 and self.luts[part] is None


def default_prefix(ckpt: Checkpoint, options: ConvertOptions) -> str:
    arch = ckpt.config.architecture
    return options.prefix or ("qwen3_5" if arch == "qwen3_5" else "qwen" if arch.startswith("qwen") else "gemma3" if arch == "gemma3" else "llama")


def _functions(ckpt: Checkpoint, options: ConvertOptions) -> tuple[str, ...]:
    from anechat.arch import by_name

    return by_name(ckpt.config.architecture).function_names(ckpt.config, options.context)


def _chunk_functions(ckpt: Checkpoint, options: ConvertOptions) -> tuple[str, ...]:
    """The family's functions, and the narrow prefill where there is one. Past a sliding window the engine
    runs whole `prefill_rotate` blocks or single steps, so the narrow prefill has no rotating twin: it serves
    follow-ups that stay inside the window."""
    return _functions(ckpt, options) + ((NARROW_FUNCTION,) if options.narrow_rows() else ())


def _check_window(ckpt: Checkpoint, options: ConvertOptions) -> None:
    """What a sliding-window model past its window needs (its *_rotate functions)."""
    window = ckpt.config.sliding_window or 0
    if len(_functions(ckpt, options)) == 2:
        return
    if options.monolithic:
        raise UsageError(f"--monolithic does not support a context ({options.context}) past the sliding window ({window}) yet")
    if options.batch > window:
        raise UsageError(f"--batch ({options.batch}) cannot exceed the sliding window ({window})")


def build_monolithic_dir(ckpt: Checkpoint, work: Path, options: ConvertOptions, progress: Progress, summary: ConvertSummary, calibration=None) -> None:
    from anechat.convert.ane.programs import monolithic_program, split_sizes

    c = ckpt.config
    prefix = default_prefix(ckpt, options)
    name = monolithic_name(prefix, options)
    splits = split_sizes(c.vocab_size)
    step = _step_timer(progress, summary)
    comp = _Compression(ckpt, options, step, calibration)
    cache: dict = {}
    if comp.compresses_layers():
        step("LUT layers" if comp.luts["ffn"] else "int8 layers", lambda: cache.update(comp.layer_cache(range(c.num_layers))))
    seqs = {"infer": 1, "prefill": options.batch}
    narrow = options.narrow_rows()
    if narrow:
        seqs[NARROW_FUNCTION] = narrow

    def build(fn: str):
        return monolithic_program(comp.ckpt, seqs[fn], options.context, splits, options.argmax, cache)

    what = f"monolithic (layers 0-{c.num_layers - 1})"
    step(what, lambda: _save_multifunction(work, name, build, functions=tuple(seqs), progress=progress, what=what))
    step("metadata", lambda: write_metadata(ckpt, work, summary.outdir.name, options, prefix, None, [name], None, len(splits)))
    summary.parts = [(name, dir_size(work / name))]
    summary.ops_per_layer = _count_layer_ops(work / name, c.num_layers)
    # Per token: every weight is read once, except the embedding table (one row).
    emb = ckpt.tensor("model.embed_tokens.weight")
    bits = options.lut_bits("embeddings") or (8 if options.int8 else 16)
    summary.bytes_per_token = _weight_bytes(work / name) - emb.size * bits // 8 + emb.shape[1] * bits // 8


def build_model_dir(ckpt: Checkpoint, work: Path, options: ConvertOptions, progress: Progress, summary: ConvertSummary, calibration=None) -> None:
    import coremltools as ct

    from anechat.convert.ane.programs import (
        chunk_program,
        embeddings_program,
        lm_head_program,
        split_sizes,
    )

    if options.monolithic:
        return build_monolithic_dir(ckpt, work, options, progress, summary, calibration)
    import dataclasses

    from anechat.convert.ane.programs import layer_weights

    c = ckpt.config
    luts = options.luts()
    sizes = [estimated_layer_bytes(layer_weights(ckpt, i), luts["ffn"], options.int8, options.int8_block) for i in range(c.num_layers)]
    if options.chunks is None:
        options = dataclasses.replace(options, chunks=auto_chunks(sizes))
    assert options.chunks is not None
    prefix = default_prefix(ckpt, options)
    emb_name, chunk_names, head_name = part_names(prefix, options)
    step = _step_timer(progress, summary)
    comp = _Compression(ckpt, options, step, calibration)

    def embeddings() -> None:
        spec = ct.TensorType(name="input_ids", shape=(1, ct.RangeDim(1, options.batch)), dtype=np.int32)
        _save(_to_model(embeddings_program(comp.ckpt, options.batch), [spec]), work / emb_name)

    step("embeddings", embeddings)
    ranges = chunk_ranges(sizes, options.chunks)
    for k, (layers, name) in enumerate(zip(ranges, chunk_names), 1):
        cache: dict = {}
        what = f"chunk {k}/{len(ranges)} (layers {layers.start}-{layers.stop - 1})"
        if comp.compresses_layers():
            kind = "LUT" if comp.luts["ffn"] else "int8"
            step(f"{kind} {what}", lambda layers=layers, cache=cache: cache.update(comp.layer_cache(layers)))

        def chunk(layers=layers, name=name, cache=cache, what=what) -> None:
            def build(fn: str):
                seq = 1 if fn.startswith("infer") else (options.narrow_rows() or 0) if fn == NARROW_FUNCTION else options.batch
                stage = f"{what}: {fn} — building the graph"
                progress(stage)

                def layer(i: int) -> None:
                    progress(stage, done=i - layers.start + 1, total=len(layers), unit="layers")

                return chunk_program(ckpt, layers, seq, options.context, cache, rotate=fn.endswith("_rotate"),
                                     on_layer=layer)

            _save_multifunction(work, name, build, functions=_chunk_functions(ckpt, options), progress=progress, what=what)

        step(what, chunk)
    splits = split_sizes(c.vocab_size)
    step("lm_head", lambda: _save(_to_model(lm_head_program(comp.ckpt, splits, options.argmax)), work / head_name))
    step("metadata", lambda: write_metadata(ckpt, work, summary.outdir.name, options, prefix, emb_name, chunk_names, head_name, len(splits)))
    summary.parts = [(n, dir_size(work / n)) for n in [emb_name, *chunk_names, head_name]]
    for n, size in summary.parts:
        if size > PART_LIMIT_BYTES:
            hint = "more --chunks, or omit it" if n in chunk_names else "a LUT or --int8 for it"
            summary.notes.append(f"{n} is {size / 1e6:.0f} MB: over {PART_LIMIT_BYTES / 1e6:.0f} MB, too close to iOS's 1 GB "
                                 f"part limit ({hint}); macOS loads it")
    summary.ops_per_layer = _count_layer_ops(work / chunk_names[0], len(ranges[0]))
    # Per token: every chunk and lm_head weight is read once; the embedding is one row.
    row = _weight_bytes(work / emb_name) // max(c.vocab_size, 1)
    summary.bytes_per_token = sum(_weight_bytes(work / n) for n in [*chunk_names, head_name]) + row


def write_metadata(ckpt, work: Path, name: str, options, prefix, emb_name, chunk_names, head_name, splits: int) -> None:
    import json

    import yaml

    c = ckpt.config

    def lut(part: str):
        return options.lut_bits(part) or "none"

    info = {
        "name": options.name or name,
        "version": MONOLITHIC_FORMAT_VERSION if options.monolithic or c.sliding_window else ANEMLL_FORMAT_VERSION,
        "description": f"{c.architecture} converted by anechat from {ckpt.source.name}",
        "license": "see the original model",
        "author": "anechat",
        "framework": "Core ML",
        "language": "Python",
        "architecture": c.architecture,
    }
    if options.monolithic:
        # ANEMLL 0.3.5's monolithic keys: model_type sits in model_info, the part is `monolithic_model`, the
        # transformer's LUT is `lut_bits` (embeddings and lm_head may override it).
        info["model_type"] = "monolithic"
        info["parameters"] = {
            "context_length": options.context,
            "batch_size": options.batch,
            "lut_bits": lut("ffn"),
            "lut_embeddings": lut("embeddings"),
            "lut_lmhead": lut("lmhead"),
            "model_prefix": prefix,
            "monolithic_model": chunk_names[0],
            "split_lm_head": splits,
            "argmax_in_model": options.argmax,
            "vocab_size": c.vocab_size,
            "functions": ["infer", "prefill"],  # ANEMLL's; the narrow prefill is named in anechat's section
        }
    else:
        info["parameters"] = {
            "context_length": options.context,
            "batch_size": options.batch,
            "lut_embeddings": lut("embeddings"),
            "lut_ffn": lut("ffn"),
            "lut_lmhead": lut("lmhead"),
            "num_chunks": options.chunks,
            "model_prefix": prefix,
            "embeddings": emb_name,
            "lm_head": head_name,
            "ffn": chunk_names[0],
            "split_lm_head": splits,
            "argmax_in_model": options.argmax,
        }
    if c.sliding_window:
        info["parameters"]["sliding_window"] = c.sliding_window
    if c.residual_scale is not None:
        info["parameters"]["fp16_scale"] = c.residual_scale
    from anechat.arch import by_name

    recurrent = by_name(c.architecture).recurrent_states(c)
    if recurrent:  # states that cannot be rewound to a prefix: the engine snapshots them
        info["parameters"]["recurrent_states"] = list(recurrent)
    meta = {
        "model_info": info,
        "anechat": {
            "format": FORMAT,
            "config": c.to_dict(),
            "int8": options.int8,
            **({"int8_block": options.int8_block} if options.int8 else {}),
            "lut": {part: str(lut) for part, lut in options.luts().items() if lut},  # bits,group per part
            "source": ckpt.source.name,
        },
    }
    if options.narrow_rows():
        meta["anechat"]["prefill_narrow"] = {"function": NARROW_FUNCTION, "batch_size": options.narrow_rows()}
    (work / "meta.yaml").write_text(yaml.safe_dump(meta, sort_keys=False, allow_unicode=True))
    files = dict(ckpt.tokenizer_files)
    if "tokenizer_config.json" in files:
        cfg = json.loads(files["tokenizer_config.json"])
        cfg["model_max_length"] = options.context
        files["tokenizer_config.json"] = json.dumps(cfg, indent=2, ensure_ascii=False)
    for fname, content in files.items():
        (work / fname).write_text(content, encoding="utf-8")


def _prepare_output(outdir: Path, force: bool) -> Path:
    if outdir.exists() and not force:
        raise ConversionError(f"{outdir} already exists (use --force to replace it)")
    parent = outdir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{outdir.name}.", suffix=".partial", dir=parent))
    except OSError as e:
        raise ConversionError(f"cannot write to {parent}: {e.strerror or e}") from None


def _install(work: Path, outdir: Path) -> None:
    """Move the finished directory into place; an existing one (--force) is only deleted after that."""
    old = None
    if outdir.exists():
        old = outdir.with_name(f".{outdir.name}.old-{os.getpid()}")
        outdir.rename(old)
    work.rename(outdir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _resolve_auto(ckpt: Checkpoint, options: ConvertOptions, step, summary: ConvertSummary):
    """Options with every `auto` LUT replaced by the one autolut picks; the calibration, already run, is reused."""
    import dataclasses

    from anechat.convert.ane.autolut import Agreement, choose
    from anechat.convert.ane.compress import Calibration
    from anechat.convert.calibrate import calibration_ids

    calibration = Calibration(ckpt)
    step("calibrate", calibration.run)
    tokenizer = ckpt.tokenizer_files.get("tokenizer.json")
    if tokenizer is None:
        raise ConversionError("--lut-* auto needs the checkpoint's tokenizer.json")
    agreement = Agreement(ckpt, calibration, calibration_ids(tokenizer))
    changes: dict[str, Any] = {}
    for part in options.auto_parts():
        choices: list = []
        step(f"auto LUT {part}", lambda part=part, into=choices: into.append(choose(part, lambda lut: agreement(part, lut))))
        summary.notes.append(choices[0].format())
        changes[f"lut_{part}"] = str(choices[0].lut) if choices[0].lut else None
    return dataclasses.replace(options, **changes), calibration


def _silent(step: str, fraction: float | None = None, *, done: float | None = None, total: float | None = None,
            unit: str = "") -> None:
    pass


def convert(source: Path | Checkpoint, outdir: Path, options: ConvertOptions | None = None, progress: Progress | None = None) -> ConvertSummary:
    options = options or ConvertOptions()
    options.check_flags()
    progress = progress or _silent
    outdir = Path(outdir)
    if outdir.exists() and not options.force:
        raise ConversionError(f"{outdir} already exists (use --force to replace it)")
    t = time.perf_counter()
    if isinstance(source, Checkpoint):
        ckpt = source
    else:
        progress("reading checkpoint", None)
        ckpt = load_checkpoint(Path(source))
    options.validate(ckpt.config.num_layers)
    _check_window(ckpt, options)
    from anechat.arch import by_name

    t_prepare = time.perf_counter()
    progress("measuring activations", None)
    by_name(ckpt.config.architecture).prepare(ckpt)
    summary = ConvertSummary(outdir=outdir, steps=[("read", t_prepare - t), ("prepare", time.perf_counter() - t_prepare)])
    calibration = None
    if options.auto_parts():
        options, calibration = _resolve_auto(ckpt, options, _step_timer(progress, summary), summary)
    work = _prepare_output(outdir, options.force)
    try:
        # coremltools' temporary packages go inside `work` (and with it, on every exit path); a process killed
        # outright leaves a lock a later anechat command can prove dead (anechat.partials)
        with partials.tracked(work):
            build_model_dir(ckpt, work, options, progress, summary, calibration)
            partials.finish(work)
            write_record(work / RECORD, work, source=ckpt.source.name, converted=True)
            _install(work, outdir)
    except BaseException as e:
        shutil.rmtree(work, ignore_errors=True)
        if isinstance(e, OSError):
            raise ConversionError(f"writing {outdir} failed: {e.strerror or e}") from None
        if isinstance(e, (ValueError, KeyError, IndexError, TypeError)):
            # weights whose shapes contradict the config (num_key_value_heads, head_dim, ...) break the graph
            detail = " ".join(str(e).split())[:300]
            raise ConversionError(f"{ckpt.source.name}: the weights do not fit the model's configuration ({detail})") from None
        raise
    return summary
