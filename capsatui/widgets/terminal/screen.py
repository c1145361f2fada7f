"""The emulated screen: a pyte screen that keeps the lines scrolled off its top, draws plain text fast
and can copy its state (for a rebuild after dropped output)."""
from __future__ import annotations

import collections
import copy
from typing import Any

import pyte
from pyte import modes as mo
from pyte.screens import Char, Margins, StaticDefaultDict

__all__ = ["DECCKM", "HISTORY_LINES", "HistoryTerminal", "Line"]

DECCKM = 1 << 5  # pyte stores private mode N as N << 5; ?1 = application cursor keys
HISTORY_LINES = 3000  # lines kept scrolled off the top (the engine's ring keeps the bytes)

Line = StaticDefaultDict[int, Char]  # one row of cells, as pyte stores it


class HistoryTerminal(pyte.Screen):
    """A pyte screen that keeps the lines scrolled off its top (cheaper than pyte.HistoryScreen,
    whose per-event wrapper makes floods several times slower), with a faster ``draw`` for the
    common case: printable ASCII in replace mode (pyte builds a new cell per character with
    ``namedtuple._replace`` and asks wcwidth about each; here cells are cached per attributes and
    stored a line segment at a time)."""

    def __init__(self, columns: int, lines: int, history: int = HISTORY_LINES) -> None:
        super().__init__(columns, lines)
        self.history_lines = history
        self.history: collections.deque[Line] = collections.deque(maxlen=history)
        self.pushed = 0  # lines ever pushed into history: absolute line numbers stay stable
        self.skip_pushes = 0  # scrolled-off lines not to keep (a rebuild's copied rows)
        self.lenient_restore = False  # "restore cursor" without a save leaves the cursor (a rebuild)
        self._cells_attrs: Any = None
        self._cells: dict[str, Char] = {}

    @property
    def app_cursor_keys(self) -> bool:
        """The guest asked for application cursor keys (DECCKM): arrows send ``ESC O A``."""
        return DECCKM in self.mode

    def clone_state(self) -> HistoryTerminal:
        """A copy of the screen, cursor, saved cursors, modes, margins and charsets (no history)."""
        clone = HistoryTerminal(self.columns, self.lines, self.history_lines)
        for y in range(self.lines):
            clone.buffer[y] = copy.copy(self.buffer[y])
        clone.cursor = copy.copy(self.cursor)
        # pyte's restore makes the saved cursor object the live one, moved in place from then
        # on: each saved cursor is copied, or the original's moves would rewrite the clone's.
        clone.savepoints = [saved._replace(cursor=copy.copy(saved.cursor)) for saved in self.savepoints]
        clone.mode = set(self.mode)
        clone.margins = self.margins
        clone.charset, clone.g0_charset, clone.g1_charset = self.charset, self.g0_charset, self.g1_charset
        return clone

    def draw(self, data: str) -> None:
        text = data.translate(self.g1_charset if self.charset else self.g0_charset)
        mode = self.mode
        if not (text.isascii() and text.isprintable()) or mo.IRM in mode:
            super().draw(data)  # wide, combining or unprintable characters; insert mode
            return
        cursor = self.cursor
        attrs = cursor.attrs
        if attrs is not self._cells_attrs:  # attributes changed (SGR): a new cell cache
            self._cells_attrs, self._cells = attrs, {}
        cells = self._cells
        rest: tuple[Any, ...] = tuple(attrs[1:])  # a Char's fields after ``data``, mixed types
        columns, pos, end = self.columns, 0, len(text)
        wrap = mo.DECAWM in mode
        while pos < end:
            if cursor.x >= columns:
                if wrap:
                    self.dirty.add(cursor.y)
                    self.carriage_return()
                    self.linefeed()
                else:  # no wrap: each further character overwrites the last column
                    cursor.x = columns - 1
                    text, pos, end = text[-1], 0, 1
            count = min(columns - cursor.x, end - pos)
            line = self.buffer[cursor.y]
            x = cursor.x
            for char in text[pos : pos + count]:
                cell = cells.get(char)
                if cell is None:
                    cell = cells[char] = Char(char, *rest)
                line[x] = cell
                x += 1
            cursor.x = x
            pos += count
        self.dirty.add(cursor.y)

    def restore_cursor(self) -> None:
        if self.savepoints or not self.lenient_restore:
            super().restore_cursor()

    def index(self) -> None:
        top, bottom = self.margins or Margins(0, self.lines - 1)
        # Only a full-screen scroll is history; a scroll region (vi, top) is not.
        if self.cursor.y == bottom and top == 0:
            if self.skip_pushes:
                self.skip_pushes -= 1
            else:
                self.history.append(self.buffer[top])
            self.pushed += 1
        super().index()
