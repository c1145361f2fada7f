"""The terminal widget: a :class:`TerminalModel` drawn by Textual, keys going out raw.

:class:`TerminalView` is fed the guest's bytes (``feed``) and hands the user's keystrokes, as the
bytes a real terminal would send, to an async ``write`` callback. The model batches output, drops
the oldest of a flood and rebuilds the screen after a drop; the view runs it on a short timer,
within a time budget per tick, and only while it is shown. Scrollback (``shift+pageup``), search
and mouse selection copy work on the model's screen plus the lines it scrolled off.

The guest's modes change what goes out: a paste is bracketed when it asked (``?2004``), the mouse
is reported to it when it asked (``?1000`` and on; ``shift`` + mouse still selects, as in xterm),
and the screen's answers to its questions (cursor position after a prompt) follow each flush.
"""
from __future__ import annotations

import collections
import re
import time
from collections.abc import Awaitable, Callable

from rich.segment import Segment
from textual import events
from textual.geometry import Region
from textual.strip import Strip
from textual.widget import Widget

from capsatui.widgets.terminal.keys import key_to_bytes
from capsatui.widgets.terminal.model import Resync, TerminalModel
from capsatui.widgets.terminal.modes import MOUSE_X10, MouseAction, mouse_report, mouse_wanted, paste_bytes
from capsatui.widgets.terminal.screen import HISTORY_LINES, HistoryTerminal, Line
from capsatui.widgets.terminal.search import Match, as_pattern
from capsatui.widgets.terminal.select import Bounds, KeyboardSelection
from capsatui.widgets.terminal.style import CellStyles

__all__ = ["TerminalView"]

TICK_S = 0.03  # batching interval: output that keeps coming shows at most this late
QUIET_DRAW_S = 0.001  # output after a quiet spell: the next turn of the loop (Textual timers need > 0)
FEED_BUDGET_S = 0.010  # pyte time per tick (pyte does ~0.1-1 MB/s); the rest is the app's
HIDDEN_POLL_S = 0.25  # a hidden view does not feed pyte; it looks again this often


class TerminalView(Widget, can_focus=True):
    """The guest's terminal. ``feed`` output in; keystrokes go to ``write`` as raw bytes.

    Keys kept by the app (not sent to the guest): ``ctrl+]`` (the console's helper menu),
    ``ctrl+q``/``ctrl+p`` (the app's quit and command palette), ``shift+pageup``/``pagedown``
    (scrollback). While scrolled back: arrows/pageup/pagedown scroll, ``n``/``N`` jump between
    search matches, ``escape`` or ``q`` returns to the live screen; other keys return and type.
    """

    ALLOW_SELECT = False  # our own cell selection instead of Textual's text selection
    DEFAULT_CSS = """
    TerminalView { width: 1fr; height: 1fr; background: $background; color: $foreground; }
    """
    PASSTHROUGH = frozenset({"ctrl+right_square_bracket", "ctrl+q", "ctrl+p"})

    def __init__(
        self,
        write: Callable[[bytes], Awaitable[None]] | None = None,
        *,
        columns: int = 80,
        lines: int = 24,
        history: int = HISTORY_LINES,
        resync: Resync | None = None,
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.write_callback = write
        # ``resync(n)``: the newest n bytes of everything passed to ``feed`` so far (None if it
        # cannot tell); after a drop the screen is rebuilt from them.
        self.model = TerminalModel(columns, lines, history, resync)
        self._timer_armed = False
        self._last_flush = 0.0  # when output was last drawn (see feed)
        self.scrollback_lines = 0  # lines scrolled back from the live screen
        self.search_pattern: re.Pattern[str] | None = None
        self.matches: list[Match] = []  # (absolute line, start col, end col)
        self.match_index = -1
        self._sel_anchor: tuple[int, int] | None = None
        self._sel_end: tuple[int, int] | None = None
        self._styles = CellStyles()
        self._answers: collections.deque[bytes] = collections.deque()  # answers not written yet
        self._answering = False  # a worker writes them, in order
        self._mouse_button: int | None = None  # the guest's press we report motion and release of
        self._mouse_cell: tuple[int, int] | None = None  # where the last motion reported was
        self.keyboard: KeyboardSelection | None = None  # selecting with the keyboard (copy mode)
        self._drawn: tuple[HistoryTerminal, int] | None = None  # the screen and cursor row last drawn

    @property
    def term(self) -> HistoryTerminal:
        """The screen shown (a rebuild replaces it)."""
        return self.model.term

    @property
    def dropped(self) -> int:
        """Output bytes skipped because a flood outran the view."""
        return self.model.dropped

    @property
    def resyncs(self) -> int:
        """Rebuilds of the screen completed."""
        return self.model.resyncs

    # -- output ---------------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Queue guest output; it is drawn on the next tick (never synchronously).

        Output after a quiet spell (an echo, a prompt) is drawn at the next turn of the loop;
        only output that keeps coming is batched, once per TICK_S, so a typed key's echo does
        not wait for a batching interval that protects nothing."""
        self.model.feed(data)
        quiet = time.perf_counter() - self._last_flush >= TICK_S
        self._arm(QUIET_DRAW_S if quiet else TICK_S)

    @property
    def pending(self) -> int:
        """Output not drawn yet (a rebuild in progress counts as such)."""
        return self.model.pending

    @property
    def _holding(self) -> bool:
        """The user reads history or matches: no rebuild swaps the screen under them."""
        return bool(self.scrollback_lines or self.matches or self.keyboard)

    def _arm(self, delay: float) -> None:
        if not self._timer_armed and self.is_mounted:
            self._timer_armed = True
            self.set_timer(delay, self._tick)

    def _showing(self) -> bool:
        try:
            return self.screen.is_current and self.is_on_screen
        except Exception:  # not mounted on a screen (yet)
            return False

    def _tick(self) -> None:
        self._timer_armed = False
        model = self.model
        if not (model.has_output or model.resync_due or model.rebuilding):
            return
        if not self._showing():
            # A hidden console catches up when shown; one just mounted and not laid out yet (no
            # size) is about to show: look again soon, not after the hidden view's poll.
            self._arm(TICK_S if self.size.area == 0 else HIDDEN_POLL_S)
            return
        deadline = time.perf_counter() + FEED_BUDGET_S
        if model.rebuild(deadline, holding=self._holding):
            # A new screen: the old one's scroll position and selection mean nothing on it.
            self.scrollback_lines = 0
            self._sel_anchor = self._sel_end = None
            self.keyboard = None
            self.refresh()
        if not model.rebuilding and model.has_output:
            self.flush(max(deadline - time.perf_counter(), 0.0))
        if model.has_output or model.rebuilding:
            self._arm(TICK_S)
        elif model.resync_due:  # waiting for the interval, or for the user to leave scrollback
            self._arm(TICK_S if not self._holding else HIDDEN_POLL_S)

    def flush(self, budget: float | None = None) -> None:
        """Feed pending output to pyte (all of it, or what ``budget`` seconds allow) and redraw."""
        pushed = self.model.flush(budget)
        self._last_flush = time.perf_counter()
        if self.scrollback_lines or self.keyboard:  # keep a scrolled-back or selecting view on its lines
            self._scroll_back_to(self.scrollback_lines + pushed)
        self._send_answers()
        self._refresh_changed(pushed)

    def _refresh_changed(self, pushed: int) -> None:
        """Redraw the rows pyte changed and the cursor's old and new rows, when the live screen
        shows as it was last drawn; else (lines scrolled off, scrolled back, a selection or search
        marks, a rebuilt screen) the whole view. An echo then costs a row's render, not a screen's."""
        term = self.term
        rows = set(term.dirty)
        term.dirty.clear()
        drawn, self._drawn = self._drawn, (term, term.cursor.y)
        marked = self.keyboard is not None or self.matches or self._sel_anchor is not None
        if pushed or self.scrollback_lines or marked or drawn is None or drawn[0] is not term:
            self.refresh()
            return
        rows.update((drawn[1], term.cursor.y))
        width = self.size.width
        self.refresh(*[Region(0, y, width, 1) for y in sorted(rows) if 0 <= y < term.lines])

    def _send_answers(self) -> None:
        """Queue the screen's answers to the guest; a worker writes them in order (the feed never
        waits on the guest)."""
        data = self.model.take_answers()
        if data and self.write_callback is not None:
            self._answers.append(data)
        if self._answers and not self._answering and self.is_mounted:
            self._answering = True
            self.run_worker(self._write_answers(), group="answers")

    async def _write_answers(self) -> None:
        try:
            while self._answers and self.write_callback is not None:
                await self.write_callback(self._answers.popleft())
        finally:
            self._answering = False

    def on_mount(self) -> None:
        if self.model.has_output:
            self._arm(TICK_S)
        self._send_answers()

    def on_focus(self) -> None:
        self.refresh()  # the cursor shows only while focused

    def on_blur(self) -> None:
        self.refresh()

    def on_resize(self, event: events.Resize) -> None:
        if self.model.resize(max(event.size.width, 10), max(event.size.height, 3)):
            self.refresh()

    # -- reading the screen ---------------------------------------------------------------------

    @property
    def top_line(self) -> int:
        """Absolute number of the first line shown."""
        return self.term.pushed - self.scrollback_lines

    def line_text(self, y: int) -> str:
        """The text of visible row ``y`` (right-stripped)."""
        return self.model.text(self.top_line + y).rstrip()

    def screen_text(self) -> str:
        """The visible rows as text."""
        return "\n".join(self.line_text(y) for y in range(self.term.lines))

    def all_text(self) -> str:
        """History plus the live screen, as text."""
        return self.model.all_text()

    # -- rendering ------------------------------------------------------------------------------

    def render_line(self, y: int) -> Strip:
        number = self.top_line + y
        line: Line | None = self.model.line(number)
        width = self.size.width
        base = self.rich_style
        if line is None:
            return Strip([Segment(" " * width, base)], width)
        term = self.term
        cursor_x = -1
        if self.keyboard is not None:
            if self.keyboard.cursor[0] == number:
                cursor_x = self.keyboard.cursor[1]
        elif self.has_focus and not self.scrollback_lines and y == term.cursor.y and not term.cursor.hidden:
            cursor_x = term.cursor.x
        selected, matched = self._marks(number)
        segments: list[Segment] = []
        text, style = "", None
        for x in range(min(term.columns, width)):
            char = line[x]
            if not char.data:  # right half of a wide character
                continue
            cell_style = self._styles.get(char, x == cursor_x, selected(x), matched(x))
            if cell_style is style:
                text += char.data
            else:
                if text:
                    segments.append(Segment(text, base + style))
                text, style = char.data, cell_style
        if text:
            segments.append(Segment(text, base + style))
        strip = Strip(segments)
        return strip.extend_cell_length(width, base).crop(0, width)

    def _marks(self, number: int) -> tuple[Callable[[int], bool], Callable[[int], bool]]:
        """Predicates on a column: selected? inside a search match?"""
        sel = self.selection_range()
        selected: Callable[[int], bool] = lambda x: False  # noqa: E731
        if sel is not None and sel[0][0] <= number <= sel[1][0]:
            (l0, c0), (l1, c1) = sel
            selected = lambda x: (number > l0 or x >= c0) and (number < l1 or x <= c1)  # noqa: E731
        spans = [(a, b) for n, a, b in self.matches if n == number]
        matched: Callable[[int], bool] = lambda x: any(a <= x < b for a, b in spans)  # noqa: E731
        return selected, matched

    # -- keys -----------------------------------------------------------------------------------

    async def on_key(self, event: events.Key) -> None:
        if event.key in self.PASSTHROUGH:
            return  # bubbles to the screen's bindings
        event.stop()
        event.prevent_default()
        if self.keyboard is not None:
            self._selection_key(event.key, event.character)
            return
        if self._scroll_key(event.key):
            return
        data = key_to_bytes(event.key, event.character, self.term.app_cursor_keys)
        if data is None:
            return
        if self._holding:
            self.live()
        if self.write_callback is not None:
            await self.write_callback(data)

    def on_paste(self, event: events.Paste) -> None:
        """Pasted text goes to the guest as typed (newlines as Enter's ``\r``), bracketed when it
        asked for that; a bracket marker inside the text is removed (it cannot end the bracket)."""
        event.stop()
        self.paste(event.text)

    def paste(self, text: str) -> None:
        """Send ``text`` to the guest as a paste (see :meth:`on_paste`)."""
        data = paste_bytes(text, self.term.bracketed_paste)
        if self._holding:
            self.end_selection()
        if self.write_callback is not None and data:
            self.run_worker(self.write_callback(data), group="paste")

    def _scroll_key(self, key: str) -> bool:
        """Scrollback keys; True if the key was used here."""
        page = max(self.term.lines - 1, 1)
        if key == "shift+pageup":
            self.scroll_by(page)
            return True
        if key == "shift+pagedown":
            self.scroll_by(-page)
            return True
        if not self._holding:
            return False
        steps = {"up": 1, "down": -1, "pageup": page, "pagedown": -page, "k": 1, "j": -1}
        if key in steps:
            self.scroll_by(steps[key])
        elif key in ("n", "N"):
            self.next_match(1 if key == "n" else -1)
        elif key in ("escape", "q"):
            self.live()
        else:
            return False
        return True

    def _selection_key(self, key: str, character: str | None) -> None:
        """A key while selecting with the keyboard: none goes to the guest."""
        assert self.keyboard is not None
        outcome = self.keyboard.key(key, character, self._bounds())
        if outcome == "copy":
            self._sel_anchor, self._sel_end = self.keyboard.span()
            self.copy_selection()
            self.end_selection()
        elif outcome == "leave":
            self.end_selection()
        elif outcome == "moved":
            keyboard = self.keyboard
            self._sel_anchor, self._sel_end = (keyboard.anchor, keyboard.cursor) if keyboard.anchor else (None, None)
            line = keyboard.cursor[0]
            if not self.top_line <= line < self.top_line + self.term.lines:  # keep the cursor in view
                top = line if line < self.top_line else line - self.term.lines + 1
                self._scroll_back_to(self.term.pushed - top)
            self.refresh()

    def _bounds(self) -> Bounds:
        term = self.term
        return Bounds(first=term.pushed - len(term.history), last=term.pushed + term.lines - 1,
                      columns=term.columns, page=max(term.lines - 1, 1), text=self.model.text)

    def start_selection(self) -> None:
        """Select with the keyboard (see :mod:`capsatui.widgets.terminal.select`), from the
        terminal's cursor (or the bottom row shown, when scrolled back); output keeps coming."""
        term = self.term
        if self.scrollback_lines:
            cursor = (self.top_line + term.lines - 1, 0)
        else:
            cursor = (term.pushed + term.cursor.y, min(term.cursor.x, term.columns - 1))
        self.keyboard = KeyboardSelection(cursor)
        self._sel_anchor = self._sel_end = None
        self.focus()
        self.refresh()

    def end_selection(self) -> None:
        """Leave keyboard selection, back to the live screen."""
        self.keyboard = None
        self._sel_anchor = self._sel_end = None
        self.live()

    def _scroll_back_to(self, lines: int) -> None:
        """Show the view ``lines`` back from the live screen, within the history."""
        self.scrollback_lines = max(0, min(lines, len(self.term.history)))

    def scroll_by(self, lines: int) -> None:
        """Scroll back (positive) or forward by ``lines``, within the history."""
        self._scroll_back_to(self.scrollback_lines + lines)
        self.refresh()

    def live(self) -> None:
        """Back to the live screen; search highlights end."""
        self.scrollback_lines, self.matches, self.match_index, self.search_pattern = 0, [], -1, None
        self.refresh()

    # -- search ---------------------------------------------------------------------------------

    def search(self, what: str | re.Pattern[str]) -> int:
        """Highlight every match of ``what`` (text, or a regex; history + screen); shows the
        newest. Returns the count."""
        self.search_pattern = as_pattern(what)
        self.matches = self.model.find(self.search_pattern)
        self.match_index = len(self.matches)
        if self.matches:
            self.next_match(-1)
        self.refresh()
        return len(self.matches)

    def next_match(self, step: int) -> None:
        """Show the match ``step`` matches on (wrapping around)."""
        if not self.matches:
            return
        self.match_index = (self.match_index + step) % len(self.matches)
        number = self.matches[self.match_index][0]
        if not (self.top_line <= number < self.top_line + self.term.lines):
            # Put the match in the middle of the view.
            self._scroll_back_to(self.term.pushed - number + self.term.lines // 2)
        self.refresh()

    # -- selection ------------------------------------------------------------------------------

    def selection_range(self) -> tuple[tuple[int, int], tuple[int, int]] | None:
        """The selection as ((line, column), (line, column)), first to last, or None."""
        if self._sel_anchor is None or self._sel_end is None:
            return None
        return min(self._sel_anchor, self._sel_end), max(self._sel_anchor, self._sel_end)

    def selected_text(self) -> str:
        """The selected cells as text (each row right-stripped)."""
        sel = self.selection_range()
        if sel is None:
            return ""
        (l0, c0), (l1, c1) = sel
        rows = []
        for n in range(l0, l1 + 1):
            text = self.model.text(n)
            rows.append(text[(c0 if n == l0 else 0) : (c1 + 1 if n == l1 else None)].rstrip())
        return "\n".join(rows)

    # -- the mouse: reported to the guest when it asked (not with shift), else our selection ------

    def _reporting(self, event: events.MouseEvent) -> bool:
        """The guest asked for mouse reports, the live screen shows and shift is not held."""
        return bool(self.term.mouse_tracking) and not event.shift and not self.scrollback_lines

    def _report(self, event: events.MouseEvent, button: int, action: MouseAction) -> None:
        """Send the guest a mouse event at the event's cell (within the screen) if its mode wants it."""
        term = self.term
        tracking = term.mouse_tracking
        if not mouse_wanted(tracking, action, button) or self.write_callback is None:
            return
        x = min(max(event.x, 0), term.columns - 1)
        y = min(max(event.y, 0), term.lines - 1)
        if action == "motion" and self._mouse_cell == (x, y):
            return  # a move within the cell (a pixel-reporting outer terminal): nothing for the guest
        self._mouse_cell = (x, y)
        data = mouse_report(
            button, x, y, action, encoding=term.mouse_encoding,
            shift=event.shift, meta=event.meta, ctrl=event.ctrl, x10=tracking == MOUSE_X10,
        )
        self.run_worker(self.write_callback(data), group="mouse")

    @staticmethod
    def _button(event: events.MouseEvent) -> int:
        """A Textual button (1 left, 2 middle, 3 right) as the report's 0, 1, 2 (3: none)."""
        return event.button - 1 if 1 <= event.button <= 3 else 3

    def on_mouse_down(self, event: events.MouseDown) -> None:
        if self._reporting(event):
            self._mouse_button = self._button(event)
            self._report(event, self._mouse_button, "press")
            self.capture_mouse()  # its release comes here even off the view
            self.focus()
            return
        self._sel_anchor = self._sel_end = (self.top_line + event.y, event.x)
        self.capture_mouse()
        self.focus()
        self.refresh()

    def on_mouse_move(self, event: events.MouseMove) -> None:
        selecting = bool(event.button) and self._sel_anchor is not None  # a drag of ours (shift)
        if self._mouse_button is not None or (not selecting and self._reporting(event)):
            button = self._mouse_button if self._mouse_button is not None else 3
            self._report(event, button, "motion")
            return
        if self._sel_anchor is not None and event.button:
            self._sel_end = (self.top_line + event.y, max(0, event.x))
            self.refresh()

    def on_mouse_up(self, event: events.MouseUp) -> None:
        self.release_mouse()
        if self._mouse_button is not None:  # a press the guest was told of: so is its release
            button, self._mouse_button = self._mouse_button, None
            self._report(event, button, "release")
            return
        if self._sel_anchor is not None and self._sel_end != self._sel_anchor:
            self.copy_selection()
        else:
            self._sel_anchor = self._sel_end = None
            self.refresh()

    def copy_selection(self) -> str:
        """Copy the selection to the clipboard (and say so); returns it ("" for none)."""
        text = self.selected_text()
        if text:
            self.app.copy_to_clipboard(text)
            self.notify(f"copied {len(text)} characters")
        return text

    def on_mouse_scroll_up(self, event: events.MouseScrollUp) -> None:
        event.stop()
        if self._reporting(event):
            self._report(event, 64, "press")
        else:
            self.scroll_by(3)

    def on_mouse_scroll_down(self, event: events.MouseScrollDown) -> None:
        event.stop()
        if self._reporting(event):
            self._report(event, 65, "press")
        else:
            self.scroll_by(-3)
