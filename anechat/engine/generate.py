"""The generation engine: chat messages in, a stream of text events and final statistics out.

Model calls run on one worker thread per engine (they hold the KV state); the async API hands events
to the event loop through a queue, so a UI stays responsive, and cancellation stops within one token."""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, AsyncIterator, Iterator, Sequence

from anechat.engine.context import fit_messages, shift_tokens
from anechat.engine.heap import heap_frozen
from anechat.engine.lm import PrefillCancelled
from anechat.engine.sampling import Sampler, SamplingParams
from anechat.engine.stops import StopMatcher
from anechat.engine.template import Cancelled
from anechat.errors import ModelLoadError
from anechat.signals import leaving

if TYPE_CHECKING:
    from anechat.engine.lm import LanguageModel
    from anechat.engine.tokenizer import ChatTokenizer


@dataclass
class TokenEvent:
    text: str
    token_id: int
    at: float = field(default_factory=time.monotonic)  # when it was decoded (events reach a UI in batches)
    # On an answer's first event: its time to first token as the final stats will give it (a UI that timed
    # it itself, from the user's Enter to the event's arrival, showed another figure while streaming).
    ttft_s: float | None = None


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    reused_tokens: int = 0
    prefill_tokens: int = 0
    prefill_s: float = 0.0
    prefill_tok_s: float = 0.0
    ttft_s: float = 0.0
    decode_tokens: int = 0
    decode_s: float = 0.0
    decode_tok_s: float = 0.0
    host_overhead_ms_per_token: float = 0.0
    dropped_messages: int = 0
    context_shifts: int = 0


@dataclass
class DoneEvent:
    stats: GenerationStats
    finish_reason: str  # "stop" | "length" | "cancelled"
    text: str = ""


class Engine:
    def __init__(self, lm: LanguageModel, tokenizer: ChatTokenizer, defaults: SamplingParams | None = None) -> None:
        self.lm = lm
        self.tokenizer = tokenizer
        self.defaults = defaults or SamplingParams()
        self._lock = threading.Lock()  # one generation at a time owns the KV state

    def generate(self, messages: list[dict], params: SamplingParams | None = None, *, stop: Sequence[str] = (),
                 enable_thinking: bool | None = None, cancel: threading.Event | None = None) -> Iterator[TokenEvent | DoneEvent]:
        with self._lock, heap_frozen():
            params = params or self.defaults
            params.validate()
            t0 = time.perf_counter()
            try:
                prompt, dropped = fit_messages(self.tokenizer, messages, self.lm.context_length, params.max_tokens,
                                               enable_thinking, cancel=cancel)
            except Cancelled:
                yield DoneEvent(GenerationStats(), "cancelled")
                return
            yield from self._generate(prompt, params, stop, cancel, t0, dropped)

    def generate_ids(self, prompt: list[int], params: SamplingParams | None = None, *, stop: Sequence[str] = (),
                     cancel: threading.Event | None = None, dropped_messages: int = 0) -> Iterator[TokenEvent | DoneEvent]:
        """The same generation from prompt ids the caller made (a raw completion, or a chat prompt a server
        has already fitted to the context)."""
        if not prompt or len(prompt) >= self.lm.context_length:
            raise ValueError(f"a prompt of {len(prompt)} tokens does not fit the context of {self.lm.context_length}")
        with self._lock, heap_frozen():
            params = params or self.defaults
            params.validate()
            yield from self._generate(list(prompt), params, stop, cancel, time.perf_counter(), dropped_messages)

    def _generate(self, prompt, params, stop, cancel, t0, dropped):
        lm, tok = self.lm, self.tokenizer
        stats = GenerationStats(dropped_messages=dropped)
        stats.prompt_tokens = len(prompt)
        try:
            with running_model():
                reused, logits = lm.sync(prompt, cancel=cancel)
        except PrefillCancelled:
            yield DoneEvent(stats, "cancelled")
            return
        stats.reused_tokens, stats.prefill_tokens = reused, len(prompt) - reused
        t1 = time.perf_counter()
        stats.prefill_s = t1 - t0
        stats.prefill_tok_s = stats.prefill_tokens / stats.prefill_s if stats.prefill_s > 0 else 0.0
        sampler = Sampler(params)
        detok = tok.detokenizer()
        stops = StopMatcher(stop)
        history = list(prompt)
        parts: list[str] = []
        finish = "length"
        stopped = False
        p1 = lm.predict_seconds
        for n in range(params.max_tokens):
            if cancel is not None and cancel.is_set():
                finish = "cancelled"
                break
            check_logits(logits, len(history))
            token = sampler(logits, history)
            if n == 0:
                stats.ttft_s = time.perf_counter() - t0
            if token in tok.eos_token_ids:
                finish = "stop"
                break
            history.append(token)
            stats.decode_tokens += 1
            text, stopped = stops.feed(detok.push(token))
            if text:
                parts.append(text)
                yield TokenEvent(text, token, ttft_s=None if len(parts) > 1 else stats.ttft_s)
            if stopped:
                finish = "stop"
                break
            if n + 1 == params.max_tokens:
                break
            with running_model():
                if len(lm.cached_ids) >= lm.context_length:
                    stats.context_shifts += 1
                    _, logits = lm.sync(shift_tokens(prompt, lm.cached_ids + [token], lm.context_length))
                else:
                    logits = lm.step(token)
        if not stopped:  # what the detokenizer and stop matcher still hold back belongs to the answer
            tail, hit = stops.feed(detok.flush(cut=finish != "stop"))
            tail += "" if hit else stops.flush()
            if tail:
                parts.append(tail)
                yield TokenEvent(tail, -1, ttft_s=None if len(parts) > 1 else stats.ttft_s)
        t2 = time.perf_counter()
        stats.decode_s = t2 - t1
        stats.decode_tok_s = stats.decode_tokens / stats.decode_s if stats.decode_s > 0 and stats.decode_tokens else 0.0
        if stats.decode_tokens:
            host = stats.decode_s - (lm.predict_seconds - p1)
            stats.host_overhead_ms_per_token = 1000 * host / stats.decode_tokens
        yield DoneEvent(stats, finish, "".join(parts))

    async def chat(self, messages: list[dict], params: SamplingParams | None = None, *, stop: Sequence[str] = (),
                   enable_thinking: bool | None = None, cancel: threading.Event | None = None,
                   coalesce_s: float = 0.1) -> AsyncIterator[TokenEvent | DoneEvent]:
        """Async stream of the same events; cancelling the consuming task (or setting `cancel`) stops the
        worker before its next token and the engine stays usable.

        Events reach the event loop in batches at most every `coalesce_s` (the first one at once): each
        wake-up of the loop takes the GIL and a core from the decoding thread (at one wake-up per token the
        event loop alone cost the portable backend ~1 % of its speed), and no screen redraws faster. The end
        of the stream (the final stats, an error) is not held back."""
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        finished = asyncio.Event()
        pending: deque = deque()
        lock = threading.Lock()
        armed = False  # a wake-up is scheduled and not yet consumed
        stop_flag = cancel or threading.Event()
        end = object()

        def push(item) -> None:
            nonlocal armed
            with lock:
                pending.append(item)
                wake, armed = not armed, True
            # RuntimeError: the loop is closed, its consumer gone (a process leaving on a signal does not wait
            # for this thread's last step): nobody is listening
            with contextlib.suppress(RuntimeError):
                if wake:
                    loop.call_soon_threadsafe(ready.set)
                if item is end:
                    loop.call_soon_threadsafe(finished.set)

        def work() -> None:
            try:
                for event in self.generate(messages, params, stop=stop, enable_thinking=enable_thinking, cancel=stop_flag):
                    push(event)
            except BaseException as e:  # noqa: BLE001 — handed to the consumer, who re-raises it
                push(e)
            finally:
                push(end)

        worker = threading.Thread(target=work, name="anechat-generate", daemon=True)
        worker.start()
        last = float("-inf")
        try:
            while True:
                await ready.wait()
                wait = coalesce_s - (loop.time() - last)
                if wait > 0 and not finished.is_set():
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(finished.wait(), wait)
                with lock:
                    items = list(pending)
                    pending.clear()
                    armed = False
                    ready.clear()
                last = loop.time()
                for item in items:
                    if item is end:
                        return
                    if isinstance(item, BaseException):
                        raise item
                    yield item
        finally:
            stop_flag.set()
            # The step under way ends by itself and the worker with it; a process leaving on a signal does not
            # wait for that step (it can be a first-run kernel compile of many seconds).
            if not leaving.is_set():
                await asyncio.get_running_loop().run_in_executor(None, worker.join)


def check_logits(logits, position: int) -> None:
    """NaN or +inf logits (damaged weights, an fp16 overflow) would be sampled into gibberish: stop with a
    clear error instead. One reduction per token: max() carries a NaN or inf through."""
    top = float(logits.max())
    if not math.isfinite(top):
        raise ModelLoadError(f"the model produced non-finite logits at position {position} ({top}): its weights are "
                             "damaged or overflow fp16; try `anechat models verify NAME`")


@contextlib.contextmanager
def running_model():
    """A model whose programs break while running (an output it does not produce, a shape that does not
    fit, an op the runtime rejects) is a model that fails to load, said in one line, not a crash."""
    try:
        yield
    except (KeyError, IndexError, TypeError, ValueError) as e:
        detail = " ".join(str(e).split()) or type(e).__name__
        raise ModelLoadError(f"the model failed while running: {type(e).__name__}: {detail}") from None
