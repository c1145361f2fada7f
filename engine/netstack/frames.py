"""QEMU's stream netdev framing: each Ethernet frame preceded by its 4-byte big-endian length.

Sans-IO: ``StreamDeframer.feed(bytes)`` returns the whole frames the bytes completed; a length
that no Ethernet frame can have means the stream is corrupt, and the deframer says so instead of
buffering without bound.
"""
from __future__ import annotations

import struct

from engine.netstack.errors import PacketError

# virtio-net frames are at most the MTU plus headers; 65550 leaves room for a 65535 MTU.
MAX_FRAME = 65550
_LEN = struct.Struct(">I")


def frame(data: bytes) -> bytes:
    """One frame with its length prefix, ready to write to QEMU."""
    return _LEN.pack(len(data)) + data


class StreamDeframer:
    """Splits the byte stream from QEMU into Ethernet frames."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buffer = bytearray()
        self._max = max_frame

    def feed(self, data: bytes) -> list[bytes]:
        """Frames completed by ``data`` (raises PacketError on an impossible length)."""
        buf = self._buffer
        buf += data
        frames: list[bytes] = []
        pos = 0
        while len(buf) - pos >= 4:
            (length,) = _LEN.unpack_from(buf, pos)
            if length > self._max:
                raise PacketError(f"stream frame length {length} exceeds {self._max}: the stream is corrupt")
            end = pos + 4 + length
            if end > len(buf):
                break
            frames.append(bytes(buf[pos + 4 : end]))
            pos = end
        if pos:
            del buf[:pos]
        return frames

    @property
    def pending(self) -> int:
        """Bytes held while waiting for the rest of a frame."""
        return len(self._buffer)
