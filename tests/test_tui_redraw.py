"""One layout pass per redraw of a streaming answer.

Each layout of the screen costs the decoding thread time on the portable backend. Left to Textual's
defaults, appending to a Markdown message lays the screen out two or three times: once for the new text,
once more when the new blocks finish mounting, and once more because their sizes changed."""

from __future__ import annotations

from textual.app import App

from anechat.tui.widgets import ChatLog, MessageView

FIRST = "An opening paragraph.\n\n- one\n- two\n\n"
MORE = "A second paragraph with zebra42 in it.\n\n```python\nprint('hi')\n```\n\nAnd a third paragraph.\n"


class LogApp(App):
    def compose(self):
        yield ChatLog()


def count_layouts(screen) -> list[int]:
    calls = [0]
    layout = screen._refresh_layout

    def counted(*args, **kwargs):
        calls[0] += 1
        return layout(*args, **kwargs)

    screen._refresh_layout = counted
    return calls


async def test_appending_new_blocks_lays_the_screen_out_once():
    app = LogApp()
    async with app.run_test(size=(80, 24)) as pilot:
        log = app.query_one(ChatLog)
        view = MessageView("assistant", "")  # as a streaming answer starts
        await log.mount(view)
        await view.append(FIRST)
        await pilot.pause(0.1)
        blocks_before = len(list(view.query("*")))
        calls = count_layouts(app.screen)

        with app.batch_update():  # as AnechatApp._flush_text does
            await view.append(MORE)
        await pilot.pause(0.2)  # many screen update ticks: any later layout request would have run

        assert calls[0] == 1
        assert len(list(view.query("*"))) > blocks_before
        assert all(block.region.height > 0 for block in view.children)  # the new blocks are laid out
        assert "zebra42" in app.export_screenshot()  # and painted


async def test_a_message_growing_taller_does_not_ask_for_a_second_layout():
    app = LogApp()
    async with app.run_test(size=(80, 24)) as pilot:
        log = app.query_one(ChatLog)
        view = MessageView("assistant", "")
        await log.mount(view)
        await view.append("Short.")
        await pilot.pause(0.1)
        height = view.outer_size.height
        calls = count_layouts(app.screen)

        with app.batch_update():
            await view.append(" And much longer now, " * 20)  # same paragraph, more lines
        await pilot.pause(0.2)

        assert calls[0] == 1
        assert view.outer_size.height > height


async def test_streamed_blocks_style_inline_markup_as_textual_does_also_after_a_theme_change():
    from textual.app import App
    from textual.widgets import Markdown

    from anechat.tui.widgets import ChatLog, MessageView

    text = "Some **bold** words, *slanted* ones and `code` here.\n"

    class Side(App):
        def compose(self):
            yield ChatLog()
            yield Markdown(text, id="reference")

    def styles(block) -> dict[str, object]:
        strip = block.render_line(0)
        return {word: next(seg.style for seg in strip if word in seg.text) for word in ("bold", "slanted", "code")}

    app = Side()
    async with app.run_test(size=(80, 12)) as pilot:
        view = MessageView("assistant", "")
        await app.query_one(ChatLog).mount(view)
        await view.append(text)
        await pilot.pause()
        streamed, reference = view.children[0], app.query_one("#reference").children[0]
        assert not streamed._get_component_classes()  # styled on demand, not at mount
        before = styles(streamed)
        assert before == styles(reference) and before["bold"].bold and before["slanted"].italic
        app.theme = "textual-light" if app.current_theme.dark else "textual-dark"
        await pilot.pause()
        after = styles(streamed)
        assert after == styles(reference) and after["code"] != before["code"]
