"""Attach the user's terminal, raw, to a VM console until Ctrl-] is typed or the output ends.

When the guest can be told (a sandbox, through its agent) the console's tty gets this terminal's
size at once and again at every SIGWINCH, so the shell wraps where the terminal does and
full-screen programs fill it; a guest that cannot is told once how to do it by hand.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import termios
import tty
from collections.abc import AsyncIterable, Awaitable, Callable

import engine

DETACH_KEY = b"\x1d"  # Ctrl-], as telnet and virsh console use

Write = Callable[[bytes], Awaitable[object]]
Resize = Callable[[int, int], Awaitable[bool]]  # (cols, rows) -> told the guest (False: it cannot be)


async def attach_terminal(console: engine.ConsoleLike, *, write: bool = True, resize: Resize | None = None) -> None:
    """Relay stdin -> console (unless not ``write``) and console -> stdout; returns on Ctrl-]
    or console EOF. The console is a local VM's or a served one's (``engine.remote_console``);
    ``resize`` gives the guest this terminal's size (see the module docstring)."""
    # The reader starts where the console's own reader stands, so a fresh VM's boot messages
    # are shown before live output.
    reader, writer = await console.split()
    await relay_terminal(reader, writer.write if write else None, resize)


async def relay_terminal(output: AsyncIterable[bytes], write: Write | None, resize: Resize | None = None) -> None:
    """This terminal, raw, between ``output`` and ``write`` (None: read-only) until Ctrl-] or EOF."""
    stdin_fd = sys.stdin.fileno()
    saved = termios.tcgetattr(stdin_fd) if os.isatty(stdin_fd) else None
    loop = asyncio.get_running_loop()
    detached = asyncio.Event()
    keys: asyncio.Queue[bytes] = asyncio.Queue()

    def on_stdin() -> None:
        data = os.read(stdin_fd, 4096)
        if not data or DETACH_KEY in data:
            detached.set()
            data = data.split(DETACH_KEY, 1)[0]
        if data and write is not None:
            keys.put_nowait(data)

    async def pump_keys() -> None:
        assert write is not None
        while True:
            await write(await keys.get())

    async def pump_output() -> None:
        out = sys.stdout.buffer
        async for chunk in output:
            out.write(chunk)
            out.flush()
        detached.set()

    sizes: asyncio.Queue[None] = asyncio.Queue(1)

    def on_winch() -> None:
        with contextlib.suppress(asyncio.QueueFull):
            sizes.put_nowait(None)  # one pending look is enough: it reads the newest size

    async def pump_sizes() -> None:
        assert resize is not None
        told_how = False
        while True:
            await sizes.get()
            try:
                cols, rows = os.get_terminal_size(sys.stdout.fileno())
            except OSError:
                return  # not a terminal: nothing to tell
            try:
                done = await resize(cols, rows)
            except engine.EngineError:
                done = False
            if not done and not told_how:
                told_how = True
                sys.stderr.write(f"capsa-tui: the guest cannot be told this terminal's size ({cols}x{rows}); "
                                 f"type: stty cols {cols} rows {rows}\r\n")
                sys.stderr.flush()

    if saved is not None:
        tty.setraw(stdin_fd)
    loop.add_reader(stdin_fd, on_stdin)
    tasks = [asyncio.create_task(pump_output())]
    if write is not None:
        tasks.append(asyncio.create_task(pump_keys()))
    if resize is not None and saved is not None:
        loop.add_signal_handler(signal.SIGWINCH, on_winch)
        on_winch()  # the size it has now
        tasks.append(asyncio.create_task(pump_sizes()))
    try:
        await detached.wait()
    finally:
        loop.remove_reader(stdin_fd)
        if resize is not None and saved is not None:
            loop.remove_signal_handler(signal.SIGWINCH)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, engine.EngineError):
                await task
        if saved is not None:
            termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved)
