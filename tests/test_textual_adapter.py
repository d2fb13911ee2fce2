"""Textual's private API is used in one module (anechat/tui/textual_adapter.py) and nowhere else; these
tests fail loudly, naming what moved, when a Textual release changes what that module leans on."""

import inspect
import re
from pathlib import Path

import pytest
import textual
from textual.app import App
from textual.dom import DOMNode
from textual.reactive import Reactive
from textual.widget import Widget
from textual.widgets import TextArea
from textual.widgets.markdown import MarkdownBlock

import anechat.tui
from anechat.tui import textual_adapter
from anechat.tui.textual_adapter import SizedInOnePass, StyledOnDemand, declared_component_classes, retype

TUI = Path(anechat.tui.__file__).parent


def test_textual_is_a_checked_version():
    assert textual.__version__.split(".")[0] == "8", (
        f"Textual {textual.__version__}: textual_adapter.py was checked against {textual_adapter.CHECKED}; "
        "re-check each override there, then update CHECKED and pyproject's pin")


def test_what_the_overrides_lean_on_is_still_there():
    # SizedInOnePass redeclares this reactive without layout: it must still be a layout reactive to matter.
    declared = Widget.__dict__.get("virtual_size")
    assert isinstance(declared, Reactive) and declared._layout, "Widget.virtual_size is no longer a layout reactive"
    assert isinstance(SizedInOnePass.__dict__["virtual_size"], Reactive)
    assert not SizedInOnePass.__dict__["virtual_size"]._layout
    # StyledOnDemand replaces this cached classmethod and fills this per-node cache itself.
    assert inspect.ismethod(DOMNode._get_component_classes), "DOMNode._get_component_classes moved"
    assert declared_component_classes(MarkdownBlock) >= {"em", "strong", "code_inline"}
    node = DOMNode()
    assert node._component_styles == {}, "DOMNode._component_styles moved"
    assert list(inspect.signature(node._attach).parameters) == ["parent"], "MessagePump._attach changed"
    assert "refresh" in Widget.__dict__ and "notify_style_update" in DOMNode.__dict__
    # The input relies on priority bindings running before TextArea's own key handler inserts a newline.
    assert "_on_key" in TextArea.__dict__


async def test_component_styles_are_styled_on_demand_like_textual_does():
    class Plain(Widget):
        COMPONENT_CLASSES = {"plain--accent"}
        DEFAULT_CSS = "Plain > .plain--accent { color: #ff0000; }"

    class Lazy(StyledOnDemand, Plain):
        pass

    class Host(App):
        def compose(self):
            yield Plain(id="plain")
            yield Lazy(id="lazy")

    async with Host().run_test() as pilot:
        await pilot.pause()
        plain, lazy = pilot.app.query_one("#plain"), pilot.app.query_one("#lazy")
        assert lazy._component_styles == {}  # nothing styled at mount
        expected = plain.get_component_styles("plain--accent").color
        assert lazy.get_component_styles("plain--accent").color == expected
        retype(plain, type("Plain", (SizedInOnePass, Plain), {}))
        assert isinstance(plain, SizedInOnePass) and plain.id == "plain"


def _textual_owned(cls: type) -> set[str]:
    return {name for base in cls.__mro__ if base.__module__.startswith("textual") for name in vars(base)}


def test_no_private_textual_api_outside_the_adapter():
    """No anechat.tui class (but the adapter's) defines a name Textual's classes define with a leading
    underscore, and no module but the adapter touches an underscored attribute of something not its own."""
    import anechat.tui.app
    import anechat.tui.pane
    import anechat.tui.screens
    import anechat.tui.widgets

    generated = set(vars(type("Probe", (Widget,), {})))  # what Textual's metaclass sets on every class
    for module in (anechat.tui.app, anechat.tui.pane, anechat.tui.screens, anechat.tui.widgets):
        for cls in vars(module).values():
            if inspect.isclass(cls) and cls.__module__ == module.__name__:
                own = {n for n in vars(cls) if n.startswith("_") and not n.startswith("__")} - generated
                clash = own & _textual_owned(cls)
                assert not clash, f"{module.__name__}.{cls.__name__} overrides Textual private {sorted(clash)}"
    for path in TUI.glob("*.py"):
        if path.name == "textual_adapter.py":
            continue
        for line in path.read_text().splitlines():
            for hit in re.findall(r"(\w+)\._[a-z]\w*", line.split("#")[0]):
                assert hit in ("self", "cls"), f"{path.name}: {line.strip()}"


@pytest.mark.parametrize("name", ["SizedInOnePass", "StyledOnDemand", "retype", "declared_component_classes"])
def test_each_override_says_why(name):
    doc = inspect.getdoc(getattr(textual_adapter, name)) or ""
    assert "Why" in doc or "Private" in doc or "private" in doc, f"{name} does not say why it reaches into Textual"
