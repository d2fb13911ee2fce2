"""Every place anechat reaches below Textual's public API, in one module.

Each override says why it is worth it and the Textual versions it was checked against; the rest of the
TUI uses public API only (import-linter cannot see attribute access, so a test greps for it).
tests/test_textual_adapter.py fails loudly when a Textual release moves what these lean on: run it
first when upgrading Textual, then re-measure with benchmarks/bench_tui.py.

All checked against Textual 8.0.0 and 8.2.8."""

from __future__ import annotations

from typing import Any

from textual.css.styles import RenderStyles
from textual.dom import DOMNode
from textual.geometry import Size
from textual.reactive import Reactive

CHECKED = ("8.0.0", "8.2.8")


class SizedInOnePass:
    """Mixin: a change of this widget's virtual size does not ask for another layout pass.

    Override: Widget.virtual_size is declared `Reactive(Size(0, 0), layout=True)`; it is redeclared here
    without layout or repaint. Why: every layout that grows a widget would otherwise schedule a second
    layout of the whole screen once it is done. For these widgets nothing depends on it: their size was
    settled in the pass that measured it, and a scrollbar that appears or goes lays out again through its
    own reactive. While an answer streams this halves the layout work of each redraw."""

    virtual_size = Reactive(Size(0, 0), layout=False, repaint=False)


def declared_component_classes(cls: type[DOMNode]) -> frozenset[str]:
    """The component classes Textual would style for `cls` (its own cached list, bypassing the empty one
    that StyledOnDemand reports). Private: DOMNode._get_component_classes, an lru_cached classmethod."""
    return DOMNode._get_component_classes.__func__(cls)  # type: ignore[attr-defined]


class StyledOnDemand:
    """Mixin for DOM nodes whose component classes are styled when first drawn instead of when mounted.

    Why: Textual styles every component class of a widget as it mounts (a Markdown block has four: em,
    strong, s, code_inline — four more stylesheet passes, most of what mounting a streamed block costs),
    and most blocks use none of them."""

    @classmethod
    def _get_component_classes(cls) -> frozenset[str]:
        # Override (private, DOMNode._get_component_classes): nothing to style at mount time.
        return frozenset()

    def get_component_styles(self, *names: str) -> RenderStyles:
        node: Any = self  # the DOMNode this mixin is mixed into
        for name in names:
            if name not in node._component_styles and name in declared_component_classes(type(node)):
                # As Textual styles a component at mount: a bare node under this one, styled by the app's
                # stylesheet. Private: DOMNode._component_styles (the per-node cache Textual reads) and
                # MessagePump._attach (sets the parent without mounting).
                virtual = DOMNode(classes=name)
                virtual._attach(node)
                node.app.stylesheet.apply(virtual, animate=False)
                node._component_styles[name] = virtual.styles
        return super().get_component_styles(*names)  # type: ignore[misc]

    def notify_style_update(self) -> None:
        node: Any = self
        if node._component_styles:
            # Styled again (a theme, a class of its message): its components are worked out anew when
            # next drawn, and it is drawn again as Textual would when they change.
            node._component_styles.clear()
            node.refresh()
        super().notify_style_update()  # type: ignore[misc]


def retype(obj: object, cls: type) -> None:
    """Give an existing widget a subclass of its class (same instance, same state).

    Why: the widgets a Markdown block composes (a list's rows and bullets, a code block's label, table
    cells) are created by Textual itself, and there is no public hook to choose their classes; swapping
    `__class__` adds a mixin (SizedInOnePass) without touching their state. `cls` must add no instance
    state and keep the name, so the stylesheet's rules still apply."""
    obj.__class__ = cls


class _KeyName(str):
    """A key name where Textual's sequence table expects a `Keys` member (it reads `.value`)."""

    @property
    def value(self) -> str:
        return str(self)


ALT_ENTER = "\x1b\r"


def report_alt_enter() -> None:
    """Make Alt+Enter arrive as the key "alt+enter" instead of a plain "enter".

    Override (private: textual._ansi_sequences.ANSI_SEQUENCES_KEYS, the table XTermParser looks whole escape
    sequences up in). Why: a terminal without the kitty keyboard protocol (tmux, most Linux terminals) sends
    Alt+Enter as ESC CR; the table has no entry for it, so the parser falls back to reading the CR alone and
    drops the Alt, and Alt+Enter sent the message instead of adding a line as README and the REPL promise."""
    from textual._ansi_sequences import ANSI_SEQUENCES_KEYS

    table: Any = ANSI_SEQUENCES_KEYS  # a dict, typed as a read-only Mapping
    table.setdefault(ALT_ENTER, (_KeyName("alt+enter"),))
