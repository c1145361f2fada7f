"""The Internet checksum (RFC 1071) and the IPv4 pseudo-header of TCP and UDP.

The sum is on the data path of every frame, so it never loops over bytes in Python: the whole
buffer becomes one big integer, and since 2**16 == 1 (mod 0xFFFF) the sum of its 16-bit words
is congruent to that integer modulo 0xFFFF. One ``int.from_bytes`` and one ``%`` (both linear,
in C) replace the word loop; a 1500-byte frame costs a few microseconds.

Sums compose: ``ones_complement_sum(b, ones_complement_sum(a))`` equals the sum over ``a + b``
as long as ``a`` has an even length, which lets callers checksum a header, a pseudo-header and a
payload without concatenating them.
"""
from __future__ import annotations

import struct
from ipaddress import IPv4Address

Buffer = bytes | bytearray | memoryview

_PSEUDO = struct.Struct("!4s4sBBH")


def ones_complement_sum(data: Buffer, initial: int = 0) -> int:
    """The 16-bit ones' complement sum of ``data`` (zero-padded to even length) plus ``initial``.

    ``initial`` is any earlier result of this function (or any non-negative int). The result is
    in 0..0xFFFF; it is 0 only when everything summed is zero, and 0xFFFF ("negative zero") when
    a non-zero input sums to a multiple of 0xFFFF, exactly as end-around-carry addition gives.
    """
    n = int.from_bytes(data, "big")
    # An odd trailing byte is the high half of a last word padded with zero (RFC 1071).
    if len(data) & 1:
        n <<= 8
    n += initial
    s = n % 0xFFFF
    return s if s or not n else 0xFFFF


def internet_checksum(data: Buffer, initial: int = 0) -> int:
    """The value to put in a checksum field: the complement of the ones' complement sum.

    Compute it with the checksum field zeroed; ``initial`` is a partial sum to include (the
    pseudo-header sum of TCP/UDP, see :func:`pseudo_header_sum`).
    """
    return 0xFFFF - ones_complement_sum(data, initial)


def verify_checksum(data: Buffer, initial: int = 0) -> bool:
    """Whether ``data``, checksum field included, sums (with ``initial``) to 0xFFFF: i.e. is intact."""
    return ones_complement_sum(data, initial) == 0xFFFF


def pseudo_header(src: IPv4Address, dst: IPv4Address, proto: int, length: int) -> bytes:
    """The 12-byte IPv4 pseudo-header that TCP and UDP checksums cover (RFC 768, RFC 793)."""
    return _PSEUDO.pack(src.packed, dst.packed, 0, proto, length)


def pseudo_header_sum(src: IPv4Address, dst: IPv4Address, proto: int, length: int) -> int:
    """The ones' complement sum of :func:`pseudo_header`, to pass as ``initial`` (no bytes built)."""
    s, d = int(src), int(dst)
    # Words: src hi, src lo, dst hi, dst lo, zero byte + proto, length; then fold like above.
    t = (s >> 16) + (s & 0xFFFF) + (d >> 16) + (d & 0xFFFF) + proto + length
    r = t % 0xFFFF
    return r if r or not t else 0xFFFF
