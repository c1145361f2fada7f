"""AgentPort: the host end of a VM's agent port (a virtio-serial port named ``capsa.agent``).

QEMU keeps the byte stream connected for the machine's whole life; whether a guest program has
the port open comes separately, from QMP's ``VSERPORT_CHANGE`` events. The port therefore tracks
"open" as state the handle feeds it, and tells listeners when it closes (the agent died, or the
machine ended), so the agent client can fail its waiting calls at once.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Callable

from engine.broadcast import Broadcast
from engine.errors import AgentUnavailable

log = logging.getLogger(__name__)


class AgentPort:
    """The agent port's streams and whether the guest side has the port open."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._open = False
        self._ended = False
        self._changed = Broadcast()
        self._close_callbacks: list[Callable[[], None]] = []

    @property
    def is_open(self) -> bool:
        """Whether a guest program holds the port open right now."""
        return self._open

    @property
    def ended(self) -> bool:
        """Whether the machine is gone (the port can never open again)."""
        return self._ended

    async def wait_open(self, timeout: float | None) -> None:
        """Wait until the guest opens the port; AgentUnavailable when it does not in time or the VM ends."""
        try:
            async with asyncio.timeout(timeout):
                while not self._open:
                    if self._ended:
                        raise AgentUnavailable("the VM ended before its agent opened the agent port")
                    await self._changed.wait()
        except TimeoutError:
            raise AgentUnavailable(f"the guest's agent did not open the agent port within {timeout}s") from None

    def add_close_callback(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` each time the guest closes the port and once when the VM ends."""
        self._close_callbacks.append(callback)

    # ----- fed by the VM handle ------------------------------------------------------------

    def set_open(self, is_open: bool) -> None:
        """The guest opened (True) or closed (False) the port (from VSERPORT_CHANGE)."""
        was_open, self._open = self._open, is_open and not self._ended
        self._changed.notify()
        if was_open and not self._open:
            self._closed()

    def end(self) -> None:
        """The machine is gone: the port is closed for good."""
        if self._ended:
            return
        self._ended = True
        self._open = False
        self._changed.notify()  # waiters for a first open learn it will never come
        self._closed()

    def _closed(self) -> None:
        for callback in list(self._close_callbacks):
            try:
                callback()
            except Exception:  # one faulty listener must not keep the others from hearing it
                log.exception("agent port close callback failed")
