"""ARP: parsing, replies for owned addresses only, ignored replies/announcements, property tests."""
from __future__ import annotations

import struct
from ipaddress import IPv4Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.netstack.arp import (
    OP_REPLY,
    OP_REQUEST,
    ArpPacket,
    ArpResponder,
    build_arp,
    build_arp_reply,
    build_arp_request,
    parse_arp,
)
from engine.netstack.errors import PacketError
from engine.netstack.ethernet import BROADCAST_MAC, ETHERTYPE_ARP, ETHERTYPE_IPV4, EthernetFrame, parse_ethernet

GATEWAY_MAC = bytes.fromhex("52550a000202")
GUEST_MAC = bytes.fromhex("525400123456")
GATEWAY = IPv4Address("10.0.2.2")
DNS = IPv4Address("10.0.2.3")
GUEST = IPv4Address("10.0.2.15")
ZERO_MAC = b"\x00" * 6


def arp_bytes(op: int = OP_REQUEST, smac: bytes = GUEST_MAC, sip: IPv4Address = GUEST, tmac: bytes = ZERO_MAC,
              tip: IPv4Address = GATEWAY, htype: int = 1, ptype: int = 0x0800, hlen: int = 6, plen: int = 4) -> bytes:
    """A hand-made ARP packet (fields packed one by one, independently of the module)."""
    return struct.pack("!HHBBH", htype, ptype, hlen, plen, op) + smac + sip.packed + tmac + tip.packed


def request_frame(**kwargs: object) -> EthernetFrame:
    return EthernetFrame(BROADCAST_MAC, GUEST_MAC, ETHERTYPE_ARP, arp_bytes(**kwargs))  # type: ignore[arg-type]


def responder() -> ArpResponder:
    return ArpResponder(GATEWAY_MAC, {GATEWAY, DNS})


def test_parse_request() -> None:
    pkt = parse_arp(arp_bytes() + b"\x00" * 18)  # Ethernet padding after the 28 bytes
    assert pkt == ArpPacket(OP_REQUEST, GUEST_MAC, GUEST, ZERO_MAC, GATEWAY)
    assert not pkt.is_gratuitous and not pkt.is_probe


@pytest.mark.parametrize(
    "raw, field",
    [
        (arp_bytes()[:27], "shorter than 28"),
        (b"", "shorter than 28"),
        (arp_bytes(htype=6), "hardware type"),
        (arp_bytes(ptype=0x86DD), "protocol type"),
        (arp_bytes(hlen=8), "hardware address length"),
        (arp_bytes(plen=16), "protocol address length"),
    ],
)
def test_parse_rejects(raw: bytes, field: str) -> None:
    with pytest.raises(PacketError, match=field):
        parse_arp(raw)


def test_build_matches_hand_made() -> None:
    assert build_arp(OP_REQUEST, GUEST_MAC, GUEST, ZERO_MAC, GATEWAY) == arp_bytes()
    reply = build_arp_reply(parse_arp(arp_bytes()), GATEWAY_MAC)
    assert reply == arp_bytes(op=OP_REPLY, smac=GATEWAY_MAC, sip=GATEWAY, tmac=GUEST_MAC, tip=GUEST)
    with pytest.raises(ValueError):
        build_arp(OP_REQUEST, b"\x00", GUEST, ZERO_MAC, GATEWAY)


def test_build_request_frame() -> None:
    frame = parse_ethernet(build_arp_request(GATEWAY_MAC, GATEWAY, GUEST))
    assert frame.dst == BROADCAST_MAC and frame.src == GATEWAY_MAC and frame.ethertype == ETHERTYPE_ARP
    assert parse_arp(frame.payload) == ArpPacket(OP_REQUEST, GATEWAY_MAC, GATEWAY, ZERO_MAC, GUEST)


@pytest.mark.parametrize("target", [GATEWAY, DNS])
def test_replies_for_owned_addresses(target: IPv4Address) -> None:
    r = responder()
    out = r.handle(request_frame(tip=target))
    assert out is not None
    frame = parse_ethernet(out)
    assert (frame.dst, frame.src, frame.ethertype) == (GUEST_MAC, GATEWAY_MAC, ETHERTYPE_ARP)
    assert parse_arp(frame.payload) == ArpPacket(OP_REPLY, GATEWAY_MAC, target, GUEST_MAC, GUEST)
    assert r.counters == {"replied": 1}
    assert r.neighbors == {GUEST: GUEST_MAC}


def test_unicast_request_is_answered_too() -> None:
    frame = EthernetFrame(GATEWAY_MAC, GUEST_MAC, ETHERTYPE_ARP, arp_bytes(tmac=GATEWAY_MAC))
    assert responder().handle(frame) is not None


def test_probe_is_answered_to_the_prober() -> None:
    out = responder().handle(request_frame(sip=IPv4Address(0), tip=GATEWAY))
    assert out is not None
    reply = parse_arp(parse_ethernet(out).payload)
    assert reply.target_mac == GUEST_MAC and reply.target_ip == IPv4Address(0) and reply.sender_ip == GATEWAY


@pytest.mark.parametrize(
    "frame, counter",
    [
        (request_frame(tip=IPv4Address("10.0.2.99")), "not_ours"),
        (request_frame(tip=IPv4Address("8.8.8.8")), "not_ours"),
        (request_frame(op=OP_REPLY, tmac=GATEWAY_MAC), "ignored_reply"),
        (request_frame(op=OP_REPLY, sip=GUEST, tip=GUEST, tmac=BROADCAST_MAC), "ignored_reply"),
        (request_frame(sip=GUEST, tip=GUEST), "ignored_gratuitous"),
        (request_frame(sip=GATEWAY, tip=GATEWAY), "ignored_gratuitous"),
        (request_frame(op=8), "ignored_op"),
        (request_frame(smac=BROADCAST_MAC), "bad_sender_mac"),
        (request_frame(smac=ZERO_MAC), "bad_sender_mac"),
        (request_frame(ptype=0x86DD), "malformed"),
        (EthernetFrame(BROADCAST_MAC, GUEST_MAC, ETHERTYPE_ARP, b"\x00\x01"), "malformed"),
        (EthernetFrame(BROADCAST_MAC, GUEST_MAC, ETHERTYPE_IPV4, arp_bytes()), "not_arp"),
    ],
)
def test_ignored_frames_are_counted(frame: EthernetFrame, counter: str) -> None:
    r = responder()
    assert r.handle(frame) is None
    assert r.counters == {counter: 1}


def test_addresses_are_live_and_neighbors_bounded() -> None:
    r = ArpResponder(GATEWAY_MAC, [GATEWAY], max_neighbors=2)
    standin = IPv4Address("10.0.2.100")
    assert r.handle(request_frame(tip=standin)) is None
    r.addresses.add(standin)
    assert r.handle(request_frame(tip=standin)) is not None
    for i in range(5):
        r.handle(request_frame(sip=IPv4Address(f"10.0.2.{20 + i}"), smac=bytes([2, 0, 0, 0, 0, i])))
    assert len(r.neighbors) == 2 and r.counters["neighbors_full"] == 4
    assert GATEWAY not in r.neighbors


def test_rejects_bad_gateway_mac() -> None:
    with pytest.raises(ValueError):
        ArpResponder(b"\x00" * 5, [GATEWAY])


addresses = st.ip_addresses(v=4)
macs = st.binary(min_size=6, max_size=6)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 0xFFFF), macs, addresses, macs, addresses)
def test_round_trip(op: int, smac: bytes, sip: IPv4Address, tmac: bytes, tip: IPv4Address) -> None:
    assert parse_arp(build_arp(op, smac, sip, tmac, tip)) == ArpPacket(op, smac, sip, tmac, tip)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64), st.integers(0, 0xFFFF))
def test_random_bytes(data: bytes, ethertype: int) -> None:
    try:
        parse_arp(data)
    except PacketError:
        pass
    r = responder()
    r.handle(EthernetFrame(BROADCAST_MAC, GUEST_MAC, ethertype, data))
    r.handle(EthernetFrame(BROADCAST_MAC, GUEST_MAC, ETHERTYPE_ARP, data))
    assert sum(r.counters.values()) >= 2


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_request_parses_or_packet_error_and_core_never_raises(data: st.DataObject) -> None:
    raw = bytearray(arp_bytes(tip=data.draw(st.sampled_from([GATEWAY, DNS]))))
    bit = data.draw(st.integers(0, len(raw) * 8 - 1))
    raw[bit // 8] ^= 0x80 >> (bit % 8)
    try:
        pkt = parse_arp(bytes(raw))
    except PacketError:
        assert bit < 48  # only the fixed header fields are validated
    else:
        assert isinstance(pkt, ArpPacket)
    out = responder().handle(EthernetFrame(BROADCAST_MAC, GUEST_MAC, ETHERTYPE_ARP, bytes(raw)))
    if out is not None:
        reply = parse_arp(parse_ethernet(out).payload)
        assert reply.op == OP_REPLY and reply.sender_ip in {GATEWAY, DNS} and reply.sender_mac == GATEWAY_MAC
