"""UDP over IPv4 (RFC 768): parse a datagram from the guest, build one to send to it.

The checksum covers the IPv4 pseudo-header, the UDP header and the data. A checksum field of
zero means the sender did not compute one, so it is not checked; a computed checksum of zero is
sent as 0xFFFF (the same value in ones' complement) so it is not mistaken for "none".
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address

from engine.netstack.checksum import internet_checksum, ones_complement_sum, pseudo_header_sum
from engine.netstack.errors import PacketError
from engine.netstack.ipv4 import MAX_PACKET_LEN, MIN_HEADER_LEN, PROTO_UDP, Ipv4Packet

HEADER_LEN = 8
MAX_PAYLOAD_LEN = MAX_PACKET_LEN - MIN_HEADER_LEN - HEADER_LEN  # 65507: what fits one IPv4 packet

_HEADER = struct.Struct("!HHHH")


@dataclass(frozen=True, slots=True)
class UdpDatagram:
    """One parsed UDP datagram (addresses are in the enclosing :class:`Ipv4Packet`)."""

    src_port: int
    dst_port: int
    payload: bytes


def parse_udp(ip: Ipv4Packet) -> UdpDatagram:
    """Parse and check the UDP datagram in ``ip``; raises PacketError, naming the field, if bad.

    The length field must be at least 8 and at most the IP payload length; bytes after it are
    ignored (as Linux does). The checksum is checked unless it is zero. Fragments are refused:
    their checksum cannot be checked without reassembly.
    """
    if ip.protocol != PROTO_UDP:
        raise PacketError(f"udp: IP protocol is {ip.protocol}, not UDP (17)")
    if ip.is_fragment:
        raise PacketError("udp: datagram is an IP fragment (not reassembled)")
    data = ip.payload
    if len(data) < HEADER_LEN:
        raise PacketError(f"udp: datagram of {len(data)} bytes is shorter than the 8-byte header")
    src_port, dst_port, length, csum = _HEADER.unpack_from(data)
    if length < HEADER_LEN:
        raise PacketError(f"udp: length field {length} is below the 8-byte header")
    if length > len(data):
        raise PacketError(f"udp: length field {length} exceeds the {len(data)}-byte IP payload")
    if csum != 0:
        view = memoryview(data)[:length] if length != len(data) else data
        if ones_complement_sum(view, pseudo_header_sum(ip.src, ip.dst, PROTO_UDP, length)) != 0xFFFF:
            raise PacketError("udp: bad checksum")
    return UdpDatagram(src_port, dst_port, data[HEADER_LEN:length])


def build_udp(
    src_ip: IPv4Address,
    dst_ip: IPv4Address,
    src_port: int,
    dst_port: int,
    payload: bytes | bytearray | memoryview,
) -> bytes:
    """UDP header plus ``payload``, with the checksum over the pseudo-header of ``src_ip``/``dst_ip``.

    Raises ValueError for a port outside 0..65535 or a payload too large for one IPv4 packet.
    """
    if not (0 <= src_port <= 0xFFFF and 0 <= dst_port <= 0xFFFF):
        raise ValueError(f"udp: ports must be within 0..65535, got {src_port} and {dst_port}")
    if len(payload) > MAX_PAYLOAD_LEN:
        raise ValueError(f"udp: payload of {len(payload)} bytes exceeds the maximum of {MAX_PAYLOAD_LEN}")
    length = HEADER_LEN + len(payload)
    header = _HEADER.pack(src_port, dst_port, length, 0)
    # The 8-byte header has even length, so its sum composes with the payload's (no copy).
    initial = ones_complement_sum(header, pseudo_header_sum(src_ip, dst_ip, PROTO_UDP, length))
    csum = internet_checksum(payload, initial) or 0xFFFF
    return _HEADER.pack(src_port, dst_port, length, csum) + payload
