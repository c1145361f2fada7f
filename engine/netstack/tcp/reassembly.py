"""Out-of-order segments received ahead of a hole, held until the hole fills.

Positions are 64-bit stream offsets (bytes since the start of the stream), not sequence numbers,
so ordering never has to reason about the 2**32 wraparound; the connection converts. Entries
may overlap (a retransmission that straddles two held segments is simply kept); ``pop_ready``
trims the overlap when it hands data out. The queue is bounded by entry count; the connection
bounds bytes by trimming every segment to the receive window first.
"""
from __future__ import annotations

from bisect import bisect_left


class Reassembly:
    """A sorted, bounded set of (start, data, fin) pieces beyond the next expected byte."""

    __slots__ = ("_starts", "_items", "max_segments", "bytes")

    def __init__(self, max_segments: int = 256) -> None:
        self._starts: list[int] = []
        self._items: list[tuple[int, bytes, bool]] = []
        self.max_segments = max_segments
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def add(self, start: int, data: bytes, fin: bool) -> bool:
        """Hold ``data`` at ``start`` (``fin``: a FIN follows its last byte).

        Returns False when the piece was dropped: already covered by a held piece (a duplicate)
        or the queue is full (the peer will retransmit it).
        """
        end = start + len(data)
        i = bisect_left(self._starts, start)
        # A piece starting at or before ours that reaches our end already has every byte.
        if i > 0:
            s, d, f = self._items[i - 1]
            if s + len(d) >= end and (f or not fin):
                return False
        if i < len(self._items):
            s, d, f = self._items[i]
            if s == start and len(d) >= len(data) and (f or not fin):
                return False
        if len(self._items) >= self.max_segments:
            return False
        self._starts.insert(i, start)
        self._items.insert(i, (start, data, fin))
        self.bytes += len(data)
        return True

    def pop_ready(self, offset: int) -> tuple[list[bytes], int, bool]:
        """Take every piece that now continues the stream at ``offset``.

        Returns the chunks to deliver (overlaps trimmed), the new offset, and whether a FIN
        ends them (then everything held beyond it is discarded: nothing follows a FIN).
        """
        chunks: list[bytes] = []
        items, starts = self._items, self._starts
        taken = 0
        fin = False
        while taken < len(items) and items[taken][0] <= offset:
            s, d, f = items[taken]
            taken += 1
            self.bytes -= len(d)
            end = s + len(d)
            if end > offset:
                chunks.append(d[offset - s:] if s < offset else d)
                offset = end
            if f and end == offset:
                fin = True
                break
        if fin:
            self.clear()
        elif taken:
            del items[:taken]
            del starts[:taken]
        return chunks, offset, fin

    def clear(self) -> None:
        """Forget everything held."""
        self._starts.clear()
        self._items.clear()
        self.bytes = 0
