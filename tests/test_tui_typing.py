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


def on_screen(app) -> list[tuple[str, str]]:
    return [(v.role, v.text) for v in app.pane.log_view.query(MessageView)]


async def test_retry_shows_each_message_once():
    app = make_app(FakeModel(reply="one two three four five six seven eight", delay=0.05))
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        burst(app, "first\r")
        await wait_until(pilot, lambda: not app.pane.busy and len(app.conversation.entries) == 2, what="answer 1")
        burst(app, "/retry\r")  # after a whole answer
        await wait_until(pilot, lambda: app.pane.busy, what="the retry to start")
        await wait_until(pilot, lambda: not app.pane.busy, what="the retried answer")
        burst(app, "second\r")
        await wait_until(pilot, lambda: app.pane.busy and app.pane.meter.total >= 2, what="answer 2 streaming")
        burst(app, "/retry\r")  # refused while it streams: it would answer twice at once
        await wait_until(pilot, lambda: any("still answering" in n.message for n in app._notifications),
                         what="the refusal")
        burst(app, "\x1b")  # Esc stops it
        await wait_until(pilot, lambda: not app.pane.busy, what="the stop")
        assert app.conversation.entries[-1].cut_short
        burst(app, "/retry\r")  # after a stopped answer
        await wait_until(pilot, lambda: app.pane.busy, what="the retry to start")
        await wait_until(pilot, lambda: not app.pane.busy, what="the retried answer")
        await pilot.pause()
        expected = [(e.role, e.content) for e in app.conversation.entries]
        assert [r for r, _ in expected] == ["user", "assistant", "user", "assistant"], expected
        assert on_screen(app) == expected
        stored = app.store.messages(app.conversation.session_id)
        assert [(m.role, m.content) for m in stored] == expected


async def test_each_tab_keeps_its_own_draft_and_a_new_tab_starts_empty():
    app = make_app(FakeModel(reply="ok"))
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        box = app.query_one(ChatInput)
        burst(app, "Name three primary colors.\r")
        await wait_until(pilot, lambda: not app.pane.busy and len(app.conversation.entries) == 2, what="the answer")
        burst(app, "/undo\r")
        await wait_until(pilot, lambda: box.text == "Name three primary colors.", what="/undo to restore the text")
        first = app.pane
        burst(app, "\x0eHi\r")  # Ctrl+N, then a message typed at once
        await wait_until(pilot, lambda: app.pane is not first and len(app.pane.conversation.entries) == 2
                         and not app.pane.busy, what="the new tab's answer")
        assert [e.content for e in app.pane.conversation.entries] == ["Hi", "ok"]
        assert box.text == ""
        app.query_one("#tabs").active = first.pane_id  # back to the first tab: its draft is back
        await wait_until(pilot, lambda: box.text == "Name three primary colors.", what="the first tab's draft")


async def test_esc_right_after_enter_stops_that_answer():
    app = make_app(FakeModel(reply="one two three four five six seven eight", delay=0.05))
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        burst(app, "tell me\r\x1b")
        await wait_until(pilot, lambda: len(app.conversation.entries) >= 1 and not app.pane.busy, what="the stop")
        await pilot.pause(0.3)
        entries = app.conversation.entries
        assert entries[0].content == "tell me"
        assert len(entries) == 1 or entries[1].cut_short
