"""Attach the user's terminal, raw, to a VM console until Ctrl-] is typed or the output ends."""
from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import termios
import tty
from collections.abc import AsyncIterable, Awaitable, Callable

import engine

DETACH_KEY = b"\x1d"  # Ctrl-], as telnet and virsh console use

Write = Callable[[bytes], Awaitable[object]]


async def attach_terminal(console: engine.ConsoleLike, *, write: bool = True) -> None:
    """Relay stdin -> console (unless not ``write``) and console -> stdout; returns on Ctrl-]
    or console EOF. The console is a local VM's or a served one's (``engine.remote_console``)."""
    # The reader starts where the console's own reader stands, so a fresh VM's boot messages
    # are shown before live output.
    reader, writer = await console.split()
    await relay_terminal(reader, writer.write if write else None)


async def relay_terminal(output: AsyncIterable[bytes], write: Write | None) -> None:
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

    if saved is not None:
        tty.setraw(stdin_fd)
    loop.add_reader(stdin_fd, on_stdin)
    tasks = [asyncio.create_task(pump_output())]
    if write is not None:
        tasks.append(asyncio.create_task(pump_keys()))
    try:
        await detached.wait()
    finally:
        loop.remove_reader(stdin_fd)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, engine.EngineError):
                await task
        if saved is not None:
            termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved)
