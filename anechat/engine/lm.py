"""ChunkedLM: embeddings → transformer chunks → lm_head over any backend, one KV state shared by all
chunks, and the ids whose keys/values sit in that state (so a new turn prefills only what changed)."""

from __future__ import annotations

import time
from math import ceil
from typing import Sequence

import numpy as np

from anechat.errors import ModelLoadError
from anechat.runtime.modeldir import ModelDir

NEG_INF = np.float16(-np.inf)


class ChunkedLM:
    def __init__(self, model_dir: ModelDir, backend) -> None:
        self.model_dir = model_dir
        self.context_length = model_dir.context_length
        self.batch_size = model_dir.batch_size
        self.embeddings = backend.load(model_dir.embeddings)
        self.infer = [backend.load(p, "infer") for p in model_dir.chunks]
        self.prefill_parts = [backend.load(p, "prefill") for p in model_dir.chunks]
        self.lm_head = backend.load(model_dir.lm_head)
        self.argmax = model_dir.argmax_in_model
        self._logit_names = sorted((n for n in self.lm_head.outputs if n.startswith("logits")), key=lambda n: int(n[6:]))
        if not self.argmax and not self._logit_names:
            raise ModelLoadError(f"{model_dir.lm_head.name}: no logits outputs")
        self.vocab_size = model_dir.vocab_size or sum(self.lm_head.outputs[n].shape[-1] for n in self._logit_names)
        if self.argmax:
            self._split = ceil(self.vocab_size / model_dir.split_lm_head)
        self.state = self.infer[0].make_state()
        ctx, batch = self.context_length, self.batch_size
        # Row i allows keys 0..i. Extra rows past the context keep padded prefill blocks in bounds.
        rows = np.arange(ctx + batch)[:, None]
        self._mask = np.where(np.arange(ctx)[None, :] <= rows, np.float16(0), NEG_INF).astype(np.float16)
        self._positions = np.arange(ctx + batch, dtype=np.int32)
        self.cached_ids: list[int] = []
        self.predict_seconds = 0.0
        # Below this many new tokens, single-token `infer` calls beat one padded `prefill` block.
        self.min_prefill = max(2, batch // 16)

    def _predict(self, part, inputs, state=None):
        t = time.perf_counter()
        out = part.predict(inputs, state)
        self.predict_seconds += time.perf_counter() - t
        return out

    def reset(self) -> None:
        """Forget the cached tokens. The state need not be cleared: the mask hides positions not yet written."""
        self.cached_ids = []

    def _chunks(self, parts, hidden, pos: int, length: int) -> np.ndarray:
        inputs = {
            "position_ids": self._positions[pos : pos + length],
            "causal_mask": self._mask[pos : pos + length].reshape(1, 1, length, self.context_length),
            "current_pos": self._positions[pos : pos + 1],
        }
        for part in parts:
            hidden = self._predict(part, {**inputs, "hidden_states": hidden}, self.state)["output_hidden_states"]
        return hidden

    def _logits(self, hidden_last: np.ndarray) -> np.ndarray:
        out = self._predict(self.lm_head, {"hidden_states": hidden_last})
        if self.argmax:
            idx, val = out["argmax_idx"].reshape(-1), out["argmax_val"].reshape(-1).astype(np.float32)
            k = int(np.argmax(val))
            logits = np.full(self.vocab_size, -np.inf, np.float32)
            logits[k * self._split + int(idx[k])] = val[k]
            return logits
        return np.concatenate([out[n].reshape(-1) for n in self._logit_names], dtype=np.float32)

    def _room(self, n: int) -> None:
        if len(self.cached_ids) + n > self.context_length:
            raise ValueError(f"{len(self.cached_ids) + n} tokens exceed the context of {self.context_length}")

    def step(self, token_id: int) -> np.ndarray:
        """Logits after appending one token (the `infer` function)."""
        self._room(1)
        pos = len(self.cached_ids)
        hidden = self._predict(self.embeddings, {"input_ids": np.array([[token_id]], np.int32)})["hidden_states"]
        hidden = self._chunks(self.infer, hidden, pos, 1)
        self.cached_ids.append(int(token_id))
        return self._logits(hidden)

    def prefill(self, ids: Sequence[int]) -> np.ndarray:
        """Logits after appending ids, computed in batch-wide `prefill` blocks."""
        ids = [int(t) for t in ids]
        if not ids:
            raise ValueError("prefill needs at least one token")
        self._room(len(ids))
        if len(ids) < self.min_prefill:
            for t in ids:
                logits = self.step(t)
            return logits
        batch, start = self.batch_size, len(self.cached_ids)
        all_ids = self.cached_ids + ids
        pos = start
        while pos < len(all_ids):
            # A block never runs past the context: near the end it slides back over tokens already in the
            # state, which recomputes their keys/values to the same values.
            block_start = min(pos, self.context_length - batch)
            real = all_ids[block_start : block_start + batch]
            tokens = np.zeros((1, batch), np.int32)
            tokens[0, : len(real)] = real
            hidden = self._predict(self.embeddings, {"input_ids": tokens})["hidden_states"]
            hidden = self._chunks(self.prefill_parts, hidden, block_start, batch)
            last = len(real) - 1
            pos = block_start + len(real)
        self.cached_ids = all_ids
        return self._logits(hidden[:, last : last + 1, :])

    def sync(self, ids: Sequence[int]) -> tuple[int, np.ndarray]:
        """Make the state hold exactly ids, reusing the longest common prefix; (reused tokens, logits)."""
        ids = [int(t) for t in ids]
        reused = 0
        for a, b in zip(self.cached_ids, ids):
            if a != b:
                break
            reused += 1
        reused = min(reused, len(ids) - 1)  # the last token is always run: its logits are the answer
        self.cached_ids = self.cached_ids[:reused]
        return reused, self.prefill(ids[reused:])
