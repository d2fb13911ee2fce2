"""One model, many clients: a fair queue, prompt-cache slots, and the one thread that runs the model.

Requests wait in arrival order. Up to `slots` of them run at once, taking turns a token at a time, so a
short answer is not stuck behind a long one. Each slot is a KV state of its own over the same loaded
weights (LanguageModel.fork): a conversation's next turn lands in the slot that holds its earlier turns and
prefills only what is new, even when other conversations came in between (llama-server's slots and
cache_prompt). A request for another installed model waits until the running ones finish, then that model
replaces the loaded one.

Everything that touches the model happens on the worker thread; the event loop only queues jobs and
reads their channels."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anechat.engine.context import PromptTooLong, fit_messages
from anechat.engine.generate import DoneEvent, Engine, GenerationStats
from anechat.engine.sampling import SamplingParams
from anechat.engine.template import Cancelled
from anechat.engine.tokenizer import TooLong
from anechat.errors import AnechatError
from anechat.serve.protocol import ApiError, GenerationRequest, bad, check_fits, too_long

log = logging.getLogger("anechat.serve")


class Channel:
    """Worker thread → event loop. The loop is woken once per batch, not once per token: each wake-up takes
    the GIL from the decoding thread (see Engine.chat)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._items: deque = deque()
        self._lock = threading.Lock()
        self._armed = False
        self._ready = asyncio.Event()

    def put(self, item: Any) -> None:
        with self._lock:
            self._items.append(item)
            wake, self._armed = not self._armed, True
        if wake:
            # RuntimeError: the event loop is gone (server shutting down): nobody is listening
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._ready.set)

    async def get(self) -> list:
        while True:
            await self._ready.wait()
            with self._lock:
                items = list(self._items)
                self._items.clear()
                self._armed = False
                self._ready.clear()
            if items:
                return items


@dataclass
class Started:
    """The request has a slot and a prompt that fits: the response can begin."""

    model: str
    prompt_tokens: int


@dataclass
class Job:
    req: GenerationRequest
    params: SamplingParams
    model: str
    channel: Channel
    cancel: threading.Event = field(default_factory=threading.Event)
    queued_at: float = field(default_factory=time.perf_counter)
    started_at: float = 0.0


@dataclass
class Slot:
    engine: Engine
    last_used: float = 0.0

    @property
    def cached(self) -> list[int]:
        return self.engine.lm.cached_ids


@dataclass
class Running:
    job: Job
    slot: Slot
    events: Any  # the engine's generator
    prompt_tokens: int
    begun: bool = False


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def pick_slot(slots: list[Slot], prompt: list[int], can_grow: bool) -> Slot | None:
    """The free slot whose cache this prompt continues; else a new slot (None: the caller makes one); else
    the least recently used. A slot that shares only a little with the prompt (a common system prompt) is
    not taken from the conversation it holds while there is room elsewhere."""
    best = max(slots, key=lambda s: common_prefix(s.cached, prompt), default=None)
    if best is not None:
        shared = common_prefix(best.cached, prompt)
        if shared and shared * 2 >= len(best.cached):
            return best
    empty = [s for s in slots if not s.cached]
    if empty:
        return empty[0]
    if can_grow:
        return None
    return min(slots, key=lambda s: s.last_used) if slots else None


@dataclass
class Loaded:
    name: str
    loaded: Any  # engine.loader.LoadedModel
    slots: list[Slot] = field(default_factory=list)


class ModelHost:
    """Owns the loaded model and the worker thread that runs it."""

    def __init__(self, *, load: Callable[[Path], Any], startup: Any, startup_path: Path, defaults: SamplingParams,
                 slots: int = 4, think: bool | None = None, installed: Callable[[], dict[str, Path]] | None = None,
                 system: str | None = None, user_sampling: dict[str, Any] | None = None) -> None:
        self._load = load
        # the user's sampling settings (file, flags): they sit above each model's own recommendation
        self.user_sampling = user_sampling
        self.system = system
        self.startup_name, self.startup_path = startup.name, startup_path
        self.defaults, self.max_slots, self.think = defaults, max(1, slots), think
        self._installed = installed or (dict)
        self.current: Loaded | None = Loaded(startup.name, startup)
        self.loading: str | None = None
        self._queue: deque[Job] = deque()
        self._running: list[Running] = []
        self._starting: list[Job] = []  # taken from the queue, being templated and tokenized
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="anechat-serve-model", daemon=True)
        self._thread.start()

    # --- event-loop side -------------------------------------------------------------------------------

    def models(self) -> dict[str, Path]:
        """Every model a request may name: the one given at startup and the installed ones."""
        return {self.startup_name: self.startup_path, **self._installed()}

    def resolve(self, name: str | None) -> str:
        if name is None:
            return self.current.name if self.current else self.startup_name
        if name == self.startup_name or (self.current and name == self.current.name) or name in self._installed():
            return name
        raise ApiError(404, f"The model {name!r} does not exist or is not installed (GET /v1/models lists them; "
                            f"`anechat models pull NAME` installs one)", param="model", code="model_not_found")

    def defaults_for(self, name: str) -> SamplingParams:
        """Sampling for a request to model `name` before its own fields: the model's recommendation
        (generation_config.json), then the user's settings — as in pipe mode."""
        if self.user_sampling is None:
            return self.defaults
        from anechat.engine.loader import generation_defaults

        path = self.models().get(name)
        recommended = generation_defaults(path) if path is not None else {}
        return SamplingParams().merged(**recommended).merged(**self.user_sampling)

    def bounds(self, name: str) -> tuple[int, int] | None:
        """(context, UTF-8 bytes one token can stand for) of model `name` if it is the one loaded (another is
        only known once loaded): what protocol.check_fits needs."""
        cur = self.current
        if cur is None or cur.name != name:
            return None
        return cur.loaded.lm.context_length, cur.loaded.tokenizer.max_token_bytes

    def cancel_all(self) -> None:
        """Shutting down: every queued and running request stops at its next check (template, prefill
        block, token)."""
        with self._cond:
            jobs = list(self._queue) + list(self._starting) + [r.job for r in self._running]
            self._cond.notify()
        for job in jobs:
            job.cancel.set()

    def submit(self, job: Job) -> None:
        with self._cond:
            self._queue.append(job)
            self._cond.notify()

    def withdraw(self, job: Job) -> None:
        """The client went away: stop its generation before the next token, or drop it from the queue."""
        job.cancel.set()
        with self._cond:
            if job in self._queue:
                self._queue.remove(job)
            self._cond.notify()

    def status(self) -> dict:
        with self._cond:
            queued = len(self._queue)
        cur = self.current
        return {
            "status": "loading" if self.loading else "ok",
            "model": cur.name if cur else None,
            "loading": self.loading,
            "running": len(self._running),
            "queued": queued,
            "slots": self.max_slots,
            "cached_tokens": [len(s.cached) for s in cur.slots] if cur else [],
        }

    def close(self) -> None:
        self.cancel_all()
        with self._cond:
            self._closed = True
            self._cond.notify()
        # Cancelled work ends within a prefill block or a token; a model that hangs in a call must not keep
        # a stopping server alive (the thread is a daemon).
        self._thread.join(timeout=2)

    # --- worker thread -----------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self._queue and not self._running:
                    self._cond.wait()
                if self._closed:
                    for r in self._running:
                        r.events.close()
                    return
                admit = self._starting = self._admissible()
            for job in admit:
                self._start(job)
            for r in list(self._running):
                self._advance(r)

    def _admissible(self) -> list[Job]:
        """Jobs to start now, in arrival order: while slots are free and the head of the queue wants the
        model that is loaded (or nothing runs, so the model may change)."""
        out: list[Job] = []
        busy = len(self._running)
        model = self.current.name if self.current else None
        while self._queue and busy + len(out) < self.max_slots:
            job = self._queue[0]
            if job.model != model:
                if busy or out:
                    break  # let the running ones finish first; the queue keeps its order
                model = job.model
            out.append(self._queue.popleft())
        return out

    def _ensure_model(self, name: str) -> Loaded:
        if self.current is not None and self.current.name == name:
            return self.current
        path = self.models().get(name)
        if path is None:
            raise ApiError(404, f"The model {name!r} is no longer installed", param="model", code="model_not_found")
        old, self.current = self.current, None
        if old is not None:
            log.info("unloading %s", old.name)
            del old
            gc.collect()  # one model in memory at a time: free the old weights before reading the new
        log.info("loading %s from %s", name, path)
        self.loading = name
        t = time.perf_counter()
        try:
            loaded = self._load(path)
        except AnechatError as e:
            raise ApiError(500, f"model {name!r} failed to load: {e}", kind="server_error", code="model_load_failed") from None
        finally:
            self.loading = None
        log.info("loaded %s (%s) in %.1f s", name, getattr(loaded.backend, "name", "?"), time.perf_counter() - t)
        _ = loaded.tokenizer.max_token_bytes  # computed here, off the event loop that asks bounds()
        self.current = Loaded(name, loaded)
        return self.current

    def _prompt(self, job: Job, loaded: Any) -> tuple[list[int], int]:
        """Prompt ids (and messages dropped to fit) exactly as pipe mode makes them."""
        lm, tok = loaded.lm, loaded.tokenizer
        req = job.req
        check_fits(req, lm.context_length, tok.max_token_bytes)  # done at once when the model was loaded already
        if req.kind == "chat":
            think = req.enable_thinking if req.enable_thinking is not None else self.think
            messages = req.messages
            if self.system and messages[0]["role"] != "system":
                messages = [{"role": "system", "content": self.system}, *messages]
            try:
                return fit_messages(tok, messages, lm.context_length, job.params.max_tokens, think, cancel=job.cancel)
            except Cancelled:
                raise ApiError(499, "the request was cancelled", code="client_closed_request") from None
            except PromptTooLong as e:
                raise bad(str(e), param="messages", code="context_length_exceeded") from None
            except AnechatError as e:  # a template that refuses these messages (raise_exception)
                raise bad(str(e), param="messages") from None
        if isinstance(req.prompt, str):
            try:
                ids = tok.encode(req.prompt, cancel=job.cancel, max_bytes=lm.context_length * tok.max_token_bytes)
            except Cancelled:
                raise ApiError(499, "the request was cancelled", code="client_closed_request") from None
            except TooLong as e:
                raise bad(too_long(e.size, lm.context_length), param="prompt", code="context_length_exceeded") from None
            if tok.config.get("add_bos_token") and tok.bos_token_id is not None and ids[:1] != [tok.bos_token_id]:
                ids.insert(0, tok.bos_token_id)
        else:
            ids = req.prompt
            vocab = lm.vocab_size
            wrong = next((t for t in ids if not 0 <= t < vocab), None)
            if wrong is not None:
                raise bad(f"token id {wrong} is outside the vocabulary (0..{vocab - 1})", param="prompt")
        if not ids:
            raise bad("the prompt encodes to no tokens", param="prompt")
        if len(ids) >= lm.context_length:
            raise bad(f"the prompt is {len(ids)} tokens but the model's context holds {lm.context_length}; shorten it",
                      param="prompt", code="context_length_exceeded")
        return ids, 0

    def _slot_for(self, current: Loaded, prompt: list[int], reuse: bool) -> Slot:
        free = [s for s in current.slots if all(r.slot is not s for r in self._running)]
        can_grow = len(current.slots) < self.max_slots
        slot = pick_slot(free, prompt, can_grow) if reuse else None
        if slot is None and not reuse:
            slot = next((s for s in free if not s.cached), None)
            if slot is None and not can_grow and free:
                slot = min(free, key=lambda s: s.last_used)
        if slot is None:
            loaded = current.loaded
            lm = loaded.lm if not current.slots else loaded.lm.fork()
            slot = Slot(Engine(lm, loaded.tokenizer))
            current.slots.append(slot)
        if not reuse:
            slot.engine.lm.reset()
        return slot

    def _start(self, job: Job) -> None:
        if job.cancel.is_set():
            job.channel.put(ApiError(499, "the request was cancelled", code="client_closed_request"))
            return
        try:
            current = self._ensure_model(job.model)
            prompt, dropped = self._prompt(job, current.loaded)
            slot = self._slot_for(current, prompt, job.req.cache_prompt)
        except ApiError as e:
            job.channel.put(e)
            return
        except Exception as e:
            log.exception("request failed before generation")
            job.channel.put(ApiError(500, f"internal error: {type(e).__name__}: {e}", kind="server_error"))
            return
        slot.last_used = time.perf_counter()
        if dropped:
            log.info("dropped the %d earliest messages to fit the context", dropped)
        job.started_at = time.perf_counter()
        events = slot.engine.generate_ids(prompt, job.params, stop=job.req.stop, cancel=job.cancel, dropped_messages=dropped)
        self._running.append(Running(job, slot, events, len(prompt)))
        job.channel.put(Started(current.name, len(prompt)))

    def _advance(self, r: Running) -> None:
        """One step of one request: up to its next piece of text (a token, usually). A cancelled request
        stops here: the engine checks `cancel` before it samples again and ends with its statistics."""
        event: Any = None
        if r.job.cancel.is_set() and not r.begun:  # not prefilled yet: nothing worth running
            event = DoneEvent(GenerationStats(prompt_tokens=r.prompt_tokens), "cancelled")
        else:
            r.begun = True
            try:
                event = next(r.events)
            except StopIteration:
                pass
            except Exception as e:
                log.exception("generation failed")
                r.job.channel.put(ApiError(500, f"generation failed: {type(e).__name__}: {e}", kind="server_error"))
        if event is not None:
            r.job.channel.put(event)
        if isinstance(event, DoneEvent) and event.finish_reason == "cancelled":
            log.info("%s: generation cancelled (the client went away) after %d generated tokens",
                     r.job.model, event.stats.decode_tokens)
        if event is None or isinstance(event, DoneEvent):
            r.events.close()  # releases the slot's engine, also mid-generation
            r.slot.last_used = time.perf_counter()
            self._running.remove(r)
