"""The console connection: a pump, a bounded scrollback, many reader cursors, one writer.

:class:`ConsoleStream` owns the connection to QEMU's serial chardev. A pump task copies every
byte received into a fixed-size ring (the scrollback); it never waits for readers, so a slow or
silent reader can never block the guest: when the ring is full the oldest bytes are dropped.
Every :class:`ConsoleReader` is a cursor with its own absolute offset; a reader that fell behind
the ring skips ahead and counts the bytes it missed in ``dropped``. Writes are serialized.
"""
from __future__ import annotations

import asyncio
import codecs
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import NoReturn

from engine.console.match import (
    READY_MARKER,
    MatchResult,
    PatternLike,
    PatternMatcher,
    describe_pattern,
)
from engine.broadcast import Broadcast
from engine.console.transport import ByteSink, ByteSource
from engine.errors import ConsoleClosed, ConsoleError, ConsoleTimeout

_log = logging.getLogger(__name__)

# Bytes of console output a VM keeps for late readers (VmSpec.scrollback_bytes, a served console).
DEFAULT_SCROLLBACK = 1024 * 1024
_READ_SIZE = 64 * 1024
# QEMU's UART sends the guest's output a byte at a time: a flood arrives as thousands of reads of
# a few bytes a second, each a full turn of the pump (ring, matchers, watchers, readers' wake-ups).
# Once output streams (a read within _STREAMING_S of the one before) the pump lets it pile up in
# the stream reader for _COALESCE_S before taking it; a lone chunk (an echo, a prompt) is never
# delayed. The transport keeps reading meanwhile: pausing it would throttle the guest (QEMU's
# one-byte writes fill the socket's send budget in a few hundred bytes) to a sixth of its rate.
_STREAMING_S = 0.002
_COALESCE_S = 0.002
_SEEN_TAIL = 4096  # bytes of recent output quoted by timeout errors

Watcher = Callable[[bytes], None]


class ByteRing:
    """The most recent ``capacity`` bytes of a stream, addressed by absolute stream offsets."""

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError(f"ring capacity must be positive, got {capacity}")
        self._data = bytearray(capacity)
        self._capacity = capacity
        self._end = 0
        self._floor = 0  # bytes before it are forgotten (see forget_before)

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def start(self) -> int:
        """Offset of the oldest byte kept."""
        return max(self._floor, self._end - self._capacity)

    def forget_before(self, offset: int) -> None:
        """Keep nothing before ``offset`` (at most the end): readers start there from now on."""
        self._floor = max(self._floor, min(offset, self._end))

    @property
    def end(self) -> int:
        """Total bytes ever appended (offset just past the newest byte)."""
        return self._end

    def append(self, chunk: bytes) -> None:
        size = len(chunk)
        view = memoryview(chunk)[-self._capacity :] if size > self._capacity else memoryview(chunk)
        pos = (self._end + size - len(view)) % self._capacity
        first = min(len(view), self._capacity - pos)
        self._data[pos : pos + first] = view[:first]
        if first < len(view):
            self._data[: len(view) - first] = view[first:]
        self._end += size

    def read(self, offset: int, limit: int | None = None) -> bytes:
        """Bytes from ``offset`` (clamped to ``start``) to the end, at most ``limit`` of them."""
        offset = max(offset, self.start)
        stop = self._end if limit is None else min(self._end, offset + max(0, limit))
        length = stop - offset
        if length <= 0:
            return b""
        pos = offset % self._capacity
        first = min(length, self._capacity - pos)
        if first == length:
            return bytes(self._data[pos : pos + length])
        return bytes(self._data[pos:]) + bytes(self._data[: length - first])


class ConsoleStream:
    """Owns one console connection: pump, scrollback ring, ready-marker count, serialized writes.

    ``reader`` and ``writer`` are any :class:`ByteSource` and :class:`ByteSink` (a serial
    chardev's asyncio streams, a service attachment); ``end_reason``, when given, says why the
    source ended (it is asked once, at the end of the stream).
    Must be created inside a running event loop (the pump task starts at once).
    """

    def __init__(
        self,
        reader: ByteSource,
        writer: ByteSink,
        *,
        scrollback: int = DEFAULT_SCROLLBACK,
        ready_marker: bytes | None = READY_MARKER,
        name: str = "console",
        end_reason: Callable[[], str | None] | None = None,
    ) -> None:
        self.name = name
        self._end_reason = end_reason
        self.ready_marker = ready_marker
        self.ready_count = 0
        self._ring = ByteRing(scrollback)
        self._reader = reader
        self._writer = writer
        self._ready = (
            PatternMatcher([ready_marker], window=max(len(ready_marker), 64)) if ready_marker else None
        )
        self._watchers: list[Watcher] = []
        self._changed = Broadcast()
        self._write_lock = asyncio.Lock()
        self._close_reason: str | None = None
        self._pump = asyncio.get_running_loop().create_task(self._run_pump(), name=f"{name}-pump")

    # -- state ----------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._close_reason is not None

    @property
    def close_reason(self) -> str | None:
        return self._close_reason

    @property
    def start_offset(self) -> int:
        """Absolute offset of the oldest byte still in the scrollback."""
        return self._ring.start

    @property
    def end_offset(self) -> int:
        """Total bytes received so far."""
        return self._ring.end

    @property
    def capacity(self) -> int:
        return self._ring.capacity

    @property
    def watchers(self) -> list[Watcher]:
        """The watcher callbacks (a live list: append/remove work too)."""
        return self._watchers

    def add_watcher(self, watcher: Watcher) -> None:
        """Call ``watcher(chunk)`` synchronously from the pump for every chunk received."""
        self._watchers.append(watcher)

    def remove_watcher(self, watcher: Watcher) -> None:
        if watcher in self._watchers:
            self._watchers.remove(watcher)

    def forget_before(self, offset: int) -> None:
        """Drop the scrollback before ``offset``: what the engine typed to set a clone up is
        not the user's to see (readers created later start at ``offset``)."""
        self._ring.forget_before(offset)

    def tail(self, n: int) -> bytes:
        """The last ``n`` bytes received (fewer if the scrollback holds fewer)."""
        return self._ring.read(self._ring.end - n) if n > 0 else b""

    def scrollback(self) -> bytes:
        return self._ring.read(self._ring.start)

    def read_from(self, offset: int, limit: int | None = None) -> bytes:
        """Bytes kept from ``offset`` on (clamped to the oldest byte kept)."""
        return self._ring.read(offset, limit)

    def reader(self, from_start: bool = False) -> ConsoleReader:
        """A new cursor at the end of the stream, or at the oldest byte kept."""
        return ConsoleReader(self, self.start_offset if from_start else self.end_offset)

    # -- waiting --------------------------------------------------------------------------------

    async def next_chunk(self, offset: int) -> tuple[int, bytes]:
        """Wait for bytes at ``offset`` or later; returns ``(skipped, data)``.

        ``skipped`` counts bytes between ``offset`` and the oldest byte kept (lost to the ring);
        ``data`` starts right after them and is ``b""`` only once the stream is closed.
        """
        while True:
            skipped = max(0, self._ring.start - offset)
            data = self._ring.read(offset + skipped)
            if data or self.closed:
                return skipped, data
            await self._changed.wait()

    async def wait_ready(self, timeout: float | None = None, *, count: int = 1) -> None:
        """Wait until the guest printed its ready marker at least ``count`` times in total."""
        if self.ready_marker is None:
            raise ConsoleError(f"{self.name}: no ready marker is configured for this guest")
        begin = self.end_offset
        try:
            async with asyncio.timeout(timeout):
                while self.ready_count < count:
                    if self.closed:
                        self.raise_closed("the guest's ready marker", begin)
                    await self._changed.wait()
        except TimeoutError:
            raise ConsoleTimeout(
                f"timed out after {timeout}s waiting for the guest's ready marker",
                seen=self.seen_since(begin),
            ) from None

    def seen_since(self, offset: int) -> str:
        """Decoded output from ``offset`` on (its last few KiB), for error messages."""
        start = max(offset, self.end_offset - _SEEN_TAIL)
        return self._ring.read(start).decode("utf-8", errors="replace")

    def raise_closed(self, waiting_for: str, seen_from: int) -> NoReturn:
        seen = self.seen_since(seen_from)
        err = ConsoleClosed(
            f"{self.name} closed ({self._close_reason}) while waiting for {waiting_for}; "
            f"last output seen: {seen[-500:]!r}"
        )
        err.seen = seen
        raise err

    # -- writing --------------------------------------------------------------------------------

    async def write(self, data: bytes) -> None:
        """Send ``data`` to the guest (whole writes never interleave) and wait for the drain."""
        if isinstance(data, str):
            raise TypeError("write() takes bytes; use write_str() for text")
        if not data:
            return
        async with self._write_lock:
            if self.closed:
                raise ConsoleClosed(f"{self.name} is closed ({self._close_reason}); cannot write")
            try:
                self._writer.write(data)
                await self._writer.drain()
            except (ConnectionError, OSError) as err:
                self._mark_closed(f"write failed: {err}")
                raise ConsoleClosed(f"{self.name}: write failed: {err}") from err

    # -- lifecycle ------------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop the pump and close the connection; wakes every waiter. Idempotent."""
        self._mark_closed("closed by the host")
        if not self._pump.done():
            self._pump.cancel()
        # asyncio.wait never raises, so our own cancellation stays distinguishable
        await asyncio.wait([self._pump])
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except (ConnectionError, OSError):
            pass

    async def _run_pump(self) -> None:
        reason = "end of stream (the machine closed the serial port)"
        try:
            last = 0.0
            while chunk := await self._reader.read(_READ_SIZE):
                self._receive(chunk)
                now = time.monotonic()
                if now - last < _STREAMING_S and len(chunk) < _READ_SIZE:
                    await asyncio.sleep(_COALESCE_S)
                    now = time.monotonic()
                last = now
            if self._end_reason is not None:
                reason = self._end_reason() or reason
        except (ConnectionError, OSError) as err:
            reason = f"connection error: {err}"
        except Exception as err:  # a bug here must still wake every waiter
            _log.exception("%s: console pump failed", self.name)
            reason = f"console pump failed: {err!r}"
        finally:
            # on cancellation close() has already recorded its own reason
            self._mark_closed(reason)

    def _receive(self, chunk: bytes) -> None:
        self._ring.append(chunk)
        if self._ready is not None:
            found = self._ready.feed(chunk)
            while found is not None:
                self.ready_count += 1
                found = self._ready.feed()
        for watcher in list(self._watchers):
            try:
                watcher(chunk)
            except Exception:  # a buggy watcher must not stop the console
                _log.exception("%s: console watcher %r failed", self.name, watcher)
        self._notify()

    def _mark_closed(self, reason: str) -> None:
        if self._close_reason is None:
            self._close_reason = reason
            self._notify()

    def _notify(self) -> None:
        self._changed.notify()


class ConsoleReader:
    """A cursor on a :class:`ConsoleStream`; sees every byte from its offset on."""

    def __init__(self, stream: ConsoleStream, offset: int | None = None) -> None:
        self._stream = stream
        self._offset = stream.end_offset if offset is None else offset
        self._dropped = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    @property
    def stream(self) -> ConsoleStream:
        return self._stream

    @property
    def offset(self) -> int:
        """Absolute stream offset of the next byte this reader will return."""
        return self._offset

    @property
    def dropped(self) -> int:
        """Bytes this reader never saw because the ring dropped them first."""
        return self._dropped

    def _advance_to(self, offset: int, skipped: int = 0) -> None:
        self._dropped += skipped
        self._offset = max(self._offset, offset)

    def _catch_up(self) -> None:
        start = self._stream.start_offset
        if self._offset < start:
            self._advance_to(start, start - self._offset)

    # -- reading --------------------------------------------------------------------------------

    def read_available(self) -> bytes:
        """Everything there is right now (maybe ``b""``); never waits."""
        self._catch_up()
        data = self._stream.read_from(self._offset)
        self._offset += len(data)
        self._decoder.reset()
        return data

    def read_available_text(self) -> str:
        """Like :meth:`read_available`, decoded incrementally (a split character waits)."""
        self._catch_up()
        data = self._stream.read_from(self._offset)
        self._offset += len(data)
        return self._decoder.decode(data)

    async def read(self, n: int = -1) -> bytes:
        """At least one byte (at most ``n`` if ``n >= 0``); ``b""`` once the stream has ended."""
        if n == 0:
            return b""
        skipped, data = await self._stream.next_chunk(self._offset)
        if n > 0:
            data = data[:n]
        self._advance_to(self._offset + skipped + len(data), skipped)
        self._decoder.reset()
        return data

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        while chunk := await self.read():
            yield chunk

    # -- pattern waits --------------------------------------------------------------------------

    async def wait_for(self, pattern: PatternLike, timeout: float | None = None) -> str:
        """Consume through the first match; return the text consumed (the match included).

        At most the matcher's window (64 KiB) of text before the match is returned.
        """
        return (await self.wait_for_match([pattern], timeout)).text

    async def wait_for_any(
        self, patterns: Sequence[PatternLike], timeout: float | None = None
    ) -> tuple[int, str]:
        """Like :meth:`wait_for` for the earliest match of any pattern: ``(index, text)``."""
        result = await self.wait_for_match(patterns, timeout)
        return result.index, result.text

    async def wait_for_match(
        self, patterns: Sequence[PatternLike], timeout: float | None = None
    ) -> MatchResult:
        """The raw form of :meth:`wait_for_any`. On timeout or close nothing is consumed."""
        matcher = PatternMatcher(patterns, offset=self._offset)
        what = describe_patterns(patterns)
        scan = self._offset
        gaps = 0
        try:
            async with asyncio.timeout(timeout):
                while True:
                    skipped, data = await self._stream.next_chunk(scan)
                    if skipped:
                        matcher.skip(skipped)
                        gaps += skipped
                    if not data:
                        self._stream.raise_closed(what, self._offset)
                    scan += skipped + len(data)
                    result = matcher.feed(data)
                    if result is not None:
                        self._advance_to(result.end, gaps)
                        self._decoder.reset()
                        return result
        except TimeoutError:
            raise ConsoleTimeout(
                f"timed out after {timeout}s waiting for {what}",
                seen=matcher.pending.decode("utf-8", errors="replace"),
            ) from None


class ConsoleWriter:
    """The writing half of a console; all writers of one stream are serialized."""

    def __init__(self, stream: ConsoleStream) -> None:
        self._stream = stream

    @property
    def stream(self) -> ConsoleStream:
        return self._stream

    async def write(self, data: bytes) -> None:
        await self._stream.write(data)

    async def write_str(self, text: str) -> None:
        await self._stream.write(text.encode("utf-8"))

    async def write_line(self, text: str) -> None:
        """``text`` followed by ``"\\n"`` (the tty turns it into Enter)."""
        await self._stream.write(text.encode("utf-8") + b"\n")

    async def send_interrupt(self) -> None:
        """Ctrl-C: the guest tty sends SIGINT to the foreground job."""
        await self._stream.write(b"\x03")

    async def send_eof(self) -> None:
        """Ctrl-D: end of input for a program reading the tty."""
        await self._stream.write(b"\x04")


def describe_patterns(patterns: Sequence[PatternLike]) -> str:
    """How timeout and EOF errors name what was being waited for."""
    if len(patterns) == 1:
        return describe_pattern(patterns[0])
    return "any of [" + ", ".join(describe_pattern(p) for p in patterns) + "]"
