"""IPv4 (RFC 791): parse and check a packet from the guest, build one to send to it.

Parsing checks what a host must before trusting the header: version, header length, total
length against the bytes present, and the header checksum. Options are skipped (the gateway
acts on none of them). Bytes beyond the total length are Ethernet padding and are dropped.
Fragments are parsed but flagged (:attr:`Ipv4Packet.is_fragment`): the gateway does not
reassemble, it drops them and counts them.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address

from engine.netstack.checksum import internet_checksum, verify_checksum
from engine.netstack.errors import PacketError

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17

FLAG_RESERVED = 0b100
FLAG_DF = 0b010  # don't fragment
FLAG_MF = 0b001  # more fragments

MIN_HEADER_LEN = 20
MAX_PACKET_LEN = 0xFFFF

# version/IHL, TOS, total length, ident, flags/fragment offset, TTL, protocol, checksum, src, dst
# Addresses are unpacked as ints: IPv4Address(int) is the cheapest constructor.
_HEADER = struct.Struct("!BBHHHBBHII")


@dataclass(frozen=True, slots=True)
class Ipv4Packet:
    """One parsed IPv4 packet.

    ``flags`` holds the three flag bits (:data:`FLAG_DF`, :data:`FLAG_MF`), ``frag_offset`` is in
    bytes (the header field times 8), ``header_len`` in bytes (options included), and ``payload``
    is exactly ``total length - header_len`` bytes (padding removed).
    """

    src: IPv4Address
    dst: IPv4Address
    protocol: int
    ttl: int
    ident: int
    flags: int
    frag_offset: int
    payload: bytes
    header_len: int = MIN_HEADER_LEN
    tos: int = 0

    @property
    def is_fragment(self) -> bool:
        """Whether this is part of a fragmented datagram (more fragments follow, or offset != 0)."""
        return bool(self.flags & FLAG_MF) or self.frag_offset != 0

    @property
    def dont_fragment(self) -> bool:
        """Whether the sender set DF (path MTU discovery)."""
        return bool(self.flags & FLAG_DF)

    @property
    def total_length(self) -> int:
        """The total length field: header plus payload, in bytes."""
        return self.header_len + len(self.payload)


def parse_ipv4(data: bytes | bytearray | memoryview) -> Ipv4Packet:
    """Parse and check an IPv4 packet (the Ethernet payload, padding allowed after it).

    Raises PacketError, naming the field, for a truncated packet, version != 4, IHL < 5, a total
    length below the header length or beyond the bytes given, or a wrong header checksum.
    """
    if len(data) < MIN_HEADER_LEN:
        raise PacketError(f"ipv4: packet of {len(data)} bytes is shorter than the 20-byte header")
    ver_ihl, tos, total_len, ident, frag, ttl, proto, _csum, src, dst = _HEADER.unpack_from(data)
    version = ver_ihl >> 4
    if version != 4:
        raise PacketError(f"ipv4: version field is {version}, not 4")
    header_len = (ver_ihl & 0x0F) * 4
    if header_len < MIN_HEADER_LEN:
        raise PacketError(f"ipv4: header length field (IHL) is {header_len // 4}, below the minimum of 5")
    if header_len > len(data):
        raise PacketError(f"ipv4: header length {header_len} exceeds the {len(data)} bytes present")
    if total_len < header_len:
        raise PacketError(f"ipv4: total length {total_len} is shorter than the header length {header_len}")
    if total_len > len(data):
        raise PacketError(f"ipv4: total length {total_len} exceeds the {len(data)} bytes present (truncated)")
    # Slicing a memoryview of the header costs no copy; bytes slicing would copy 20 bytes.
    if not verify_checksum(memoryview(data)[:header_len]):
        raise PacketError("ipv4: bad header checksum")
    return Ipv4Packet(
        src=IPv4Address(src),
        dst=IPv4Address(dst),
        protocol=proto,
        ttl=ttl,
        ident=ident,
        flags=frag >> 13,
        frag_offset=(frag & 0x1FFF) * 8,
        payload=bytes(data[header_len:total_len]),
        header_len=header_len,
        tos=tos,
    )


def build_ipv4(
    src: IPv4Address,
    dst: IPv4Address,
    protocol: int,
    payload: bytes | bytearray | memoryview,
    ttl: int = 64,
    ident: int = 0,
    tos: int = 0,
    dont_fragment: bool = True,
) -> bytes:
    """Build an IPv4 packet with a 20-byte header (no options) and its header checksum.

    DF is set by default, as Linux does for its own traffic: the link to the guest never
    fragments, and a receiver must not care. Raises ValueError if the packet would exceed 65535.
    """
    total_len = MIN_HEADER_LEN + len(payload)
    if total_len > MAX_PACKET_LEN:
        raise ValueError(f"ipv4: packet of {total_len} bytes exceeds the maximum of {MAX_PACKET_LEN}")
    frag = FLAG_DF << 13 if dont_fragment else 0
    s, d = int(src), int(dst)
    header = _HEADER.pack(0x45, tos, total_len, ident, frag, ttl, protocol, 0, s, d)
    csum = internet_checksum(header)
    return _HEADER.pack(0x45, tos, total_len, ident, frag, ttl, protocol, csum, s, d) + payload
