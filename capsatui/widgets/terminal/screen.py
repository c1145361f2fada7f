"""The emulated screen: a pyte screen that keeps the lines scrolled off its top, draws plain text fast,
has an alternate screen (modes 47/1047/1049), queues its answers to the guest's questions (cursor
position, status, device attributes) and can copy its state (for a rebuild after dropped output)."""
from __future__ import annotations

import collections
import copy
from typing import Any

import pyte
from pyte import control as ctrl
from pyte import modes as mo
from pyte.screens import Char, Margins, Savepoint, StaticDefaultDict

from capsatui.widgets.terminal.modes import (
    ALT_SCREEN,
    ALT_SCREEN_CLEAR,
    ALT_SCREEN_SAVE_CURSOR,
    BRACKETED_PASTE,
    MOUSE_ENCODINGS,
    MOUSE_TRACKING,
    private,
)

__all__ = ["DECCKM", "HISTORY_LINES", "HistoryTerminal", "Line"]

DECCKM = 1 << 5  # pyte stores private mode N as N << 5; ?1 = application cursor keys
HISTORY_LINES = 3000  # lines kept scrolled off the top (the engine's ring keeps the bytes)
ALT_SCREEN_MODES = (ALT_SCREEN, ALT_SCREEN_CLEAR, ALT_SCREEN_SAVE_CURSOR)

Line = StaticDefaultDict[int, Char]  # one row of cells, as pyte stores it
Buffer = dict[int, Line]  # a screen's rows, as pyte stores them (a defaultdict)


class HistoryTerminal(pyte.Screen):
    """A pyte screen that keeps the lines scrolled off its top (cheaper than pyte.HistoryScreen,
    whose per-event wrapper makes floods several times slower), with a faster ``draw`` for the
    common case: printable ASCII in replace mode (pyte builds a new cell per character with
    ``namedtuple._replace`` and asks wcwidth about each; here cells are cached per attributes and
    stored a line segment at a time).

    The alternate screen (``?47``, ``?1047``, ``?1049``; what ``vi``, ``top`` and ``less`` draw on)
    is a buffer of its own: while it shows, the main screen's rows wait in :attr:`main_buffer`
    and nothing scrolled off goes into history; leaving it puts the main rows back as they were.
    It starts cleared each time (xterm keeps a ``?47`` screen's old content; nothing relies on it).

    "Save cursor" keeps one saved state, as a DEC terminal does, where pyte keeps a stack.

    Answers to the guest (``ESC[6n``, ``ESC[5n``, ``ESC[c``) are queued in :attr:`answers`, in
    order, for the owner to send; a screen rebuilt from old output sets :attr:`answering` False
    (those questions were answered when they were new)."""

    main_buffer: Buffer | None  # the main screen's rows while the alternate screen shows
    main_savepoint: Savepoint | None  # the cursor ``?1049h`` saved, restored by ``?1049l``

    def __init__(self, columns: int, lines: int, history: int = HISTORY_LINES) -> None:
        super().__init__(columns, lines)
        self.history_lines = history
        self.history: collections.deque[Line] = collections.deque(maxlen=history)
        self.pushed = 0  # lines ever pushed into history: absolute line numbers stay stable
        self.skip_pushes = 0  # scrolled-off lines not to keep (a rebuild's copied rows)
        self.lenient_restore = False  # "restore cursor" without a save leaves the cursor (a rebuild)
        self.answers: list[bytes] = []  # replies to the guest's questions, oldest first
        self.answering = True  # False: questions get no answer (a rebuild's replay)
        self._cells_attrs: Any = None
        self._cells: dict[str, Char] = {}

    def reset(self) -> None:
        super().reset()  # RIS: also back to the main screen, cleared
        self.main_buffer = None
        self.main_savepoint = None

    # -- the modes the view asks about ----------------------------------------------------------

    @property
    def app_cursor_keys(self) -> bool:
        """The guest asked for application cursor keys (DECCKM): arrows send ``ESC O A``."""
        return DECCKM in self.mode

    @property
    def alternate(self) -> bool:
        """The alternate screen shows (a full-screen program runs)."""
        return self.main_buffer is not None

    @property
    def bracketed_paste(self) -> bool:
        """The guest asked for pastes wrapped in ``ESC[200~`` ... ``ESC[201~`` (``?2004``)."""
        return BRACKETED_PASTE in self.mode

    @property
    def mouse_tracking(self) -> int:
        """The mouse events the guest asked for: one of ``modes.MOUSE_TRACKING``, or 0 for none."""
        return next((m for m in MOUSE_TRACKING if m in self.mode), 0)

    @property
    def mouse_encoding(self) -> int:
        """How mouse reports are encoded: one of ``modes.MOUSE_ENCODINGS``, or 0 for X10 bytes."""
        return next((m for m in MOUSE_ENCODINGS if m in self.mode), 0)

    def set_mode(self, *modes: int, **kwargs: Any) -> None:
        shifted = [private(m) for m in modes] if kwargs.get("private") else []
        for group in (MOUSE_TRACKING, MOUSE_ENCODINGS):  # the newest of a group wins, as in xterm
            if any(m in group for m in shifted):
                self.mode.difference_update(group)
        super().set_mode(*modes, **kwargs)
        for m in shifted:
            if m in ALT_SCREEN_MODES:
                self._to_alternate(m)

    def reset_mode(self, *modes: int, **kwargs: Any) -> None:
        shifted = [private(m) for m in modes] if kwargs.get("private") else []
        super().reset_mode(*modes, **kwargs)
        for m in shifted:
            if m in ALT_SCREEN_MODES:
                self._to_main(m)

    # -- the alternate screen -------------------------------------------------------------------

    def _new_buffer(self) -> Buffer:
        return collections.defaultdict(lambda: StaticDefaultDict[int, Char](self.default_char))

    def _to_alternate(self, mode: int) -> None:
        if mode == ALT_SCREEN_SAVE_CURSOR:
            self.main_savepoint = Savepoint(
                copy.copy(self.cursor), self.g0_charset, self.g1_charset, self.charset,
                mo.DECOM in self.mode, mo.DECAWM in self.mode,
            )
        if self.main_buffer is None:
            self.main_buffer, self.buffer = self.buffer, self._new_buffer()
        elif mode == ALT_SCREEN_SAVE_CURSOR:  # already there: ?1049h still clears it
            self.buffer.clear()
        self.dirty.update(range(self.lines))

    def _to_main(self, mode: int) -> None:
        self.mode.difference_update(ALT_SCREEN_MODES)
        if self.main_buffer is not None:
            self.buffer, self.main_buffer = self.main_buffer, None
            self.dirty.update(range(self.lines))
        saved = self.main_savepoint
        if mode == ALT_SCREEN_SAVE_CURSOR and saved is not None:
            self.main_savepoint = None
            self.g0_charset, self.g1_charset, self.charset = saved.g0_charset, saved.g1_charset, saved.charset
            for flag, on in ((mo.DECOM, saved.origin), (mo.DECAWM, saved.wrap)):
                if on:
                    self.mode.add(flag)
                else:
                    self.mode.discard(flag)
            self.cursor = copy.copy(saved.cursor)
            self.ensure_hbounds()
            self.ensure_vbounds()

    def resize(self, lines: int | None = None, columns: int | None = None) -> None:
        lines, columns = lines or self.lines, columns or self.columns
        main = self.main_buffer
        if main is not None and (lines, columns) != (self.lines, self.columns):
            # The waiting main screen changes as pyte changes a shown one: rows off the top, cells
            # off the right; its saved cursor moves with its rows.
            drop = max(self.lines - lines, 0)
            rows = self._new_buffer()
            for y, line in main.items():
                if drop <= y < self.lines:
                    for x in [x for x in line if x >= columns]:
                        del line[x]
                    rows[y - drop] = line
            self.main_buffer = rows
            saved = self.main_savepoint
            if saved is not None:
                saved.cursor.y = min(max(saved.cursor.y - drop, 0), lines - 1)
                saved.cursor.x = min(saved.cursor.x, columns - 1)
        super().resize(lines, columns)

    # -- answers to the guest -------------------------------------------------------------------

    def write_process_input(self, data: str) -> None:
        if self.answering:
            self.answers.append(data.encode())

    def report_device_attributes(self, mode: int = 0, **kwargs: bool) -> None:
        # A VT100 with advanced video (what busybox and ncurses expect of a serial terminal);
        # pyte says VT102. pyte drops a secondary DA's ">", so ``ESC[>c`` gets this answer too.
        if mode == 0 and not kwargs.get("private"):
            self.write_process_input(ctrl.CSI + "?1;2c")

    def report_device_status(self, mode: int = 0, **kwargs: bool) -> None:
        """``ESC[5n``: "OK"; ``ESC[6n``: the cursor's row and column, 1-based, the row counted
        from the scroll region's top in origin mode (``ESC[?6n``, DECXCPR: the same with ``?``)."""
        if mode == 5 and not kwargs.get("private"):
            self.write_process_input(ctrl.CSI + "0n")
        elif mode == 6:
            row = self.cursor.y + 1
            if mo.DECOM in self.mode and self.margins is not None:
                row -= self.margins.top
            column = min(self.cursor.x, self.columns - 1) + 1  # past the last column: a wrap pending
            mark = "?" if kwargs.get("private") else ""
            self.write_process_input(f"{ctrl.CSI}{mark}{row};{column}R")

    # -- state ----------------------------------------------------------------------------------

    def clone_state(self) -> HistoryTerminal:
        """A copy of the screen, cursor, saved cursors, modes, margins, charsets and the alternate
        screen's state (the main screen waiting behind it); no history, no answers."""
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
        if self.main_buffer is not None:
            clone.main_buffer = clone._new_buffer()
            for y, line in self.main_buffer.items():
                clone.main_buffer[y] = copy.copy(line)
        if self.main_savepoint is not None:
            clone.main_savepoint = self.main_savepoint._replace(cursor=copy.copy(self.main_savepoint.cursor))
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

    # "Save cursor" has one slot, as on a DEC terminal and xterm (pyte keeps a stack, which its
    # "restore" pops): a restore restores the last save, every time. That is what a flood cut
    # needs: a dropped "save" whose "restore" was kept brings back the cursor the previous
    # "save" kept (the prompt's, for output drawn on a status row), not the home position.

    def save_cursor(self) -> None:
        super().save_cursor()
        del self.savepoints[:-1]

    def restore_cursor(self) -> None:
        if not self.savepoints:
            if not self.lenient_restore:  # nothing saved: home, origin mode off (pyte's)
                super().restore_cursor()
            return
        saved = self.savepoints[-1]
        super().restore_cursor()  # pops the slot and makes its cursor the live one ...
        self.savepoints.append(saved._replace(cursor=copy.copy(saved.cursor)))  # ... so it stays, unmoved

    def index(self) -> None:
        top, bottom = self.margins or Margins(0, self.lines - 1)
        # Only a full-screen scroll of the main screen is history; a scroll region (vi, top) or
        # the alternate screen is not.
        if self.cursor.y == bottom and top == 0 and self.main_buffer is None:
            if self.skip_pushes:
                self.skip_pushes -= 1
            else:
                self.history.append(self.buffer[top])
            self.pushed += 1
        super().index()
