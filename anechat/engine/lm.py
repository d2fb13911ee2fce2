"""LanguageModel: a model directory's programs over any backend, one KV state shared by all of them, and the ids
whose keys/values sit in that state (so a new turn prefills only what changed).

Two layouts, one interface: a chunked model runs embeddings → transformer chunks → lm_head (three kinds of
part, hidden states between them); a monolithic model runs one program from input_ids to logits. Each is a
small "forward" strategy; LanguageModel owns the state, masks, positions, prefix reuse and the prefill blocks."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from anechat.errors import ModelLoadError
from anechat.runtime.memory import release_free_memory
from anechat.runtime.modeldir import ModelDir, head_splits, logit_output_names

NEG_INF = np.float16(-np.inf)
Predict = Callable[..., dict]


def sliding_window(model_dir: ModelDir) -> int | None:
    """The window past which the cache rotates, if the model has one shorter than its context."""
    w = model_dir.sliding_window
    return w if w and w < model_dir.context_length else None


def update_mask(part, pos: int, length: int) -> np.ndarray | None:
    """ANEMLL's `update_mask` for a function that declares one: (1, 1, N, length), column i one-hot at the
    position token i writes. N is the declared size (ANEMLL: max(state length, sliding window)), not the
    context."""
    spec = part.inputs.get("update_mask")
    if spec is None:
        return None
    rows = spec.shape[2] if len(spec.shape) == 4 and spec.shape[2] > 0 else pos + length
    mask = np.zeros((1, 1, rows, length), np.float16)
    written = np.arange(length) + pos
    keep = written < rows
    mask[0, 0, written[keep], np.arange(length)[keep]] = 1
    return mask


def _with_update_mask(part, inputs: dict, length: int) -> dict:
    mask = update_mask(part, int(inputs["current_pos"][0]), length)
    return inputs if mask is None else {**inputs, "update_mask": mask}


class ChunkedForward:
    """embeddings → chunks (`infer`, `prefill` or the narrow prefill) → lm_head."""

    def __init__(self, model_dir: ModelDir, backend, predict: Predict) -> None:
        self._predict = predict
        self.embeddings = backend.load(model_dir.embeddings)
        self.infer = [backend.load(p, "infer") for p in model_dir.chunks]
        self.prefill_parts = [backend.load(p, "prefill") for p in model_dir.chunks]
        # Prefill chunks by block width: batch_size, and the narrow prefill's rows where the model has one.
        self.blocks = {model_dir.batch_size: self.prefill_parts}
        if model_dir.narrow:
            self.blocks[model_dir.narrow.rows] = [backend.load(p, model_dir.narrow.function) for p in model_dir.chunks]
        self.lm_head = backend.load(model_dir.lm_head)
        self.head = self.lm_head
        self.head_outputs = self.lm_head.outputs
        self.parts = [self.embeddings, *self.infer, *(p for parts in self.blocks.values() for p in parts), self.lm_head]
        self.window = sliding_window(model_dir)
        self.rotate_parts: dict[bool, list] = {}
        # ANEMLL's prefill_rotate shifts the sliding layers' cache by a whole block and masks the block with the
        # ordinary causal rows (gemma3_model.py `_update_kv_local_prefill`): queries then see later tokens of
        # their own block and lose the oldest keys of their window, so on ANEMLL's files past the window a
        # prompt runs one token at a time through infer_rotate, which is exact. anechat's own is exact too.
        self.block_rotate = model_dir.made_by_anechat
        if self.window:  # ANEMLL 0.3.5's Gemma 3 layout: the sliding layers' cache shifts once it is full
            self.rotate_parts = {p: [backend.load(c, fn) for c in model_dir.chunks] for p, fn in ((False, "infer_rotate"), (True, "prefill_rotate"))}
            self.parts += [*self.rotate_parts[False], *self.rotate_parts[True]]
        # anechat's last chunk ends a prefill block with every row normalised, so the block's logits come
        # for free. ANEMLL's returns only the first row, before the final norm ("data not used"): there the
        # last prompt token runs through `infer`, as ANEMLL's own chat does.
        self.prefill_gives_logits = model_dir.made_by_anechat and all(_every_row(parts[-1], width) for width, parts in self.blocks.items())

    def make_state(self):
        return self.infer[0].make_state()

    def run(self, tokens: np.ndarray, inputs: dict, state, prefill: bool, row: int | None, rotate: bool = False) -> dict | None:
        """Run tokens (1, S); the lm_head outputs for position `row` of the block, or None if row is None."""
        hidden = self._predict(self.embeddings, {"input_ids": tokens})["hidden_states"]
        chunks = self.rotate_parts[prefill] if rotate else self.blocks[tokens.shape[1]] if prefill else self.infer
        for part in chunks:
            feed = _with_update_mask(part, {**inputs, "hidden_states": hidden}, tokens.shape[1])
            hidden = self._predict(part, feed, state)["output_hidden_states"]
        if row is None:
            return None
        return self._predict(self.lm_head, {"hidden_states": hidden[:, row : row + 1, :]})


def _every_row(last_chunk, width: int) -> bool:
    """Whether the last chunk's block returns a hidden state for each of its `width` rows."""
    out = last_chunk.outputs.get("output_hidden_states")
    return out is not None and len(out.shape) == 3 and out.shape[1] == width


class MonolithicForward:
    """One part, functions `infer` and `prefill`, input_ids → logits."""

    # What a monolithic `prefill` returns differs between converters (ANEMLL: every row; anechat: the block's
    # last row), so prefill only fills the state and the last prompt token runs through `infer`, as ANEMLL's
    # own chat does.
    prefill_gives_logits = False

    def __init__(self, model_dir: ModelDir, backend, predict: Predict) -> None:
        self._predict = predict
        self.infer_part = backend.load(model_dir.monolithic, "infer")
        self.prefill_part = backend.load(model_dir.monolithic, "prefill")
        self.blocks = {model_dir.batch_size: self.prefill_part}
        if model_dir.narrow:
            self.blocks[model_dir.narrow.rows] = backend.load(model_dir.monolithic, model_dir.narrow.function)
        self.head = self.infer_part
        self.head_outputs = self.infer_part.outputs
        self.parts = [self.infer_part, *self.blocks.values()]
        if sliding_window(model_dir):
            raise ModelLoadError(f"{model_dir.path}: monolithic models with a sliding window shorter than the context are not supported yet")
        self.window = None
        self.block_rotate = False

    def make_state(self):
        return self.infer_part.make_state()

    def run(self, tokens: np.ndarray, inputs: dict, state, prefill: bool, row: int | None, rotate: bool = False) -> dict | None:
        part = self.blocks[tokens.shape[1]] if prefill else self.infer_part
        out = self._predict(part, _with_update_mask(part, {**inputs, "input_ids": tokens}, tokens.shape[1]), state)
        return None if prefill else out


class LanguageModel:
    def __init__(self, model_dir: ModelDir, backend) -> None:
        self.model_dir = model_dir
        self.context_length = model_dir.context_length
        self.batch_size = model_dir.batch_size
        self.predict_seconds = 0.0
        kind = MonolithicForward if model_dir.monolithic is not None else ChunkedForward
        self.forward = kind(model_dir, backend, self._predict)
        if kind is ChunkedForward:  # the chunked layout's parts by role (benchmarks and tests look inside them)
            f = self.forward
            self.embeddings, self.infer, self.prefill_parts, self.lm_head = f.embeddings, f.infer, f.prefill_parts, f.lm_head
        self.argmax = model_dir.argmax_in_model
        outputs = self.forward.head_outputs
        self._logit_names = logit_output_names(outputs)
        where = model_dir.monolithic or model_dir.lm_head
        if self.argmax:
            if not {"argmax_idx", "argmax_val"} <= set(outputs):
                raise ModelLoadError(f"{where.name}: argmax_in_model but no argmax_idx/argmax_val outputs")
            # Each head reports the index of its winner within its own slice of the vocabulary.
            sizes = head_splits(model_dir, self.forward.head)
            self._offsets = np.cumsum([0] + sizes[:-1])
            self.vocab_size = int(sum(sizes))
        elif not self._logit_names:
            raise ModelLoadError(f"{where.name}: no logits outputs")
        else:
            self.vocab_size = model_dir.vocab_size or sum(outputs[n].shape[-1] for n in self._logit_names)
        self.state = self.forward.make_state()
        ctx, batch = self.context_length, self.batch_size
        # Row i allows keys 0..i. Extra rows past the context keep padded prefill blocks in bounds.
        rows = np.arange(ctx + batch)[:, None]
        self._mask = np.where(np.arange(ctx)[None, :] <= rows, np.float16(0), NEG_INF).astype(np.float16)
        self._positions = np.arange(ctx + batch, dtype=np.int32)
        self.cached_ids: list[int] = []
        # Below this many new tokens, single-token `infer` calls beat one padded `prefill` block: a guess until
        # both have been timed on this backend (see plan).
        self.min_prefill = max(2, batch // 16)
        # The widths a call can append tokens in: 1 (`infer`), the narrow prefill's rows, batch_size.
        self.narrow = model_dir.narrow.rows if model_dir.narrow and 1 < model_dir.narrow.rows < batch else None
        self.widths = sorted({1, batch} | ({self.narrow} if self.narrow else set()))
        # Seconds per `infer` call and per `prefill` block as measured here (shared with forks: same parts).
        self.costs = Costs()
        # Sliding window (Gemma 3): from this position on the sliding layers' cache shifts (*_rotate functions)
        self.window = self.forward.window
        # Recurrent states (Qwen 3.5's DeltaNet layers) hold a summary of every token, so they cannot be cut
        # back to a prefix: snapshots taken before each synced prompt's last token are what a later turn that
        # departs from the cached history (/retry, /undo, an edited message) restarts from.
        self.recurrent = _recurrent_names(model_dir, self.forward.head if kind is MonolithicForward else self.forward.infer[0])
        self.snapshots: list[Snapshot] = []
        self._zero = {n: np.zeros_like(np.asarray(self.state.read_state(n))) for n in self.recurrent} if self.recurrent else {}
        release_free_memory()  # what reading the programs left behind, before the weights page in

    @property
    def parts(self) -> list:
        """Every loaded part (function), for tools that look inside them."""
        return self.forward.parts

    def _predict(self, part, inputs, state=None):
        t = time.perf_counter()
        out = part.predict(inputs, state)
        self.predict_seconds += time.perf_counter() - t
        return out

    def warm_up(self) -> None:
        """Run `infer`, the head and each `prefill` block width twice, then forget the tokens. Core ML compiles
        for the Neural Engine at the first predict and fails, falls back or dies only then: better at load than
        in the middle of the first answer. The second round is timed (the first call of each is not: see
        Costs), so a first follow-up already chooses between steps and blocks by what they cost here."""
        for _ in range(2):
            self.reset()
            try:
                self.step(0)
                for width in self.widths[1:]:
                    self.reset()
                    self._fill([0] * width, want_logits=self.forward.prefill_gives_logits, only=width)
            finally:
                self.reset()

    def fork(self) -> LanguageModel:
        """Another view of the same loaded parts with a KV state of its own: several conversations keep their
        prompts cached side by side (a server's slots) without loading the weights twice."""
        twin = copy.copy(self)
        twin.state = self.forward.make_state()
        twin.cached_ids = []
        twin.snapshots = []
        twin.predict_seconds = 0.0
        return twin

    def reset(self) -> None:
        """Forget the cached tokens. A KV cache need not be cleared (the mask hides positions not yet written);
        recurrent states start again from zero."""
        self.cached_ids = []
        for name, zero in self._zero.items():
            self.state.write_state(name, zero)

    def _step_inputs(self, pos: int, length: int, real: int | None = None) -> dict:
        positions = self._positions[pos : pos + length]
        if self.recurrent and real is not None and real < length:
            # Padding repeats the last real position: a recurrent graph reads "position − current_pos ≠ index"
            # as padding and leaves its state as the last real token left it.
            positions = positions.copy()
            positions[real:] = positions[real - 1]
        return {
            "position_ids": positions,
            "causal_mask": self._mask[pos : pos + length].reshape(1, 1, length, self.context_length),
            "current_pos": self._positions[pos : pos + 1],
        }

    def _logits(self, out: dict) -> np.ndarray:
        if self.argmax:
            idx, val = out["argmax_idx"].reshape(-1), out["argmax_val"].reshape(-1).astype(np.float32)
            k = int(np.argmax(val))
            logits = np.full(self.vocab_size, -np.inf, np.float32)
            logits[min(int(self._offsets[k]) + int(idx[k]), self.vocab_size - 1)] = val[k]
            return logits
        return np.concatenate([out[n].reshape(-1) for n in self._logit_names], dtype=np.float32)

    def _room(self, n: int) -> None:
        if len(self.cached_ids) + n > self.context_length:
            raise ValueError(f"{len(self.cached_ids) + n} tokens exceed the context of {self.context_length}")

    def step(self, token_id: int) -> np.ndarray:
        """Logits after appending one token (the `infer` function)."""
        self._room(1)
        pos = len(self.cached_ids)
        out = self._run_one(token_id, pos, row=0)
        self.cached_ids.append(int(token_id))
        if self.recurrent and len(self.cached_ids) % SNAPSHOT_EVERY == 0:
            # An answer the next turn re-tokenizes differently is resumed from here, not from its prompt's end.
            self._snapshot()
        return self._logits(out)

    def _rotating(self, pos: int) -> bool:
        return self.window is not None and pos >= self.window

    def _run_one(self, token_id: int, pos: int, row: int | None) -> dict | None:
        tokens = np.array([[token_id]], np.int32)
        t = time.perf_counter()
        out = self.forward.run(tokens, self._step_inputs(pos, 1), self.state, prefill=False, row=row, rotate=self._rotating(pos))
        self.costs.record(1, time.perf_counter() - t, self.batch_size)
        return out

    def call_costs(self) -> dict[int, float]:
        """Width (1, the narrow rows, batch_size) → what one call costs: seconds as measured on this backend, or
        where a width has not run yet a guess, in proportion to one that has (before any has: in steps)."""
        c, batch = self.costs, self.batch_size
        guess = {1: 1.0, batch: float(self.min_prefill)}
        if self.narrow:
            guess[self.narrow] = max(2.0, self.min_prefill * self.narrow / batch)
        timed = {w: t for w, t in ((1, c.step), (batch, c.block), (self.narrow, c.narrow)) if w in guess and t is not None}
        if not timed:
            return guess
        ref = next(w for w in (batch, self.narrow, 1) if w in timed)
        return {w: timed.get(w, g * timed[ref] / guess[ref]) for w, g in guess.items()}

    def _first_widths(self, n: int) -> list[int]:
        """For r = 0..n tokens still to append, the width of the first call of the cheapest way to append them
        (a small DP over full blocks, narrow blocks and steps; a padded block costs what a full one does; on a
        tie the wider call wins: fewer calls)."""
        cost = self.call_costs()
        best, first = [0.0] * (n + 1), [1] * (n + 1)
        for r in range(1, n + 1):
            best[r], neg = min((cost[w] + best[max(r - w, 0)], -w) for w in cost)
            first[r] = -neg
        return first

    def plan(self, n: int) -> list[int]:
        """The widths of the calls that append n tokens at the least cost by what each has cost here: a follow-up
        turn of a few tokens should pay neither for a whole block where a block costs many steps (the ANE) nor
        for many steps where a block costs few (numpy), and a narrow block, where the model has one, costs
        about its share of a full one."""
        first, out = self._first_widths(n), []
        while n > 0:
            out.append(first[n])
            n -= min(first[n], n)
        return out

    def cheaper_by_steps(self, n: int) -> bool:
        """Whether n new tokens cost least as single `infer` calls."""
        return all(w == 1 for w in self.plan(n))

    def _fill(self, ids: list[int], want_logits: bool, cancel=None, only: int | None = None) -> dict | None:
        """Append ids in the cheapest mix of `prefill` blocks (full or narrow) and single `infer` calls (see
        plan), or in blocks of width `only`; the head outputs of the last call if want_logits."""
        batch = self.batch_size
        all_ids = self.cached_ids + ids
        pos, out, end = len(self.cached_ids), None, len(all_ids)
        first = self._first_widths(end - pos) if only is None else None
        # Blocks that write positions in place stay below `limit`: the context, or the sliding window.
        limit = self.window or self.context_length
        while pos < end:
            self._check(cancel)
            width = only or first[end - pos]  # type: ignore[index]
            rotate = self._rotating(pos)
            if rotate:
                # The sliding layers' cache shifts by a whole block: full blocks only, the rest one token at a
                # time (the narrow prefill has no rotating twin).
                width = batch if end - pos >= batch and self.forward.block_rotate else 1
            elif self.recurrent and pos + width > limit:
                # A recurrent state cannot take a token twice, so no block slides back: the tail runs one by one.
                width = 1
            if width == 1:
                out = self._run_one(all_ids[pos], pos, row=0 if want_logits and pos == end - 1 else None)
                pos += 1
                continue
            if rotate:
                block_start, real = pos, all_ids[pos : pos + batch]
            else:
                # Near the limit a block slides back over tokens already in the state, which recomputes
                # their keys/values to the same values.
                block_start = min(pos, limit - width)
                real = all_ids[block_start : min(block_start + width, limit)]
            tokens = np.zeros((1, width), np.int32)
            tokens[0, : len(real)] = real
            pos = block_start + len(real)
            row = len(real) - 1 if want_logits and pos == end else None
            t = time.perf_counter()
            out = self.forward.run(tokens, self._step_inputs(block_start, width, len(real)), self.state, prefill=True, row=row, rotate=rotate)
            self.costs.record(width, time.perf_counter() - t, batch)
        self.cached_ids = all_ids
        return out

    def _check(self, cancel) -> None:
        if cancel is not None and cancel.is_set():
            # The state holds part of a prompt nobody will read: start clean (a recurrent state cannot be
            # trimmed back to cached_ids).
            self.reset()
            raise PrefillCancelled()

    def prefill(self, ids: Sequence[int], cancel=None) -> np.ndarray:
        """Logits after appending ids, computed in batch-wide `prefill` blocks. `cancel` (a threading.Event)
        is looked at between blocks: PrefillCancelled, and the state is reset."""
        ids = [int(t) for t in ids]
        if not ids:
            raise ValueError("prefill needs at least one token")
        self._room(len(ids))
        if self.forward.prefill_gives_logits and not self.cheaper_by_steps(len(ids)):
            # the last block's last row, or the last of the steps that follow the blocks, gives the logits
            return self._logits(self._fill(ids, want_logits=True, cancel=cancel))
        # Fill the state with all but the last token, whose logits come from `infer`.
        self._append(ids[:-1], cancel)
        return self.step(ids[-1])

    def _append(self, ids: list[int], cancel=None) -> None:
        """Append tokens whose logits nobody reads (steps among them skip the lm_head)."""
        self._fill(ids, want_logits=False, cancel=cancel)

    def sync(self, ids: Sequence[int], cancel=None) -> tuple[int, np.ndarray]:
        """Make the state hold exactly ids, reusing the longest common prefix; (reused tokens, logits).
        A set `cancel` ends it between prefill blocks with PrefillCancelled (see prefill)."""
        ids = [int(t) for t in ids]
        reused = 0
        for a, b in zip(self.cached_ids, ids):
            if a != b:
                break
            reused += 1
        reused = min(reused, len(ids) - 1)  # the last token is always run: its logits are the answer
        if self.window is not None and self.window < len(self.cached_ids) and reused < len(self.cached_ids):
            # The sliding layers' cache has shifted past where the histories part: it no longer holds the keys
            # an earlier position needs, so the conversation is run again from the start.
            reused = 0
        if self.recurrent:
            return self._sync_recurrent(ids, reused, cancel)
        self.cached_ids = self.cached_ids[:reused]
        return reused, self.prefill(ids[reused:], cancel)

    def _sync_recurrent(self, ids: list[int], reused: int, cancel=None) -> tuple[int, np.ndarray]:
        if reused < len(self.cached_ids):
            reused = self._restore(ids, reused)
        self._append(ids[reused:-1], cancel)
        self._snapshot()
        return reused, self.step(ids[-1])

    def _snapshot(self) -> None:
        """Keep the recurrent states as they are now, for a later sync that departs from the history here."""
        pos = len(self.cached_ids)
        self.snapshots = [s for s in self.snapshots if s.pos != pos][-(MAX_SNAPSHOTS - 1):]
        self.snapshots.append(Snapshot(pos, tuple(self.cached_ids), {n: np.asarray(self.state.read_state(n)).copy() for n in self.recurrent}))

    def _restore(self, ids: list[int], reused: int) -> int:
        """Put back the latest snapshot at or before `reused` taken on this same history (or zero); its position."""
        for snap in sorted(self.snapshots, key=lambda s: -s.pos):
            if snap.pos <= reused and list(snap.ids) == ids[: snap.pos]:
                for name, value in snap.states.items():
                    self.state.write_state(name, value)
                self.cached_ids = list(snap.ids)
                return snap.pos
        self.reset()
        return 0


class PrefillCancelled(Exception):
    """A prefill stopped between blocks because its cancel flag was set."""


MAX_SNAPSHOTS = 12  # kept per model (or server slot): turn boundaries for /retry and /undo, and recent decode points
SNAPSHOT_EVERY = 32  # decoded positions between snapshots (a copy of the recurrent states: ~9 MB for Qwen3.5-0.8B)


@dataclass
class Costs:
    """Seconds per `infer` call, per full `prefill` block and per narrow one on the backend in use, as measured
    (None: not yet)."""

    step: float | None = None
    block: float | None = None
    narrow: float | None = None
    # Widths whose first call has run. A first call is not timed: it compiles (Core ML) or builds and fills
    # buffers (numpy: 3-4 × a later one), and a block priced by it might never be chosen, so never timed again.
    ran: set[int] = field(default_factory=set)

    def record(self, width: int, seconds: float, batch: int) -> None:
        """One call of `width` rows (1: `infer`) took `seconds`."""
        if width not in self.ran:
            self.ran.add(width)
            return
        if width == 1:
            self.step = _mean(self.step, seconds)
        elif width == batch:
            self.block = _mean(self.block, seconds)
        else:
            self.narrow = _mean(self.narrow, seconds)


def _mean(old: float | None, new: float) -> float:
    """A running mean that follows the machine's load without jumping at one slow call."""
    return new if old is None else 0.8 * old + 0.2 * new


@dataclass(frozen=True)
class Snapshot:
    pos: int
    ids: tuple[int, ...]
    states: dict[str, np.ndarray]


def _recurrent_names(model_dir: ModelDir, part) -> list[str]:
    """The part's names of the states meta.yaml calls recurrent (Core ML may spell "." as "_")."""
    wanted = {n.replace(".", "_") for n in model_dir.recurrent_states}
    return [n for n in part.states if n.replace(".", "_") in wanted]
