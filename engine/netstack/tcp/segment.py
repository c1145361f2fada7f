"""TCP segments (RFC 9293): parse and build, options, and sequence-number arithmetic.

The connection state machine that terminates the guest's connections lives in
:mod:`engine.netstack.tcp.connection`; this module is the wire format only.

Sequence numbers live modulo 2**32, so they are compared through their signed 32-bit
difference (``seq_lt`` and friends), never with ``<`` directly: that keeps every comparison
right across the wraparound, as long as the two numbers are less than 2**31 apart (which TCP's
window rules guarantee).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Protocol

from engine.netstack.checksum import (internet_checksum, ones_complement_sum, pseudo_header_sum,
                                      verify_checksum)
from engine.netstack.errors import PacketError

PROTO_TCP = 6

FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10
URG = 0x20
ECE = 0x40
CWR = 0x80

# Option kinds (RFC 9293, RFC 7323, RFC 2018).
OPT_EOL = 0
OPT_NOP = 1
OPT_MSS = 2
OPT_WSCALE = 3
OPT_SACK_PERMITTED = 4
OPT_TIMESTAMPS = 8

MAX_WSCALE = 14  # RFC 7323 2.3: larger shifts are treated as 14
DEFAULT_MSS = 536  # RFC 9293 3.7.1: what a peer that sends no MSS option can take

_HEADER = struct.Struct("!HHIIBBHHH")
_MOD = 1 << 32
_MASK = _MOD - 1
_HALF = 1 << 31


# -- sequence arithmetic -----------------------------------------------------------------------

def seq_add(a: int, n: int) -> int:
    """``a + n`` modulo 2**32 (``n`` may be negative)."""
    return (a + n) & _MASK


def seq_diff(a: int, b: int) -> int:
    """The signed distance ``a - b`` in -2**31 .. 2**31-1, correct across the wraparound."""
    d = (a - b) & _MASK
    return d - _MOD if d >= _HALF else d


def seq_lt(a: int, b: int) -> bool:
    """``a`` comes before ``b`` in sequence space."""
    return seq_diff(a, b) < 0


def seq_le(a: int, b: int) -> bool:
    """``a`` comes before ``b`` or equals it."""
    return seq_diff(a, b) <= 0


def seq_gt(a: int, b: int) -> bool:
    """``a`` comes after ``b``."""
    return seq_diff(a, b) > 0


def seq_ge(a: int, b: int) -> bool:
    """``a`` comes after ``b`` or equals it."""
    return seq_diff(a, b) >= 0


# -- segments ----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class TcpSegment:
    """One parsed TCP segment: header fields, the options we understand, and the payload.

    ``window`` is the raw 16-bit field (the connection applies the scale). Options that were
    absent are ``None`` / ``False``; unknown options are skipped.
    """

    src_port: int
    dst_port: int
    seq: int
    ack: int
    flags: int
    window: int
    payload: bytes = b""
    mss: int | None = None
    wscale: int | None = None
    sack_permitted: bool = False
    timestamps: tuple[int, int] | None = None
    urgent: int = 0

    @property
    def syn(self) -> bool:
        """SYN flag."""
        return bool(self.flags & SYN)

    @property
    def ack_flag(self) -> bool:
        """ACK flag (``ack`` is the acknowledgment number field itself)."""
        return bool(self.flags & ACK)

    @property
    def fin(self) -> bool:
        """FIN flag."""
        return bool(self.flags & FIN)

    @property
    def rst(self) -> bool:
        """RST flag."""
        return bool(self.flags & RST)

    @property
    def psh(self) -> bool:
        """PSH flag."""
        return bool(self.flags & PSH)

    @property
    def seg_len(self) -> int:
        """Sequence space the segment occupies: payload bytes plus one each for SYN and FIN."""
        return len(self.payload) + (self.flags & SYN and 1) + (self.flags & FIN)


def parse_options(opts: bytes | memoryview) -> tuple[int | None, int | None, bool, tuple[int, int] | None]:
    """Read MSS, window scale, SACK-permitted and timestamps out of an option block.

    Like Linux, a malformed option list is not an error: parsing stops at a bad length (what was
    read so far is kept) and a known option with the wrong length is ignored, so one odd option
    never costs the whole segment.
    """
    mss = wscale = None
    sack = False
    ts = None
    i, n = 0, len(opts)
    while i < n:
        kind = opts[i]
        if kind == OPT_EOL:
            break
        if kind == OPT_NOP:
            i += 1
            continue
        if i + 1 >= n:
            break
        length = opts[i + 1]
        if length < 2 or i + length > n:
            break
        if kind == OPT_MSS and length == 4:
            mss = (opts[i + 2] << 8) | opts[i + 3]
        elif kind == OPT_WSCALE and length == 3:
            wscale = min(opts[i + 2], MAX_WSCALE)
        elif kind == OPT_SACK_PERMITTED and length == 2:
            sack = True
        elif kind == OPT_TIMESTAMPS and length == 10:
            ts = struct.unpack_from("!II", opts, i + 2)
        i += length
    return mss, wscale, sack, ts


def build_options(mss: int | None = None, wscale: int | None = None, sack_permitted: bool = False,
                  timestamps: tuple[int, int] | None = None) -> bytes:
    """An option block (NOP-padded to a multiple of 4 bytes) for a SYN or SYN-ACK."""
    out = bytearray()
    if mss is not None:
        out += struct.pack("!BBH", OPT_MSS, 4, mss)
    if wscale is not None:
        out += bytes((OPT_NOP, OPT_WSCALE, 3, wscale))
    if sack_permitted:
        out += bytes((OPT_NOP, OPT_NOP, OPT_SACK_PERMITTED, 2))
    if timestamps is not None:
        out += bytes((OPT_NOP, OPT_NOP, OPT_TIMESTAMPS, 10)) + struct.pack("!II", *timestamps)
    return bytes(out)


def parse_tcp(src_ip: IPv4Address, dst_ip: IPv4Address, data: bytes | bytearray | memoryview,
              verify: bool = True) -> TcpSegment:
    """Parse the TCP segment ``data`` (an IPv4 payload) sent from ``src_ip`` to ``dst_ip``.

    The checksum over the pseudo-header is verified unless ``verify`` is false: an adapter that
    negotiated virtio-net checksum offload passes false for frames flagged NEEDS_CSUM, whose
    checksum field holds only the pseudo-header sum. Raises PacketError on anything malformed.
    """
    n = len(data)
    if n < 20:
        raise PacketError(f"tcp: segment of {n} bytes is shorter than the 20-byte header")
    sport, dport, seq, ack, off, flags, window, _csum, urgent = _HEADER.unpack_from(data, 0)
    hl = (off >> 4) * 4
    if hl < 20:
        raise PacketError(f"tcp: data offset {hl} is below the 20-byte minimum")
    if hl > n:
        raise PacketError(f"tcp: data offset {hl} exceeds the segment length {n}")
    if verify and not verify_checksum(data, pseudo_header_sum(src_ip, dst_ip, PROTO_TCP, n)):
        raise PacketError("tcp: bad checksum")
    mss, wscale, sack, ts = parse_options(memoryview(data)[20:hl]) if hl > 20 else (None, None, False, None)
    return TcpSegment(sport, dport, seq, ack, flags, window, bytes(data[hl:]), mss, wscale, sack, ts,
                      urgent if flags & URG else 0)


class IpPayload(Protocol):
    """What :func:`tcp_from_ipv4` reads of a packet (an ``Ipv4Packet``, or any look-alike)."""

    @property
    def src(self) -> IPv4Address: ...
    @property
    def dst(self) -> IPv4Address: ...
    @property
    def payload(self) -> bytes | bytearray | memoryview: ...


def tcp_from_ipv4(ip: IpPayload, verify: bool = True) -> TcpSegment:
    """``parse_tcp`` on an ``Ipv4Packet`` (anything with ``src``, ``dst`` and ``payload``)."""
    return parse_tcp(ip.src, ip.dst, ip.payload, verify)


def build_tcp(src_ip: IPv4Address, dst_ip: IPv4Address, src_port: int, dst_port: int, seq: int,
              ack: int, flags: int, window: int, payload: bytes | bytearray | memoryview = b"",
              options: bytes = b"") -> bytes:
    """A TCP segment (header, options, payload) with its checksum, ready to be an IPv4 payload.

    ``options`` must already be padded to a multiple of 4 bytes (``build_options`` does that);
    ``window`` is the raw 16-bit field, already scaled down by the sender.
    """
    if len(options) & 3 or len(options) > 40:
        raise ValueError(f"tcp options must be padded to 4 bytes and at most 40 (got {len(options)})")
    hl = 20 + len(options)
    header = _HEADER.pack(src_port, dst_port, seq & _MASK, ack & _MASK, (hl // 4) << 4, flags,
                          window, 0, 0) + options
    length = hl + len(payload)
    # The header has even length, so its sum and the payload's compose without concatenating.
    partial = ones_complement_sum(header, pseudo_header_sum(src_ip, dst_ip, PROTO_TCP, length))
    csum = internet_checksum(payload, partial)
    return b"".join((header[:16], csum.to_bytes(2, "big"), header[18:], payload))
