"""Full-screen programs in the pyte terminal (no guests): the alternate screen (47/1047/1049) and
its history, through a flood drop and rebuild; answers to the guest's questions (cursor position,
status, device attributes) and none from a rebuild; bracketed paste; mouse reports; the view
sending all of it to ``write``."""
from __future__ import annotations

import pyte
from textual import events
from textual.pilot import Pilot

from capsatui.widgets.terminal.model import MAX_PENDING, TerminalModel
from capsatui.widgets.terminal.modes import (
    MOUSE_ANY_MOTION,
    MOUSE_BUTTON_MOTION,
    MOUSE_NORMAL,
    MOUSE_SGR,
    MOUSE_URXVT,
    MOUSE_UTF8,
    MOUSE_X10,
    mouse_report,
    mouse_wanted,
    paste_bytes,
)
from capsatui.widgets.terminal.screen import HistoryTerminal
from capsatui.widgets.terminal.view import TerminalView
from tests.capsatui.screen_text import shown
from tests.capsatui.term_app import TermApp

FAR = float("inf")
SHELL = b"".join(b"sh %d\r\n" % i for i in range(7)) + b"$ vi"  # 3 lines into history on 20x5
ENTER, LEAVE = b"\x1b[?1049h", b"\x1b[?1049l"


def terminal(columns: int = 20, lines: int = 5) -> tuple[HistoryTerminal, pyte.ByteStream]:
    term = HistoryTerminal(columns, lines)
    return term, pyte.ByteStream(term)


def rows(term: HistoryTerminal) -> list[str]:
    return [line.rstrip() for line in term.display]


def history(term: HistoryTerminal) -> list[str]:
    return ["".join(line[x].data for x in range(term.columns)).rstrip() for line in term.history]


def full_screen(name: bytes, lines: int) -> bytes:
    """What vi/top draw: home, clear, a line per row, scrolling the screen when there are more."""
    return b"\x1b[H\x1b[2J" + b"\r\n".join(b"%s %d" % (name, i) for i in range(lines))


MAIN_ROWS = ["sh 3", "sh 4", "sh 5", "sh 6", "$ vi"]


# -- the alternate screen -------------------------------------------------------------------------


def test_1049_leaves_nothing_in_history_and_brings_the_shell_screen_back() -> None:
    term, stream = terminal()
    stream.feed(SHELL)
    assert rows(term) == MAIN_ROWS and term.pushed == 3 and not term.alternate
    stream.feed(ENTER)
    assert term.alternate and rows(term) == [""] * 5  # entered cleared
    stream.feed(full_screen(b"vi", 12))  # scrolls the alternate screen 7 times
    assert rows(term)[-1] == "vi 11"
    assert term.pushed == 3 and history(term) == ["sh 0", "sh 1", "sh 2"]
    stream.feed(b"\x1b[3;5H" + LEAVE)
    assert not term.alternate and rows(term) == MAIN_ROWS
    assert (term.cursor.y, term.cursor.x) == (4, 4)  # the cursor saved on entering
    assert term.pushed == 3 and history(term) == ["sh 0", "sh 1", "sh 2"]
    stream.feed(b"\r\n$ ")  # the shell goes on where it was
    assert rows(term) == ["sh 4", "sh 5", "sh 6", "$ vi", "$"] and history(term)[-1] == "sh 3"


def test_1049_restores_origin_and_wrap_modes_and_charsets() -> None:
    term, stream = terminal()
    stream.feed(ENTER + b"\x1b[2;4r\x1b[?6h\x1b[?7l\x1b(0")  # a region in origin mode, no wrap, line drawing
    stream.feed(LEAVE)
    assert pyte.modes.DECAWM in term.mode and pyte.modes.DECOM not in term.mode
    stream.feed(b"q")
    assert rows(term)[0] == "q"  # not the line-drawing "─"


def test_47_and_1047_switch_buffers_without_saving_the_cursor() -> None:
    variants = ((b"\x1b[?47h", b"\x1b[?47l"), (b"\x1b[?1047h", b"\x1b[?1047l"), (b"\x1b[?47h", LEAVE))
    for enter, leave in variants:
        term, stream = terminal()
        stream.feed(SHELL + enter)
        assert term.alternate and rows(term) == [""] * 5, enter
        stream.feed(full_screen(b"less", 9) + b"\x1b[2;3H")
        stream.feed(leave)
        assert not term.alternate and rows(term) == MAIN_ROWS and term.pushed == 3, enter
        if leave != LEAVE:
            assert (term.cursor.y, term.cursor.x) == (1, 2)  # the cursor stays where it was moved
        # The alternate screen is cleared on the next entry.
        stream.feed(enter)
        assert rows(term) == [""] * 5
        stream.feed(leave)


def test_1049_while_on_the_alternate_screen_clears_it_and_leaving_twice_is_harmless() -> None:
    term, stream = terminal()
    stream.feed(SHELL + ENTER + b"top" + ENTER)
    assert rows(term) == [""] * 5
    stream.feed(LEAVE + LEAVE + b"\x1b[?47l")
    assert rows(term) == MAIN_ROWS and not term.alternate


def test_a_resize_on_the_alternate_screen_resizes_the_main_one_too() -> None:
    term, stream = terminal()
    stream.feed(SHELL + ENTER + b"vi")
    term.resize(lines=3, columns=3)
    stream.feed(LEAVE)
    assert rows(term) == ["sh", "sh", "$ v"] and (term.cursor.y, term.cursor.x) == (2, 2)


def test_reset_returns_to_the_main_screen() -> None:
    term, stream = terminal()
    stream.feed(SHELL + ENTER + b"vi" + b"\x1bc")
    assert not term.alternate and rows(term) == [""] * 5
    stream.feed(b"x" + LEAVE)
    assert rows(term)[0] == "x"


def test_a_clone_carries_the_alternate_screen_and_the_main_one_behind_it() -> None:
    term, stream = terminal()
    stream.feed(SHELL + ENTER + b"\x1b[Htop")
    clone = term.clone_state()
    assert clone.alternate and rows(clone) == ["top", "", "", "", ""]
    stream.feed(LEAVE + b"\r\x1b[Kchanged")  # the original leaves and edits its main screen
    assert rows(term)[-1] == "changed"
    clone_stream = pyte.ByteStream(clone)
    clone_stream.feed(LEAVE)
    assert rows(clone) == MAIN_ROWS and (clone.cursor.y, clone.cursor.x) == (4, 4)


class Ring:
    """Everything fed, as the console's ring keeps it: the model's ``resync`` source."""

    def __init__(self) -> None:
        self.log = bytearray()

    def __call__(self, n: int) -> bytes:
        return bytes(self.log[-n:])


def fed(ring: Ring, model: TerminalModel, data: bytes) -> None:
    ring.log += data
    model.feed(data)


def model_rows(model: TerminalModel) -> list[str]:
    return [model.text(model.term.pushed + y).rstrip() for y in range(model.term.lines)]


TOP_FRAME = full_screen(b"top", 14)  # a frame scrolls the 20x5 alternate screen


def test_a_rebuild_in_the_middle_of_an_alternate_screen_keeps_it_alternate() -> None:
    """A flood while ``top`` runs: the exact rebuild starts from the alternate screen (its main
    screen behind it), so leaving brings the shell back and history has no ``top`` line."""
    ring = Ring()
    model = TerminalModel(20, 5, resync=ring)
    fed(ring, model, SHELL + ENTER)
    model.flush()
    fed(ring, model, TOP_FRAME * (2 * MAX_PENDING // len(TOP_FRAME)))  # cut in one turn
    assert model.dropped > 0 and model.resync_due
    model.flush()
    assert model.rebuild(FAR) and model.resyncs == 1
    assert model.term.alternate and model_rows(model)[-1] == "top 13"
    fed(ring, model, LEAVE)
    model.flush()
    assert model_rows(model) == MAIN_ROWS
    assert model.all_text().splitlines() == ["sh 0", "sh 1", "sh 2"] + MAIN_ROWS


def test_a_long_flood_on_the_alternate_screen_rebuilds_from_the_state_before_it() -> None:
    """The state before the first drop is far back (not an exact rebuild): the rebuilt screen
    still knows it is the alternate one, and replaying the tail (with the leave) restores the
    shell's screen."""
    ring = Ring()
    model = TerminalModel(20, 5, resync=ring)
    fed(ring, model, SHELL + ENTER)
    model.flush()
    for _ in range(60):
        fed(ring, model, TOP_FRAME * 200)
    fed(ring, model, TOP_FRAME * 10 + LEAVE + b"\r\n$ ")
    model.flush()
    assert model.dropped > 0
    while model.resync_due or model.rebuilding:
        model.rebuild(FAR)
        model.flush()
    assert not model.term.alternate
    assert model_rows(model) == ["sh 4", "sh 5", "sh 6", "$ vi", "$"]
    assert not [line for line in model.all_text().splitlines() if line.startswith("top")]


# -- answers to the guest -------------------------------------------------------------------------


def test_cursor_position_status_and_attributes_are_answered_in_order() -> None:
    model = TerminalModel(20, 5)
    model.feed(b"\x1b[H\x1b[2J# \x1b[6n\x1b[5n\x1b[c\x1b[3;7H\x1b[6n")
    model.flush()
    assert model.take_answers() == b"\x1b[1;3R\x1b[0n\x1b[?1;2c\x1b[3;7R"
    assert model.take_answers() == b""  # taken once
    model.feed(b"\x1b[H" + b"x" * 20 + b"\x1b[6n")  # past the last column: a wrap is pending
    model.flush()
    assert model.take_answers() == b"\x1b[1;20R"
    model.feed(b"\x1b[?6n\x1b[?5n\x1b[>c")  # DECXCPR; no private status; pyte drops DA2's ">"
    model.flush()
    assert model.take_answers() == b"\x1b[?1;20R\x1b[?1;2c"


def test_in_origin_mode_the_row_counts_from_the_scroll_region() -> None:
    model = TerminalModel(20, 10)
    model.feed(b"\x1b[3;8r\x1b[?6h\x1b[2;5H\x1b[6n\x1b[?6l\x1b[4;6H\x1b[6n")
    model.flush()
    assert model.take_answers() == b"\x1b[2;5R\x1b[4;6R"
    assert model.term.cursor.y == 3


def test_a_rebuild_answers_nothing_and_the_rebuilt_screen_answers_again() -> None:
    ring = Ring()
    model = TerminalModel(20, 5, resync=ring)
    fed(ring, model, b"# \x1b[6n")
    model.flush()
    assert model.take_answers() == b"\x1b[1;3R"
    # A flood with questions in it (a shell printing prompts in a loop): what is drawn answers.
    prompts = b"\r\n# \x1b[6n" * (MAX_PENDING // 3)
    fed(ring, model, prompts)
    assert model.dropped > 0
    model.flush()
    drawn = model.take_answers()
    assert drawn.endswith(b"\x1b[5;3R")
    assert 0 < drawn.count(b"R") < prompts.count(b"\x1b[6n")  # the dropped ones got no answer
    assert model.rebuild(FAR) and model.resyncs == 1  # its replay has many more questions ...
    assert model.take_answers() == b""  # ... all answered before (or too old to answer now)
    fed(ring, model, b"\x1b[2;2H\x1b[6n")
    model.flush()
    assert model.take_answers() == b"\x1b[2;2R"


# -- paste ----------------------------------------------------------------------------------------


def test_paste_sends_newlines_as_enter_and_brackets_when_asked() -> None:
    assert paste_bytes("ls -l\nwho\r\nx\r", False) == b"ls -l\rwho\rx\r"
    assert paste_bytes("ls -l\n", True) == b"\x1b[200~ls -l\r\x1b[201~"
    assert paste_bytes("é ✓", False) == "é ✓".encode()
    assert paste_bytes("", True) == b"\x1b[200~\x1b[201~"


def test_a_paste_cannot_end_its_bracket_early() -> None:
    evil = "echo safe\x1b[201~rm -rf ~\n"
    assert paste_bytes(evil, True) == b"\x1b[200~echo saferm -rf ~\r\x1b[201~"
    # Removing one marker must not join the rest into another.
    nested = "a\x1b[20\x1b[201~1~b\x1b[2\x1b[200~01~c"
    assert paste_bytes(nested, True) == b"\x1b[200~abc\x1b[201~"
    assert paste_bytes("a\x9b201~b\x1b[200~c", True) == b"\x1b[200~abc\x1b[201~"  # the 8-bit CSI too
    assert paste_bytes(evil, False) == b"echo saferm -rf ~\r"
    # A marker split by a newline must not become one through newline handling.
    assert paste_bytes("\x1b[201\r\n~", True).count(b"\x1b[201~") == 1


# -- mouse ----------------------------------------------------------------------------------------


def test_sgr_mouse_reports() -> None:
    sgr = MOUSE_SGR
    assert mouse_report(0, 0, 0, "press", encoding=sgr) == b"\x1b[<0;1;1M"
    assert mouse_report(0, 0, 0, "release", encoding=sgr) == b"\x1b[<0;1;1m"  # says its button
    assert mouse_report(2, 299, 99, "press", encoding=sgr) == b"\x1b[<2;300;100M"  # no limit
    assert mouse_report(0, 4, 2, "motion", encoding=sgr) == b"\x1b[<32;5;3M"
    assert mouse_report(3, 4, 2, "motion", encoding=sgr) == b"\x1b[<35;5;3M"  # no button held
    assert mouse_report(64, 1, 1, "press", encoding=sgr) == b"\x1b[<64;2;2M"
    assert mouse_report(65, 1, 1, "press", encoding=sgr) == b"\x1b[<65;2;2M"
    assert mouse_report(1, 0, 0, "press", encoding=sgr, ctrl=True, meta=True) == b"\x1b[<25;1;1M"
    assert mouse_report(0, 0, 0, "press", encoding=sgr, shift=True) == b"\x1b[<4;1;1M"


def test_x10_mouse_reports_are_clamped_to_a_byte() -> None:
    assert mouse_report(0, 0, 0, "press") == b"\x1b[M !!"
    assert mouse_report(2, 9, 4, "press") == b"\x1b[M\x22\x2a\x25"
    assert mouse_report(0, 9, 4, "release") == b"\x1b[M#*%"  # release: button 3
    assert mouse_report(0, 9, 4, "motion") == b"\x1b[M@*%"
    assert mouse_report(64, 0, 0, "press") == b"\x1b[M`!!"
    assert mouse_report(65, 0, 0, "press") == b"\x1b[Ma!!"
    assert mouse_report(0, 500, 300, "press") == b"\x1b[M \xff\xff"  # 223 + 32
    assert mouse_report(0, 222, 0, "press") == b"\x1b[M \xff!"
    assert mouse_report(0, 0, 0, "press", ctrl=True, x10=True) == b"\x1b[M !!"  # mode 9: no modifiers
    assert mouse_report(0, -3, -1, "press") == b"\x1b[M !!"


def test_urxvt_and_utf8_mouse_reports() -> None:
    assert mouse_report(0, 4, 2, "press", encoding=MOUSE_URXVT) == b"\x1b[32;5;3M"
    assert mouse_report(0, 4, 2, "release", encoding=MOUSE_URXVT) == b"\x1b[35;5;3M"
    assert mouse_report(0, 299, 2, "press", encoding=MOUSE_UTF8) == ("\x1b[M " + chr(332) + "#").encode()
    assert mouse_report(0, 5000, 2, "press", encoding=MOUSE_UTF8) == ("\x1b[M " + chr(2047) + "#").encode()


def test_which_mouse_events_each_mode_wants() -> None:
    def wanted(tracking: int) -> list[bool]:
        return [
            mouse_wanted(tracking, "press", 0), mouse_wanted(tracking, "release", 0),
            mouse_wanted(tracking, "press", 64), mouse_wanted(tracking, "release", 64),
            mouse_wanted(tracking, "motion", 0), mouse_wanted(tracking, "motion", 3),
        ]

    assert wanted(0) == [False] * 6
    assert wanted(MOUSE_X10) == [True, False, True, False, False, False]
    assert wanted(MOUSE_NORMAL) == [True, True, True, False, False, False]
    assert wanted(MOUSE_BUTTON_MOTION) == [True, True, True, False, True, False]
    assert wanted(MOUSE_ANY_MOTION) == [True, True, True, False, True, True]


def test_the_screen_tracks_the_newest_mouse_and_paste_modes() -> None:
    term, stream = terminal()
    assert (term.mouse_tracking, term.mouse_encoding, term.bracketed_paste) == (0, 0, False)
    stream.feed(b"\x1b[?1000h\x1b[?1006h\x1b[?2004h")
    assert (term.mouse_tracking, term.mouse_encoding, term.bracketed_paste) == (MOUSE_NORMAL, MOUSE_SGR, True)
    stream.feed(b"\x1b[?1003h\x1b[?1015h")  # the newest of each group wins
    assert (term.mouse_tracking, term.mouse_encoding) == (MOUSE_ANY_MOTION, MOUSE_URXVT)
    stream.feed(b"\x1b[?1003;1015;2004l")
    assert (term.mouse_tracking, term.mouse_encoding, term.bracketed_paste) == (0, 0, False)
    stream.feed(b"\x1b[?1002;1006h")
    clone = term.clone_state()
    assert (clone.mouse_tracking, clone.mouse_encoding) == (MOUSE_BUTTON_MOTION, MOUSE_SGR)


# -- the view -------------------------------------------------------------------------------------


def scroll(view: TerminalView, up: bool, x: int, y: int, shift: bool = False) -> None:
    kind = events.MouseScrollUp if up else events.MouseScrollDown
    view.post_message(kind(view, x, y, 0, -1 if up else 1, 0, shift, False, False))


async def move(pilot: Pilot[None], x: int, y: int, button: int) -> None:
    """The mouse moves to cell (x, y) of the view with ``button`` held (the pilot's ``hover``
    holds none), delivered as the app does (to the widget that captured the mouse, if one did)."""
    await pilot._post_mouse_events([events.MouseMove], TerminalView, offset=(x, y), button=button)


async def test_the_view_pastes_bracketed_only_when_asked() -> None:
    app = TermApp()
    async with app.run_test(size=(40, 10)) as pilot:
        view = app.query_one(TerminalView)
        view.focus()
        view.post_message(events.Paste("echo a\necho b"))
        await pilot.pause()
        assert app.written == [b"echo a\recho b"]
        view.feed(b"\x1b[?2004h")
        view.flush()
        view.post_message(events.Paste("x\x1b[201~\x03y\n"))
        await pilot.pause()
        assert app.written[1:] == [b"\x1b[200~x\x03y\r\x1b[201~"]


async def test_the_view_answers_the_cursor_position_request() -> None:
    app = TermApp()
    async with app.run_test(size=(40, 10)) as pilot:
        view = app.query_one(TerminalView)
        view.feed(b"\x1b[H\x1b[2J~ # \x1b[6n")
        await pilot.pause(0.15)
        assert app.written == [b"\x1b[1;5R"]


async def test_the_view_reports_the_mouse_only_when_asked_and_not_with_shift() -> None:
    app = TermApp()
    async with app.run_test(size=(40, 10)) as pilot:
        view = app.query_one(TerminalView)
        view.feed(b"".join(b"line %d\r\n" % i for i in range(30)) + b"hello world")
        view.flush()
        # Not asked: a drag selects, the wheel scrolls back, nothing goes to the guest.
        await pilot.mouse_down(TerminalView, offset=(0, 9))
        await move(pilot, 4, 9, 1)
        await pilot.mouse_up(TerminalView, offset=(4, 9))
        await pilot.pause()
        assert view.selected_text() == "hello"
        scroll(view, True, 3, 3)
        await pilot.pause()
        assert view.scrollback_lines == 3 and app.written == []
        scroll(view, False, 3, 3)
        await pilot.pause()
        assert view.scrollback_lines == 0

        view.feed(b"\x1b[?1002h\x1b[?1006h")  # asked: SGR reports, motion while a button is down
        view.flush()
        await pilot.mouse_down(TerminalView, offset=(3, 2))
        await move(pilot, 3, 2, 1)  # within the same cell: no report
        await move(pilot, 5, 2, 1)
        await pilot.mouse_up(TerminalView, offset=(5, 2))
        await move(pilot, 6, 2, 0)  # no button: 1002 does not want it
        scroll(view, True, 1, 1)
        scroll(view, False, 1, 1)
        await pilot.pause()
        assert app.written == [
            b"\x1b[<0;4;3M", b"\x1b[<32;6;3M", b"\x1b[<0;6;3m", b"\x1b[<64;2;2M", b"\x1b[<65;2;2M",
        ]
        assert view.scrollback_lines == 0

        # Shift keeps our selection and scrollback though the guest asked.
        app.written.clear()
        await pilot.click(TerminalView, offset=(2, 2), shift=True)
        scroll(view, True, 3, 3, shift=True)
        await pilot.pause()
        assert app.written == [] and view.scrollback_lines == 3
        view.live()

        view.feed(b"\x1b[?1006l\x1b[?1000h")  # X10 bytes, presses and releases only
        view.flush()
        await pilot.click(TerminalView, offset=(1, 0), button=3)
        await pilot.pause()
        assert app.written == [b"\x1b[M\x22\x22\x21", b"\x1b[M\x23\x22\x21"]

        app.written.clear()
        view.feed(b"\x1b[?1000l")  # no longer asked: a click is ours again
        view.flush()
        await pilot.click(TerminalView, offset=(1, 0))
        await pilot.pause()
        assert app.written == []

        # A shift drag selects while the guest asks for any motion; then motion is the guest's.
        view.feed(b"\x1b[?1003h\x1b[?1006h")
        view.flush()
        await pilot.mouse_down(TerminalView, offset=(0, 9), shift=True)
        await move(pilot, 4, 9, 1)
        await pilot.mouse_up(TerminalView, offset=(4, 9), shift=True)
        assert view.selected_text() == "hello" and app.written == []
        await pilot.hover(TerminalView, offset=(7, 1))
        await pilot.pause()
        assert app.written == [b"\x1b[<35;8;2M"] and view.selected_text() == "hello"


async def test_the_view_redraws_each_row_the_guest_changes() -> None:
    """Only changed rows are redrawn after an echo: each change must still reach the picture
    (an echo, its erase, a cursor-addressed write on another row, a scroll)."""
    app = TermApp()
    async with app.run_test(size=(40, 6)) as pilot:
        view = app.query_one(TerminalView)
        view.focus()

        async def feed(data: bytes) -> list[str]:
            view.feed(data)
            await pilot.pause(0.05)
            return shown(app).splitlines()

        assert (await feed(b"one\r\ntwo\r\n# "))[:3] == ["one", "two", "#"]
        assert (await feed(b"Z"))[2] == "# Z"
        assert (await feed(b"\x08\x1b[K"))[2] == "#"
        assert (await feed(b"\x1b7\x1b[1;1HTOP\x1b8y"))[:3] == ["TOP", "two", "# y"]
        # Six lines more scroll the screen: every row changes at once.
        assert (await feed(b"".join(b"\r\nn%d" % i for i in range(6)))) == ["n0", "n1", "n2", "n3", "n4", "n5"]
