"""Ethernet II framing: parse a frame from the guest's NIC, build one to send back.

Frames arrive without preamble or FCS (QEMU's socket netdevs carry the bare frame). Short
frames may carry zero padding up to 60 bytes; the padding stays in ``payload`` and the IPv4
parser cuts it off using the IP total length.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from engine.netstack.errors import PacketError

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_ARP = 0x0806
ETHERTYPE_VLAN = 0x8100
ETHERTYPE_IPV6 = 0x86DD

BROADCAST_MAC = b"\xff" * 6
HEADER_LEN = 14
MIN_FRAME_LEN = 60  # without FCS; what a physical NIC pads to (we do not need to)

_HEADER = struct.Struct("!6s6sH")
_HEX = frozenset("0123456789abcdefABCDEF")


@dataclass(frozen=True, slots=True)
class EthernetFrame:
    """One parsed Ethernet II frame; MACs are 6 bytes, ``payload`` includes any padding."""

    dst: bytes
    src: bytes
    ethertype: int
    payload: bytes

    @property
    def is_broadcast(self) -> bool:
        """Whether the frame went to ff:ff:ff:ff:ff:ff."""
        return self.dst == BROADCAST_MAC

    @property
    def is_multicast(self) -> bool:
        """Whether the destination is a group address (broadcast included): I/G bit set."""
        return bool(self.dst[0] & 1)


def parse_ethernet(data: bytes | bytearray | memoryview) -> EthernetFrame:
    """Split a frame into header fields and payload; raises PacketError if shorter than 14 bytes.

    The ethertype is returned as it is (802.1Q tags, 802.3 length fields and unknown types are
    not interpreted: the gateway drops what it does not handle and counts it).
    """
    if len(data) < HEADER_LEN:
        raise PacketError(f"ethernet: frame of {len(data)} bytes is shorter than the 14-byte header")
    dst, src, ethertype = _HEADER.unpack_from(data)
    return EthernetFrame(dst, src, ethertype, bytes(data[HEADER_LEN:]))


def build_ethernet(dst: bytes, src: bytes, ethertype: int, payload: bytes | bytearray | memoryview) -> bytes:
    """Build a frame (no padding, no FCS: a virtio-net guest accepts short frames)."""
    if len(dst) != 6 or len(src) != 6:
        raise ValueError(f"ethernet: MAC addresses must be 6 bytes, got {len(dst)} and {len(src)}")
    return _HEADER.pack(dst, src, ethertype) + payload


def format_mac(mac: bytes) -> str:
    """``52:54:00:12:34:56`` for 6 bytes of MAC (for events and logs)."""
    return mac.hex(":")


def parse_mac(text: str) -> bytes:
    """The 6 bytes of a MAC written ``52:54:00:12:34:56`` (or with ``-``); ValueError otherwise."""
    parts = text.replace("-", ":").split(":")
    if len(parts) != 6 or not all(len(p) == 2 and all(c in _HEX for c in p) for p in parts):
        raise ValueError(f"not a MAC address: {text!r} (expected six hex pairs like 52:54:00:12:34:56)")
    return bytes.fromhex("".join(parts))
