"""ARP for IPv4 over Ethernet (RFC 826): answer the guest's requests for the gateway's addresses.

The gateway owns a few addresses on the guest's subnet (itself, the DNS address, and any
guest-visible stand-ins it hands out); :class:`ArpResponder` replies to who-has requests for
them with the gateway MAC and ignores everything else: requests for other addresses, replies,
gratuitous announcements. It also remembers which MAC each sender used, so the gateway can
address frames it originates (port forwards) without sending requests of its own.
"""
from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address

from engine.netstack.errors import PacketError
from engine.netstack.ethernet import BROADCAST_MAC, ETHERTYPE_ARP, ETHERTYPE_IPV4, EthernetFrame, build_ethernet

OP_REQUEST = 1
OP_REPLY = 2

HTYPE_ETHERNET = 1
ARP_LEN = 28

_UNSPECIFIED = IPv4Address(0)
_ZERO_MAC = b"\x00" * 6
# htype, ptype, hlen, plen, op, sender MAC, sender IP, target MAC, target IP
_ARP = struct.Struct("!HHBBH6s4s6s4s")


@dataclass(frozen=True, slots=True)
class ArpPacket:
    """One ARP packet for IPv4 over Ethernet (the only kind parsed)."""

    op: int
    sender_mac: bytes
    sender_ip: IPv4Address
    target_mac: bytes
    target_ip: IPv4Address

    @property
    def is_gratuitous(self) -> bool:
        """An announcement: the sender asks for (or answers about) its own address."""
        return self.sender_ip == self.target_ip

    @property
    def is_probe(self) -> bool:
        """An address-conflict probe (RFC 5227): a request whose sender address is 0.0.0.0."""
        return self.op == OP_REQUEST and self.sender_ip == _UNSPECIFIED


def parse_arp(data: bytes | bytearray | memoryview) -> ArpPacket:
    """Parse an ARP payload; raises PacketError unless it is a whole IPv4-over-Ethernet packet.

    Bytes after the 28 that matter are Ethernet padding and are ignored.
    """
    if len(data) < ARP_LEN:
        raise PacketError(f"arp: packet of {len(data)} bytes is shorter than 28")
    htype, ptype, hlen, plen, op, smac, sip, tmac, tip = _ARP.unpack_from(data)
    if htype != HTYPE_ETHERNET:
        raise PacketError(f"arp: hardware type {htype} is not Ethernet (1)")
    if ptype != ETHERTYPE_IPV4:
        raise PacketError(f"arp: protocol type {ptype:#06x} is not IPv4 (0x0800)")
    if hlen != 6:
        raise PacketError(f"arp: hardware address length {hlen} is not 6")
    if plen != 4:
        raise PacketError(f"arp: protocol address length {plen} is not 4")
    return ArpPacket(op, smac, IPv4Address(sip), tmac, IPv4Address(tip))


def build_arp(op: int, sender_mac: bytes, sender_ip: IPv4Address, target_mac: bytes, target_ip: IPv4Address) -> bytes:
    """Build a 28-byte ARP payload for IPv4 over Ethernet."""
    if len(sender_mac) != 6 or len(target_mac) != 6:
        raise ValueError("arp: MAC addresses must be 6 bytes")
    return _ARP.pack(HTYPE_ETHERNET, ETHERTYPE_IPV4, 6, 4, op, sender_mac, sender_ip.packed, target_mac, target_ip.packed)


def build_arp_reply(request: ArpPacket, mac: bytes) -> bytes:
    """The ARP payload answering ``request``: ``request.target_ip`` is at ``mac``."""
    return build_arp(OP_REPLY, mac, request.target_ip, request.sender_mac, request.sender_ip)


def build_arp_request(sender_mac: bytes, sender_ip: IPv4Address, target_ip: IPv4Address) -> bytes:
    """A full broadcast Ethernet frame asking who has ``target_ip``."""
    payload = build_arp(OP_REQUEST, sender_mac, sender_ip, _ZERO_MAC, target_ip)
    return build_ethernet(BROADCAST_MAC, sender_mac, ETHERTYPE_ARP, payload)


class ArpResponder:
    """Answers ARP requests for the gateway's own addresses; never raises on bad input.

    ``addresses`` is a live set: the gateway adds and removes the addresses it answers for.
    ``neighbors`` maps each sender address seen to its MAC (bounded by ``max_neighbors``).
    ``counters`` counts what was answered and why the rest was dropped.
    """

    def __init__(self, gateway_mac: bytes, addresses: Iterable[IPv4Address], max_neighbors: int = 256) -> None:
        if len(gateway_mac) != 6:
            raise ValueError("arp: gateway MAC must be 6 bytes")
        self.gateway_mac = bytes(gateway_mac)
        self.addresses: set[IPv4Address] = set(addresses)
        self.neighbors: dict[IPv4Address, bytes] = {}
        self.max_neighbors = max_neighbors
        self.counters: dict[str, int] = {}

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def handle(self, frame: EthernetFrame) -> bytes | None:
        """The Ethernet frame to send back for an ARP request for one of ours, else None."""
        if frame.ethertype != ETHERTYPE_ARP:
            self._count("not_arp")
            return None
        try:
            arp = parse_arp(frame.payload)
        except PacketError:
            self._count("malformed")
            return None
        # A group address can never be the sender's own: the packet is forged or broken.
        if arp.sender_mac[0] & 1 or arp.sender_mac == _ZERO_MAC:
            self._count("bad_sender_mac")
            return None
        self._learn(arp)
        if arp.op != OP_REQUEST:
            self._count("ignored_reply" if arp.op == OP_REPLY else "ignored_op")
            return None
        if arp.is_gratuitous:
            # An announcement needs no answer (if it claims one of ours, it is the guest's
            # mistake; answering would only fight over the address).
            self._count("ignored_gratuitous")
            return None
        if arp.target_ip not in self.addresses:
            self._count("not_ours")
            return None
        self._count("replied")
        # A probe (sender 0.0.0.0) is answered too: the reply goes to the prober's MAC and tells
        # it the address is taken, which is what RFC 5227 expects from the owner.
        payload = build_arp_reply(arp, self.gateway_mac)
        return build_ethernet(arp.sender_mac, self.gateway_mac, ETHERTYPE_ARP, payload)

    def _learn(self, arp: ArpPacket) -> None:
        ip = arp.sender_ip
        # Probes carry no usable address, and our own addresses are never the guest's.
        if ip == _UNSPECIFIED or ip in self.addresses:
            return
        if ip not in self.neighbors and len(self.neighbors) >= self.max_neighbors:
            self._count("neighbors_full")
            return
        self.neighbors[ip] = arp.sender_mac
