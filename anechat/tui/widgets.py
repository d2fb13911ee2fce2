"""The TUI's building blocks: messages, the input box, the status bar with the tokens/sec gauge."""

from __future__ import annotations

import re
from typing import Any, Awaitable, Callable

from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.geometry import Region
from textual.message import Message
from textual.widget import Widget
from textual.widgets import Markdown, Static, TextArea
from textual.widgets.markdown import MarkdownBlock

from anechat.chat.present import first_token
from anechat.textsafe import neutralize
from anechat.tui.textual_adapter import SizedInOnePass, StyledOnDemand, retype

CODE_BLOCK = re.compile(r"```[^\n]*\n(.*?)(?:```|\Z)", re.S)


def last_code_block(text: str) -> str | None:
    blocks = CODE_BLOCK.findall(text)
    return blocks[-1].rstrip("\n") if blocks else None


_ONE_PASS: dict[type, type] = {}


def one_pass(cls: type) -> type:
    """`cls` with SizedInOnePass mixed in, under the same name so the stylesheet's rules still apply."""
    sized = _ONE_PASS.get(cls)
    if sized is None:
        sized = _ONE_PASS[cls] = type(cls.__name__, (StreamedBlock if issubclass(cls, MarkdownBlock)
                                                      else SizedInOnePass, cls), {})
    return sized


class StreamedBlock(StyledOnDemand, SizedInOnePass):
    """Mixin for the Markdown blocks of a message: Markdown.append builds each new block (which asks for a
    layout and a repaint) before mounting it, and those requests would come due only after the mount, in a
    layout pass and a repaint of their own. Mounting lays out and paints the block anyway."""

    def refresh(self, *regions: Region, repaint: bool = True, layout: bool = False,
                recompose: bool = False) -> Any:
        widget: Any = self
        if not widget.is_mounted and not recompose:
            return self
        return super().refresh(*regions, repaint=repaint, layout=layout, recompose=recompose)  # type: ignore[misc]

    def on_mount(self) -> None:
        # What a block composes are plain Textual widgets that Markdown creates itself; they are new with
        # every append, so each would ask for its own second layout. Same instance, same state, only the
        # one-pass sizing added.
        widget: Any = self
        for child in widget.walk_children():
            if not isinstance(child, SizedInOnePass):
                retype(child, one_pass(type(child)))


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~=&:])")


def shown_text(text: str) -> str:
    """What the screen may draw of a message: Textual passes C1 controls and bidi overrides through to the
    terminal, where they act (a U+202E reorders the line); they are drawn as visible escapes instead, as in
    the REPL and pipe mode. The message itself (copy, save) keeps its text."""
    return neutralize(text.replace("\r", ""))


def verbatim_markdown(text: str) -> str:
    """Markdown that shows `text` exactly as typed: every character Markdown would read as syntax escaped,
    every line break a hard break, leading indentation and blank lines kept. A user's
    poem keeps its lines, pasted code its newlines and indentation, a `# comment` line stays a line."""
    lines = []
    for line in text.split("\n"):
        body = line.lstrip(" \t")
        # Markdown drops each line's leading whitespace and Textual folds any run of Unicode whitespace into
        # one space, so indentation is drawn with U+2800 (a blank cell that is not whitespace); copying a
        # message copies its own text, not what is drawn.
        indent = line[: len(line) - len(body)].replace("\t", "    ").replace(" ", "\u2800")
        lines.append((indent + _MARKDOWN_SPECIAL.sub(r"\\\1", body)) or "&#160;")
    return "\\\n".join(lines)


class MessageView(SizedInOnePass, Markdown):
    """One message: the model's rendered as Markdown (also while it streams), the user's verbatim. Focus it
    (click, Tab) and press c to copy it or k to copy its last code block."""

    can_focus = True
    stand_in: StandIn | None = None  # its place holder while shelved (ChatLog.shelve)
    head: StandIn | None = None  # the place holder of its first blocks while they are shelved (shelve_head)
    BINDINGS = [
        Binding("c", "copy", "copy message"),
        Binding("k", "copy_code", "copy code block"),
    ]

    def __init__(self, role: str, text: str = "", *, cut_short: bool = False) -> None:
        shown = shown_text(text)
        super().__init__(verbatim_markdown(shown) if role == "user" else shown, classes=f"message {role}")
        self.role = role
        self.text = text
        self.shelved_blocks: list[Widget] = []
        self.set_cut_short(cut_short)

    def get_block_class(self, block_name: str):
        return one_pass(super().get_block_class(block_name))

    def append(self, markdown: str):
        return super().append(shown_text(markdown))

    async def shelve_head(self, above: float) -> None:
        """Shelve the leading blocks that end above row `above` (counted from the top of this message's
        content) behind one stand-in at its head. A long answer is dozens of blocks, which Textual would lay
        out again on every redraw while it streams. The last block is never shelved: it is the one growing."""
        run = []
        for child, y, h in _stack(self.children)[:-1]:
            if y + h >= above:
                break
            run.append((child, y, h))
        blocks = [child for child, _, _ in run if child is not self.head]
        if not blocks:
            return
        if self.head is None:
            self.head = StandIn(self)
            await self.mount(self.head, before=0)
        (first, top, _), (last, y, h) = run[0], run[-1]
        self.head.cover(y + h - top, first.styles.margin.top, last.styles.margin.bottom)
        for block in blocks:
            block.display = False
        self.shelved_blocks.extend(blocks)

    def unshelve_head(self) -> None:
        for block in self.shelved_blocks:
            block.display = True
        self.shelved_blocks.clear()
        if self.head is not None:
            self.head.display = False

    def set_cut_short(self, cut: bool) -> None:
        # A border line with its own words (styled in app.tcss): a colour alone is easy to miss.
        self.set_class(cut, "cut-short")
        self.border_subtitle = "⏹ stopped — the answer is incomplete" if cut else ""

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

    def __init__(self, text: str, error: bool = False) -> None:
        super().__init__(text, classes="note error" if error else "note", markup=False)


class StandIn(SizedInOnePass, Widget):
    """Holds the place of a message far off screen while an answer streams (or of the first blocks of the
    streaming answer itself): the same height and margin, nothing inside. Textual lays out every widget on
    the screen each time the streaming answer grows, and a Markdown message is dozens of widgets; a stand-in
    is one, so neither a long conversation nor a long answer slows decoding."""

    DEFAULT_CSS = "StandIn { width: 1fr; }"

    def __init__(self, message: Widget) -> None:
        super().__init__()
        self.message = message
        self.height_shown = 0
        self.display = False

    def render(self) -> str:
        return ""

    def cover(self, height: int, margin_top: int, margin_bottom: int) -> None:
        self.height_shown = height
        self.styles.height = height
        self.styles.margin = (margin_top, 0, margin_bottom, 0)
        self.display = True


def _stack(children) -> list[tuple[Widget, int, int]]:
    """(child, top, height) of each shown child of a vertical layout, from the children's last sizes and
    collapsed margins, rows counted from the container's content top. Not from the compositor: after a
    scroll its full map is invalid, and asking it would lay out the whole screen once more."""
    out, y, margin = [], 0, 0
    for child in children:
        if not child.display:
            continue
        m = child.styles.margin
        y += max(margin, m.top)
        h = child.height_shown if isinstance(child, StandIn) else child.outer_size.height
        out.append((child, y, h))
        y, margin = y + h, m.bottom
    return out


class ChatLog(SizedInOnePass, VerticalScroll):
    """Follows new text while the user stays at the bottom; scrolling up to read stops the following.
    While an answer streams, messages more than half a screen away are shelved behind stand-ins and brought
    back as the user scrolls near them (same size: nothing on screen moves)."""

    following = True

    def watch_scroll_y(self, old: float, new: float) -> None:
        super().watch_scroll_y(old, new)
        if new < old:
            self.following = new >= self.max_scroll_y - 1
        elif new >= self.max_scroll_y - 1:
            self.following = True
        self.unshelve(everything=False)  # whatever comes near the view is real before it is drawn

    def follow(self) -> None:
        if not self.following:
            return
        # Once the text overflows, Textual's anchor keeps the end in view in the layout pass that grows
        # it, so new lines never wait below the edge for our next update. (Anchored while shorter than the
        # view, Textual would pin the text to the bottom edge, hence the check.)
        self.anchor(self.max_scroll_y > 0)
        self.scroll_end(animate=False, immediate=True)

    def _window(self) -> tuple[float, float]:
        top, height = self.scroll_y, self.outer_size.height  # not .size: that asks the compositor too
        # Half a screen of margin: a scroll brings messages back before the frame that would show them.
        return top - height // 2, top + height + height // 2

    def _far(self, low: float, high: float) -> list[tuple[Widget, int, bool]]:
        """Each shown child, its top, and whether it is outside rows low..high."""
        return [(child, y, y + h < low or y > high) for child, y, h in _stack(self.children)]

    async def shelve(self, keep: Widget | None = None) -> None:
        if not self.outer_size.height:
            return  # not on screen (another tab): nothing laid out to measure
        low, high = self._window()
        for child, y, far in self._far(low, high):
            if child is keep and isinstance(child, MessageView):
                await child.shelve_head(low - y - child.styles.gutter.top)
            if not far or not isinstance(child, MessageView) or child is keep or child.has_focus_within:
                continue
            stand = child.stand_in
            if stand is None:
                stand = child.stand_in = StandIn(child)
                # Awaited: a mount that completes later asks for a layout pass of its own.
                await self.mount(stand, before=child)
            stand.cover(child.outer_size.height, child.styles.margin.top, child.styles.margin.bottom)
            child.display = False

    def unshelve(self, everything: bool = True) -> None:
        low, high = self._window()
        for child, y, far in self._far(low, high):
            if isinstance(child, StandIn) and (everything or not far):
                child.display, child.message.display = False, True
            elif isinstance(child, MessageView) and child.shelved_blocks:
                head = child.head
                assert head is not None  # shelve_head puts it there with the first shelved block
                if everything or y + child.styles.gutter.top + head.styles.margin.top + head.height_shown >= low:
                    child.unshelve_head()

    def on_resize(self) -> None:
        self.unshelve()  # heights change with the width: stand-ins would be the wrong size


class ChatInput(TextArea):
    """Multi-line input: Enter sends; Ctrl+J (or Alt+Enter / Shift+Enter where the terminal reports it)
    inserts a newline; pasted text keeps its newlines.

    Enter, the new-line keys, Tab and the keys that act on what was typed (new tab, close tab, stop) are handled
    here, as key events in the order they arrive. A priority binding runs as the app reads the key, before the
    keys ahead of it (still queued for this widget) are applied: text and Enter arriving in one burst (a script,
    a paste without bracketed paste, a slow link) sent an empty input, and a new line landed before the last
    letters typed. An app binding without priority runs only when the key has bubbled back up to the app,
    behind the keys after it: "Ctrl+N Hi Enter" sent "Hi" in the old tab."""

    NEWLINE_KEYS = ("ctrl+j", "alt+enter", "shift+enter")
    APP_KEYS = {"ctrl+n": "app.new_tab", "ctrl+w": "app.close_tab", "escape": "app.stop"}

    class CompletionsChanged(Message):
        """The slash-command completions for what is typed now (empty: none to show)."""

        def __init__(self, options: list[str]) -> None:
            super().__init__()
            self.options = options

    completer: Callable[[str], list[str]] | None = None  # whole-line completions (slash.completions), set by the app
    # Takes a message sent with Enter, awaited before the next key is applied (set by the app).
    submitter: Callable[[str], Awaitable[None]] | None = None

    def __init__(self, **kwargs) -> None:
        # No blinking cursor: each blink repaints the input, and repaints take cores from the model.
        super().__init__(soft_wrap=True, show_line_numbers=False, tab_behavior="focus", **kwargs)
        self.cursor_blink = False

    async def on_key(self, event: events.Key) -> None:
        # Runs before TextArea's own key handler (which would insert a newline for Enter).
        key = event.key
        if key == "enter":
            event.stop()
            event.prevent_default()
            await self.submit()
        elif key in self.NEWLINE_KEYS:
            event.stop()
            event.prevent_default()
            self.insert("\n")
        elif key == "tab":
            event.stop()
            event.prevent_default()
            self.complete()
        elif key in self.APP_KEYS:
            event.stop()
            event.prevent_default()
            await self.run_action(self.APP_KEYS[key])

    async def submit(self) -> None:
        text = self.text
        if text.strip() and self.submitter is not None:
            self.clear()
            await self.submitter(text)

    def options(self) -> list[str]:
        text = self.text
        if self.completer is None or not text.startswith("/") or "\n" in text:
            return []
        return self.completer(text)

    def complete(self) -> None:
        """Tab on a /command: complete it as far as the candidates agree; anywhere else Tab moves focus."""
        import os

        options = self.options()
        if not options:
            self.screen.focus_next()
            return
        common = os.path.commonprefix(options)
        if len(options) == 1:
            common = options[0] + ("" if options[0].endswith("=") else " ")
        if len(common) > len(self.text):
            self.text = common
            self.move_cursor(self.document.end)

    def on_text_area_changed(self, event: TextArea.Changed) -> None:
        self.post_message(self.CompletionsChanged(self.options()))


BARS = "▁▂▃▄▅▆▇█"


def spark(samples, width: int) -> list[tuple[str, float]]:
    """The last `width` samples as bars scaled to their maximum: (bar, height 0..1) per sample."""
    recent = list(samples)[-width:]
    top = max(recent, default=0.0)
    if top <= 0:
        return [(BARS[0], 0.0) for _ in recent]
    out = []
    for value in recent:
        height = max(0.0, value) / top
        out.append((BARS[min(len(BARS) - 1, int(height * (len(BARS) - 1) + 0.5))], height))
    return out


class StatusBar(Widget):
    """Model, backend, the live tokens/sec gauge with its sparkline, context use, TTFT and prefill speed.

    One widget drawing one line (and docked outside the conversation's containers, see AnechatApp.compose):
    the gauge changes twice a second while an answer streams, on the thread whose time the model's decoding
    shares on the CPU backend, and a bar of separate widgets made each change repaint all of them (a tick
    cost ~2 ms of that thread, now ~1 ms). Parts keep fixed widths so a new figure never moves the others;
    most important first, and a part that does not fit is left out."""

    DEFAULT_CSS = """
    StatusBar { height: 1; }
    StatusBar > .status--model { color: $primary; text-style: bold; }
    StatusBar > .status--rate { color: $accent; text-style: bold; }
    StatusBar > .status--spark-min { color: $warning 50%; }
    StatusBar > .status--spark-max { color: $success; }
    """
    COMPONENT_CLASSES = {"status--model", "status--rate", "status--spark-min", "status--spark-max"}
    MODEL_MIN = 14  # the model part gets what the figures leave, never less than this
    WIDTHS = {"rate": 13, "ctx": 14, "speed": 34, "spark": 16}  # in the order they are given room
    SPEED_MIN = 16  # "TTFT 125 ms · p…" still tells
    SPARK_MIN = 8  # eight seconds of the rate's history: at 80 columns the sparkline stays, shorter
    GAP = 2

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.parts = {"model": "", "rate": "", "ctx": "", "speed": ""}
        self.samples: list[float] = []

    def part(self, name: str) -> str:
        return self.parts[name]

    def _set(self, name: str, text: str) -> None:
        if self.parts[name] != text:
            self.parts[name] = text
            self.refresh()

    def show_model(self, name: str | None, backend: str | None, loading: bool = False) -> None:
        self._set("model", f"{name or 'no model'}" + (" · loading…" if loading else f" · {backend}" if backend else ""))

    def show_context(self, used: int, total: int | None) -> None:
        self._set("ctx", f"ctx {used}/{total}" if total else "")

    def show_last(self, stats) -> None:
        self._set("speed", "" if stats is None else first_token(stats))

    def show_text(self, text: str) -> None:
        """The last part in words: "stopped before the first token", a TTFT while the answer streams."""
        self._set("speed", text)

    def show_waiting(self, text: str) -> None:
        """Asked, and no token yet: no tok/s figure (there is none) but what is happening."""
        self._set("rate", "  … tok/s ▶")
        self._set("speed", text)

    def show_rate(self, rate: float, samples, live: bool) -> None:
        self._set("rate", f"{rate:5.1f} tok/s" + (" ▶" if live else ""))
        recent = list(samples)[-self.WIDTHS["spark"]:]
        if recent != self.samples:
            self.samples = recent
            self.refresh()

    def layout_widths(self, width: int) -> tuple[int, dict[str, int]]:
        """The model part's width and each shown figure's. The figures come first (rate, ctx, the TTFT part
        at least cropped, a short sparkline), then the model part, then the TTFT part in full, then a longer
        sparkline: at 80 columns every figure stays and the model part is cut instead (to the model's name,
        see render)."""
        model_len = Text(self.parts["model"]).cell_len
        speed_len = min(self.WIDTHS["speed"], len(self.parts["speed"]))
        room = width - min(model_len, self.MODEL_MIN)
        sizes: dict[str, int] = {}
        for name in ("rate", "ctx", "speed", "spark"):
            size = {"speed": min(speed_len, self.SPEED_MIN), "spark": self.SPARK_MIN}.get(name, self.WIDTHS[name])
            if size + self.GAP > room:
                break
            sizes[name] = size
            room -= size + self.GAP
        model_w = min(model_len, min(model_len, self.MODEL_MIN) + room)
        room -= model_w - min(model_len, self.MODEL_MIN)
        name_len = Text(self.parts["model"].split(" · ")[0]).cell_len
        if name_len < model_w < model_len:  # the model's name alone is shown (render): the rest is room
            room += model_w - name_len
            model_w = name_len
        for name in ("speed", "spark"):
            if name in sizes:
                grow = min((speed_len if name == "speed" else self.WIDTHS[name]) - sizes[name], room)
                sizes[name] += max(0, grow)
                room -= max(0, grow)
        return max(1, model_w), sizes

    def render(self) -> Text:
        width = self.size.width
        model_w, sizes = self.layout_widths(width)
        line = Text(no_wrap=True, overflow="crop", end="")
        shown = self.parts["model"]
        name = shown.split(" · ")[0]
        if Text(shown).cell_len > model_w and Text(name).cell_len <= model_w:
            shown = name  # the name whole rather than "portable (num…" (/model names the backend)
        model = Text(shown, style=self.get_component_rich_style("status--model"))
        model.truncate(model_w, overflow="ellipsis", pad=True)  # in cells: wide names too
        line.append_text(model)
        for name in ("rate", "spark", "ctx", "speed"):
            size = sizes.get(name)
            if size is None:
                continue
            line.append(" " * self.GAP)
            if name == "spark":
                self._append_spark(line, size)
            else:
                style = self.get_component_rich_style("status--rate") if name == "rate" else ""
                text = self.parts[name]
                line.append((text if len(text) <= size else text[: size - 1] + "…").ljust(size), style)
        return line

    def _append_spark(self, line: Text, size: int) -> None:
        low = self.get_component_styles("status--spark-min").color
        high = self.get_component_styles("status--spark-max").color
        bars = spark(self.samples, size)
        line.append(" " * (size - len(bars)))
        for bar, height in bars:
            line.append(bar, Style(color=low.blend(high, height).rich_color))
