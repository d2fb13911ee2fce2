"""Pictures of the TUI (pytest-textual-snapshot): the main screen with a conversation, the help, the
model list, and the conversation in each shipped theme. Update after an intended change with
`pytest tests/test_tui_snapshots.py --snapshot-update` and look at the report."""

from __future__ import annotations

import pytest
from fakes import FakeModel
from tui_helpers import make_app, ready, send, wait_until

from anechat.sessions.store import Store
from anechat.themes import load_themes

SIZE = (100, 32)
ANSWER = (
    "The capital of France is **Paris**.\n\n"
    "| city | population |\n|---|---|\n| Paris | 2.1 M |\n| Lyon | 0.5 M |\n\n"
    "```python\nprint(\"Bonjour\")\n```\n"
)


def conversation_app(theme: str = "ane-dark", delay: float = 0.0):
    app = make_app(FakeModel("smollm2-135m-instruct", reply=ANSWER, backend_label="ANE (Core ML)", delay=delay),
                    FakeModel("qwen3-0.6b"), store=Store.memory(), theme=theme,
                    available={"llama-3.2-1b": FakeModel("llama-3.2-1b")},
                    # no live gauge tick: on a loaded machine an answer outlasted the 0.5 s tick, which added a
                    # sparkline bar to the picture (CI, high-contrast theme); the answer's own sample still shows
                    tick_s=3600.0)
    app.animation_level = "none"  # a tab underline caught mid-slide would make the picture flaky
    return app


async def with_conversation(pilot) -> None:
    await ready(pilot)
    await send(pilot, "What is the capital of France?")
    pilot.app.query_one("#input").focus()
    await pilot.pause()



def test_main_screen_with_a_conversation(snap_compare):
    assert snap_compare(conversation_app(), terminal_size=SIZE, run_before=with_conversation)


def test_a_slow_answer_draws_the_same_picture(snap_compare):
    """An answer that outlasts the gauge's tick (a loaded CI machine) ends in the same picture as a quick one
    (same snapshot as test_each_shipped_theme[high-contrast])."""
    assert snap_compare(conversation_app("high-contrast", delay=0.05), terminal_size=SIZE, run_before=with_conversation)


def opening(command: str, screen: str):
    """A run_before that types a slash command and waits for the screen it opens."""

    async def before(pilot):
        await ready(pilot)
        await pilot.app.submit(command)
        await wait_until(pilot, lambda: type(pilot.app.screen).__name__ == screen, what=screen)
        await pilot.pause()

    return before


def test_help_screen(snap_compare):
    assert snap_compare(conversation_app(), terminal_size=SIZE, run_before=opening("/help", "HelpScreen"))


def test_model_list(snap_compare):
    assert snap_compare(conversation_app(), terminal_size=SIZE, run_before=opening("/models", "ModelsScreen"))


@pytest.mark.parametrize("theme", sorted(load_themes()))
def test_each_shipped_theme(snap_compare, theme):
    assert snap_compare(conversation_app(theme), terminal_size=SIZE, run_before=with_conversation)
