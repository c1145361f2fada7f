"""The terminal's model: the emulated screen and its history, the output waiting to be drawn, the
flood bound that drops the oldest of it, and the rebuild that heals a drop. No Textual here: the
view (:mod:`capsatui.widgets.terminal.view`) owns the timer and asks this class to do a slice of
work at a time.

Output is batched: bytes wait in a pending buffer and each tick feeds pyte in one go, within a time
budget, so a guest flooding its console (``yes``) costs the event loop a bounded share and typing
stays responsive. Beyond a bound the oldest pending bytes are dropped (the engine's ring still has
them for "save scrollback"); dropping heals itself when the model has a ``resync`` source (the
console's ring): once the flood has drained, or every ``RESYNC_INTERVAL_S`` while it goes on, the
screen is rebuilt off-screen from the newest ``RESYNC_BYTES`` of output and swapped in, so an echo
or a prompt that fell in a dropped part is drawn after all.

The screen's answers to the guest's questions (``ESC[6n`` after each busybox prompt) wait for
``take_answers``, in order; a rebuild's replay answers nothing (its questions were answered when
they were new, or are too old for an answer to mean anything but typed garbage).
"""
from __future__ import annotations

import collections
import re
import time
from collections.abc import Callable

import pyte

from capsatui.widgets.terminal.screen import HISTORY_LINES, HistoryTerminal, Line
from capsatui.widgets.terminal.search import Match, find

__all__ = ["Resync", "TerminalModel"]

FEED_SLICE = 2048
# Beyond MAX_PENDING the oldest pending output is dropped, keeping only the newest (what the
# screen will show; the engine's ring keeps everything for the scrollback file). Small on
# purpose: pyte digests ~100 KB/s within its budget, and a key's echo waits behind all of it.
MAX_PENDING = 24 * 1024
KEEP_PENDING = 8 * 1024
# After a drop the screen is rebuilt from the newest RESYNC_BYTES of output (from ``resync``),
# once pending output has drained or at most every RESYNC_INTERVAL_S while drops go on. 32 KiB
# is many screens of ordinary output and costs pyte ~5-90 ms (plain text vs `yes`), fed within
# the usual per-tick budget into a shadow screen that replaces the shown one when complete.
RESYNC_BYTES = 32 * 1024
RESYNC_INTERVAL_S = 0.5
# ... or, when the state before the first drop is at most this far back, all output since then:
# an exact rebuild (~20 ms of pyte for a cursor-addressed flood, ~0.35 s for `yes`).
RESYNC_EXACT_BYTES = 128 * 1024

# ``resync(n)``: the newest n bytes of everything passed to ``feed`` so far (None if it cannot tell).
Resync = Callable[[int], bytes | None]


class TerminalModel:
    """A terminal's state apart from its drawing: ``feed`` output in, ``flush`` / ``rebuild`` it
    into :attr:`term` a budget at a time, read lines by absolute number."""

    def __init__(
        self,
        columns: int = 80,
        lines: int = 24,
        history: int = HISTORY_LINES,
        resync: Resync | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.term = HistoryTerminal(columns, lines, history)
        self._stream = pyte.ByteStream(self.term)
        self._pending = bytearray()
        self.dropped = 0  # output bytes skipped because a flood outran the view
        # After a drop the screen is rebuilt from ``resync``'s bytes.
        self.resync = resync
        self.resyncs = 0  # rebuilds completed
        self._clock = clock
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

    # -- output ---------------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Queue output; it reaches the screen on ``flush`` (the oldest is dropped in a flood)."""
        self._pending += data
        self._fed += len(data)
        if len(self._pending) > MAX_PENDING:
            if self.resync is not None and self._clean is None:
                # The screen state before the first drop (the state after it is wrong: a cut can
                # start with a "restore cursor" without its "save", say): a rebuild starts there.
                # Its offset is where that screen has read up to, before anything is cut: an exact
                # rebuild replays the cut bytes too (an echo in them is drawn after all).
                if self._shadow is None:
                    self._clean = self.term.clone_state()
                    self._clean_offset = self._fed - len(self._pending)
                else:
                    self._clean = self._shadow.clone_state()
                    self._clean_offset = self._shadow_end - len(self._shadow_data)
            cut = len(self._pending) - KEEP_PENDING
            newline = self._pending.find(b"\n", cut)  # restart at a line boundary
            cut = newline + 1 if 0 <= newline < cut + 4096 else cut
            self.dropped += cut
            del self._pending[:cut]
            if self.resync is not None and not self._resync_due:
                self._resync_due = True
                self._last_resync = max(self._last_resync, self._clock() - RESYNC_INTERVAL_S / 2)

    @property
    def pending(self) -> int:
        """Output not drawn yet (a rebuild in progress or due counts as such)."""
        return len(self._pending) + len(self._shadow_data) + (1 if self._resync_due else 0)

    @property
    def pending_output(self) -> bytes:
        """The bytes queued for the shown screen (after any drop)."""
        return bytes(self._pending)

    @property
    def has_output(self) -> bool:
        """Output waits for the shown screen."""
        return bool(self._pending)

    @property
    def rebuilding(self) -> bool:
        """A rebuilt screen is being fed off-screen (output waits until it is swapped in)."""
        return self._shadow is not None

    @property
    def resync_due(self) -> bool:
        """Output was dropped and no rebuild has started since."""
        return self._resync_due

    def flush(self, budget: float | None = None) -> int:
        """Feed pending output to pyte (all of it, or what ``budget`` seconds allow).

        Returns how many lines scrolled into history meanwhile."""
        deadline = None if budget is None else time.perf_counter() + budget
        before = self.term.pushed
        while self._pending:
            chunk = bytes(self._pending[:FEED_SLICE])
            del self._pending[:FEED_SLICE]
            self._stream.feed(chunk)
            self._push_marks.append((self._fed - len(self._pending), self.term.pushed))
            if deadline is not None and time.perf_counter() > deadline:
                break
        return self.term.pushed - before

    def take_answers(self) -> bytes:
        """The screen's answers to the guest since the last call, in order (b"" for none)."""
        answers = self.term.answers
        if not answers:
            return b""
        data = b"".join(answers)
        answers.clear()
        return data

    def resize(self, columns: int, lines: int) -> bool:
        """The screen (and one being rebuilt) at a new size; False when the size is the same."""
        if (columns, lines) == (self.term.columns, self.term.lines):
            return False
        self.term.resize(lines=lines, columns=columns)
        if self._shadow is not None:
            self._shadow.resize(lines=lines, columns=columns)
        return True

    # -- rebuilding the screen after a drop -----------------------------------------------------

    def rebuild(self, deadline: float, *, holding: bool = False) -> bool:
        """Start a due rebuild (unless ``holding``: the user reads history, not under their feet)
        and feed it until ``deadline`` (``time.perf_counter``). True when the rebuilt screen has
        just replaced :attr:`term`."""
        if self._resync_due and self._shadow is None and self._may_resync(holding):
            self._start_resync()
        return self._shadow is not None and self._feed_shadow(deadline)

    def _may_resync(self, holding: bool) -> bool:
        if holding:
            return False
        return not self._pending or self._clock() - self._last_resync >= RESYNC_INTERVAL_S

    def _start_resync(self) -> None:
        """Take the newest output and drop what is pending (the tail ends with it, same turn)."""
        self._resync_due = False
        self._last_resync = self._clock()
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
        shadow = (self._clean or old).clone_state()
        self._clean = None
        if (shadow.columns, shadow.lines) != (old.columns, old.lines):
            shadow.resize(lines=old.lines, columns=old.columns)
        shadow.skip_pushes = old.lines
        # A tail starts anywhere in a "save cursor ... restore cursor" update (a status line, a
        # flood writing the top rows): anchor it at the saved cursor (the real one; the screen
        # keeps one, as a terminal does) and let a "restore" whose "save" is before the tail
        # leave the cursor there.
        if shadow.savepoints:
            shadow.restore_cursor()
        shadow.lenient_restore = True
        shadow.answering = False  # the replayed questions were asked (and answered) long ago
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

    def _feed_shadow(self, deadline: float) -> bool:
        assert self._shadow is not None and self._shadow_stream is not None
        while self._shadow_data:
            chunk = bytes(self._shadow_data[:FEED_SLICE])
            del self._shadow_data[:FEED_SLICE]
            self._shadow_stream.feed(chunk)
            if time.perf_counter() > deadline:
                break
        if self._shadow_data:
            return False
        old, self.term, self._stream = self.term, self._shadow, self._shadow_stream
        self.term.lenient_restore = False
        self.term.answering = True
        self.term.answers[:0] = old.answers  # any the old screen gave that were not taken yet
        self._shadow = self._shadow_stream = None
        self.resyncs += 1
        self._push_marks.append((self._shadow_end, self.term.pushed))
        self._last_resync = self._clock()
        if self._resync_due and self._clean is None:  # a drop while rebuilding: start from here
            self._clean = self.term.clone_state()
            self._clean_offset = self._shadow_end
        return True

    # -- reading the screen ---------------------------------------------------------------------

    @property
    def first_line(self) -> int:
        """Absolute number of the oldest line kept (history's first, or the screen's top)."""
        return self.term.pushed - len(self.term.history)

    @property
    def end_line(self) -> int:
        """Absolute number just past the screen's bottom row."""
        return self.term.pushed + self.term.lines

    def line(self, number: int) -> Line | None:
        """A pyte line by absolute number (history, then the live screen), or None."""
        term = self.term
        if number < self.first_line:
            return None
        if number < term.pushed:
            return term.history[number - self.first_line]
        row = number - term.pushed
        return term.buffer[row] if row < term.lines else None

    def text(self, number: int) -> str:
        """The text of a line by absolute number, every column ("" for no such line)."""
        line = self.line(number)
        return "".join(line[x].data or "" for x in range(self.term.columns)) if line is not None else ""

    def all_text(self) -> str:
        """History plus the live screen, as text (each line right-stripped)."""
        return "\n".join(self.text(n).rstrip() for n in range(self.first_line, self.end_line))

    def find(self, pattern: re.Pattern[str]) -> list[Match]:
        """Every match of ``pattern`` in history and on the screen, oldest first."""
        return find(pattern, ((n, self.text(n)) for n in range(self.first_line, self.end_line)))
