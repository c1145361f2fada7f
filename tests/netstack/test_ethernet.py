"""Ethernet II framing: hand-made frames, short input, round trips and random bytes."""
from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.netstack.errors import PacketError
from engine.netstack.ethernet import (
    BROADCAST_MAC,
    ETHERTYPE_ARP,
    ETHERTYPE_IPV4,
    ETHERTYPE_IPV6,
    EthernetFrame,
    build_ethernet,
    format_mac,
    parse_ethernet,
    parse_mac,
)

GUEST = bytes.fromhex("525400123456")
GATEWAY = bytes.fromhex("52550a000202")

macs = st.binary(min_size=6, max_size=6)


def test_parse_hand_made_frame() -> None:
    raw = BROADCAST_MAC + GUEST + struct.pack("!H", ETHERTYPE_ARP) + b"payload"
    frame = parse_ethernet(raw)
    assert frame == EthernetFrame(BROADCAST_MAC, GUEST, ETHERTYPE_ARP, b"payload")
    assert frame.is_broadcast and frame.is_multicast
    assert isinstance(frame.payload, bytes)


def test_unicast_and_multicast_flags() -> None:
    frame = parse_ethernet(GATEWAY + GUEST + b"\x86\xdd")
    assert frame.ethertype == ETHERTYPE_IPV6
    assert not frame.is_broadcast and not frame.is_multicast
    assert frame.payload == b""
    assert parse_ethernet(bytes.fromhex("01005e000001") + GUEST + b"\x08\x00").is_multicast


def test_padding_stays_in_payload() -> None:
    raw = GATEWAY + GUEST + b"\x08\x00" + b"x" * 20 + b"\x00" * 26
    assert len(raw) == 60
    assert parse_ethernet(raw).payload == b"x" * 20 + b"\x00" * 26


@pytest.mark.parametrize("length", range(14))
def test_short_frame_rejected(length: int) -> None:
    with pytest.raises(PacketError, match="ethernet"):
        parse_ethernet(b"\x00" * length)


def test_accepts_memoryview_and_bytearray() -> None:
    raw = GATEWAY + GUEST + b"\x08\x00abc"
    assert parse_ethernet(memoryview(raw)) == parse_ethernet(bytearray(raw)) == parse_ethernet(raw)


def test_build() -> None:
    assert build_ethernet(GUEST, GATEWAY, ETHERTYPE_IPV4, b"data") == GUEST + GATEWAY + b"\x08\x00data"
    assert build_ethernet(GUEST, GATEWAY, ETHERTYPE_IPV4, memoryview(b"data")).endswith(b"data")
    with pytest.raises(ValueError):
        build_ethernet(b"\x00" * 5, GATEWAY, ETHERTYPE_IPV4, b"")


def test_mac_text() -> None:
    assert format_mac(GATEWAY) == "52:55:0a:00:02:02"
    assert parse_mac("52:55:0A:00:02:02") == GATEWAY
    assert parse_mac("52-54-00-12-34-56") == GUEST
    for bad in ("52:55:0a:00:02", "52:55:0a:00:02:0g", "525:5:0a:00:02:02", "+1:55:0a:00:02:02", ""):
        with pytest.raises(ValueError):
            parse_mac(bad)


@settings(max_examples=200, deadline=None)
@given(macs, macs, st.integers(0, 0xFFFF), st.binary(max_size=1600))
def test_round_trip(dst: bytes, src: bytes, ethertype: int, payload: bytes) -> None:
    assert parse_ethernet(build_ethernet(dst, src, ethertype, payload)) == EthernetFrame(dst, src, ethertype, payload)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=100))
def test_random_bytes_only_packet_error(data: bytes) -> None:
    try:
        frame = parse_ethernet(data)
    except PacketError:
        assert len(data) < 14
    else:
        assert build_ethernet(frame.dst, frame.src, frame.ethertype, frame.payload) == data
