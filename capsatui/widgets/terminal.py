"""A terminal emulator widget: pyte keeps the screen, Textual draws it, keys go out raw.

:class:`TerminalView` is fed the guest's bytes (``feed``) and hands the user's keystrokes, as
the bytes a real terminal would send, to an async ``write`` callback. Output is batched: bytes
wait in a pending buffer and a short timer feeds pyte in one go, within a time budget, so a
guest flooding its console (``yes``) costs the event loop a bounded share and typing stays
responsive. Beyond a bound the oldest pending bytes are dropped (the engine's ring still has
them for "save scrollback"); dropping heals itself when the view has a ``resync`` source (the
console's ring): once the flood has drained, or every ``RESYNC_INTERVAL_S`` while it goes on, the
screen is rebuilt off-screen from the newest ``RESYNC_BYTES`` of output and swapped in, so an echo
or a prompt that fell in a dropped part is drawn after all. Scrollback (``shift+pageup``), search and mouse selection copy work
on pyte's screen plus the lines it scrolled off.
"""
from __future__ import annotations

import collections
import copy
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pyte
from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.strip import Strip
from textual.widget import Widget

from capsatui.widgets.term_emulation import DECCKM, HistoryTerminal, pyte_colour, key_to_bytes

__all__ = ["HistoryTerminal", "TerminalView", "key_to_bytes"]

TICK_S = 0.03  # batching interval: output shows at most this late
FEED_BUDGET_S = 0.010  # pyte time per tick (pyte does ~0.1-1 MB/s); the rest is the app's
FEED_SLICE = 2048
# Beyond MAX_PENDING the oldest pending output is dropped, keeping only the newest (what the
# screen will show; the engine's ring keeps everything for the scrollback file). Small on
# purpose: pyte digests ~100 KB/s within its budget, and a key's echo waits behind all of it.
MAX_PENDING = 24 * 1024
KEEP_PENDING = 8 * 1024
HIDDEN_POLL_S = 0.25  # a hidden view does not feed pyte; it looks again this often
# After a drop the screen is rebuilt from the newest RESYNC_BYTES of output (from ``resync``),
# once pending output has drained or at most every RESYNC_INTERVAL_S while drops go on. 32 KiB
# is many screens of ordinary output and costs pyte ~5-90 ms (plain text vs `yes`), fed within
# the usual per-tick budget into a shadow screen that replaces the shown one when complete.
RESYNC_BYTES = 32 * 1024
RESYNC_INTERVAL_S = 0.5
# ... or, when the state before the first drop is at most this far back, all output since then:
# an exact rebuild (~20 ms of pyte for a cursor-addressed flood, ~0.35 s for `yes`).
RESYNC_EXACT_BYTES = 128 * 1024

def _clone_state(src: HistoryTerminal) -> HistoryTerminal:
    """A copy of ``src``'s screen, cursor, saved cursors, modes, margins and charsets (no history)."""
    clone = HistoryTerminal(src.columns, src.lines, src.history.maxlen or 3000)
    for y in range(src.lines):
        clone.buffer[y] = copy.copy(src.buffer[y])
    clone.cursor = copy.copy(src.cursor)
    clone.savepoints = list(src.savepoints)
    clone.mode = set(src.mode)
    clone.margins = src.margins
    clone.charset, clone.g0_charset, clone.g1_charset = src.charset, src.g0_charset, src.g1_charset
    return clone


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
        history: int = 3000,
        resync: Callable[[int], bytes | None] | None = None,
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.write_callback = write
        self.term = HistoryTerminal(columns, lines, history)
        self._stream = pyte.ByteStream(self.term)
        self._pending = bytearray()
        self._timer_armed = False
        self.dropped = 0  # output bytes skipped because a flood outran the view
        # ``resync(n)``: the newest n bytes of everything passed to ``feed`` so far (None if it
        # cannot tell); after a drop the screen is rebuilt from them.
        self.resync = resync
        self.resyncs = 0  # rebuilds completed
        self._resync_due = False
        self._last_resync = 0.0
        self._shadow: HistoryTerminal | None = None  # a screen being rebuilt off-screen
        self._shadow_stream: pyte.ByteStream | None = None
        self._shadow_data = bytearray()
        self._shadow_end = 0  # the fed offset the shadow's bytes end at
        self._clean: HistoryTerminal | None = None  # see feed
        self._clean_offset = 0  # the fed offset of that state
        self._fed = 0  # bytes ever passed to feed
        # (offset in the fed bytes, term.pushed) after each slice fed: which history lines came
        # from before a resync's tail (kept) and which the tail will push again (dropped).
        self._push_marks: collections.deque[tuple[int, int]] = collections.deque(maxlen=1024)
        self.scrollback_lines = 0  # lines scrolled back from the live screen
        self.search_pattern: re.Pattern[str] | None = None
        self.matches: list[tuple[int, int, int]] = []  # (absolute line, start col, end col)
        self.match_index = -1
        self._sel_anchor: tuple[int, int] | None = None
        self._sel_end: tuple[int, int] | None = None
        self._styles: dict[tuple[Any, ...], Style] = {}

    # -- output ---------------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Queue guest output; it is drawn on the next tick (never synchronously)."""
        self._pending += data
        self._fed += len(data)
        if len(self._pending) > MAX_PENDING:
            cut = len(self._pending) - KEEP_PENDING
            newline = self._pending.find(b"\n", cut)  # restart at a line boundary
            cut = newline + 1 if 0 <= newline < cut + 4096 else cut
            self.dropped += cut
            del self._pending[:cut]
            if self.resync is not None and self._clean is None:
                # The screen state before the first drop (the state after it is wrong: a cut can
                # start with a "restore cursor" without its "save", say): a rebuild starts there.
                self._clean = _clone_state(self._shadow or self.term)
                self._clean_offset = self._fed - len(self._pending) if self._shadow is None else self._shadow_end
            if self.resync is not None and not self._resync_due:
                self._resync_due = True
                self._last_resync = max(self._last_resync, time.monotonic() - RESYNC_INTERVAL_S / 2)
        self._arm(TICK_S)

    @property
    def pending(self) -> int:
        """Output not drawn yet (a rebuild in progress counts as such)."""
        return len(self._pending) + len(self._shadow_data) + (1 if self._resync_due else 0)

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
        if not (self._pending or self._resync_due or self._shadow is not None):
            return
        if not self._showing():
            self._arm(HIDDEN_POLL_S)  # a hidden console catches up when shown
            return
        deadline = time.perf_counter() + FEED_BUDGET_S
        if self._resync_due and self._shadow is None and self._may_resync():
            self._start_resync()
        if self._shadow is not None:
            self._feed_shadow(deadline)
        if self._shadow is None and self._pending:
            self.flush(max(deadline - time.perf_counter(), 0.0))
        if self._pending or self._shadow is not None:
            self._arm(TICK_S)
        elif self._resync_due:  # waiting for the interval, or for the user to leave scrollback
            self._arm(TICK_S if not (self.scrollback_lines or self.matches) else HIDDEN_POLL_S)

    # -- rebuilding the screen after a drop -----------------------------------------------------

    def _may_resync(self) -> bool:
        if self.scrollback_lines or self.matches:
            return False  # the user is reading history: not under their feet
        return not self._pending or time.monotonic() - self._last_resync >= RESYNC_INTERVAL_S

    def _start_resync(self) -> None:
        """Take the newest output and drop what is pending (the tail ends with it, same turn)."""
        self._resync_due = False
        self._last_resync = time.monotonic()
        # Exact: everything since the state before the first drop, if that is not too much.
        exact = self._clean is not None and self._fed - self._clean_offset <= RESYNC_EXACT_BYTES
        want = self._fed - self._clean_offset if exact else RESYNC_BYTES
        data = self.resync(want) if self.resync is not None else None
        if not data:
            return
        if not exact and len(data) >= RESYNC_BYTES:  # it starts mid-stream: start at a line boundary, as a cut does
            newline = data.find(b"\n", 0, 4096)
            data = data[newline + 1 :] if newline >= 0 else data
        old = self.term
        # The best guess of the state before the tail is the state before the first drop: the
        # screen (a prompt drawn long ago stays), cursor and saved cursors (output that saves and
        # restores the cursor goes on from the same place), modes, scroll region, charsets. pyte
        # starts fine in the middle of an escape sequence. Its rows that scroll off are not
        # history again.
        shadow = _clone_state(self._clean or old)
        self._clean = None
        if (shadow.columns, shadow.lines) != (old.columns, old.lines):
            shadow.resize(lines=old.lines, columns=old.columns)
        shadow.skip_pushes = old.lines
        # A tail starts anywhere in a "save cursor ... restore cursor" update (a status line, a
        # flood writing the top rows): anchor it at the outermost saved cursor (the real one) and
        # let a "restore" whose "save" is before the tail leave the cursor there.
        if shadow.savepoints:
            del shadow.savepoints[1:]
            shadow.restore_cursor()
        shadow.lenient_restore = True
        # History: what scrolled off before the tail's first byte; the tail pushes the rest again.
        tail_start = self._fed - len(data)
        before = [pushed for offset, pushed in self._push_marks if offset <= tail_start]
        keep = len(old.history) - (old.pushed - before[-1]) if before else len(old.history)
        shadow.history.extend(list(old.history)[: max(keep, 0)])
        shadow.pushed = old.pushed  # absolute line numbers keep growing
        self._push_marks.clear()
        self._shadow, self._shadow_stream = shadow, pyte.ByteStream(shadow)
        self._shadow_data = bytearray(data)
        self._shadow_end = self._fed
        self._pending.clear()

    def _feed_shadow(self, deadline: float) -> None:
        assert self._shadow is not None and self._shadow_stream is not None
        while self._shadow_data:
            chunk = bytes(self._shadow_data[:FEED_SLICE])
            del self._shadow_data[:FEED_SLICE]
            self._shadow_stream.feed(chunk)
            if time.perf_counter() > deadline:
                break
        if self._shadow_data:
            return
        self.term, self._stream = self._shadow, self._shadow_stream
        self.term.lenient_restore = False
        self._shadow = self._shadow_stream = None
        self.resyncs += 1
        self._push_marks.append((self._shadow_end, self.term.pushed))
        self._last_resync = time.monotonic()
        if self._resync_due and self._clean is None:  # a drop while rebuilding: start from here
            self._clean = _clone_state(self.term)
            self._clean_offset = self._shadow_end
        self.scrollback_lines = 0
        self._sel_anchor = self._sel_end = None
        self.refresh()

    def flush(self, budget: float | None = None) -> None:
        """Feed pending output to pyte (all of it, or what ``budget`` seconds allow) and redraw."""
        deadline = None if budget is None else time.perf_counter() + budget
        before = self.term.pushed
        while self._pending:
            chunk = bytes(self._pending[:FEED_SLICE])
            del self._pending[:FEED_SLICE]
            self._stream.feed(chunk)
            self._push_marks.append((self._fed - len(self._pending), self.term.pushed))
            if deadline is not None and time.perf_counter() > deadline:
                break
        if self.scrollback_lines:  # keep a scrolled-back view on the same lines
            self.scrollback_lines = min(self.scrollback_lines + self.term.pushed - before, len(self.term.history))
        self.refresh()

    def on_mount(self) -> None:
        if self._pending:
            self._arm(TICK_S)

    def on_focus(self) -> None:
        self.refresh()  # the cursor shows only while focused

    def on_blur(self) -> None:
        self.refresh()

    def on_resize(self, event: events.Resize) -> None:
        width, height = max(event.size.width, 10), max(event.size.height, 3)
        if (width, height) != (self.term.columns, self.term.lines):
            self.term.resize(lines=height, columns=width)
            if self._shadow is not None:
                self._shadow.resize(lines=height, columns=width)
            self.refresh()

    # -- reading the screen ---------------------------------------------------------------------

    @property
    def top_line(self) -> int:
        """Absolute number of the first line shown."""
        return self.term.pushed - self.scrollback_lines

    def _line(self, number: int) -> Any:
        """A pyte line by absolute number (history, then the live screen), or None."""
        term = self.term
        first = term.pushed - len(term.history)
        if number < first:
            return None
        if number < term.pushed:
            return term.history[number - first]
        row = number - term.pushed
        return term.buffer[row] if row < term.lines else None

    def _text(self, line: Any) -> str:
        return "".join(line[x].data or "" for x in range(self.term.columns)) if line is not None else ""

    def line_text(self, y: int) -> str:
        """The text of visible row ``y`` (right-stripped)."""
        return self._text(self._line(self.top_line + y)).rstrip()

    def screen_text(self) -> str:
        return "\n".join(self.line_text(y) for y in range(self.term.lines))

    def all_text(self) -> str:
        """History plus the live screen, as text."""
        first = self.term.pushed - len(self.term.history)
        last = self.term.pushed + self.term.lines
        return "\n".join(self._text(self._line(n)).rstrip() for n in range(first, last))

    # -- rendering ------------------------------------------------------------------------------

    def _style(self, char: Any, extra: tuple[bool, bool, bool]) -> Style:
        cursor, selected, match = extra
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
                style += Style(color="black", bgcolor="yellow")
            self._styles[key] = style
        return style

    def render_line(self, y: int) -> Strip:
        number = self.top_line + y
        line = self._line(number)
        width = self.size.width
        base = self.rich_style
        if line is None:
            return Strip([Segment(" " * width, base)], width)
        term = self.term
        cursor_x = -1
        if self.has_focus and not self.scrollback_lines and y == term.cursor.y and not term.cursor.hidden:
            cursor_x = term.cursor.x
        marks = self._marks(number)
        segments: list[Segment] = []
        text, style = "", None
        for x in range(min(term.columns, width)):
            char = line[x]
            if not char.data:  # right half of a wide character
                continue
            cell_style = self._style(char, (x == cursor_x, marks[0](x), marks[1](x)))
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
        if self._scroll_key(event.key):
            return
        data = key_to_bytes(event.key, event.character, bool(self.term.mode & {DECCKM}))
        if data is None:
            return
        if self.scrollback_lines or self.matches:
            self.live()
        if self.write_callback is not None:
            await self.write_callback(data)

    def on_paste(self, event: events.Paste) -> None:
        event.stop()
        if self.write_callback is not None:
            self.run_worker(self.write_callback(event.text.encode("utf-8")), group="paste")

    def _scroll_key(self, key: str) -> bool:
        """Scrollback keys; True if the key was used here."""
        page = max(self.term.lines - 1, 1)
        if key == "shift+pageup":
            self.scroll_by(page)
            return True
        if key == "shift+pagedown":
            self.scroll_by(-page)
            return True
        if not (self.scrollback_lines or self.matches):
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

    def scroll_by(self, lines: int) -> None:
        self.scrollback_lines = max(0, min(self.scrollback_lines + lines, len(self.term.history)))
        self.refresh()

    def live(self) -> None:
        """Back to the live screen; search highlights end."""
        self.scrollback_lines, self.matches, self.match_index, self.search_pattern = 0, [], -1, None
        self.refresh()

    # -- search ---------------------------------------------------------------------------------

    def search(self, pattern: str, regex: bool = False) -> int:
        """Highlight every match of ``pattern`` (history + screen); shows the newest. Count."""
        self.search_pattern = re.compile(pattern if regex else re.escape(pattern))
        first = self.term.pushed - len(self.term.history)
        self.matches = [
            (n, m.start(), m.end())
            for n in range(first, self.term.pushed + self.term.lines)
            for m in self.search_pattern.finditer(self._text(self._line(n)))
            if m.end() > m.start()
        ]
        self.match_index = len(self.matches)
        if self.matches:
            self.next_match(-1)
        self.refresh()
        return len(self.matches)

    def next_match(self, step: int) -> None:
        if not self.matches:
            return
        self.match_index = (self.match_index + step) % len(self.matches)
        number = self.matches[self.match_index][0]
        if not (self.top_line <= number < self.top_line + self.term.lines):
            # Put the match in the middle of the view.
            self.scrollback_lines = max(0, min(self.term.pushed - number + self.term.lines // 2, len(self.term.history)))
        self.refresh()

    # -- selection ------------------------------------------------------------------------------

    def selection_range(self) -> tuple[tuple[int, int], tuple[int, int]] | None:
        if self._sel_anchor is None or self._sel_end is None:
            return None
        return min(self._sel_anchor, self._sel_end), max(self._sel_anchor, self._sel_end)

    def selected_text(self) -> str:
        sel = self.selection_range()
        if sel is None:
            return ""
        (l0, c0), (l1, c1) = sel
        rows = []
        for n in range(l0, l1 + 1):
            text = self._text(self._line(n))
            rows.append(text[(c0 if n == l0 else 0) : (c1 + 1 if n == l1 else None)].rstrip())
        return "\n".join(rows)

    def on_mouse_down(self, event: events.MouseDown) -> None:
        self._sel_anchor = self._sel_end = (self.top_line + event.y, event.x)
        self.capture_mouse()
        self.focus()
        self.refresh()

    def on_mouse_move(self, event: events.MouseMove) -> None:
        if self._sel_anchor is not None and event.button:
            self._sel_end = (self.top_line + event.y, max(0, event.x))
            self.refresh()

    def on_mouse_up(self, event: events.MouseUp) -> None:
        self.release_mouse()
        if self._sel_anchor is not None and self._sel_end != self._sel_anchor:
            self.copy_selection()
        else:
            self._sel_anchor = self._sel_end = None
            self.refresh()

    def copy_selection(self) -> str:
        text = self.selected_text()
        if text:
            self.app.copy_to_clipboard(text)
            self.notify(f"copied {len(text)} characters")
        return text

    def on_mouse_scroll_up(self, event: events.MouseScrollUp) -> None:
        event.stop()
        self.scroll_by(3)

    def on_mouse_scroll_down(self, event: events.MouseScrollDown) -> None:
        event.stop()
        self.scroll_by(-3)
