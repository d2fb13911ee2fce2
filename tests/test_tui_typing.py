"""Issue 27: the TUI as people really type — keys arriving in one burst (a script, a paste without bracketed
paste, a fast typist on a slow link) are applied in the order they were pressed. Pilot's `press` waits after
each key; these tests hand the app a whole burst at once, parsed from the bytes a terminal sends."""

from __future__ import annotations

from fakes import FakeModel
from textual._xterm_parser import XTermParser
from tui_helpers import make_app, ready, wait_until

from anechat.tui.widgets import ChatInput, MessageView, Note


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


def held_session(store, model: str) -> int:
    sid = store.create_session(model)
    store.add_user_message(sid, "old question")
    store.add_message(sid, "assistant", "old answer", model=model)
    return sid


def said(app) -> str:
    return "\n".join(str(n.render()) for n in app.query(Note))


async def test_a_resumed_session_continues_on_its_own_model():
    from anechat.sessions.store import Store

    store = Store.memory()
    sid = held_session(store, "fake-b")
    app = make_app(FakeModel("fake-a"), FakeModel("fake-b"), store=store, resume=str(sid))
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        assert app.conversation.model.name == "fake-b"
        assert app.provider.loads == ["fake-b"]  # not the default first


async def test_a_model_named_on_the_command_line_wins_and_says_so():
    from anechat.sessions.store import Store

    store = Store.memory()
    sid = held_session(store, "fake-b")
    app = make_app(FakeModel("fake-a"), FakeModel("fake-b"), store=store, resume=str(sid), model_ref="fake-a",
                   model_given=True)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        assert app.conversation.model.name == "fake-a"
        await wait_until(pilot, lambda: f"session {sid} was held with fake-b; it continues with fake-a as asked" in said(app))


async def test_a_session_whose_model_is_not_here_says_why_it_changes():
    from anechat.sessions.store import Store

    store = Store.memory()
    gone = held_session(store, "qwen-gone")
    pullable = held_session(store, "fake-c")
    app = make_app(FakeModel("fake-a"), store=store, resume=str(gone), available={"fake-c": FakeModel("fake-c")})
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        assert app.conversation.model.name == "fake-a"
        await wait_until(pilot, lambda: f"session {gone} was held with qwen-gone, which is not installed or known "
                                        "here; it continues with fake-a" in said(app))
        # From the sessions sidebar: a model that can be pulled is not pulled unasked, and the way to it is said.
        app.show_sessions()
        sessions = app.query_one("#sessions")
        await wait_until(pilot, lambda: len(sessions.children) >= 2 and app.focused is sessions)
        await pilot.pause()
        sessions.index = next(i for i, item in enumerate(sessions.children) if item.name == str(pullable))
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.conversation.session_id == pullable)
        await wait_until(pilot, lambda: "/model fake-c pulls it" in said(app))
        assert app.conversation.model.name == "fake-a" and app.provider.pulled == []


async def test_a_session_opened_from_the_sidebar_switches_that_tab_to_its_model():
    from anechat.sessions.store import Store

    store = Store.memory()
    sid = held_session(store, "fake-b")
    app = make_app(FakeModel("fake-a"), FakeModel("fake-b"), store=store)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        first = app.pane
        app.show_sessions()
        sessions = app.query_one("#sessions")
        await wait_until(pilot, lambda: len(sessions.children) >= 1 and app.focused is sessions)
        await pilot.pause()
        sessions.index = next(i for i, item in enumerate(sessions.children) if item.name == str(sid))
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.conversation.session_id == sid and app.conversation.model is not None
                         and app.conversation.model.name == "fake-b", what="the session's own model")
        assert first.conversation.model.name == "fake-a"  # the other tab keeps its model
        await wait_until(pilot, lambda: f"session {sid} continues on its own model, fake-b" in said(app))
