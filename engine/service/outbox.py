"""Outbox: one connection's queue of frames to send, bounded in bytes (sans I/O).

The server never writes a frame straight to a client's socket: the frame goes into the
connection's outbox and one writer task sends the frames in order, waiting for the socket as it
must. A client that sends requests and never reads the replies makes the outbox fill; the
bound (``max_reply_bytes``) then says "this client is not reading", and the connection is closed
instead of buffering without end. One frame always fits in an empty outbox, so a reply larger
than the bound (a long command output) still goes out to a client that reads.
"""
from __future__ import annotations

import collections


class Outbox:
    """Frames waiting to be written, at most ``limit`` bytes of them (but always one)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._frames: collections.deque[bytes] = collections.deque()
        self._bytes = 0

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._frames)

    def fits(self, size: int) -> bool:
        return not self._frames or self._bytes + size <= self.limit

    def offer(self, frame: bytes) -> bool:
        """Queue ``frame`` if it fits; False (nothing queued) if the outbox is full."""
        if not self.fits(len(frame)):
            return False
        self._frames.append(frame)
        self._bytes += len(frame)
        return True

    def take(self) -> bytes | None:
        """The oldest frame, or None when empty."""
        if not self._frames:
            return None
        frame = self._frames.popleft()
        self._bytes -= len(frame)
        return frame

    def clear(self) -> None:
        self._frames.clear()
        self._bytes = 0
