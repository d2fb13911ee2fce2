"""Host overhead of the generation engine per token, with a zero-cost backend (every predict returns a
preallocated output at once), on a SmolLM2-shaped contract: vocab 49152 in 3 lm_head splits, context 512,
prefill batch 64. Everything measured is anechat's own work per token: LanguageModel input building, sampling,
detokenizing, stop handling and the event stream. Target: ≤ 0.25 ms/token.

A second run shows prefix reuse across turns: turn k prefills only its new tokens.

    python benchmarks/bench_host_overhead.py [--tokens 2000]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

VOCAB, HIDDEN, CTX, BATCH, SPLITS = 49152, 576, 512, 64, 3
FLAT = False


class ZeroPart:
    """A part that answers instantly with fixed arrays of the contract's shapes."""

    def __init__(self, role: str, seq: int, rng: np.random.Generator) -> None:
        self.role = role
        if role == "lm_head":
            width = VOCAB // SPLITS
            # Next-token logits of a language model fall off roughly like -log(rank) (Zipf): a few plausible
            # tokens, a long flat tail. `--flat` uses N(0,1) logits instead, the sampler's worst case.
            if FLAT:
                logits = rng.standard_normal(VOCAB)
            else:
                logits = -2.0 * np.log1p(rng.permutation(VOCAB).astype(np.float64))
            self.out = {f"logits{k + 1}": logits[k * width : (k + 1) * width].reshape(1, 1, width).astype(np.float16) for k in range(SPLITS)}
            self.outputs = {n: type("Spec", (), {"shape": (1, 1, width)})() for n in self.out}
        elif role == "embeddings":
            self.out = {"hidden_states": np.zeros((1, seq, HIDDEN), np.float16)}
            self.outputs = {"hidden_states": None}
        else:
            self.out = {"output_hidden_states": np.zeros((1, seq, HIDDEN), np.float16)}
            self.outputs = {"output_hidden_states": None}

    def predict(self, inputs, state=None):
        if self.role == "embeddings":
            return {"hidden_states": self.out["hidden_states"][:, : inputs["input_ids"].shape[1]]}
        return self.out

    def make_state(self):
        return object()


class ZeroBackend:
    name = "zero"

    def __init__(self) -> None:
        self.rng = np.random.default_rng(0)

    def load(self, path, function_name=None):
        name = Path(path).name
        role = "lm_head" if "lm_head" in name else "embeddings" if "embeddings" in name else "chunk"
        return ZeroPart(role, BATCH if function_name == "prefill" or role == "embeddings" else 1, self.rng)


def zero_model_dir():
    from anechat.runtime.modeldir import ModelDir

    p = Path("/zero")
    return ModelDir(path=p, name="zero", architecture="llama", context_length=CTX, batch_size=BATCH, num_chunks=1,
                    model_prefix="llama", split_lm_head=SPLITS, argmax_in_model=False, vocab_size=VOCAB,
                    embeddings=p / "llama_embeddings.mlpackage", chunks=[p / "llama_FFN_PF_chunk_01of01.mlpackage"],
                    lm_head=p / "llama_lm_head.mlpackage")


def tokenizer():
    """SmolLM2's real tokenizer (49152 tokens), rebuilt from the GGUF, or the tiny test one offline."""
    import tempfile

    from anechat.engine.tokenizer import ChatTokenizer

    try:
        from tiny import smollm2_gguf_path

        from anechat.convert.checkpoint import load_checkpoint

        files = load_checkpoint(smollm2_gguf_path()).tokenizer_files
    except Exception:  # noqa: BLE001 — offline: the tiny tokenizer still exercises the same code
        from tiny import tiny_tokenizer_files

        files = tiny_tokenizer_files()
    d = Path(tempfile.mkdtemp())
    for name, content in files.items():
        (d / name).write_text(content)
    return ChatTokenizer.from_dir(d)


def main() -> None:
    from anechat.engine.generate import DoneEvent, Engine
    from anechat.engine.lm import LanguageModel
    from anechat.engine.sampling import SamplingParams

    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=2000)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--flat", action="store_true", help="flat random logits: the sampler's worst case")
    ap.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling threshold (1 = off)")
    args = ap.parse_args()
    global FLAT
    FLAT = args.flat
    lm = LanguageModel(zero_model_dir(), ZeroBackend())
    tok = tokenizer()
    engine = Engine(lm, tok, SamplingParams(temperature=0.8, top_p=args.top_p, seed=0, max_tokens=args.tokens))
    # eos never wins with these fixed logits: generation runs the full count (with context shifts)
    msgs = [{"role": "user", "content": "Tell me a long story."}]
    list(engine.generate(msgs, SamplingParams(max_tokens=50, seed=1)))  # warm-up
    t = time.perf_counter()
    done = [e for e in engine.generate(msgs) if isinstance(e, DoneEvent)][0]
    wall = time.perf_counter() - t
    per_token = 1000 * wall / max(done.stats.decode_tokens, 1)

    # multi-turn: each turn appends an answer and a question; prefill must cover only those
    lm.reset()
    history = [{"role": "system", "content": "You are concise."}]
    turns = []
    for k in range(5):
        history.append({"role": "user", "content": f"Question number {k}: what is {k} plus {k}?"})
        d = [e for e in engine.generate(history, SamplingParams(temperature=0, max_tokens=8)) if isinstance(e, DoneEvent)][0]
        turns.append({"turn": k + 1, "prompt": d.stats.prompt_tokens, "reused": d.stats.reused_tokens, "prefilled": d.stats.prefill_tokens})
        history.append({"role": "assistant", "content": d.text})
    result = {
        "decode_tokens": done.stats.decode_tokens,
        "host_ms_per_token": per_token,
        "engine_reported_host_ms_per_token": done.stats.host_overhead_ms_per_token,
        "context_shifts": done.stats.context_shifts,
        "turns": turns,
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"zero-cost backend, {done.stats.decode_tokens} tokens (vocab {VOCAB}, {done.stats.context_shifts} context shifts)")
    print(f"host overhead per token: {per_token:.3f} ms (target ≤ 0.25 ms)")
    print("multi-turn prefix reuse:")
    for t in turns:
        print(f"  turn {t['turn']}: prompt {t['prompt']:4d} tokens, reused {t['reused']:4d}, prefilled {t['prefilled']:3d}")


if __name__ == "__main__":
    main()
