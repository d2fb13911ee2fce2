"""A scripted model and provider for the chat front ends: no weights, deterministic stats."""

from __future__ import annotations

import asyncio
from pathlib import Path

from anechat.engine.generate import DoneEvent, GenerationStats, TokenEvent
from anechat.errors import ModelLoadError, ModelNotFound
from anechat.models.catalog import ModelRow

REPLY = "Hello **world**. Here is code:\n\n```python\nprint('hi')\n```\n"


class FakeModel:
    def __init__(self, name: str = "fake-a", *, reply: str = REPLY, delay: float = 0.0, fail_after: int | None = None,
                 context_length: int = 256, backend_label: str = "fake backend", decode_tok_s: float = 42.0,
                 shares_cores: bool = True) -> None:
        self.name, self.reply, self.delay, self.fail_after = name, reply, delay, fail_after
        self.shares_cores = shares_cores
        self.context_length, self.backend_label, self.decode_tok_s = context_length, backend_label, decode_tok_s
        self.calls: list[list[dict]] = []
        self.params_seen = []
        self.think_seen = []
        self.coalesce_seen = []
        self._used = 0

    def tokens_in_context(self) -> int:
        return self._used

    def count_tokens(self, messages) -> int:
        return sum(len(m["content"].split()) + 4 for m in messages)

    def _pieces(self, messages) -> list[str]:
        text = self.reply(messages) if callable(self.reply) else self.reply
        return [w for w in text.replace(" ", " \x00").split("\x00") if w]

    async def chat(self, messages, params, *, enable_thinking=None, cancel=None, coalesce_s=0.1):
        from anechat.engine.context import PromptTooLong

        self.calls.append([dict(m) for m in messages])
        self.params_seen.append(params)
        self.think_seen.append(enable_thinking)
        self.coalesce_seen.append(coalesce_s)
        prompt = sum(len(m["content"].split()) + 4 for m in messages)
        if prompt >= self.context_length:
            raise PromptTooLong(f"the message is {prompt} tokens but the model's context holds {self.context_length}; shorten it")
        parts, n = [], 0
        finish = "stop"
        for piece in self._pieces(messages)[: params.max_tokens]:
            if cancel is not None and cancel.is_set():
                finish = "cancelled"
                break
            if self.fail_after is not None and n >= self.fail_after:
                raise RuntimeError("the fake model fell over")
            await asyncio.sleep(self.delay)
            if cancel is not None and cancel.is_set():  # as the engine: checked before each token
                finish = "cancelled"
                break
            parts.append(piece)
            n += 1
            yield TokenEvent(piece, n)
        self._used = min(self.context_length, prompt + n)
        stats = GenerationStats(prompt_tokens=prompt, prefill_tokens=prompt, prefill_s=0.01, prefill_tok_s=1234.0,
                                ttft_s=0.125, decode_tokens=n, decode_s=n / self.decode_tok_s,
                                decode_tok_s=self.decode_tok_s)
        yield DoneEvent(stats, finish, "".join(parts))


class FakeProvider:
    def __init__(self, *models: FakeModel, available: dict[str, FakeModel] | None = None,
                 broken: tuple[str, ...] = (), default: str = "fake-a") -> None:
        self.models = {m.name: m for m in models}
        self.available = dict(available or {})
        self.broken = set(broken)
        self.default = default
        self.loads: list[str] = []
        self.pulled: list[str] = []

    def default_name(self) -> str | None:
        return self.default

    def rows(self) -> list[ModelRow]:
        rows = [ModelRow(n, f"Fake {n}", True, n == self.default, 1.0, "anemll") for n in sorted(self.models)]
        rows += [ModelRow(n, f"Fake {n}", False, False, 2.0, "convert", 1.0) for n in sorted(self.available)]
        return rows

    def pull_needed(self, name: str) -> str | None:
        if name in self.models or name in self.broken or Path(name).is_dir():
            return None
        if name in self.available:
            return f"Fake {name}, about 2 MB to download"
        raise ModelNotFound(f"unknown model {name!r}")

    def pull(self, name: str, say, update=None) -> Path:
        for step in ("downloading", "converting", "installed"):
            say(f"{name}: {step}")
            if update is not None:
                update(f"{name}: {step} · 50% … 4 s")
        self.pulled.append(name)
        self.models[name] = self.available.pop(name)
        return Path("/nonexistent") / name

    def load(self, name: str):
        self.loads.append(name)
        if name in self.broken:
            raise ModelLoadError(f"{name}: chunk 1 is corrupt")
        return self.models[name]
