"""The Textual app driven by Pilot with a scripted model: sending, streaming, cancelling, every slash
command, model switches, errors as notifications, hostile input, narrow terminals."""

from __future__ import annotations

import threading

import yaml
from fakes import REPLY, FakeModel
from textual import events
from tui_helpers import make_app, notes, ready, send, start_answer, wait_until

from anechat.sessions.store import Store
from anechat.tui.screens import HelpScreen, ModelsScreen, PullScreen
from anechat.tui.widgets import ChatInput, MessageView, Note, StatusBar

LONG = " ".join(f"word{i}" for i in range(400))


def status(app, part: str) -> str:
    return app.query_one(StatusBar).part(part)


async def test_send_streams_markdown_and_records_the_exchange():
    store = Store.memory()
    app = make_app(FakeModel(delay=0.005), store=store)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        await pilot.click(ChatInput)
        await pilot.press(*"hello there", "enter")
        await wait_until(pilot, lambda: len(app.conversation.entries) == 2 and not app.pane.busy, what="the answer")
        views = list(app.query(MessageView))
        assert [v.role for v in views] == ["user", "assistant"]
        assert views[1].text == REPLY
        assert app.query_one(ChatInput).text == ""
        assert "42.0 tok/s" in status(app, "rate")
        assert "TTFT 125 ms" in status(app, "speed") and "prefill 1234 tok/s" in status(app, "speed")
        assert "fake-a · fake backend" in status(app, "model")
        assert "ctx" in status(app, "ctx")
        sid = app.conversation.session_id
        saved = store.messages(sid)
        assert [(m.role, m.content, m.cut_short) for m in saved] == [("user", "hello there", False), ("assistant", REPLY, False)]
        assert saved[1].tok_per_s == 42.0
        # Token batches no more often than the UI redraws: each batch wakes the event loop.
        assert app.conversation.model.coalesce_seen == [min(app.render_s, app.tick_s)]


async def test_gauge_is_live_while_tokens_stream():
    app = make_app(FakeModel(reply=LONG, delay=0.01), tick_s=0.05)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        await app.submit("go")
        await wait_until(pilot, lambda: len(app.pane.meter.samples) >= 3 and app.pane.meter.samples[-1] > 0, what="live samples")
        assert app.pane.busy
        assert "▶" in status(app, "rate")
        live = float(status(app, "rate").split()[0])
        assert live > 0
        app.action_stop()
        await wait_until(pilot, lambda: not app.pane.busy)


async def test_escape_stops_the_answer_and_keeps_it_flagged():
    store = Store.memory()
    app = make_app(FakeModel(reply=LONG, delay=0.01), store=store)
    async with app.run_test() as pilot:
        await ready(pilot)
        await start_answer(pilot, "tell me everything", tokens=5)
        await pilot.press("escape")
        await wait_until(pilot, lambda: not app.pane.busy, what="the stop")
        last = app.conversation.entries[-1]
        assert last.role == "assistant" and last.cut_short and 0 < len(last.content) < len(LONG)
        assert store.messages(app.conversation.session_id)[-1].cut_short
        assert list(app.query(MessageView))[-1].has_class("cut-short")
        # the app is still usable: the next message is answered
        app.conversation.model.reply = "short"
        await send(pilot, "again")
        assert app.conversation.entries[-1].content == "short"


async def test_ctrl_c_stops_first_then_quits_when_pressed_twice_idle():
    app = make_app(FakeModel(reply=LONG, delay=0.01))
    async with app.run_test() as pilot:
        await ready(pilot)
        await start_answer(pilot)
        await pilot.press("ctrl+c")
        await wait_until(pilot, lambda: not app.pane.busy)
        assert app.is_running
        await pilot.press("ctrl+c")
        assert app.is_running and any("again to quit" in n for n in notes(app))
        await pilot.press("ctrl+c")
        await wait_until(pilot, lambda: not app.is_running, what="exit")


async def test_typing_works_while_an_answer_streams():
    app = make_app(FakeModel(reply=LONG, delay=0.05))
    async with app.run_test() as pilot:
        await ready(pilot)
        await start_answer(pilot)
        app.query_one(ChatInput).focus()
        await pilot.press(*"next question")
        assert app.pane.busy
        assert app.query_one(ChatInput).text == "next question"
        await pilot.press("enter")  # refused politely while busy, and the text is kept
        assert app.query_one(ChatInput).text == "next question"
        assert any("still answering" in n for n in notes(app))
        app.action_stop()
        await wait_until(pilot, lambda: not app.pane.busy)


async def test_ctrl_j_adds_a_line_and_paste_keeps_newlines():
    app = make_app()
    async with app.run_test() as pilot:
        await ready(pilot)
        box = app.query_one(ChatInput)
        box.focus()
        await pilot.press("a", "ctrl+j", "b")
        assert box.text == "a\nb"
        app.post_message(events.Paste("\nline one\nline two"))
        await pilot.pause()
        assert box.text == "a\nb\nline one\nline two"
        await pilot.press("enter")
        await wait_until(pilot, lambda: len(app.conversation.entries) == 2 and not app.pane.busy)
        assert app.conversation.entries[0].content == "a\nb\nline one\nline two"


async def test_model_switch_keeps_the_history():
    a, b = FakeModel("fake-a"), FakeModel("fake-b", reply="from b")
    app = make_app(a, b)
    async with app.run_test() as pilot:
        await ready(pilot)
        await send(pilot, "first question")
        await app.submit("/model fake-b")
        await wait_until(pilot, lambda: app.conversation.model is b, what="the switch")
        assert "fake-b" in status(app, "model")
        await send(pilot, "second question")
        seen = b.calls[-1]
        assert [m["content"] for m in seen] == ["first question", REPLY, "second question"]
        assert app.conversation.entries[-1].content == "from b"
        assert any("earlier messages are kept" in str(n.render()) for n in app.query(Note))


async def test_switching_to_a_model_not_installed_shows_the_pull_screen():
    c = FakeModel("fake-c", reply="from c", delay=0)
    app = make_app(available={"fake-c": c})
    async with app.run_test() as pilot:
        await ready(pilot)
        seen_pull: list[str] = []
        original = app.provider.pull
        shown = threading.Event()

        def pull(name, say, update=None):
            seen_pull.append(type(app.screen).__name__)
            say("fetching fake-c from PyPI")
            assert update is not None  # the dialog takes the repeated progress lines in place
            update("fetching fake-c from PyPI (offline: local cache only) · 120/238 MB … 8 s, about 8 s left")
            assert shown.wait(30), "the dialog never showed the progress line"
            return original(name, say, update)

        app.provider.pull = pull
        app.run_worker(app.submit("/model fake-c"))

        def now_line() -> str:
            screen = app.screen
            return str(screen.query_one("#pull-now").render()) if isinstance(screen, PullScreen) else ""

        await wait_until(pilot, lambda: "120/238 MB … 8 s" in now_line(), what="the step line with bytes and time")
        assert now_line().startswith("▶ fetching fake-c from PyPI")
        now, box = app.screen.query_one("#pull-now"), app.screen.query_one("#pull-box")
        assert now.region.right <= box.content_region.right  # a long line wraps instead of running out of the box
        shown.set()
        await wait_until(pilot, lambda: app.conversation.model is c, what="the pulled model")
        assert seen_pull == ["PullScreen"]
        assert app.provider.pulled == ["fake-c"]
        assert not isinstance(app.screen, PullScreen)


async def test_errors_are_notifications_and_the_app_stays_usable():
    app = make_app(FakeModel("fake-a"), broken=("fake-broken",))
    async with app.run_test() as pilot:
        await ready(pilot)
        await app.submit("/model fake-broken")
        await wait_until(pilot, lambda: any("corrupt" in n for n in notes(app)), what="load error")
        await app.submit("/model nope")
        await wait_until(pilot, lambda: any("unknown model 'nope'" in n for n in notes(app)), what="unknown model")
        await app.submit("/frobnicate")
        await wait_until(pilot, lambda: any("unknown command /frobnicate" in n for n in notes(app)))
        await app.submit("/modle x")
        await wait_until(pilot, lambda: any("did you mean /model" in n for n in notes(app)))
        await app.submit("/set temperature=hot")
        await wait_until(pilot, lambda: any("temperature: must be a number" in n for n in notes(app)))
        assert app.conversation.model.name == "fake-a"
        await send(pilot, "still here?")
        assert app.conversation.entries[-1].role == "assistant"


async def test_startup_model_that_fails_to_load_is_a_notification():
    app = make_app(FakeModel("fake-a"), broken=("fake-broken",), model_ref="fake-broken")
    async with app.run_test() as pilot:
        await wait_until(pilot, lambda: any("corrupt" in n for n in notes(app)), what="load error")
        await app.submit("hello")
        await wait_until(pilot, lambda: any("not loaded" in n for n in notes(app)))
        assert app.query_one(ChatInput).text == "hello"  # nothing typed is lost
        await app.submit("/model fake-a")
        await wait_until(pilot, lambda: app.conversation.model is not None)


async def test_model_failing_mid_answer_keeps_the_partial_answer():
    store = Store.memory()
    app = make_app(FakeModel("fake-a", fail_after=3, reply=LONG), FakeModel("fake-b", reply="ok"), store=store)
    async with app.run_test() as pilot:
        await ready(pilot)
        await app.submit("go")
        await wait_until(pilot, lambda: any("the model failed" in n for n in notes(app)), what="failure notice")
        await wait_until(pilot, lambda: not app.pane.busy)
        last = app.conversation.entries[-1]
        assert last.role == "assistant" and last.cut_short and last.content == "word0 word1 word2 "
        assert store.messages(app.conversation.session_id)[-1].cut_short
        await app.submit("/model fake-b")
        await wait_until(pilot, lambda: app.conversation.model.name == "fake-b")
        await send(pilot, "and now?")
        assert app.conversation.entries[-1].content == "ok"


async def test_huge_paste_longer_than_the_context_comes_back_to_the_input():
    app = make_app(FakeModel(context_length=256))
    big = ("lorem ipsum dolor sit amet " * 4000)[:100_000]
    async with app.run_test() as pilot:
        await ready(pilot)
        box = app.query_one(ChatInput)
        box.focus()
        app.post_message(events.Paste(big))
        await wait_until(pilot, lambda: len(box.text) == len(big), what="the paste")
        await pilot.press("enter")
        await wait_until(pilot, lambda: any("context holds 256" in n for n in notes(app)), what="too-long notice")
        await wait_until(pilot, lambda: box.text == big.strip(), what="the text back in the input")
        assert app.conversation.entries == []
        box.clear()
        await send(pilot, "short one")
        assert app.conversation.entries[-1].role == "assistant"


async def test_forty_columns_wide_stays_usable():
    app = make_app()
    async with app.run_test(size=(40, 20)) as pilot:
        await ready(pilot)
        assert app.screen.has_class("narrow")
        await send(pilot, "hi")
        assert "42.0 tok/s" in status(app, "rate")
        bar = app.query_one(StatusBar)
        line = bar.render().plain
        assert bar.region.right <= 40 and len(line) <= bar.size.width and "42.0 tok/s" in line
        await app.submit("/help")
        await wait_until(pilot, lambda: isinstance(app.screen, HelpScreen))
        await pilot.press("escape")
        await wait_until(pilot, lambda: not isinstance(app.screen, HelpScreen))


async def test_every_slash_command(tmp_path):
    a, b = FakeModel("fake-a"), FakeModel("fake-b", reply="bee")
    store = Store.memory()
    app = make_app(a, b, store=store, available={"fake-c": FakeModel("fake-c")})
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)

        async def run(text: str) -> None:
            await app.submit(text)
            await wait_until(pilot, lambda: not any(w.group == "commands" and w.is_running for w in app.workers), what=text)
            await pilot.pause()

        def said() -> str:
            return str(list(app.query(Note))[-1].render())

        await run("/help")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        await run("/help set")
        assert said().startswith("/set KEY=VALUE")
        await run("/model")
        assert said() == "model: fake-a on fake backend, context 256"
        await send(pilot, "one")
        await run("/models")
        assert isinstance(app.screen, ModelsScreen)
        table = app.screen.query_one("#models-table")
        assert [str(c.label) for c in table.columns.values()] == ["", "name", "state", "on disk", "download", "title"]
        assert table.get_row("fake-c")[3:5] == ["2 MB", "1 MB"]  # converted here: downloads less than it keeps
        await pilot.press("down", "enter")  # the second row: fake-b
        await wait_until(pilot, lambda: app.conversation.model is b, what="switch from the list")
        await run("/model fake-a")
        assert app.conversation.model is a
        await run("/pull fake-c")
        assert app.provider.pulled == ["fake-c"]
        await run("/pull fake-c")
        assert said() == "fake-c is already installed"
        await run("/system You are terse.")
        assert app.conversation.system == "You are terse."
        await run("/system")
        assert said() == "system prompt: You are terse."
        await run("/set temperature=0.25")
        await run("/set top_k 7")
        assert app.conversation.params.temperature == 0.25 and app.conversation.params.top_k == 7
        await run("/set")
        assert "temperature=0.25" in said() and "top_k=7" in said()
        await run("/think on")
        assert app.conversation.think is True
        await send(pilot, "two")
        assert a.calls[-1][0] == {"role": "system", "content": "You are terse."}
        assert a.params_seen[-1].temperature == 0.25 and a.think_seen[-1] is True
        await run("/stats")
        assert "decode 5 tok at 42.0 tok/s" in said()
        await run("/retry")
        await wait_until(pilot, lambda: not app.pane.busy)
        assert [e.role for e in app.conversation.entries] == ["user", "assistant", "user", "assistant"]
        assert len(a.calls[-1]) == 4  # system + one, answer, two
        await run("/undo")
        assert app.query_one(ChatInput).text == "two"
        assert [e.content for e in app.conversation.entries] == ["one", REPLY]
        app.query_one(ChatInput).clear()
        sid = app.conversation.session_id
        assert [m.content for m in store.messages(sid)] == ["one", REPLY]
        await run("/rename Project notes")
        assert store.session(sid).title == "Project notes"
        await wait_until(pilot, lambda: "Project notes" in str(app.query_one("#tabs").get_tab(app.pane.id).label))
        target = tmp_path / "out.md"
        await run(f"/export md {target}")
        assert target.read_text().startswith("# Project notes")
        await run(f"/export json {tmp_path / 'out.json'}")
        assert '"title": "Project notes"' in (tmp_path / "out.json").read_text()
        await run("/export pdf")
        assert any("unknown format 'pdf'" in n for n in notes(app))
        await run("/sessions")
        assert app.query_one("#sidebar").has_class("shown")
        await run("/new")
        await wait_until(pilot, lambda: app.query_one("#tabs").tab_count == 2)
        assert app.conversation.entries == [] and app.conversation.session_id is None
        await run(f"/resume {sid}")
        assert [e.content for e in app.conversation.entries] == ["one", REPLY]
        await wait_until(pilot, lambda: len(app.pane.query(MessageView)) == 2)
        await run("/clear")
        assert app.conversation.entries == [] and app.conversation.session_id is None
        await wait_until(pilot, lambda: len(app.pane.query(MessageView)) == 0)
        await run(f"/resume {sid}")
        await run("/delete")  # asks first (issue 17)
        assert sid in [s.id for s in store.list_sessions()] and "/delete again confirms" in said()
        await run("/delete")
        assert sid not in [s.id for s in store.list_sessions()]
        await run("/theme")
        assert "paper" in said() and "theme: ane-dark ·" in said()
        await run("/theme paper")
        assert app.theme == "paper"
        from anechat.paths import config_file

        assert yaml.safe_load(config_file().read_text())["theme"] == "paper"
        await run("/theme papr")
        assert any("did you mean paper" in n for n in notes(app))
        await run("/quit")
        await wait_until(pilot, lambda: not app.is_running, what="exit")


async def test_slash_completion_offers_commands_and_arguments():
    from anechat.chat import slash

    app = make_app(FakeModel("fake-a"), FakeModel("fake-b"))
    async with app.run_test() as pilot:
        await ready(pilot)
        assert slash.completions(app, "/mo") == ["/model", "/models"]
        assert slash.completions(app, "/model fake-") == ["/model fake-a", "/model fake-b"]
        assert "/theme midnight" in slash.completions(app, "/theme m")
        assert slash.completions(app, "/set te") == ["/set temperature="]


async def test_resume_at_startup_and_sessions_sidebar_opens_a_tab():
    store = Store.memory()
    sid = store.create_session("fake-a")
    store.add_user_message(sid, "old question")
    store.add_message(sid, "assistant", "old answer", model="fake-a")
    app = make_app(store=store, resume=str(sid))
    async with app.run_test(size=(120, 30)) as pilot:
        await ready(pilot)
        assert [e.content for e in app.conversation.entries] == ["old question", "old answer"]
        await send(pilot, "new question")
        assert [m["content"] for m in app.conversation.model.calls[-1]] == ["old question", "old answer", "new question"]
        await pilot.press("ctrl+b")
        sessions = app.query_one("#sessions")
        assert app.focused is sessions
        await wait_until(pilot, lambda: len(sessions.children) >= 1)
        # Issue 17: the session open in this tab is not opened a second time (two writers into one session).
        await pilot.press("enter")
        await pilot.pause()
        assert app.query_one("#tabs").tab_count == 1 and app.conversation.session_id == sid
        other = store.create_session("fake-a", title="another one")
        store.add_user_message(other, "other question")
        app.show_sessions()
        await wait_until(pilot, lambda: len(sessions.children) >= 2 and app.focused is sessions)
        await pilot.pause()
        sessions.index = next(i for i, item in enumerate(sessions.children) if item.name == str(other))
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.query_one("#tabs").tab_count == 2)
        assert app.conversation.session_id == other
        await app.submit(f"/resume {sid}")  # back to the tab that has it, not into this one
        await wait_until(pilot, lambda: app.conversation.session_id == sid)
        assert app.query_one("#tabs").tab_count == 2
        assert [p.conversation.session_id for p in app.query("ConversationPane")] == [sid, other]


async def test_copy_keys_put_the_answer_and_code_on_the_clipboard():
    app = make_app()
    async with app.run_test() as pilot:
        await ready(pilot)
        await send(pilot, "code please")
        await pilot.press("ctrl+y")
        assert app.clipboard == REPLY
        await pilot.press("ctrl+g")
        assert app.clipboard == "print('hi')"
        view = list(app.query(MessageView))[0]
        view.focus()
        await pilot.press("c")
        assert app.clipboard == "code please"


async def test_the_gauge_tick_survives_a_pane_that_is_going_away():
    """At exit (or mid tab close) Textual prunes the pane before the tab bar forgets it; a gauge tick landing
    then finds an active tab without a pane: no pane, no crash."""
    app = make_app(FakeModel(reply=LONG, delay=0.01), tick_s=0.01)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        await start_answer(pilot, "go", tokens=3)
        await app.pane.remove()  # the switcher loses the pane; the tab bar still names it active
        app._tick()
        assert app._current_pane_or_none() is None


async def test_the_thread_policy_keeps_a_core_for_the_ui_while_it_is_up():
    """The full-screen UI redraws on a core the model's kernels would otherwise take (runtime/threads.py)."""
    from anechat.runtime.threads import POLICY

    app = make_app(FakeModel())
    async with app.run_test() as pilot:
        await ready(pilot)
        assert POLICY.ui_shares_cores
    assert not POLICY.ui_shares_cores
