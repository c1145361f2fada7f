"""Selecting and copying like a terminal, with the keyboard (no guests): the copy cursor's moves
over the screen and its history, the selection it spans, what is copied to the clipboard (which
Textual sends to the user's terminal as OSC 52), no key of it reaching the guest, and the console's
paste helper sending the copy back, bracketed when the guest asked."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from textual.app import App

from capsatui.screens.console import ConsoleScreen, open_console
from capsatui.widgets.terminal.select import Bounds, KeyboardSelection
from capsatui.widgets.terminal.view import TerminalView
from tests.capsatui.term_app import TermApp

TEXT = ["first line", "  two words here", "", "last one"]


def bounds(lines: list[str] = TEXT, columns: int = 20) -> Bounds:
    return Bounds(first=0, last=len(lines) - 1, columns=columns, page=2,
                  text=lambda n: lines[n] if 0 <= n < len(lines) else "")  # fmt: skip


def press(selection: KeyboardSelection, *keys: str) -> list[str]:
    return [selection.key(key, key if len(key) == 1 else None, bounds()) for key in keys]


def test_moves_stay_within_the_lines_and_columns() -> None:
    sel = KeyboardSelection((1, 5))
    assert press(sel, "up", "up", "up") == ["moved"] * 3 and sel.cursor == (0, 5)
    press(sel, "G", "$")
    assert sel.cursor == (3, len("last one") - 1)
    press(sel, "l", "l", "right")  # past the text but not past the view's columns
    assert sel.cursor == (3, 10)
    press(sel, *["l"] * 30)
    assert sel.cursor == (3, 19)
    press(sel, "0", "h", "pageup")
    assert sel.cursor == (1, 0)
    press(sel, "pagedown", "pagedown", "g")
    assert sel.cursor == (0, 0)


def test_word_moves_cross_lines_and_skip_empty_ones() -> None:
    sel = KeyboardSelection((0, 0))
    press(sel, "w")
    assert sel.cursor == (0, 6)  # "line"
    press(sel, "w")
    assert sel.cursor == (1, 2)  # "two", past the indent
    press(sel, "w", "w", "w")
    assert sel.cursor == (3, 0)  # over the empty line
    press(sel, "b")
    assert sel.cursor == (1, 12)  # back to "here"
    press(sel, "l", "b")
    assert sel.cursor == (1, 12)  # inside a word: to its start


def test_the_span_is_the_cursors_line_until_anchored_then_ordered() -> None:
    sel = KeyboardSelection((1, 6))
    assert sel.span() == ((1, 0), (1, 1 << 30))
    press(sel, "v", "up", "h")
    assert sel.span() == ((0, 5), (1, 6))  # the cursor went before the anchor: ordered
    press(sel, "space")  # drops the anchor
    assert sel.anchor is None
    assert press(sel, "x", "enter", "escape") == ["ignored", "copy", "leave"]


async def test_the_view_copies_a_keyboard_selection_across_history_and_types_nothing() -> None:
    app = TermApp()
    async with app.run_test(size=(30, 6)) as pilot:
        view = app.query_one(TerminalView)
        view.feed(b"".join(b"row %d\r\n" % i for i in range(20)) + b"# ")
        view.flush()
        view.focus()
        view.start_selection()
        assert view.keyboard is not None and view.keyboard.cursor == (view.term.pushed + 5, 2)
        # Up past the screen's top: the view scrolls back to keep the cursor in sight.
        await pilot.press(*["k"] * 8, "0", "v", "j", "j", "$")
        await pilot.pause()
        assert view.scrollback_lines > 0
        top = view.top_line
        assert view.keyboard.cursor[0] >= top and view.keyboard.anchor is not None
        assert view.selected_text() == "row 12\nrow 13\nrow 14"
        # Output goes on meanwhile: the lines under the cursor stay put.
        view.feed(b"\r\nmore\r\nmore\r\n# ")
        view.flush()
        assert view.top_line == top and view.selected_text() == "row 12\nrow 13\nrow 14"
        await pilot.press("y")
        await pilot.pause()
        assert app.clipboard == "row 12\nrow 13\nrow 14"
        assert view.keyboard is None and view.scrollback_lines == 0 and view.selection_range() is None
        assert app.written == []  # no key of the selection went to the guest
        await pilot.press("a")
        assert app.written == [b"a"]  # ... and typing goes to it again


async def test_enter_with_nothing_anchored_copies_the_cursors_line() -> None:
    app = TermApp()
    async with app.run_test(size=(30, 6)) as pilot:
        view = app.query_one(TerminalView)
        view.feed(b"one\r\ntwo  \r\n# ")
        view.flush()
        view.focus()
        view.start_selection()
        await pilot.press("up", "enter")
        await pilot.pause()
        assert app.clipboard == "two"
        view.start_selection()
        await pilot.press("up", "escape")
        await pilot.pause()
        assert app.clipboard == "two" and view.keyboard is None and app.written == []


class OpenConsole:
    """A console that stays open and keeps what is written to it."""

    def __init__(self, output: bytes) -> None:
        self.output = output
        self.written = b""
        self.close_reason: str | None = None
        self.done = asyncio.Event()

    async def _chunks(self) -> AsyncIterator[bytes]:
        yield self.output
        await self.done.wait()

    def reader(self, from_start: bool = False) -> AsyncIterator[bytes]:
        return self._chunks()

    async def write(self, data: bytes) -> None:
        self.written += data


async def test_the_console_selects_copies_and_pastes_back_bracketed() -> None:
    console = OpenConsole(b"\x1b[?2004hcapsa:~# ls\r\nalpha  beta\r\ncapsa:~# ")
    app = App[None]()
    async with app.run_test(size=(60, 12)) as pilot:
        screen = await open_console(app, "vm", console)  # type: ignore[arg-type]
        assert isinstance(screen, ConsoleScreen)
        tab = screen.active_tab
        assert tab is not None
        for _ in range(100):
            if "alpha" in tab.view.screen_text():
                break
            await pilot.pause(0.02)
        await pilot.press("ctrl+right_square_bracket", "left_square_bracket")
        await pilot.pause()
        assert tab.view.keyboard is not None
        await pilot.press("up", "0", "w", "v", "l", "l", "l", "y")
        await pilot.pause()
        assert app.clipboard == "beta"
        await pilot.press("ctrl+right_square_bracket", "v")
        for _ in range(100):
            if console.written:
                break
            await pilot.pause(0.02)
        # The guest turned bracketed paste on: the copy comes back bracketed, not as typed keys.
        assert console.written == b"\x1b[200~beta\x1b[201~"
        console.done.set()
