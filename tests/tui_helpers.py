"""Pilot helpers: poll for a condition instead of sleeping a guessed time."""

from __future__ import annotations

import time

from fakes import FakeModel, FakeProvider

from anechat.engine.sampling import SamplingParams
from anechat.sessions.store import Store


async def wait_until(pilot, predicate, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.02)


def notes(app) -> list[str]:
    return [n.message for n in app._notifications]


def make_app(*models: FakeModel, store=None, available=None, broken=(), model_ref=None, **kwargs):
    from anechat.tui.app import AnechatApp

    models = models or (FakeModel(),)
    provider = FakeProvider(*models, available=available, broken=broken, default=models[0].name)
    return AnechatApp(provider=provider, store=store or Store.memory(), model_ref=model_ref,
                      params=SamplingParams(), **kwargs)


async def ready(pilot) -> None:
    await wait_until(pilot, lambda: pilot.app.conversation.model is not None, what="the model to load")


async def send(pilot, text: str) -> None:
    """Type a message and wait for its answer to finish."""
    app = pilot.app
    before = len(app.conversation.entries)
    await app.submit(text)
    await wait_until(pilot, lambda: not app.pane.busy and len(app.conversation.entries) > before, what=f"answer to {text!r}")
    await pilot.pause()


async def start_answer(pilot, text: str = "go", tokens: int = 2) -> None:
    """Send a message and return while its answer is streaming (after `tokens` tokens)."""
    await pilot.app.submit(text)
    await wait_until(pilot, lambda: pilot.app.pane.meter.total >= tokens, what=f"{tokens} streamed tokens")
