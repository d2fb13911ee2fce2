"""One conversation tab: its messages on screen, the stop switch, the rate meter and the redraw pace of its
answers."""

from __future__ import annotations

import asyncio
import contextlib
import threading

from textual.widgets import TabPane
from textual.worker import Worker, WorkerCancelled, WorkerFailed

from anechat.chat.conversation import Conversation
from anechat.chat.rate import RateMeter
from anechat.tui.pacer import RenderPacer
from anechat.tui.widgets import ChatLog, MessageView, shown_text

TAB_WIDTH = 18  # the narrowest tab title; wider terminals get wider ones (tab_width)
TAB_WIDTH_MAX = 32


def tab_width(columns: int) -> int:
    """A tab title's width in a terminal this wide: about five tabs fit, 18 to 32 characters each (at 120
    columns a title was cut at 18 with most of the bar empty)."""
    return max(TAB_WIDTH, min(TAB_WIDTH_MAX, columns // 5))


class ConversationPane(TabPane):
    def __init__(self, conversation: Conversation, pane_id: str, pacer: RenderPacer, width: int = TAB_WIDTH) -> None:
        self.title_width = width  # fixed for the tab's life: see tab_label
        super().__init__(self.tab_label(conversation, width), id=pane_id)
        self.pane_id = pane_id  # what `id` holds, typed as never None
        self.conversation = conversation
        self.pacer = pacer  # the pace of its answers' redraws, kept from one answer to the next
        self.cancel: threading.Event | None = None  # set while an answer streams
        self.meter = RateMeter()
        self.asked_at = 0.0  # when the answer streaming now was asked for
        self.first_token_s: float | None = None  # its time to first token, once it came
        self.draft = ""  # what was typed into the (shared) input for this tab and not sent, while another tab shows
        self._rebuild_lock = asyncio.Lock()
        self._rebuilding: Worker | None = None

    @property
    def busy(self) -> bool:
        return self.cancel is not None

    @staticmethod
    def tab_label(conv: Conversation, width: int = TAB_WIDTH) -> str:
        # Fixed width: Textual's tab underline does not follow a label whose width changes.
        title = shown_text(conv.title)
        return (title if len(title) <= width else title[: width - 1] + "…").ljust(width)

    def compose(self):
        yield ChatLog(classes="chat-log")

    @property
    def log_view(self) -> ChatLog:
        return self.query_one(ChatLog)

    async def rebuild(self) -> None:
        """Draw the conversation's messages afresh. One at a time: two rebuilds that overlap (a command that
        changes the history, then /retry's own) each removed the old messages and then each mounted all of
        them, so the user's message showed twice."""
        async with self._rebuild_lock:
            log = self.log_view
            log.anchor(False)  # the new content may be shorter than the view
            await log.remove_children()
            await log.mount_all([MessageView(e.role, e.content, cut_short=e.cut_short) for e in self.conversation.entries])
            log.scroll_end(animate=False)

    def rebuild_soon(self) -> None:
        """Rebuild without waiting for it (from code that cannot await); `rebuilt` waits for it."""
        self._rebuilding = self.run_worker(self.rebuild(), exit_on_error=False)

    async def rebuilt(self) -> None:
        """The messages on screen match the conversation: a pending rebuild has finished, or one has run now."""
        task, self._rebuilding = self._rebuilding, None
        if task is None:
            await self.rebuild()
            return
        with contextlib.suppress(WorkerFailed, WorkerCancelled):  # a failure was logged where it ran
            await task.wait()
