"""Long conversations while an answer streams: messages far off screen are shelved behind stand-ins of the
same size (so each layout pass of the growing answer stays small) and come back as the user scrolls."""

from __future__ import annotations

from fakes import FakeModel
from textual.app import App
from tui_helpers import make_app, ready, start_answer, wait_until

from anechat.chat.conversation import Entry
from anechat.tui.widgets import ChatLog, MessageView, StandIn

BODY = "A paragraph with **bold** words.\n\n- one\n- two\n\n```python\nprint('hi')\n```\n"


class LogApp(App):
    def compose(self):
        yield ChatLog()


async def test_shelving_keeps_every_position_and_scrolling_back_restores():
    app = LogApp()
    async with app.run_test(size=(80, 24)) as pilot:
        log = app.query_one(ChatLog)
        await log.mount_all([MessageView("assistant" if i % 2 else "user", f"{i}\n\n{BODY}") for i in range(30)])
        log.scroll_end(animate=False, immediate=True)
        await pilot.pause()
        views = list(log.query_children(MessageView))
        height, last = log.virtual_size.height, views[-1].region

        await log.shelve(keep=views[-1])
        await pilot.pause()
        shelved = [v for v in views if not v.display]
        assert len(shelved) > 20  # far above the viewport
        assert all(v.stand_in.display and v.stand_in.outer_size.height == v.outer_size.height for v in shelved)
        assert views[-1].display and views[-2].display  # on screen
        assert log.virtual_size.height == height and views[-1].region == last  # nothing moved

        log.scroll_home(animate=False, immediate=True)
        await pilot.pause()
        assert not log.following
        assert views[0].display and not views[0].stand_in.display  # read back: the real message again
        log.unshelve()
        await pilot.pause()
        assert all(v.display for v in views) and not any(s.display for s in log.query_children(StandIn))
        assert log.virtual_size.height == height


async def test_the_first_blocks_of_a_long_streaming_answer_are_shelved_behind_one_stand_in():
    app = LogApp()
    async with app.run_test(size=(80, 24)) as pilot:
        log = app.query_one(ChatLog)
        await log.mount(MessageView("user", BODY))
        view = MessageView("assistant", "")  # streaming: built by appends, as the app does
        await log.mount(view)
        for i in range(40):
            await view.append(f"Paragraph {i} of a long answer.\n\n" + ("- a\n- b\n\n" if i % 5 == 0 else ""))
        await pilot.pause()
        log.scroll_end(animate=False, immediate=True)
        await pilot.pause()
        assert log.scroll_y == log.max_scroll_y > 40
        blocks = list(view.children)
        height, last = view.outer_size.height, blocks[-1].region

        await log.shelve(keep=view)
        await pilot.pause()
        shelved = [b for b in blocks if not b.display]
        assert len(shelved) > 20 and shelved == blocks[: len(shelved)]  # the leading run, far above the view
        assert view.head.display and list(view.children).count(view.head) == 1
        assert view.outer_size.height == height and blocks[-1].region == last  # nothing moved
        assert blocks[-1].display  # the growing block is never shelved

        await view.append("One more paragraph.\n\nAnd zebra43.\n")  # streaming goes on above a shelved head
        log.follow()
        await log.shelve(keep=view)
        await pilot.pause()
        assert view.outer_size.height > height and view.head.display
        assert "zebra43" in app.export_screenshot()

        log.scroll_home(animate=False, immediate=True)  # reading back
        await pilot.pause()
        assert all(b.display for b in view.children if b is not view.head) and not view.head.display
        assert not view.shelved_blocks


async def test_a_long_conversation_is_shelved_while_streaming_and_whole_afterwards():
    app = make_app(FakeModel(reply=" ".join(f"w{i}" for i in range(300)), delay=0.01, context_length=100_000), render_s=0.05)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        conv = app.conversation
        conv.entries = [Entry("user" if i % 2 == 0 else "assistant", f"{i}\n\n{BODY}") for i in range(40)]
        await app.pane.rebuild()
        await pilot.pause()
        await start_answer(pilot, "and now?", tokens=20)
        log = app.pane.log_view
        await wait_until(pilot, lambda: any(s.display for s in log.query_children(StandIn)), what="stand-ins")
        assert sum(not v.display for v in log.query_children(MessageView)) > 30
        await wait_until(pilot, lambda: not app.pane.busy, timeout=60, what="the answer")
        await pilot.pause()
        assert all(v.display for v in log.query_children(MessageView))
        assert not any(s.display for s in log.query_children(StandIn))
        assert log.scroll_y == log.max_scroll_y  # still at the end, following
