"""`anechat convert SOURCE -o OUTDIR`: GGUF or HF checkpoint → ANEMLL-layout Core ML chunks (or one\nmonolithic program with --monolithic)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

LUT_HELP = (
    "BITS[,GROUP]: 4, 6 or 8 bits, GROUP output channels per palette (default {}); none; or auto: the fewest bits "
    "that keep {:.0%} top-1 agreement with the uncompressed weights on the calibration text"
)


def _lut_default_groups() -> str:
    from anechat.convert.ane.compress import DEFAULT_GROUP

    return ", ".join(f"{g} for {b} bits" for b, g in DEFAULT_GROUP.items())


def _families() -> str:
    """The families the converter knows, from its registry (a help text that lists them goes stale)."""
    from anechat.arch import ARCHITECTURES

    return ", ".join(sorted({t for a in ARCHITECTURES.values() for t in a.hf_model_types}))


def add_parser(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a GGUF file or Hugging Face model directory into ANE Core ML chunks",
        description="Convert a checkpoint (GGUF file or HF directory with safetensors) into an ANEMLL-layout "
        f"model directory, without PyTorch. Model types: {_families()}.",
    )
    p.add_argument("source", help="GGUF file or Hugging Face model directory")
    p.add_argument("-o", "--output", required=True, help="output model directory (must not exist unless --force)")
    p.add_argument("--context", type=int, default=512, help="context length (default 512)")
    p.add_argument("--batch", type=int, default=64, help="prefill width in tokens (default 64)")
    p.add_argument("--narrow-batch", type=int, default=None, metavar="ROWS",
                   help="rows of a second, narrower prefill function for short follow-up turns (default: a quarter of --batch from --batch 32 up; 0: none)")
    p.add_argument("--chunks", type=int, default=None,
                   help="number of transformer chunks (default: the fewest that keep each part under 950 MB, for iOS's 1 GB limit)")
    from anechat.convert.ane.autolut import AUTO_MIN_TOP1

    lut_help = LUT_HELP.format(_lut_default_groups(), AUTO_MIN_TOP1).replace("%", "%%")
    p.add_argument("--lut-ffn", default="none", metavar="BITS[,GROUP]|auto", help="palettize the transformer weights: " + lut_help)
    p.add_argument("--lut-lmhead", default="none", metavar="BITS[,GROUP]|auto", help="palettize the lm_head: " + lut_help)
    p.add_argument("--lut-embeddings", default="none", metavar="BITS[,GROUP]|auto", help="palettize the embeddings: " + lut_help)
    p.add_argument("--int8", action="store_true", help="linear int8 weights (where no LUT is chosen)")
    p.add_argument("--int8-block", type=int, default=None, metavar="N",
                   help="input elements sharing one int8 scale and offset (default 32, GGUF's block); 0: one "
                   "scale per output channel, the form Apple recommends for the Neural Engine (less exact)")
    p.add_argument("--argmax", action="store_true", help="argmax inside the lm_head (greedy-only models)")
    p.add_argument(
        "--monolithic",
        action="store_true",
        help="one program (infer + prefill) from input_ids to logits instead of embeddings/chunks/lm_head (ANEMLL 0.3.5 layout)",
    )
    p.add_argument("--name", help="model name written to meta.yaml")
    p.add_argument("--prefix", help="file name prefix (default: llama / qwen by architecture)")
    p.add_argument("--force", action="store_true", help="replace an existing output directory")
    p.add_argument("--verify", action="store_true", help="run the result next to a numpy reference and report agreement")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from anechat.commands.progress import ProgressLines
    from anechat.convert.build import ConvertOptions, convert
    from anechat.partials import remove_stale
    from anechat.progress import Ticker

    remove_stale(lambda line: print(f"anechat: {line}", file=sys.stderr))

    options = ConvertOptions(
        context=args.context,
        batch=args.batch,
        narrow=args.narrow_batch,
        chunks=args.chunks,
        lut_ffn=args.lut_ffn,
        lut_lmhead=args.lut_lmhead,
        lut_embeddings=args.lut_embeddings,
        int8=args.int8,
        **({} if args.int8_block is None else {"int8_block": args.int8_block}),
        argmax=args.argmax,
        monolithic=args.monolithic,
        name=args.name,
        prefix=args.prefix,
        force=args.force,
    )
    lines = ProgressLines()
    try:
        with Ticker(lines.say, update=lines.update) as ticker:
            summary = convert(Path(args.source), Path(args.output), options, progress=ticker.report)
    finally:
        lines.close()
    print(summary.format())
    from anechat.readiness import ane_readiness

    print(ane_readiness(Path(args.output), activations=False).format())
    if args.verify:
        from anechat.engine.verify import verify_conversion

        try:
            with Ticker(lines.say, update=lines.update) as ticker:
                report = verify_conversion(Path(args.source), Path(args.output), progress=ticker.report)
        finally:
            lines.close()
        print(report.format())
        return 0 if report.ok else 1
    return 0
