"""ConsoleLike: the console as the app sees it, whether the VM runs here or in ``capsa-tui serve``.

Both are the one :class:`~engine.console.console.Console` (a served VM's over a service
attachment, see :mod:`engine.service.remote`); these protocols name the part of it the app
may rely on, so screens are typed against a seam rather than guessing with ``getattr``.
"""
from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from engine.console.console import CommandResult
from engine.console.match import PatternLike


class ConsoleReaderLike(Protocol):
    """A cursor on a console's output: iterate it for bytes, or consume through a pattern."""

    @property
    def offset(self) -> int:
        """Absolute offset of the next byte this reader returns (all before it were handed out)."""
        ...

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def wait_for(self, pattern: PatternLike, timeout: float | None = None) -> str: ...


class ConsoleWriterLike(Protocol):
    """The writing half of a console."""

    async def write(self, data: bytes) -> None: ...


class ConsoleLike(Protocol):
    """A VM's console: output readers, the scrollback, typing, and the command helpers."""

    @property
    def closed(self) -> bool: ...

    @property
    def close_reason(self) -> str | None: ...

    @property
    def start_offset(self) -> int: ...

    def read_from(self, offset: int, limit: int | None = None) -> bytes: ...

    def scrollback(self) -> bytes: ...

    def reader(self, from_start: bool = False) -> ConsoleReaderLike: ...

    async def split(self) -> tuple[ConsoleReaderLike, ConsoleWriterLike]: ...

    async def write(self, data: bytes) -> None: ...

    async def send_interrupt(self) -> None: ...

    async def send_eof(self) -> None: ...

    async def wait_for(self, pattern: PatternLike, timeout: float | None = None) -> str: ...

    async def exec(self, command: str, timeout: float | None = 30) -> str: ...

    async def run(self, command: str, timeout: float | None = 30) -> CommandResult: ...

    async def login(self, user: str, password: str | None = None, timeout: float = 30) -> None: ...


__all__ = ["ConsoleLike", "ConsoleReaderLike", "ConsoleWriterLike"]
