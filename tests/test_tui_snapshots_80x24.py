"""Pictures of the TUI at 80×24, the size a new user's terminal often has (issue 17): the help screen, a
conversation with a multi-line user message holding code, the status bar while an answer streams, and a
stopped answer. Update after an intended change with
`pytest tests/test_tui_snapshots_80x24.py --snapshot-update` and look at the report."""

from __future__ import annotations

import asyncio

from fakes import FakeModel
from tui_helpers import make_app, ready, send, wait_until

from anechat.chat.rate import RateMeter
from anechat.engine.generate import DoneEvent, GenerationStats, TokenEvent
from anechat.sessions.store import Store

SIZE = (80, 24)
CODE_MESSAGE = "Why does this print nothing?\n\n# count down\nfor i in range(3, 0):\n    print(i)"
ANSWER = "`range(3, 0)` is empty: the step is +1. Count down with `range(3, 0, -1)`."


class HeldModel(FakeModel):
    """Answers its first message in full; later answers say `partial` and then hold until stopped, so a picture
    of a streaming or stopped answer shows the same text every time."""

    partial = "The capital of Italy is"

    async def chat(self, messages, params, *, enable_thinking=None, cancel=None, coalesce_s=0.1):
        if not self.calls:
            async for event in super().chat(messages, params, enable_thinking=enable_thinking, cancel=cancel,
                                            coalesce_s=coalesce_s):
                yield event
            return
        self.calls.append(messages)
        yield TokenEvent(self.partial, 1)
        while cancel is None or not cancel.is_set():
            await asyncio.sleep(0.01)
        yield DoneEvent(GenerationStats(prompt_tokens=30, prefill_tokens=30, prefill_s=0.02, prefill_tok_s=1500.0,
                                        ttft_s=0.125, decode_tokens=1, decode_s=0.05, decode_tok_s=20.0),
                        "cancelled", self.partial)


def app_80x24():
    # No gauge ticks and every batch drawn at once: what is on screen depends on the script, not on timing.
    app = make_app(HeldModel("smollm2-135m", reply=ANSWER, backend_label="portable (CPU)"), store=Store.memory(),
                   tick_s=3600, render_s=0.0)
    app.animation_level = "none"
    return app


async def help_open(pilot):
    await ready(pilot)
    await pilot.press("f1")
    await wait_until(pilot, lambda: type(pilot.app.screen).__name__ == "HelpScreen")
    await pilot.pause()


async def code_conversation(pilot):
    await ready(pilot)
    await send(pilot, CODE_MESSAGE)
    pilot.app.query_one("#input").focus()
    await pilot.pause()


async def streaming(pilot):
    app = pilot.app
    await ready(pilot)
    await send(pilot, "What is the capital of France?")
    await app.submit("And of Italy?")
    await wait_until(pilot, lambda: app.pane.busy and app.pane.first_token_s is not None, what="the first token")
    await wait_until(pilot, lambda: "Italy is" in str([v.text for v in app.query("MessageView")]))
    pane = app.pane
    now = [10.0]
    pane.meter = RateMeter(clock=lambda: now[0])  # decode times of a steady 20 tok/s, on a clock of our own
    for i in range(21):
        pane.meter.add(at=9.0 + i * 0.05)
    pane.first_token_s = 0.125
    app._tick()
    await pilot.pause()


async def stopped(pilot):
    await streaming(pilot)
    await pilot.press("escape")
    await wait_until(pilot, lambda: not pilot.app.pane.busy)
    await wait_until(pilot, lambda: "stopped" in pilot.app.query_one("StatusBar").part("speed")
                     or "TTFT" in pilot.app.query_one("StatusBar").part("speed"))
    pilot.app.clear_notifications()
    pilot.app.query_one("#input").focus()
    await pilot.pause()


def test_help_screen_80x24(snap_compare):
    assert snap_compare(app_80x24(), terminal_size=SIZE, run_before=help_open)


def test_multiline_user_message_with_code_80x24(snap_compare):
    assert snap_compare(app_80x24(), terminal_size=SIZE, run_before=code_conversation)


def test_status_bar_while_streaming_80x24(snap_compare):
    assert snap_compare(app_80x24(), terminal_size=SIZE, run_before=streaming)


def test_stopped_answer_80x24(snap_compare):
    assert snap_compare(app_80x24(), terminal_size=SIZE, run_before=stopped)
