"""RequestBudget: the one bound on request bytes the pool service buffers across all clients.

Sans I/O: plain accounting that the frame decoders of every connection share. A decoder claims
a frame's whole announced size the moment it has read the frame's 4-byte header, before any of
its body is buffered, and gives the claim back when the frame is complete (or the connection
closes). So a partly received frame counts in full, the bound holds however slowly the body
trickles in, and a client whose frame does not fit learns so at once instead of after sending
16 MiB.
"""
from __future__ import annotations


class RequestBudget:
    """``limit`` bytes shared by every connection's partly received frames."""

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError(f"a request budget cannot be negative (got {limit})")
        self.limit = limit
        self._used = 0

    @property
    def used(self) -> int:
        """Bytes claimed right now, across all clients."""
        return self._used

    @property
    def free(self) -> int:
        return self.limit - self._used

    def claim(self, size: int) -> bool:
        """Take ``size`` bytes if they fit under the limit; False (and nothing taken) if not."""
        if size < 0:
            raise ValueError(f"cannot claim a negative size ({size})")
        if self._used + size > self.limit:
            return False
        self._used += size
        return True

    def release(self, size: int) -> None:
        """Give back ``size`` bytes of an earlier claim."""
        if size < 0 or size > self._used:
            raise ValueError(f"releasing {size} bytes, but only {self._used} are claimed")
        self._used -= size
