"""Keyboard selection (a copy mode, as tmux and screen have): a cursor moved over the screen and
the lines scrolled off it by keys, and an anchor where the selection starts. Pure: the view turns
its keys into :meth:`KeyboardSelection.key` calls and draws :attr:`cursor` and :meth:`span`.

Keys: arrows or ``h j k l`` move; ``pageup``/``pagedown`` (or ``ctrl+b``/``ctrl+f``) a page;
``0``/``home`` and ``$``/``end`` to the line's start and end; ``w``/``b`` a word on/back;
``g``/``G`` the oldest and newest line; ``v`` or ``space`` starts (or drops) the selection at the
cursor; ``y`` or ``enter`` copies it (the cursor's line when nothing is selected); ``escape`` or
``q`` leaves without copying.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

__all__ = ["Bounds", "KeyboardSelection", "Outcome"]

Position = tuple[int, int]  # (absolute line, column)
Outcome = Literal["moved", "copy", "leave", "ignored"]
_WORD = re.compile(r"\S+")


@dataclass(frozen=True)
class Bounds:
    """Where the cursor may go: lines ``first`` to ``last`` (absolute numbers, history included),
    ``columns`` wide, ``page`` lines a page; ``text(n)`` is line n's text."""

    first: int
    last: int
    columns: int
    page: int
    text: Callable[[int], str]


@dataclass
class KeyboardSelection:
    """The copy cursor and the selection's anchor (None: moving, nothing selected yet)."""

    cursor: Position
    anchor: Position | None = None

    def span(self) -> tuple[Position, Position]:
        """The selection, first to last position; the cursor's whole line when nothing is anchored."""
        if self.anchor is None:
            return (self.cursor[0], 0), (self.cursor[0], 1 << 30)
        return min(self.anchor, self.cursor), max(self.anchor, self.cursor)

    def key(self, key: str, character: str | None, bounds: Bounds) -> Outcome:
        """Act on one key (Textual's ``key`` name and its printable ``character``, if any)."""
        name = character if character and character.isprintable() and len(character) == 1 and key != "space" else key
        line, column = self.cursor
        if name in ("escape", "q"):
            return "leave"
        if name in ("y", "enter"):
            return "copy"
        if name in ("v", "space"):
            self.anchor = None if self.anchor is not None else self.cursor
            return "moved"
        steps = {"up": -1, "k": -1, "down": 1, "j": 1,
                 "pageup": -bounds.page, "ctrl+b": -bounds.page, "pagedown": bounds.page, "ctrl+f": bounds.page}
        text = bounds.text(line).rstrip()
        if name in steps:
            line += steps[name]
        elif name in ("left", "h"):
            column -= 1
        elif name in ("right", "l"):
            column += 1
        elif name in ("0", "home"):
            column = 0
        elif name in ("$", "end"):
            column = max(len(text) - 1, 0)
        elif name == "g":
            line, column = bounds.first, 0
        elif name == "G":
            line = bounds.last
        elif name == "w":
            line, column = self._next_word(line, column, bounds)
        elif name == "b":
            line, column = self._previous_word(line, column, bounds)
        else:
            return "ignored"
        line = min(max(line, bounds.first), bounds.last)
        self.cursor = (line, min(max(column, 0), bounds.columns - 1))
        return "moved"

    @staticmethod
    def _next_word(line: int, column: int, bounds: Bounds) -> Position:
        """The start of the next word, on this line or a later one (or where the cursor is)."""
        for n in range(line, bounds.last + 1):
            for match in _WORD.finditer(bounds.text(n)):
                if n > line or match.start() > column:
                    return n, match.start()
        return line, column

    @staticmethod
    def _previous_word(line: int, column: int, bounds: Bounds) -> Position:
        """The start of this word (when inside it) or of the one before, maybe on an earlier line."""
        for n in range(line, bounds.first - 1, -1):
            starts = [m.start() for m in _WORD.finditer(bounds.text(n)) if n < line or m.start() < column]
            if starts:
                return n, starts[-1]
        return line, column
