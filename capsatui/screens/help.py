"""The help screen: the keys of the screen it was opened from, then the app-wide ones."""
from __future__ import annotations

from collections.abc import Iterable

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

Keys = list[tuple[str, str]]  # (key as the user types it, what it does)
KEY_WIDTH = 18
_KEY_NAMES = {"question_mark": "?", "slash": "/", "escape": "esc", "delete": "del"}


def key_label(key: str) -> str:
    """A Textual key name as the help and the palette show it (``question_mark`` -> ``?``)."""
    return " / ".join(_KEY_NAMES.get(k.strip(), k.strip()) for k in key.split(","))


def binding_rows(bindings: Iterable[BindingType]) -> Keys:
    """(key, what it does) of each binding with a description (its tooltip when it has one)."""
    rows: Keys = []
    for binding in bindings:
        if isinstance(binding, Binding):
            key, description = binding.key, binding.tooltip or binding.description
        else:
            key, description = binding[0], binding[2] if len(binding) > 2 else ""
        if description:
            rows.append((key_label(key), description))
    return rows


class HelpScreen(ModalScreen[None]):
    """Sections of (key, what it does) rows; any of escape, q or ? closes it."""

    BINDINGS = [
        Binding("escape", "close", "Close"),
        Binding("q", "close", "Close", show=False),
        Binding("question_mark", "close", "Close", show=False),
    ]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll {
        width: 90; max-width: 95%; height: auto; max-height: 90%;
        border: thick $accent; background: $surface; padding: 1 2;
    }
    """

    def __init__(self, sections: list[tuple[str, Keys]]) -> None:
        super().__init__()
        self.sections = sections

    @property
    def keys(self) -> Keys:
        """Every row of every section."""
        return [row for _, rows in self.sections for row in rows]

    def compose(self) -> ComposeResult:
        tables: list[RenderableType] = []
        for title, rows in self.sections:
            # One key column width for every section, so the sections line up as one list.
            table = Table(title=title, title_style="bold", title_justify="left", expand=True,
                          show_header=False, show_edge=False, box=None, padding=(0, 1))
            table.add_column("Key", style="bold cyan", no_wrap=True, width=KEY_WIDTH)
            table.add_column("What it does", ratio=1)
            for key, description in rows:
                table.add_row(key, description)
            tables.append(table)
            tables.append(Text(""))
        with VerticalScroll():
            yield Static(Group(*tables), id="help-keys")
            yield Static("escape closes this help", classes="hint")

    def action_close(self) -> None:
        self.dismiss(None)
