"""One conversation tab: its messages on screen, the stop switch, the rate meter and the redraw pace of its
answers."""

from __future__ import annotations

import threading

from textual.widgets import TabPane

from anechat.chat.conversation import Conversation
from anechat.chat.rate import RateMeter
from anechat.tui.pacer import RenderPacer
from anechat.tui.widgets import ChatLog, MessageView, shown_text

TAB_WIDTH = 18


class ConversationPane(TabPane):
    def __init__(self, conversation: Conversation, pane_id: str, pacer: RenderPacer) -> None:
        super().__init__(self.tab_label(conversation), id=pane_id)
        self.pane_id = pane_id  # what `id` holds, typed as never None
        self.conversation = conversation
        self.pacer = pacer  # the pace of its answers' redraws, kept from one answer to the next
        self.cancel: threading.Event | None = None  # set while an answer streams
        self.meter = RateMeter()
        self.asked_at = 0.0  # when the answer streaming now was asked for
        self.first_token_s: float | None = None  # its time to first token, once it came

    @property
    def busy(self) -> bool:
        return self.cancel is not None

    @staticmethod
    def tab_label(conv: Conversation) -> str:
        # Fixed width: Textual's tab underline does not follow a label whose width changes.
        title = shown_text(conv.title)
        return (title if len(title) <= TAB_WIDTH else title[: TAB_WIDTH - 1] + "…").ljust(TAB_WIDTH)

    def compose(self):
        yield ChatLog(classes="chat-log")

    @property
    def log_view(self) -> ChatLog:
        return self.query_one(ChatLog)

    async def rebuild(self) -> None:
        log = self.log_view
        log.anchor(False)  # the new content may be shorter than the view
        await log.remove_children()
        await log.mount_all([MessageView(e.role, e.content, cut_short=e.cut_short) for e in self.conversation.entries])
        log.scroll_end(animate=False)
