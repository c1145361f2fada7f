"""ICMP for IPv4 (RFC 792): answer echo requests (ping the gateway) and build errors.

The gateway answers pings to its own addresses with :func:`echo_reply` and rejects flows it
refuses with :func:`dest_unreachable` (port unreachable for UDP, administratively prohibited
for policy denials). :func:`may_send_error` applies RFC 1122's rules on when an ICMP error must
not be sent (about another ICMP error, a non-first fragment, or a broadcast/multicast packet).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address

from engine.netstack.checksum import internet_checksum, ones_complement_sum, verify_checksum
from engine.netstack.errors import PacketError
from engine.netstack.ipv4 import MIN_HEADER_LEN, PROTO_ICMP, Ipv4Packet

TYPE_ECHO_REPLY = 0
TYPE_DEST_UNREACHABLE = 3
TYPE_ECHO_REQUEST = 8
TYPE_TIME_EXCEEDED = 11

# Destination unreachable codes.
UNREACH_NET = 0
UNREACH_HOST = 1
UNREACH_PROTOCOL = 2
UNREACH_PORT = 3
UNREACH_FRAG_NEEDED = 4
UNREACH_NET_PROHIBITED = 9
UNREACH_HOST_PROHIBITED = 10
UNREACH_ADMIN_PROHIBITED = 13

# Types that are errors (RFC 1122 3.2.2: never answer an error with an error).
_ERROR_TYPES = frozenset({3, 4, 5, 11, 12})

HEADER_LEN = 8
_BROADCAST = IPv4Address("255.255.255.255")
_HEADER = struct.Struct("!BBH4s")
_ECHO = struct.Struct("!HH")


@dataclass(frozen=True, slots=True)
class IcmpMessage:
    """One parsed ICMP message; ``rest`` is the 4 type-specific header bytes."""

    type: int
    code: int
    rest: bytes
    payload: bytes

    @property
    def ident(self) -> int:
        """The identifier of an echo request or reply."""
        return _ECHO.unpack(self.rest)[0]

    @property
    def seq(self) -> int:
        """The sequence number of an echo request or reply."""
        return _ECHO.unpack(self.rest)[1]

    @property
    def is_error(self) -> bool:
        """Whether this is an error message (unreachable, time exceeded, ...) rather than a query."""
        return self.type in _ERROR_TYPES


def parse_icmp(data: bytes | bytearray | memoryview) -> IcmpMessage:
    """Parse an ICMP message (the IPv4 payload); raises PacketError if truncated or corrupt."""
    if len(data) < HEADER_LEN:
        raise PacketError(f"icmp: message of {len(data)} bytes is shorter than the 8-byte header")
    if not verify_checksum(data):
        raise PacketError("icmp: bad checksum")
    icmp_type, code, _csum, rest = _HEADER.unpack_from(data)
    return IcmpMessage(icmp_type, code, rest, bytes(data[HEADER_LEN:]))


def build_icmp(icmp_type: int, code: int, rest: bytes = b"\x00\x00\x00\x00", payload: bytes | bytearray | memoryview = b"") -> bytes:
    """Build an ICMP message with its checksum (over the whole message, no pseudo-header)."""
    if len(rest) != 4:
        raise ValueError(f"icmp: the type-specific header must be 4 bytes, got {len(rest)}")
    header = _HEADER.pack(icmp_type, code, 0, rest)
    csum = internet_checksum(payload, ones_complement_sum(header))
    return _HEADER.pack(icmp_type, code, csum, rest) + payload


def build_echo(icmp_type: int, ident: int, seq: int, payload: bytes = b"") -> bytes:
    """An echo request (type 8) or reply (type 0) with the given identifier and sequence number."""
    return build_icmp(icmp_type, 0, _ECHO.pack(ident, seq), payload)


def echo_reply(ip: Ipv4Packet) -> bytes | None:
    """The ICMP payload answering an echo request (same id, sequence number and data).

    Returns None if ``ip`` is not an ICMP echo request (or is a fragment, which the gateway
    does not reassemble); raises PacketError if the ICMP message is truncated or corrupt. The
    caller wraps the result with ``build_ipv4(ip.dst, ip.src, PROTO_ICMP, ...)``.
    """
    if ip.protocol != PROTO_ICMP or ip.is_fragment:
        return None
    msg = parse_icmp(ip.payload)
    if msg.type != TYPE_ECHO_REQUEST:
        return None
    return build_icmp(TYPE_ECHO_REPLY, 0, msg.rest, msg.payload)


def dest_unreachable(original: bytes | bytearray | memoryview, code: int, next_hop_mtu: int = 0) -> bytes:
    """A destination-unreachable message (type 3) quoting ``original``'s header and 8 more bytes.

    ``original`` is the offending IPv4 packet as received (Ethernet padding allowed after it).
    ``next_hop_mtu`` fills the field RFC 1191 defines for code 4 (fragmentation needed). Raises
    PacketError if ``original`` does not even hold an IPv4 header to quote.
    """
    if len(original) < MIN_HEADER_LEN or original[0] >> 4 != 4 or (original[0] & 0x0F) < 5:
        raise PacketError("icmp: the packet to quote is not an IPv4 packet")
    header_len = (original[0] & 0x0F) * 4
    total_len = int.from_bytes(original[2:4], "big")
    # Quote the header plus 8 bytes (ports of TCP/UDP), never padding beyond the total length.
    quoted = bytes(original[: min(header_len + 8, max(total_len, MIN_HEADER_LEN), len(original))])
    rest = struct.pack("!HH", 0, next_hop_mtu if code == UNREACH_FRAG_NEEDED else 0)
    return build_icmp(TYPE_DEST_UNREACHABLE, code, rest, quoted)


def may_send_error(ip: Ipv4Packet) -> bool:
    """Whether RFC 1122 (3.2.2) allows an ICMP error about ``ip``.

    Not about an ICMP error message, a non-first fragment, a packet to a broadcast or multicast
    address, or one from an address that does not name a single host. (A directed broadcast
    such as 10.0.2.255 is the caller's to check: this module does not know the subnet.)
    """
    if ip.frag_offset != 0:
        return False
    if ip.dst.is_multicast or ip.dst == _BROADCAST:
        return False
    if ip.src.is_multicast or ip.src == _BROADCAST or ip.src.is_unspecified or ip.src.is_loopback:
        return False
    if ip.protocol == PROTO_ICMP:
        # An unreadable ICMP message might be an error; stay quiet about it.
        if len(ip.payload) < 1 or ip.payload[0] in _ERROR_TYPES:
            return False
    return True

