"""Issue 27: the TUI as people really type — keys arriving in one burst (a script, a paste without bracketed
paste, a fast typist on a slow link) are applied in the order they were pressed. Pilot's `press` waits after
each key; these tests hand the app a whole burst at once, parsed from the bytes a terminal sends."""

from __future__ import annotations

from fakes import FakeModel
from textual._xterm_parser import XTermParser
from tui_helpers import make_app, ready, wait_until

from anechat.tui.widgets import ChatInput, MessageView


def burst(app, raw: str) -> None:
    """The terminal's bytes for a burst of keys, posted to the app at once as its driver does."""
    parser = XTermParser()
    for event in [*parser.feed(raw), *parser.feed("")]:
        app.post_message(event)


async def test_text_and_enter_in_one_burst_is_sent_and_answered():
    app = make_app(FakeModel(reply="Rome."))
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        burst(app, "What is the capital of Italy?\r")
        await wait_until(pilot, lambda: len(app.conversation.entries) == 2 and not app.pane.busy, what="the answer")
        assert [e.content for e in app.conversation.entries] == ["What is the capital of Italy?", "Rome."]
        assert app.query_one(ChatInput).text == ""


async def test_newline_keys_in_a_burst_land_where_pressed():
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        box = app.query_one(ChatInput)
        first = "abc def ghi jkl mno pqr stu vwx yz 0123456789"
        for newline in ("\x1b\r", "\n"):  # Alt+Enter as tmux sends it, Ctrl+J
            burst(app, first + newline + "second line")
            await wait_until(pilot, lambda: box.text.endswith("second line"), what="the burst to be typed")
            assert box.text == first + "\nsecond line"
            assert not app.conversation.entries
            box.clear()


async def test_two_messages_in_one_burst_keep_their_order():
    app = make_app(FakeModel(reply="ok"))
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        burst(app, "one\n two\r")
        await wait_until(pilot, lambda: len(app.conversation.entries) == 2 and not app.pane.busy, what="the answer")
        assert app.conversation.entries[0].content == "one\n two"
        users = [v.text for v in app.query(MessageView) if v.role == "user"]
        assert users == ["one\n two"]


async def test_tab_completion_in_a_burst_completes_what_was_typed_before_it():
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        burst(app, "/he\t")
        box = app.query_one(ChatInput)
        await wait_until(pilot, lambda: box.text == "/help ", what="the completion")
