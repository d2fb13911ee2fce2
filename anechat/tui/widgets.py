"""The TUI's building blocks: messages, the input box, the status bar with the tokens/sec gauge."""

from __future__ import annotations

import re

from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from rich.text import Text
from textual.message import Message
from textual.reactive import reactive
from textual.widget import Widget
from textual.widgets import Label, Markdown, Sparkline, Static, TextArea

CODE_BLOCK = re.compile(r"```[^\n]*\n(.*?)(?:```|\Z)", re.S)


def last_code_block(text: str) -> str | None:
    blocks = CODE_BLOCK.findall(text)
    return blocks[-1].rstrip("\n") if blocks else None


class MessageView(Markdown):
    """One message, rendered as Markdown (also while it streams). Focus it (click, Tab) and press c to
    copy it or k to copy its last code block."""

    can_focus = True
    BINDINGS = [
        Binding("c", "copy", "copy message"),
        Binding("k", "copy_code", "copy code block"),
    ]

    def __init__(self, role: str, text: str = "", *, cut_short: bool = False) -> None:
        super().__init__(text, classes=f"message {role}")
        self.role = role
        self.text = text
        self.set_cut_short(cut_short)

    def set_cut_short(self, cut: bool) -> None:
        self.set_class(cut, "cut-short")
        self.border_subtitle = "cut short" if cut else ""

    def action_copy(self) -> None:
        self.app.copy_to_clipboard(self.text)
        self.app.notify("message copied")

    def action_copy_code(self) -> None:
        code = last_code_block(self.text)
        if code is None:
            self.app.notify("no code block in this message", severity="warning")
            return
        self.app.copy_to_clipboard(code)
        self.app.notify("code block copied")


class Note(Static):
    """A line from anechat itself (command output), not part of the conversation."""

    def __init__(self, text: str) -> None:
        super().__init__(text, classes="note", markup=False)


class ChatLog(VerticalScroll):
    """Follows new text while the user stays at the bottom; scrolling up to read stops the following."""

    following = True

    def watch_scroll_y(self, old: float, new: float) -> None:
        super().watch_scroll_y(old, new)
        if new < old:
            self.following = new >= self.max_scroll_y - 1
        elif new >= self.max_scroll_y - 1:
            self.following = True

    def follow(self) -> None:
        if self.following:
            self.scroll_end(animate=False, immediate=True)


class ChatInput(TextArea):
    """Multi-line input: Enter sends; Ctrl+J (or Alt+Enter / Shift+Enter where the terminal reports it)
    inserts a newline; pasted text keeps its newlines."""

    NEWLINE_KEYS = ("ctrl+j", "alt+enter", "shift+enter")

    class Submitted(Message):
        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    def __init__(self, **kwargs) -> None:
        # No blinking cursor: each blink repaints the input, and repaints take cores from the model.
        super().__init__(soft_wrap=True, show_line_numbers=False, tab_behavior="focus", **kwargs)
        self.cursor_blink = False

    async def _on_key(self, event) -> None:
        if event.key == "enter":
            event.stop()
            event.prevent_default()
            text = self.text
            if text.strip():
                self.clear()
                self.post_message(self.Submitted(text))
            return
        if event.key in self.NEWLINE_KEYS:
            event.stop()
            event.prevent_default()
            self.insert("\n")
            return
        await super()._on_key(event)


class Readout(Widget):
    """A one-line figure in the status bar. Unlike Label.update, a new value repaints only this widget
    (no layout pass over the screen), which matters at several updates a second."""

    DEFAULT_CSS = "Readout { width: auto; height: 1; }"
    text: reactive[str] = reactive("", layout=False)

    def render(self) -> Text:
        return Text(self.text, no_wrap=True, overflow="ellipsis")

    def update(self, text: str) -> None:
        self.text = text


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


class StatusBar(Horizontal):
    """Model, backend, context use, TTFT, prefill speed, and the live tokens/sec gauge with its sparkline."""

    def compose(self):
        # Most important first: a narrow terminal crops from the right.
        yield Label("", id="status-model")
        yield Readout(id="status-rate")
        yield Sparkline([0.0], id="status-spark")
        yield Readout(id="status-ctx")
        yield Readout(id="status-speed")

    def show_model(self, name: str | None, backend: str | None, loading: bool = False) -> None:
        text = f"{name or 'no model'}" + (" · loading…" if loading else f" · {backend}" if backend else "")
        self.query_one("#status-model", Label).update(text)

    def show_context(self, used: int, total: int | None) -> None:
        self.query_one("#status-ctx", Readout).update(f"ctx {used}/{total}" if total else "")

    def show_last(self, stats) -> None:
        label = self.query_one("#status-speed", Readout)
        if stats is None:
            label.update("")
            return
        label.update(f"TTFT {_ms(stats.ttft_s)} · prefill {stats.prefill_tok_s:.0f} tok/s")

    def show_rate(self, rate: float, samples, live: bool) -> None:
        self.query_one("#status-rate", Readout).update(f"{rate:5.1f} tok/s" + (" ▶" if live else ""))
        spark = self.query_one("#status-spark", Sparkline)
        data = list(samples) or [0.0]
        if data != spark.data:
            spark.data = data
