"""What a :class:`~engine.console.stream.ConsoleStream` runs over: any byte source and sink.

A VM's serial chardev gives an ``asyncio`` (StreamReader, StreamWriter) pair, which fits both
protocols as it is; a console reached through ``capsa-tui serve`` is a service attachment
(:mod:`engine.service.remote`) behind the same two seams. Either way the console on top is the
one :class:`~engine.console.console.Console`, with the same ``wait_for``, ``exec`` and ``login``.
"""
from __future__ import annotations

from typing import Protocol


class ByteSource(Protocol):
    """Bytes received from the guest, in order."""

    async def read(self, n: int = -1) -> bytes:
        """At least one byte (at most ``n`` when the source honours it); ``b""`` at the end.

        May raise :class:`ConnectionError` or :class:`OSError` when the transport breaks.
        """
        ...


class ByteSink(Protocol):
    """Bytes sent to the guest: the subset of :class:`asyncio.StreamWriter` a console needs.

    ``write`` queues, ``drain`` sends (raising :class:`ConnectionError` or :class:`OSError`
    when it cannot), ``close`` then ``wait_closed`` end the transport.
    """

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def close(self) -> None: ...

    async def wait_closed(self) -> None: ...


__all__ = ["ByteSink", "ByteSource"]
