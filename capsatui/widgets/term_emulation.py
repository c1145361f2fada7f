"""What makes the terminal view a terminal: the keys a real terminal sends, pyte's colour names, and a
pyte screen that keeps the lines scrolled off the top.
"""
from __future__ import annotations

import collections
from typing import Any

import pyte
from pyte import modes as mo
from pyte.screens import Char, Margins


DECCKM = 1 << 5  # pyte stores private mode N as N << 5; ?1 = application cursor keys

_CSI_KEYS = {
    "up": "A", "down": "B", "right": "C", "left": "D", "home": "H", "end": "F",
}
_TILDE_KEYS = {"insert": 2, "delete": 3, "pageup": 5, "pagedown": 6}
_FKEYS = {
    "f1": "\x1bOP", "f2": "\x1bOQ", "f3": "\x1bOR", "f4": "\x1bOS", "f5": "\x1b[15~",
    "f6": "\x1b[17~", "f7": "\x1b[18~", "f8": "\x1b[19~", "f9": "\x1b[20~", "f10": "\x1b[21~",
    "f11": "\x1b[23~", "f12": "\x1b[24~",
}
_PLAIN = {
    "enter": "\r", "ctrl+m": "\r", "ctrl+j": "\n", "tab": "\t", "ctrl+i": "\t", "escape": "\x1b",
    "backspace": "\x7f", "ctrl+h": "\x08", "shift+tab": "\x1b[Z", "space": " ",
    "ctrl+space": "\x00", "ctrl+@": "\x00", "ctrl+backslash": "\x1c",
    "ctrl+circumflex_accent": "\x1e", "ctrl+underscore": "\x1f",
}
_MODS = {"shift": 2, "alt": 3, "ctrl": 5}
_COLOURS = {"brown": "yellow", "bfightmagenta": "bright_magenta"}  # pyte's names vs rich's


def key_to_bytes(key: str, character: str | None, app_cursor: bool = False) -> bytes | None:
    """The bytes an xterm sends for a Textual key, or None for a key it cannot express."""
    if key in _PLAIN:
        return _PLAIN[key].encode()
    mods, _, base = key.rpartition("+")
    if base in _CSI_KEYS:
        if not mods:
            return (("\x1bO" if app_cursor else "\x1b[") + _CSI_KEYS[base]).encode()
        code = 1 + sum(_MODS.get(m, 1) - 1 for m in mods.split("+"))
        return f"\x1b[1;{code}{_CSI_KEYS[base]}".encode()
    if base in _TILDE_KEYS and not mods:
        return f"\x1b[{_TILDE_KEYS[base]}~".encode()
    if base in _FKEYS and not mods:
        return _FKEYS[base].encode()
    if mods == "ctrl" and len(base) == 1 and base.isalpha():
        return bytes([ord(base.lower()) - ord("a") + 1])
    if mods == "alt" and character is None and len(base) == 1:
        return b"\x1b" + base.encode()
    if character and (character.isprintable() or len(character) == 1):
        return character.encode("utf-8", errors="replace")
    return None


def pyte_colour(name: str) -> str | None:
    if name == "default":
        return None
    if len(name) == 6 and all(c in "0123456789abcdefABCDEF" for c in name):
        return "#" + name
    name = _COLOURS.get(name, name)
    if name.startswith("bright") and not name.startswith("bright_"):
        name = "bright_" + _COLOURS.get(name[6:], name[6:])
    return name


class HistoryTerminal(pyte.Screen):
    """A pyte screen that keeps the lines scrolled off its top (cheaper than pyte.HistoryScreen,
    whose per-event wrapper makes floods several times slower), with a faster ``draw`` for the
    common case: printable ASCII in replace mode (pyte builds a new cell per character with
    ``namedtuple._replace`` and asks wcwidth about each; here cells are cached per attributes and
    stored a line segment at a time)."""

    def __init__(self, columns: int, lines: int, history: int = 3000) -> None:
        super().__init__(columns, lines)
        self.history: collections.deque[Any] = collections.deque(maxlen=history)
        self.pushed = 0  # lines ever pushed into history: absolute line numbers stay stable
        self.skip_pushes = 0  # scrolled-off lines not to keep (a rebuild's copied rows)
        self.lenient_restore = False  # "restore cursor" without a save leaves the cursor (a rebuild)
        self._cells_attrs: Any = None
        self._cells: dict[str, Any] = {}

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
        rest = tuple(attrs[1:])
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
