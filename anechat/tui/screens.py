"""Modal screens: help, the model list, pull progress."""

from __future__ import annotations

from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import DataTable, Label, Log, Static

KEYS = [
    ("Enter", "send"),
    ("Ctrl+J / Alt+Enter", "new line in the message"),
    ("Esc / Ctrl+C", "stop the answer"),
    ("Ctrl+C twice", "quit (when idle)"),
    ("Ctrl+N / Ctrl+W", "new / close conversation tab"),
    ("Ctrl+B", "sessions sidebar"),
    ("Ctrl+Y / Ctrl+G", "copy last answer / its last code block"),
    ("Tab, then c / k", "copy a focused message / its code block"),
    ("F1", "this help"),
]


def help_table():
    """Commands and keys as one two-column table (a rich Table: a `|` in a usage is text, not a column)."""
    from rich.table import Table
    from rich.text import Text

    from anechat.chat.slash import help_rows

    table = Table(box=None, show_header=False, padding=(0, 2, 0, 0), expand=True)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(ratio=1)
    table.add_row(Text("Commands", style="bold underline"), "")
    for usage, what in help_rows():
        table.add_row(Text(usage), Text(what))
    table.add_row("", "")
    table.add_row(Text("Keys", style="bold underline"), "")
    for key, what in KEYS:
        table.add_row(Text(key), Text(what))
    table.add_row("", "")
    table.add_row("", Text("Start a message with // to send a literal /."))
    return table


class HelpScreen(ModalScreen[None]):
    """Every command and key, scrollable (arrows, PgUp/PgDn, the mouse wheel) at any terminal size."""

    BINDINGS = [Binding("escape,q,f1", "dismiss", "close")]

    def compose(self):
        with Vertical(id="help-box", classes="modal-box"):
            yield Label("anechat help — ↑↓ PgUp PgDn scroll · Esc closes", classes="modal-title")
            with VerticalScroll(id="help-scroll", can_focus=True):
                yield Static(help_table(), id="help-text")

    def on_mount(self) -> None:
        self.query_one("#help-scroll").focus()


class ModelsScreen(ModalScreen[str | None]):
    """Installed and available models; Enter switches the conversation to the selected one."""

    BINDINGS = [Binding("escape,q", "dismiss_none", "close")]

    def __init__(self, rows, current: str | None) -> None:
        super().__init__()
        self.rows, self.current = rows, current

    def compose(self):
        with Vertical(id="models-box", classes="modal-box"):
            yield Label("Models — Enter switches (a model not installed is pulled first), Esc closes", classes="modal-title")
            yield DataTable(id="models-table", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns("", "name", "state", "on disk", "download", "title")
        for r in self.rows:
            table.add_row(r.mark(self.current), r.name, r.state, r.size, r.download, r.title, key=r.name)
        table.focus()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.dismiss(event.row_key.value)

    def action_dismiss_none(self) -> None:
        self.dismiss(None)


class PullScreen(ModalScreen[None]):
    """Download (and conversion) progress from the model store: each step as a line of the log, and the step
    going on now with how far it has got, its elapsed time and, once known, about how long is left, updated
    in place at least every 4 s (the store's Ticker)."""

    BINDINGS = [Binding("escape", "hide", "hide (the pull goes on)")]

    def __init__(self, name: str, what: str) -> None:
        super().__init__()
        self.model_name, self.what = name, what

    def compose(self):
        with Vertical(id="pull-box", classes="modal-box"):
            yield Label(f"Pulling {self.model_name} — {self.what}", classes="modal-title", markup=False)
            yield Label("starting…", id="pull-now", markup=False)
            yield Log(id="pull-log", auto_scroll=True)
            yield Label("Esc hides this window; the pull goes on and a notification says when it is done.",
                        classes="modal-hint")

    def add_line(self, line: str) -> None:
        """A new step: into the log, and shown as the step going on."""
        self.query_one("#pull-log", Log).write_line(line)
        self.show_progress(line)

    def show_progress(self, line: str) -> None:
        self.query_one("#pull-now", Label).update("▶ " + line.strip())

    def action_hide(self) -> None:
        self.dismiss(None)
