"""Tests of the terminal widget (pure: ANSI in, cells out; a flood must not delay typing) and
of the console screen against a real guest (typing, Ctrl-C, the run-command helper)."""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from textual import events
from textual.app import App, ComposeResult

import engine
from capsatui.screens.console import ConsoleScreen, ResultModal, open_console
from capsatui.screens.dialogs import FormModal, HelperMenu
from capsatui.widgets.terminal.keys import key_to_bytes
from capsatui.widgets.terminal.view import TerminalView


class TermApp(App[None]):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[tuple[float, bytes]] = []

    async def _write(self, data: bytes) -> None:
        self.written.append((time.perf_counter(), data))

    def compose(self) -> ComposeResult:
        yield TerminalView(self._write)


def cells(view: TerminalView, y: int) -> list[tuple[str, Any]]:
    """(character, rich style) of each cell of visible row ``y``."""
    return [(ch, seg.style) for seg in view.render_line(y) for ch in seg.text]


async def test_ansi_colours_cursor_and_clear() -> None:
    app = TermApp()
    async with app.run_test(size=(80, 24)) as pilot:
        view = app.query_one(TerminalView)
        view.focus()
        view.feed(b"garbage that gets cleared\r\n" * 3)
        view.feed(b"\x1b[2J\x1b[H")  # clear screen, home
        view.feed(b"plain \x1b[31mred\x1b[0m \x1b[1;4;44mbold-on-blue\x1b[0m \x1b[38;5;208mX\x1b[0m")
        view.feed(b"\x1b[5;10Hmoved\x1b[38;2;1;2;3mT\x1b[0m\x1b[7mrev\x1b[0m")
        await pilot.pause(0.15)
        assert view.pending == 0
        assert view.line_text(0) == "plain red bold-on-blue X"
        assert "garbage" not in view.screen_text()
        assert view.line_text(4) == " " * 9 + "movedTrev"
        row = cells(view, 0)
        assert row[0][1].color is None or row[0][1].color.name != "red"
        assert row[6][1].color.name == "red"
        bold = row[10][1]
        assert bold.bold and bold.underline and bold.bgcolor.name == "blue"
        assert row[23][0] == "X" and row[23][1].color.triplet.hex == "#ff8700"  # 256-colour 208
        moved = cells(view, 4)
        assert moved[14][1].color.triplet.hex == "#010203"  # truecolor
        assert moved[15][1].reverse
        # The cursor (after "rev") shows reversed while the view has focus.
        assert (view.term.cursor.x, view.term.cursor.y) == (18, 4)
        assert moved[18][1].reverse and not moved[19][1].reverse


async def test_keys_go_out_raw() -> None:
    app = TermApp()
    async with app.run_test() as pilot:
        app.query_one(TerminalView).focus()
        await pilot.press("a", "enter", "tab", "ctrl+c", "up", "f1", "escape", "backspace", "q")
        out = b"".join(data for _, data in app.written)
        assert out == b"a\r\t\x03\x1b[A\x1bOP\x1b\x7fq"
    assert key_to_bytes("up", None, app_cursor=True) == b"\x1bOA"
    assert key_to_bytes("ctrl+up", None) == b"\x1b[1;5A"
    assert key_to_bytes("f12", None) == b"\x1b[24~"


async def test_scrollback_and_search() -> None:
    app = TermApp()
    async with app.run_test(size=(40, 10)) as pilot:
        view = app.query_one(TerminalView)
        view.focus()
        view.feed(b"".join(b"line %d\r\n" % i for i in range(100)))
        await pilot.pause(0.2)
        assert view.line_text(0) == "line 91"
        await pilot.press("shift+pageup")
        assert view.line_text(0) == "line 82"
        assert view.search("line 7") == 11  # 7 and 70-79
        assert "line 79" in view.screen_text()
        await pilot.press("n")  # wraps to the oldest match
        assert "line 7" in [view.line_text(y) for y in range(10)]
        await pilot.press("escape")
        assert view.scrollback_lines == 0 and view.line_text(0) == "line 91"
        assert app.written == []  # none of those keys reached the guest


async def test_flood_never_delays_typing() -> None:
    app = TermApp()
    async with app.run_test() as pilot:
        view = app.query_one(TerminalView)
        view.focus()
        chunk = b"y\r\n" * 16 * 1024  # `yes` as the tty sends it
        keys_wanted, most_chunks = 8, 15_000  # the flood stops once the keys are through, or at 720 MB
        typed = asyncio.Event()

        async def flood() -> None:
            for _ in range(most_chunks):
                if typed.is_set():
                    return
                view.feed(chunk)
                await asyncio.sleep(0.004)  # a guest at full speed

        flooding = asyncio.create_task(flood())
        written_during_flood = []
        try:
            while len(written_during_flood) < keys_wanted and not flooding.done():
                before = len(app.written)
                await pilot.press("x")
                async with asyncio.timeout(60):
                    while len(app.written) == before:
                        await asyncio.sleep(0.001)
                # Each key reached the guest while the flood still ran: a key queued behind the
                # flood would arrive only once it had run out. (How fast is bench/tui.py's to measure.)
                written_during_flood.append(not flooding.done())
                await asyncio.sleep(0.02)
        finally:
            typed.set()
            await flooding
        assert written_during_flood == [True] * keys_wanted
        assert view.dropped > 0  # the flood was coalesced, not fed byte for byte
        assert view.term.pushed > 1000  # ... while the screen kept moving
        async with asyncio.timeout(5):
            while view.pending:
                await pilot.pause(0.05)
        assert view.line_text(0) == "y"


# -- a real guest ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def guest_console(boot: engine.LinuxDirectBoot) -> AsyncIterator[engine.Console]:
    vm = await engine.vm(boot).memory_mb(192).console_enabled().build()
    try:
        await vm.wait_ready(60)
        yield await vm.console()
    finally:
        await vm.kill()


class ConsoleApp(App[None]):
    def __init__(self, console: engine.Console, agent_gap: str | None = None) -> None:
        super().__init__()
        self.vm_console = console
        self.agent_gap = agent_gap
        self.released = False

    async def on_mount(self) -> None:
        await open_console(self, "guest", self.vm_console, self._release, agent_gap=self.agent_gap)

    async def _release(self) -> None:
        self.released = True


async def until(check: Any, pilot: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await pilot.pause(0.1)


def lines(screen: ConsoleScreen) -> list[str]:
    tab = screen.active_tab
    assert tab is not None
    return tab.view.all_text().splitlines()


async def type_line(pilot: Any, text: str) -> None:
    await pilot.press(*[c if c != " " else "space" for c in text], "enter")


@pytest.mark.guest
async def test_typing_reaches_the_guest(guest_console: engine.Console) -> None:
    app = ConsoleApp(guest_console)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = app.screen
        assert isinstance(screen, ConsoleScreen)
        await until(lambda: any(line.endswith("#") for line in lines(screen)), pilot)
        await type_line(pilot, "echo hi")
        await until(lambda: "hi" in lines(screen), pilot)


@pytest.mark.guest
async def test_ctrl_c_interrupts(guest_console: engine.Console) -> None:
    app = ConsoleApp(guest_console)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = app.screen
        assert isinstance(screen, ConsoleScreen)
        await pilot.pause(0.5)
        await type_line(pilot, "sleep 30")

        def after_sleep() -> list[str]:
            text = lines(screen)
            last = max(i for i, line in enumerate(text) if line.endswith("sleep 30"))
            return [line for line in text[last + 1 :] if line]

        await until(lambda: any(line.endswith("sleep 30") for line in lines(screen)), pilot)
        await pilot.pause(0.5)
        await pilot.press("ctrl+c")
        # A prompt long before the 30 s sleep could end by itself: the interrupt reached it.
        await until(lambda: any(line.endswith("#") for line in after_sleep()), pilot, timeout=20)


@pytest.mark.guest
async def test_full_screen_programs_in_the_guest(guest_console: engine.Console) -> None:
    """busybox vi edits a file and top draws its table across the whole view, then both give the
    screen back: cursor addressing, clearing and raw keys (Esc) over the real serial line."""
    app = ConsoleApp(guest_console)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = app.screen
        assert isinstance(screen, ConsoleScreen)
        tab = screen.active_tab
        assert tab is not None
        view = tab.view
        await until(lambda: view.term.lines > 10 and any(line.endswith("#") for line in lines(screen)), pilot)
        rows = view.term.lines
        try:
            await pilot.press("ctrl+right_square_bracket", "t")  # the helper that tells the tty our size
            await type_line(pilot, "rm -f /tmp/vi-test; clear; vi /tmp/vi-test")
            # vi fills every row but its status line with "~" and puts the file name at the bottom.
            await until(lambda: sum(view.line_text(y) == "~" for y in range(rows)) >= rows - 3
                        and "/tmp/vi-test" in view.line_text(rows - 1), pilot, timeout=30)
            await pilot.press("i", *"hello", "space", *"from", "space", *"vi", "escape")
            # Back in command mode ("-", not "I") before ":wq": vi reads an Esc and a key that
            # follow too closely as one escape sequence.
            await until(lambda: view.line_text(0) == "hello from vi"
                        and view.line_text(rows - 1).startswith("- /tmp/vi-test [Modified]"), pilot, timeout=20)
            assert view.term.alternate  # vi draws on the alternate screen ...
            await type_line(pilot, ":wq")
            # ... and leaving it gives the main screen back as it was: the prompt, no trace of vi.
            await until(lambda: not view.term.alternate and any(line.endswith("#") for line in view.screen_text().splitlines()), pilot, timeout=20)
            assert "~" not in view.screen_text().splitlines() and "hello from vi" not in view.screen_text()
            await type_line(pilot, "clear; cat /tmp/vi-test; echo cat-done")
            await until(lambda: [view.line_text(0), view.line_text(1)] == ["hello from vi", "cat-done"], pilot, timeout=20)
            await type_line(pilot, "top")
            # top redraws in place: its summary on the top row and its process table below.
            await until(lambda: view.line_text(0).startswith("Mem:") and "PID" in view.screen_text()
                        and "top" in view.screen_text(), pilot, timeout=30)
            await pilot.press("q")
            await until(lambda: any(line.endswith("#") for line in view.screen_text().splitlines()[-3:]), pilot, timeout=20)
        except BaseException:
            # Give the shared guest its shell back for the tests after this one: vi, then top.
            await guest_console.write(b"\x1b:q!\r\x03\r")
            raise


@pytest.mark.guest
async def test_run_command_helper_shows_output_and_exit_code(guest_console: engine.Console) -> None:
    app = ConsoleApp(guest_console)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause(0.3)
        await pilot.press("ctrl+right_square_bracket")
        await pilot.press("r")
        await pilot.pause(0.1)
        await type_line(pilot, "echo run-out;(exit 3)")
        await pilot.press("enter")  # the timeout field
        await until(lambda: isinstance(app.screen, ResultModal), pilot, timeout=30)
        result = app.screen
        assert isinstance(result, ResultModal)
        assert "exit code 3" in result.result_title
        assert "run-out" in result.text
        assert "through the console: stdout and stderr mixed" in result.text  # no agent here
        await pilot.press("escape")
        assert isinstance(app.screen, ConsoleScreen)
        # Release closes the last tab and leaves the console screen.
        await pilot.press("ctrl+right_square_bracket", "x")
        await until(lambda: app.released and not isinstance(app.screen, ConsoleScreen), pilot, timeout=5)


@pytest.mark.guest
async def test_run_command_helper_says_why_a_vm_has_no_agent(guest_console: engine.Console) -> None:
    gap = "this hub reaches the VM's console only"
    app = ConsoleApp(guest_console, agent_gap=gap)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause(0.3)
        await pilot.press("ctrl+right_square_bracket", "r")
        await until(lambda: isinstance(app.screen, FormModal), pilot)
        form = app.screen
        assert isinstance(form, FormModal) and "in the guest shell" in form.form_title
        await type_line(pilot, "echo via-console")
        await pilot.press("enter")
        await until(lambda: isinstance(app.screen, ResultModal), pilot, timeout=30)
        result = app.screen
        assert isinstance(result, ResultModal)
        assert "exit code 0" in result.result_title and "via-console" in result.text
        assert gap in result.text
        await pilot.press("escape")


class FakeConsole:
    """Just enough of engine.Console for the screen: a reader that ends (the VM died)."""

    def __init__(self, output: bytes) -> None:
        self.output = output
        self.written = b""
        self.close_reason: str | None = None  # the reader ends without a reason

    async def _chunks(self) -> AsyncIterator[bytes]:
        yield self.output
        await asyncio.sleep(0.2)

    def reader(self, from_start: bool = False) -> AsyncIterator[bytes]:
        return self._chunks()

    async def write(self, data: bytes) -> None:
        self.written += data


async def test_keys_typed_as_the_console_opens_reach_the_guest() -> None:
    """The terminal has the focus from the console screen's first frame: keys typed the moment
    the prompt shows must not land on the tab bar (the e2e test once lost a whole command so)."""
    first, second = FakeConsole(b"first:~# "), FakeConsole(b"second:~# ")
    app = App[None]()
    async with app.run_test() as pilot:
        screen = await open_console(app, "one", first)  # type: ignore[arg-type]
        await pilot.press("a")  # no pause: as soon as the screen is there
        await until(lambda: first.written == b"a", pilot, timeout=3)
        assert screen.focused is not None and screen.focused is screen.tabs[0].view
        await open_console(app, "two", second)  # type: ignore[arg-type]
        await pilot.press("b")  # again at once, into the new tab
        await until(lambda: second.written == b"b", pilot, timeout=3)
        assert first.written == b"a"


async def test_tabs_detach_and_closed_console() -> None:
    first, second = FakeConsole(b"first vm\r\n"), FakeConsole(b"second vm\r\n")
    app = App[None]()
    async with app.run_test() as pilot:
        screen = await open_console(app, "one", first)  # type: ignore[arg-type]
        await pilot.pause(0.1)
        assert await open_console(app, "two", second) is screen  # type: ignore[arg-type]
        await until(lambda: len(screen.tabs) == 2 and screen.active_tab is not None
                    and screen.active_tab.console is second, pilot, timeout=3)
        await pilot.pause(0.1)  # the new tab's terminal takes the focus after a refresh
        await pilot.press("a")
        await until(lambda: second.written == b"a", pilot, timeout=3)
        tab = screen.active_tab
        assert tab is not None
        await until(lambda: tab.closed_reason is not None, pilot, timeout=3)
        await until(lambda: "[console closed:" in tab.view.all_text(), pilot, timeout=3)
        await pilot.press("ctrl+right_square_bracket", "d")  # detach: the screen stays installed
        await until(lambda: app.screen is not screen, pilot, timeout=3)
        assert await open_console(app, "three", FakeConsole(b"x")) is screen  # type: ignore[arg-type]
        await until(lambda: app.screen is screen and len(screen.tabs) == 3, pilot, timeout=3)
        assert "first vm" in screen.tabs[0].view.all_text()
        assert first.written == b""


class FloodingConsole:
    """A console whose output comes from the test, with the ring's reading API (``reader()``'s
    ``offset`` and ``stream.read_from``) that the console tab rebuilds its screen from."""

    def __init__(self) -> None:
        self.log = bytearray()
        self.start_offset = 0
        self.written = b""
        self._more = asyncio.Event()

    def put(self, data: bytes) -> None:
        self.log += data
        self._more.set()

    def read_from(self, offset: int, limit: int | None = None) -> bytes:
        stop = len(self.log) if limit is None else min(len(self.log), offset + limit)
        return bytes(self.log[max(offset, self.start_offset) : stop])

    def reader(self, from_start: bool = False) -> Any:
        console = self

        class Reader:
            stream = console
            offset = 0

            def __aiter__(self) -> AsyncIterator[bytes]:
                return self._chunks()

            async def _chunks(self) -> AsyncIterator[bytes]:
                while True:
                    while self.offset == len(console.log):
                        console._more.clear()
                        await console._more.wait()
                    data = bytes(console.log[self.offset :])
                    self.offset += len(data)
                    yield data

        return Reader()

    async def write(self, data: bytes) -> None:
        self.written += data


DEMO_SCREEN = (
    b"\x1b[2J\x1b[H"
    b"demo:~# ls --color=always /\r\n"
    b"\x1b[1;34mbin\x1b[0m  \x1b[1;34metc\x1b[0m  \x1b[1;32minit\x1b[0m  \x1b[1;36mlib\x1b[0m  tmp\r\n"
    b"demo:~# printf '\\033[41m red \\033[42m green \\033[44m blue \\033[0m\\n'\r\n"
    b"\x1b[41m red \x1b[42m green \x1b[44m blue \x1b[0m\r\n"
    b"\x1b[7mreverse\x1b[0m \x1b[4munderline\x1b[0m \x1b[1mbold\x1b[0m \x1b[38;5;208m256-colour\x1b[0m "
    b"\x1b[38;2;0;200;120mtruecolour\x1b[0m\r\n"
    b"demo:~# echo hi\r\nhi\r\n"
    b"demo:~# "
)


class DemoConsoleApp(App[None]):
    """The console screen over a console whose output is DEMO_SCREEN, fed once the view has its size."""

    def __init__(self) -> None:
        super().__init__()
        self.demo = FloodingConsole()

    async def on_mount(self) -> None:
        await open_console(self, "demo-1 (demo)", self.demo)  # type: ignore[arg-type]


def test_console_snapshot(snap_compare: Any) -> None:
    async def drawn(pilot: Any) -> None:
        app = pilot.app
        assert isinstance(app, DemoConsoleApp)

        def view() -> TerminalView | None:
            screen = app.screen
            tab = screen.active_tab if isinstance(screen, ConsoleScreen) else None
            return tab.view if tab is not None else None

        # Fed only once the terminal has the widget's size, so the screen never reflows.
        await until(lambda: (v := view()) is not None and v.size.height > 10
                    and (v.term.columns, v.term.lines) == (v.size.width, v.size.height) and v.has_focus, pilot)
        app.demo.put(DEMO_SCREEN)
        await until(lambda: (v := view()) is not None and v.pending == 0 and v.line_text(7) == "demo:~#"
                    and v.term.cursor.x == 8, pilot)
        await pilot.pause()

    assert snap_compare(DemoConsoleApp(), terminal_size=(100, 20), run_before=drawn)


async def helper(pilot: Any, letter: str) -> None:
    """Open the ctrl+] menu and pick a helper by its letter."""
    await pilot.press("ctrl+right_square_bracket")
    await until(lambda: isinstance(pilot.app.screen, HelperMenu), pilot, timeout=5)
    await pilot.press(letter)


async def fill_form(pilot: Any, *values: str) -> None:
    """Type ``values`` into a helper's form fields in order (each replacing the default), submit."""
    await until(lambda: isinstance(pilot.app.screen, FormModal), pilot, timeout=5)
    for value in values:
        await pilot.press("ctrl+u")  # clear the field's default, as a user would
        await pilot.press(*[c if c != " " else "space" for c in value], "enter")


def has_line(screen: ConsoleScreen, text: str) -> bool:
    return any(line.strip() == text for line in lines(screen))


@pytest.mark.guest
async def test_wait_interrupt_eof_search_and_save_helpers(guest_console: engine.Console, tmp_path: Path) -> None:
    app = ConsoleApp(guest_console)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = app.screen
        assert isinstance(screen, ConsoleScreen)
        await until(lambda: any(line.endswith("#") for line in lines(screen)), pilot)

        # Wait for a pattern: the output the guest prints after the wait began, and what matched.
        await helper(pilot, "w")
        await fill_form(pilot, "ready-42", "30")
        await until(lambda: app.screen is screen, pilot)
        await type_line(pilot, "sleep 1; echo ready-$((6*7))")  # the typed line itself is not a match
        await until(lambda: isinstance(app.screen, ResultModal), pilot, timeout=30)
        assert isinstance(app.screen, ResultModal)
        assert app.screen.result_title == "Matched 'ready-42'" and app.screen.text.endswith("ready-42")
        await pilot.press("escape")

        # ... and its timeout, with what was seen meanwhile.
        await helper(pilot, "w")
        await fill_form(pilot, "never-printed-xyz", "1")
        await until(lambda: isinstance(app.screen, ResultModal), pilot, timeout=30)
        assert isinstance(app.screen, ResultModal)
        assert app.screen.result_title.startswith("Timed out waiting for 'never-printed-xyz'")
        await pilot.press("escape")

        # Send interrupt stops a sleep; the shell then runs the next line.
        await type_line(pilot, "sleep 30")
        await until(lambda: any(line.endswith("sleep 30") for line in lines(screen)), pilot)
        await helper(pilot, "c")
        await type_line(pilot, "echo after-$((1+1))-int")
        await until(lambda: has_line(screen, "after-2-int"), pilot, timeout=10)

        # Send EOF ends a cat reading the terminal.
        await type_line(pilot, "cat")
        await until(lambda: any(line.endswith("# cat") for line in lines(screen)), pilot)
        await helper(pilot, "e")
        await type_line(pilot, "echo after-$((1+2))-eof")  # while cat still ran it would echo the line back
        await until(lambda: has_line(screen, "after-3-eof"), pilot, timeout=10)

        # Search the scrollback: every match highlighted, the view on the newest.
        await helper(pilot, "f")
        await fill_form(pilot, "after-")
        tab = screen.active_tab
        assert tab is not None
        await until(lambda: len(tab.view.matches) >= 2, pilot, timeout=5)
        await pilot.press("escape")  # back to the live screen
        assert tab.view.matches == [] and tab.view.scrollback_lines == 0

        # Save the scrollback: the whole console log, boot messages included.
        target = tmp_path / "saved.log"
        await helper(pilot, "s")
        await fill_form(pilot, str(target))
        await until(lambda: target.exists() and b"after-3-eof" in target.read_bytes(), pilot, timeout=10)
        assert b"ready-42" in target.read_bytes()


@pytest.mark.guest
async def test_login_helper(boot: engine.LinuxDirectBoot) -> None:
    vm = await engine.vm(boot).memory_mb(192).console_enabled().login_user("alice", "s3cret").build()
    try:
        app = ConsoleApp(await vm.console())
        async with app.run_test(size=(100, 30)) as pilot:
            screen = app.screen
            assert isinstance(screen, ConsoleScreen)
            await until(lambda: any(line.endswith("login:") for line in lines(screen)), pilot, timeout=60)
            await helper(pilot, "l")
            await fill_form(pilot, "alice", "s3cret")
            await until(lambda: any(line.endswith("$") for line in lines(screen)), pilot, timeout=30)
            await type_line(pilot, "id -un")
            await until(lambda: has_line(screen, "alice"), pilot)
    finally:
        await vm.kill()


async def test_mouse_drag_selects_and_copies() -> None:
    app = TermApp()
    async with app.run_test(size=(40, 10)) as pilot:
        view = app.query_one(TerminalView)
        view.feed(b"first line\r\nsecond line\r\nthird")
        await until(lambda: view.pending == 0 and view.line_text(2) == "third", pilot)
        await pilot.mouse_down(TerminalView, offset=(6, 0))  # on "line" of the first row
        view.post_message(events.MouseMove(view, 5, 1, 0, 0, 1, False, False, False))  # dragging
        await until(lambda: view._sel_end == (view.top_line + 1, 5), pilot)
        await pilot.mouse_up(TerminalView, offset=(5, 1))
        assert view.selected_text() == "line\nsecond"
        assert app.clipboard == "line\nsecond"
        assert app.written == []  # a selection types nothing
