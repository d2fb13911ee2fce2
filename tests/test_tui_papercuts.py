"""The TUI papercuts of issue 17, each driven through Pilot with the scripted model: verbatim user messages,
a help screen that scrolls at 80×24, Alt+Enter, Ctrl+W, slash completion, a status bar that tells the truth,
the "waiting for the model" state, one tab per session, stopped answers, drafts, persistent errors."""

from __future__ import annotations

from fakes import FakeModel
from textual._xterm_parser import XTermParser
from tui_helpers import make_app, ready, send, start_answer, wait_until

from anechat.chat.present import first_token
from anechat.chat.rate import RateMeter
from anechat.engine.generate import GenerationStats
from anechat.tui.widgets import ChatInput, MessageView, Note, StatusBar

POEM = "Roses are red,\n  violets are blue;\n# not a heading\n1. not a list *nor bold*"


def status(app, part: str) -> str:
    return app.query_one(StatusBar).part(part)


async def test_user_messages_show_verbatim():
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        await send(pilot, POEM)
        user = next(v for v in app.query(MessageView) if v.role == "user")
        assert user.text == POEM
        assert not user.query("MarkdownH1") and not user.query("MarkdownOrderedList")
        assert user.region.height >= 4 + 1  # four lines of text (and the gutter): line breaks are kept
        shot = app.export_screenshot()
        assert "#\u00a0not\u00a0a\u00a0heading" in shot or "# not a heading" in shot.replace("\u00a0", " ").replace("&#160;", " ")


async def test_help_scrolls_and_fits_80x24():
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        await pilot.press("f1")
        await wait_until(pilot, lambda: type(app.screen).__name__ == "HelpScreen")
        await pilot.pause()
        scroll = app.screen.query_one("#help-scroll")
        box = app.screen.query_one("#help-box")
        assert box.region.right <= 80 and box.region.bottom <= 24
        assert scroll.max_scroll_y > 0 and app.focused is scroll
        await pilot.press("pagedown")
        await wait_until(pilot, lambda: scroll.scroll_y > 0, what="the help to scroll")
        from anechat.tui.screens import help_table

        usages = [str(cell) for cell in help_table().columns[0].cells]
        assert "/export md|json [PATH]" in usages  # a `|` in a usage is text, not a table column


def test_alt_enter_reaches_the_app_as_alt_enter():
    make_app()  # the app teaches Textual's parser the sequence tmux and most terminals send for Alt+Enter
    parser = XTermParser()
    keys = [e.key for e in [*parser.feed("\x1b\r"), *parser.feed("")] if hasattr(e, "key")]
    assert keys == ["alt+enter"]


async def test_alt_enter_adds_a_line_and_ctrl_w_closes_a_tab_from_the_input():
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        box = app.query_one(ChatInput)
        await pilot.press("a", "alt+enter", "b")
        assert box.text == "a\nb" and not app.conversation.entries
        box.clear()
        await pilot.press("ctrl+n")
        await wait_until(pilot, lambda: app.query_one("#tabs").tab_count == 2)
        box.focus()
        await pilot.press("ctrl+w")
        await wait_until(pilot, lambda: app.query_one("#tabs").tab_count == 1)
        assert app.focused is box  # and typing goes on at once
        await pilot.press("x")
        assert box.text == "x"


async def test_slash_commands_complete_with_tab():
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        box = app.query_one(ChatInput)
        await pilot.press("/", "h", "e")
        hint = app.query_one("#completions")
        await wait_until(pilot, lambda: "/help" in str(hint.render()), what="the completions line")
        await pilot.press("tab")
        assert box.text == "/help "
        box.clear()
        await pilot.press(*"/th", "tab")
        assert box.text.startswith("/th")  # /theme and /think share "/th": Tab goes as far as they agree
        await pilot.press("e", "tab")
        assert box.text == "/theme "


async def test_status_bar_context_follows_the_history():
    app = make_app(FakeModel("fake-a"), FakeModel("fake-b"))
    async with app.run_test(size=(120, 30)) as pilot:
        await ready(pilot)
        await send(pilot, "one two three")
        await app.submit("/model fake-b")
        await wait_until(pilot, lambda: app.conversation.model.name == "fake-b")
        await pilot.pause()
        assert status(app, "ctx") != "ctx 0/256"  # the history the new model will read, not its empty cache
        await app.submit("/undo")
        await wait_until(pilot, lambda: status(app, "ctx") == "ctx 0/256", what="ctx after /undo")


async def test_status_bar_while_streaming_and_when_stopped_early():
    app = make_app(FakeModel(delay=0.05, reply="word " * 200))
    async with app.run_test(size=(120, 30)) as pilot:
        await ready(pilot)
        await start_answer(pilot, tokens=3)
        await wait_until(pilot, lambda: "streaming" in status(app, "speed"), what="a live TTFT")
        assert "▶" in status(app, "rate")
        await pilot.press("escape")
        await wait_until(pilot, lambda: not app.pane.busy)
    slow = make_app(FakeModel(delay=2.0))
    async with slow.run_test(size=(120, 30)) as pilot:
        await ready(pilot)
        await slow.submit("hello")
        await wait_until(pilot, lambda: slow.pane.busy)
        await pilot.press("escape")
        await wait_until(pilot, lambda: status(slow, "speed") == "stopped before the first token", timeout=15)


async def test_status_bar_keeps_its_figures_at_80_columns():
    app = make_app(FakeModel("smollm2-135m-instruct", backend_label="ANE (Core ML)"))
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        await send(pilot, "hi")
        line = str(app.query_one(StatusBar).render())
        assert "ctx" in line and "TTFT" in line and "tok/s" in line


def test_prefill_speed_is_not_claimed_for_a_reused_prompt():
    retry = GenerationStats(prompt_tokens=300, reused_tokens=299, prefill_tokens=1, prefill_s=0.5, prefill_tok_s=2.0,
                            ttft_s=0.5)
    assert first_token(retry) == "TTFT 500 ms · prompt reused"


def test_rate_gauge_is_smooth_when_tokens_come_in_batches():
    now = [0.0]
    meter = RateMeter(clock=lambda: now[0])
    meter.start()
    samples = []
    # 10 tok/s decoded, delivered in batches every 0.3 s, sampled every 0.5 s.
    decoded = [i * 0.1 for i in range(60)]
    for tick in range(1, 12):
        now[0] = tick * 0.5
        for at in [t for t in decoded if t <= now[0] - (now[0] % 0.3)]:
            decoded.remove(at)
            meter.add(at=at)
        samples.append(meter.sample())
    steady = samples[3:]
    assert all(8.5 <= s <= 11.5 for s in steady), samples


async def test_a_second_tab_says_it_waits_for_the_model():
    model = FakeModel(delay=0.6, reply="word " * 50)
    app = make_app(model)
    async with app.run_test(size=(120, 30)) as pilot:
        await ready(pilot)
        await start_answer(pilot, tokens=1)
        await app.action_new_tab()
        await wait_until(pilot, lambda: app.query_one("#tabs").tab_count == 2 and app.conversation.model is not None)
        await pilot.pause()
        await app.submit("second question")
        await wait_until(pilot, lambda: app.pane.busy)
        app._tick()
        assert "waiting for the model" in status(app, "speed") and "0.0" not in status(app, "rate")
        for pane in app.query("ConversationPane"):
            pane.cancel.set()
        await wait_until(pilot, lambda: not any(p.busy for p in app.query("ConversationPane")), timeout=15)


async def test_a_stopped_answer_says_so():
    app = make_app(FakeModel(delay=0.05, reply="word " * 200))
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        await start_answer(pilot, tokens=3)
        await pilot.press("escape")
        await wait_until(pilot, lambda: not app.pane.busy)
        view = [v for v in app.query(MessageView) if v.role == "assistant"][-1]
        assert view.has_class("cut-short") and "stopped" in view.border_subtitle
        assert view.styles.border_bottom[0] != ""  # a line under it carries the words, not a colour alone


def test_a_stopped_answer_keeps_no_half_character(tiny_model_dirs):
    from anechat.engine.tokenizer import ChatTokenizer

    tok = ChatTokenizer.from_dir(tiny_model_dirs["llama"])
    ids = tok.encode("ok 🙂")
    d = tok.detokenizer()
    text = "".join(d.push(i) for i in ids[:-1])
    assert "\ufffd" not in text + d.flush(cut=True)


async def test_ctrl_c_twice_keeps_a_draft_and_errors_stay_on_screen():
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        await pilot.press(*"unsent draft")
        await pilot.press("ctrl+c", "ctrl+c")
        await pilot.pause()
        assert app.is_running and app.query_one(ChatInput).text == "unsent draft"
        app.query_one(ChatInput).clear()
        await app.submit("/nosuchcommand")
        await wait_until(pilot, lambda: any(n.has_class("error") for n in app.query(Note)), what="an error note")
        assert "unknown command /nosuchcommand" in str(next(n for n in app.query(Note) if n.has_class("error")).render())


async def test_think_on_a_model_without_thinking_says_so():
    model = FakeModel()
    model.supports_thinking = False
    app = make_app(model)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        await app.submit("/think on")
        await wait_until(pilot, lambda: any("has no thinking mode" in str(n.render()) for n in app.query(Note)))


async def test_keys_typed_while_starting_reach_the_input():
    app = make_app(FakeModel())
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press(*"early")  # before the model has loaded, before anything was clicked
        await ready(pilot)
        assert app.query_one(ChatInput).text == "early"


async def test_control_and_bidi_characters_are_drawn_not_obeyed():
    """A U+202E in an answer would reorder the terminal's line and a C1 CSI (U+009B) would start an escape
    sequence: the screen shows them as visible escapes (as the REPL and pipe mode do); the message keeps them."""
    evil = "file\u202egpj.exe and \x9b2J done"
    app = make_app(FakeModel(reply=evil))
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        await send(pilot, "hi \u2066there\u2069")
        await wait_until(pilot, lambda: not app.pane.busy, timeout=30, what="the answer")
        answer = next(v for v in app.query(MessageView) if v.role == "assistant")
        assert answer.text == evil
        shot = app.export_screenshot()
        assert not any(c in shot for c in "\u202e\x9b\u2066\u2069")
        assert "\\u202e" in shot and "\\x9b" in shot


async def test_notices_leave_the_input_and_the_status_line_free_at_80x24():
    app = make_app()
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await ready(pilot)
        app.notify("answer copied")
        app.notify("an error that says a good deal more than that, over two lines at least", severity="error")
        await wait_until(pilot, lambda: len(app.screen.query("Toast")) == 2, what="two notices")
        await pilot.pause()
        toasts = [t.region for t in app.screen.query("Toast")]
        taken = [app.query_one("#input").region, app.query_one(StatusBar).region]
        assert all(t.height and not t.overlaps(r) for t in toasts for r in taken), (toasts, taken)
        assert all(t.width <= 80 * 0.45 for t in toasts)


async def test_a_dialogs_title_wraps_inside_its_box_at_80x24():
    from anechat.tui.screens import ModelsScreen

    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        await app.submit("/models")
        await wait_until(pilot, lambda: isinstance(app.screen, ModelsScreen), what="the models dialog")
        await pilot.pause()
        title = app.screen.query_one(".modal-title")
        box = app.screen.query_one("#models-box")
        assert title.region.right <= box.content_region.right and title.region.height >= 2  # was cut at the border
        table = app.screen.query_one("#models-table")
        assert table.region.y >= title.region.bottom  # nothing under the title's second line


async def test_tab_titles_use_the_room_a_wide_terminal_has():
    from textual.widgets import TabbedContent

    question = "Which rivers flow through Paris and Lyon?"  # the session's title: 41 characters
    for size, shown in (((120, 40), question[:23] + "…"), ((80, 24), question[:17] + "…")):
        app = make_app()
        async with app.run_test(size=size) as pilot:
            await ready(pilot)
            await send(pilot, question)
            tab = app.query_one(TabbedContent).get_tab(app.query_one(TabbedContent).active)
            await wait_until(pilot, lambda tab=tab: str(tab.label).strip() != "new chat", what="the tab's new title")
            assert str(tab.label).strip() == shown, (size, str(tab.label))
