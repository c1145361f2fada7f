"""How a pyte cell looks: its colours and attributes as a rich Style, with the view's own marks
(the cursor, the selection, a search match) on top."""
from __future__ import annotations

from typing import Any

from pyte.screens import Char
from rich.style import Style

__all__ = ["CellStyles", "pyte_colour"]

_COLOURS = {"brown": "yellow", "bfightmagenta": "bright_magenta"}  # pyte's names vs rich's
_MATCH = Style(color="black", bgcolor="yellow")


def pyte_colour(name: str) -> str | None:
    """A pyte colour (a name or six hex digits) as rich names it; None for the default."""
    if name == "default":
        return None
    if len(name) == 6 and all(c in "0123456789abcdefABCDEF" for c in name):
        return "#" + name
    name = _COLOURS.get(name, name)
    if name.startswith("bright") and not name.startswith("bright_"):
        name = "bright_" + _COLOURS.get(name[6:], name[6:])
    return name


class CellStyles:
    """The Style of a cell, made once per distinct look: a screen has few, and a frame many cells."""

    def __init__(self) -> None:
        self._styles: dict[tuple[Any, ...], Style] = {}

    def get(self, char: Char, cursor: bool, selected: bool, match: bool) -> Style:
        key = (char.fg, char.bg, char.bold, char.italics, char.underscore, char.strikethrough,
               char.reverse, cursor, selected, match)
        style = self._styles.get(key)
        if style is None:
            style = Style(
                color=pyte_colour(char.fg), bgcolor=pyte_colour(char.bg), bold=char.bold,
                italic=char.italics, underline=char.underscore, strike=char.strikethrough,
                reverse=char.reverse != (cursor or selected),
            )
            if match:
                style += _MATCH
            self._styles[key] = style
        return style
