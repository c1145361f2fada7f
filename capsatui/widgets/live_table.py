"""A ``DataTable`` that repaints every row when its column widths change.

Textual's ``DataTable`` (8.2.8 here) measures auto-width columns on idle, after rows arrive or
cells change, but keys its line and cell caches on an update counter that this measuring does
not advance. A row drawn between ``add_row`` and that idle pass (the cursor row a live log
follows, or the whole table when a frame lands in between) is cached at the old widths and stays
cut short on screen until something else invalidates it: seconds later, or never.

``LiveTable`` compares the widths it last drew with the widths now, when the measuring sets a
new virtual size (rows arrived, a column grew) and on every idle (cells edited in place can
shift widths without changing their sum), and on a change drops those caches through the public
``notify_style_update`` hook, so the fix does not reach into Textual's private state.
"""
from __future__ import annotations

from typing import Any

from textual import events
from textual.geometry import Size
from textual.widgets import DataTable


class LiveTable(DataTable[Any]):
    """A DataTable whose rows are redrawn at the new widths as soon as the columns resize."""

    _drawn_widths: tuple[int, ...] = ()

    def column_widths(self) -> tuple[int, ...]:
        """The width each column is rendered at now, padding included."""
        return tuple(column.get_render_width(self) for column in self.ordered_columns)

    def _repaint_if_resized(self) -> None:
        widths = self.column_widths()
        if widths != self._drawn_widths:
            self._drawn_widths = widths
            self.notify_style_update()  # drops the row, cell and line caches, then refreshes

    def watch_virtual_size(self, _old: Size, _new: Size) -> None:
        self._repaint_if_resized()

    def on_idle(self, _event: events.Idle) -> None:
        self._repaint_if_resized()
