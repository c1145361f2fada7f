"""Attach the user's terminal, raw, to a VM console until Ctrl-] is typed or the VM ends."""
from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import termios
import tty

import engine

DETACH_KEY = b"\x1d"  # Ctrl-], as telnet and virsh console use


async def attach_terminal(console: engine.Console) -> None:
    """Relay stdin -> console and console -> stdout; returns on Ctrl-] or console EOF."""
    stdin_fd = sys.stdin.fileno()
    saved = termios.tcgetattr(stdin_fd) if os.isatty(stdin_fd) else None
    loop = asyncio.get_running_loop()
    detached = asyncio.Event()
    reader, writer = await console.split()
    keys: asyncio.Queue[bytes] = asyncio.Queue()

    def on_stdin() -> None:
        data = os.read(stdin_fd, 4096)
        if not data or DETACH_KEY in data:
            detached.set()
            data = data.split(DETACH_KEY, 1)[0]
        if data:
            keys.put_nowait(data)

    async def pump_keys() -> None:
        while True:
            await writer.write(await keys.get())

    async def pump_output() -> None:
        # The reader starts where the console's own reader stands, so a fresh VM's boot
        # messages are shown before live output.
        out = sys.stdout.buffer
        async for chunk in reader:
            out.write(chunk)
            out.flush()
        detached.set()

    if saved is not None:
        tty.setraw(stdin_fd)
    loop.add_reader(stdin_fd, on_stdin)
    tasks = [asyncio.create_task(pump_keys()), asyncio.create_task(pump_output())]
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
