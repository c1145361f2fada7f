"""LiveTable: rows drawn before the columns were measured are redrawn at the measured widths.

Each test draws a frame between a change and the table's idle-time measuring, the moment a
loaded machine gives a live log, and then reads the picture on the screen, not the table's data.
"""
from __future__ import annotations

from typing import Any

from textual.app import App, ComposeResult

from capsatui.widgets.live_table import LiveTable
from tests.capsatui.screen_text import shown


class TableApp(App[None]):
    def compose(self) -> ComposeResult:
        table = LiveTable(id="t", cursor_type="row")
        table.add_columns("a", "b")
        yield table


def lines(app: App[Any]) -> list[str]:
    return shown(app).splitlines()[:4]


async def test_rows_follow_a_column_that_grows() -> None:
    app = TableApp()
    async with app.run_test(size=(60, 8)) as pilot:
        table = app.query_one(LiveTable)
        table.add_row("short", "x")
        await pilot.pause()
        table.add_row("a much longer cell", "y")
        table.move_cursor(row=1)
        app.export_screenshot()  # a frame drawn before the table measures the new row
        await pilot.pause()
        await pilot.pause()
        assert lines(app) == [" a                   b", " short               x", " a much longer cell  y"]


async def test_rows_follow_widths_that_shift_but_keep_their_sum() -> None:
    app = TableApp()
    async with app.run_test(size=(60, 8)) as pilot:
        table = app.query_one(LiveTable)
        first = table.add_row("wide", "y")
        table.add_row("w", "z")
        await pilot.pause()
        assert lines(app)[:3] == [" a     b", " wide  y", " w     z"]
        table.update_cell(first, list(table.columns)[0], "ww", update_width=True)
        table.update_cell(first, list(table.columns)[1], "yyy", update_width=True)
        app.export_screenshot()
        await pilot.pause()
        await pilot.pause()
        assert lines(app)[:3] == [" a   b", " ww  yyy", " w   z"]
