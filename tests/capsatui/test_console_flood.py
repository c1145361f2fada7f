"""The console tab under a flood: output past what the view keeps is dropped, and the screen is
rebuilt from the console's ring once the flood stops (order and history kept, the echo redrawn)."""
from __future__ import annotations

import asyncio
import time
from textual.app import App

from capsatui.screens.console import open_console
from tests.capsatui.test_console import FloodingConsole, until


# The bench's flood (bench/tui.py): save the cursor, write on the top rows, restore it; the
# shell's echo lands at the prompt on the bottom row, written once and never redrawn.
FLOOD_UNIT = b"\x1b7\x1b[1;1H" + b"flood-" + b"0123456789" * 23 + b"abcdefghi\r\n\x1b8"


async def test_dropped_echo_is_redrawn_after_the_flood() -> None:
    console = FloodingConsole()
    app = App[None]()
    async with app.run_test(size=(100, 31)) as pilot:
        screen = await open_console(app, "flood", console)  # type: ignore[arg-type]
        await until(lambda: screen.active_tab is not None, pilot, timeout=3)
        tab = screen.active_tab
        assert tab is not None
        view = tab.view
        await until(lambda: view.size.height > 20, pilot, timeout=3)
        bottom = view.term.lines - 1
        console.put(b"\x1b[2J\x1b[%d;1H# " % (bottom + 1))  # the prompt on the terminal's bottom row
        await until(lambda: view.line_text(bottom) == "#", pilot, timeout=3)
        burst = FLOOD_UNIT * 64  # 16 KiB

        async def flood(seconds: float) -> None:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                console.put(burst)
                await asyncio.sleep(0.004)

        await flood(0.5)
        # The echo, then 25 KiB more flood in the same turn, and the flood stops: the view keeps
        # only the newest pending output, so the echo is dropped before it is ever drawn.
        dropped = view.dropped
        console.put(b"MARKER-42" + FLOOD_UNIT * 100)
        await asyncio.sleep(0)  # the reader hands it all to the view
        await asyncio.sleep(0)
        assert view.dropped > dropped and b"MARKER-42" not in view.model.pending_output
        # Redrawn once the flood has stopped (how soon is bench/tui.py's to measure, not a test's).
        async with asyncio.timeout(30):
            while view.line_text(bottom) != "# MARKER-42":
                await pilot.pause(0.02)
        assert view.resyncs > 0 and view.line_text(0).startswith("flood-0123")
        assert tab._reader is not None and tab._reader.offset == len(console.log)


async def test_resync_keeps_order_and_history() -> None:
    """A rebuild in the middle of ordinary scrolling output neither loses nor doubles lines."""
    console = FloodingConsole()
    app = App[None]()
    async with app.run_test(size=(60, 30)) as pilot:
        screen = await open_console(app, "lines", console)  # type: ignore[arg-type]
        await until(lambda: screen.active_tab is not None, pilot, timeout=3)
        tab = screen.active_tab
        assert tab is not None
        view = tab.view
        for start in range(0, 6000, 600):  # bursts that overflow the view's bound
            console.put(b"".join(b"line %05d\r\n" % i for i in range(start, start + 600)))
            await asyncio.sleep(0.002)
        async with asyncio.timeout(5):
            while view.pending or "line 05999" not in view.screen_text():
                await pilot.pause(0.02)
        assert view.dropped > 0 and view.resyncs > 0
        text = [line for line in view.all_text().splitlines() if line]
        numbers = [int(line.split()[1]) for line in text]
        tail = numbers[-500:]
        assert tail == list(range(5500, 6000)), tail[:5]  # the newest lines, in order, once


# A guest screen with colours, attributes and a prompt, as a colour `ls` and `printf` draw it.
