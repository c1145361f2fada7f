"""The terminal's model on its own (no Textual): output in, the screen and its history out; a flood
dropped and the screen rebuilt from the console's ring; the ``/regex/`` search syntax."""
from __future__ import annotations

import re
import time

import pyte
import pytest

from capsatui.widgets.terminal import model as model_module
from capsatui.widgets.terminal.model import KEEP_PENDING, MAX_PENDING, RESYNC_INTERVAL_S, TerminalModel
from capsatui.widgets.terminal.screen import HistoryTerminal
from capsatui.widgets.terminal.search import as_pattern, find, parse_search

FAR = float("inf")  # a deadline that never comes: feed everything


class Ring:
    """Everything fed, as the console's ring keeps it: the model's ``resync`` source."""

    def __init__(self) -> None:
        self.log = bytearray()
        self.asked: list[int] = []

    def __call__(self, n: int) -> bytes:
        self.asked.append(n)
        return bytes(self.log[-n:])


def fed(ring: Ring, model: TerminalModel, data: bytes) -> None:
    ring.log += data
    model.feed(data)


def screen_rows(model: TerminalModel) -> list[str]:
    return [model.text(model.term.pushed + y).rstrip() for y in range(model.term.lines)]


def test_output_waits_until_flushed_then_scrolls_into_history() -> None:
    model = TerminalModel(20, 5, history=10)
    model.feed(b"".join(b"line %d\r\n" % i for i in range(30)))
    assert model.pending > 0 and model.has_output and screen_rows(model) == [""] * 5
    assert model.flush() == 26  # 30 lines and the cursor's empty row on a 5-row screen
    assert model.pending == 0 and not model.has_output
    assert screen_rows(model) == ["line 26", "line 27", "line 28", "line 29", ""]
    # Absolute line numbers: history keeps the newest 10 of the 26 that scrolled off.
    assert model.first_line == 16 and model.end_line == 31
    assert model.text(16).rstrip() == "line 16" and model.line(15) is None and model.line(31) is None
    assert model.all_text().splitlines()[0] == "line 16"


def test_a_flush_budget_leaves_the_rest_pending() -> None:
    model = TerminalModel(80, 24)
    model.feed(b"x" * 20000)
    model.flush(0.0)  # one slice, then the budget is spent
    assert 0 < model.pending < 20000


def test_a_flood_drops_the_oldest_output_at_a_line_boundary() -> None:
    model = TerminalModel(80, 24)
    model.feed(b"old-output\r\n" * (MAX_PENDING // 12 + 1))
    assert model.dropped > 0
    kept = model.pending_output
    assert len(kept) <= KEEP_PENDING and kept.startswith(b"old-output")
    assert model.dropped + len(kept) == 12 * (MAX_PENDING // 12 + 1)
    assert not model.resync_due  # no resync source: nothing to rebuild from


FLOOD = b"\x1b7\x1b[1;1Hflood\r\n\x1b8"  # save the cursor, write the top row, restore it


def test_an_echo_after_a_cut_lands_at_the_prompt_before_any_rebuild() -> None:
    """A cut at a line boundary keeps a flood unit's "restore cursor" and drops its "save": the
    restore brings back what the previous save kept (one slot, as on a DEC terminal), so the
    shell's next echo is drawn at the prompt, not at the home position the flood writes over."""
    model = TerminalModel(40, 10)  # no resync source: only the live screen can get it right
    model.feed(b"\x1b[2J\x1b[10;1H# " + FLOOD)
    model.flush()
    model.feed(FLOOD * (MAX_PENDING // len(FLOOD) + 50))
    assert model.dropped > 0 and model.pending_output.startswith(b"\x1b8")  # a restore without its save
    model.flush()
    model.feed(b"Z")
    model.flush()
    assert screen_rows(model)[9] == "# Z" and screen_rows(model)[0] == "flood"


def test_a_dropped_echo_is_drawn_by_the_rebuild() -> None:
    ring = Ring()
    model = TerminalModel(40, 10, resync=ring)
    fed(ring, model, b"\x1b[2J\x1b[10;1H# ")
    model.flush()
    for _ in range(100):  # a long flood: the state before its first drop is far back
        fed(ring, model, FLOOD * 200)
    # The shell's echo, then more flood in the same turn: the echo is dropped before it is drawn.
    fed(ring, model, b"echo-42" + FLOOD * 1500)
    assert model.dropped > 0 and b"echo-42" not in model.pending_output and model.resync_due
    assert not model.rebuild(FAR)  # output still pending, the last rebuild not an interval ago
    model.flush()
    assert screen_rows(model)[9] == "#"  # the echo is lost...
    assert model.rebuild(FAR)  # ... until the drained model rebuilds, at once, and swaps it in
    assert model.resyncs == 1 and not model.resync_due and not model.has_output
    assert screen_rows(model)[9] == "# echo-42" and screen_rows(model)[0] == "flood"
    assert ring.asked == [model_module.RESYNC_BYTES]  # the newest output, not all since the first drop


def test_an_exact_rebuild_replays_the_cut_bytes_too() -> None:
    """The first drop is close to the last clean screen: the rebuild replays everything since
    that screen, the bytes cut with the echo among them (not only what was kept)."""
    ring = Ring()
    model = TerminalModel(40, 10, resync=ring)
    fed(ring, model, b"\x1b[2J\x1b[10;1H# ")
    model.flush()
    clean_end = len(ring.log)
    fed(ring, model, b"echo-7" + FLOOD * 2000)  # ~40 KiB in one turn: the echo is cut at once
    assert model.dropped > 0 and b"echo-7" not in model.pending_output
    model.flush()
    assert model.rebuild(FAR)
    assert ring.asked == [len(ring.log) - clean_end]  # exact: from the clean screen on
    assert screen_rows(model)[9] == "# echo-7" and screen_rows(model)[0] == "flood"


def test_no_rebuild_while_the_user_reads_history() -> None:
    ring = Ring()
    model = TerminalModel(40, 10, resync=ring)
    fed(ring, model, b"y\r\n" * MAX_PENDING)
    model.flush()
    assert model.resync_due
    assert not model.rebuild(FAR, holding=True) and model.resync_due and not model.rebuilding
    assert model.rebuild(FAR) and model.resyncs == 1


def test_while_a_flood_goes_on_rebuilds_wait_for_the_interval() -> None:
    now = [1000.0]
    ring = Ring()
    model = TerminalModel(40, 10, resync=ring, clock=lambda: now[0])
    fed(ring, model, b"y\r\n" * MAX_PENDING)  # output still pending: the flood goes on
    # The first drop counts as half an interval since the last rebuild.
    now[0] += RESYNC_INTERVAL_S / 4
    assert not model.rebuild(FAR) and model.resync_due and model.has_output
    now[0] += RESYNC_INTERVAL_S / 2
    assert model.rebuild(FAR) and model.resyncs == 1


def test_a_rebuild_keeps_order_and_history() -> None:
    """A rebuild amid scrolling output neither loses nor doubles history lines."""
    ring = Ring()
    model = TerminalModel(30, 10, history=3000, resync=ring)
    for burst, start in enumerate(range(0, 6000, 600)):  # bursts that overflow the bound
        fed(ring, model, b"".join(b"line %05d\r\n" % i for i in range(start, start + 600)))
        if burst % 4 == 3:  # a tick now and then, as the view's timer runs
            model.rebuild(time.perf_counter() + 0.01)
            if not model.rebuilding:
                model.flush(0.01)
    while model.pending:
        model.rebuild(FAR)
        model.flush()
    assert model.dropped > 0 and model.resyncs > 0
    numbers = [int(line.split()[1]) for line in model.all_text().splitlines() if line]
    assert numbers[-500:] == list(range(5500, 6000))


def test_resize_reaches_the_screen() -> None:
    model = TerminalModel(80, 24)
    assert not model.resize(80, 24)
    assert model.resize(100, 30) and (model.term.columns, model.term.lines) == (100, 30)


def test_find_every_match_with_its_absolute_line() -> None:
    model = TerminalModel(20, 4)
    model.feed(b"".join(b"row %d\r\n" % i for i in range(12)))
    model.flush()
    assert model.find(as_pattern("row 1")) == [(1, 0, 5), (10, 0, 5), (11, 0, 5)]
    assert model.find(re.compile(r"\d+$")) == [] and len(model.find(re.compile(r"\d\s*$"))) == 12
    assert find(re.compile("a*"), [(0, "bbb")]) == []  # empty matches are no matches


def test_search_syntax() -> None:
    regex = parse_search("/ro+w [0-9]/")
    assert isinstance(regex, re.Pattern) and regex.pattern == "ro+w [0-9]"
    assert parse_search("plain.text") == "plain.text"
    assert parse_search("//") == "//"  # nothing between the slashes: text
    assert as_pattern("a.c").search("abc") is None and as_pattern("a.c").search("a.c")
    with pytest.raises(re.error):
        parse_search("/(/")


def test_only_a_full_screen_scroll_is_history() -> None:
    term = HistoryTerminal(20, 5)
    term.set_margins(2, 4)  # a scroll region, as vi and top set one
    term.cursor_position(4, 1)
    for _ in range(3):
        term.index()
    assert term.pushed == 0 and not term.history
    term.set_margins()
    term.cursor_position(5, 1)
    term.draw("top row gone")
    term.cursor_position(1, 1)
    term.draw("first")
    term.cursor_position(5, 1)
    term.index()
    assert term.pushed == 1 and "".join(term.history[0][x].data for x in range(5)) == "first"
    clone = term.clone_state()
    assert clone.display == term.display and not clone.history and clone.history_lines == term.history_lines


def test_a_clone_keeps_its_saved_cursor_while_the_original_moves() -> None:
    """pyte's "restore cursor" makes the saved cursor the live one and moves it in place: a clone
    taken mid "save ... restore" (the state a rebuild starts from) must not move with it."""
    term = HistoryTerminal(20, 5)
    stream = pyte.ByteStream(term)
    stream.feed(b"\x1b[5;1H\x1b7\x1b[1;1Htop")  # saved at the bottom row, now writing the top
    clone = term.clone_state()
    stream.feed(b"\x1b8\x1b[2;1H")  # the original restores, then moves its (once saved) cursor
    assert [saved.cursor.y for saved in clone.savepoints] == [4]
    clone.restore_cursor()
    assert (clone.cursor.y, clone.cursor.x) == (4, 0)
