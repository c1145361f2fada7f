"""Broadcast: wake every task waiting for "something changed", each exactly once.

The engine's waiters (console readers, VM status, pool capacity, service attachments) loop on
"check the state; if not yet, wait for the next change". :meth:`Broadcast.notify` sets the
current event and puts a fresh one in its place, so every task already waiting wakes once and
a task that waits after the notify waits for the next one: no polling and no lost wake-ups
(the state is always re-checked before waiting).
"""
from __future__ import annotations

import asyncio


class Broadcast:
    """A one-to-many "changed" signal; see the module docstring."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        """Wake every current waiter (callable from any code on the loop, never blocks)."""
        self._event.set()
        # waiters hold the old event: each wakes exactly once, later ones wait for the next
        self._event = asyncio.Event()

    async def wait(self) -> None:
        """Return at the next :meth:`notify`."""
        await self._event.wait()


__all__ = ["Broadcast"]
