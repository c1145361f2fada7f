"""IPv4: header checks, options, padding, fragments, building, and property tests."""
from __future__ import annotations

import struct
from ipaddress import IPv4Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.netstack.errors import PacketError
from engine.netstack.ipv4 import (
    FLAG_DF,
    FLAG_MF,
    PROTO_ICMP,
    PROTO_TCP,
    PROTO_UDP,
    Ipv4Packet,
    build_ipv4,
    parse_ipv4,
)
from tests.netstack.test_checksum import slow_checksum

GUEST = IPv4Address("10.0.2.15")
GATEWAY = IPv4Address("10.0.2.2")


def header(
    *,
    version: int = 4,
    ihl: int = 5,
    tos: int = 0,
    total_len: int | None = None,
    ident: int = 0x1234,
    flags: int = 0,
    offset_units: int = 0,
    ttl: int = 64,
    proto: int = PROTO_UDP,
    src: IPv4Address = GUEST,
    dst: IPv4Address = GATEWAY,
    options: bytes = b"",
    payload: bytes = b"",
    csum: int | None = None,
) -> bytes:
    """A hand-made IPv4 packet; the checksum is computed with the slow reference unless given."""
    options = options[: (ihl - 5) * 4].ljust((ihl - 5) * 4, b"\x00") if ihl > 5 else b""
    if total_len is None:
        total_len = ihl * 4 + len(payload)
    fields = [(version << 4) | ihl, tos, total_len, ident, (flags << 13) | offset_units, ttl, proto]
    raw = struct.pack("!BBHHHBB", *fields) + b"\x00\x00" + src.packed + dst.packed + options
    if csum is None:
        csum = slow_checksum(raw)
    return raw[:10] + struct.pack("!H", csum) + raw[12:] + payload


def test_parse_captured_header() -> None:
    # A well-known header: 192.168.0.1 -> 192.168.0.199, UDP, DF, TTL 64, checksum 0xb861.
    raw = bytes.fromhex("45000073000040004011b861c0a80001c0a800c7") + bytes(0x73 - 20)
    ip = parse_ipv4(raw)
    assert ip.src == IPv4Address("192.168.0.1") and ip.dst == IPv4Address("192.168.0.199")
    assert (ip.protocol, ip.ttl, ip.ident, ip.flags, ip.frag_offset) == (PROTO_UDP, 64, 0, FLAG_DF, 0)
    assert ip.dont_fragment and not ip.is_fragment
    assert ip.header_len == 20 and ip.total_length == 0x73 and len(ip.payload) == 0x73 - 20


def test_parse_hand_made_fields() -> None:
    raw = header(tos=0x10, ident=0xBEEF, ttl=3, proto=PROTO_TCP, payload=b"segment")
    assert parse_ipv4(raw) == Ipv4Packet(
        src=GUEST, dst=GATEWAY, protocol=PROTO_TCP, ttl=3, ident=0xBEEF, flags=0, frag_offset=0,
        payload=b"segment", header_len=20, tos=0x10,
    )


def test_options_are_skipped() -> None:
    # IHL 7: 8 bytes of options (a record-route-ish blob and NOPs) before the payload.
    raw = header(ihl=7, options=b"\x07\x07\x04\x00\x00\x00\x00\x01", payload=b"after")
    ip = parse_ipv4(raw)
    assert ip.header_len == 28 and ip.payload == b"after"


def test_ethernet_padding_is_ignored() -> None:
    raw = header(payload=b"12345678")  # 28 bytes; the Ethernet frame pads it to 46
    ip = parse_ipv4(raw + b"\x00" * 18)
    assert ip.payload == b"12345678" and ip.total_length == 28


def test_fragments_are_parsed_and_flagged() -> None:
    first = parse_ipv4(header(flags=FLAG_MF, payload=b"x" * 16))
    assert first.is_fragment and first.frag_offset == 0
    later = parse_ipv4(header(offset_units=185, payload=b"y" * 8))
    assert later.is_fragment and later.frag_offset == 1480
    last_df = parse_ipv4(header(flags=FLAG_DF))
    assert not last_df.is_fragment


def test_reserved_flag_is_kept_not_rejected() -> None:
    assert parse_ipv4(header(flags=0b100)).flags == 0b100


@pytest.mark.parametrize(
    "raw, field",
    [
        (b"", "shorter than the 20-byte header"),
        (header()[:19], "shorter than the 20-byte header"),
        (header(version=6), "version"),
        (header(version=0), "version"),
        (header(ihl=4), "IHL"),
        (header(ihl=0), "IHL"),
        (header(ihl=15)[:40], "header length 60 exceeds"),
        (header(total_len=19), "total length 19 is shorter"),
        (header(ihl=6, total_len=20), "total length 20 is shorter"),
        (header(total_len=100, payload=b"abc"), "exceeds the 23 bytes"),
        (header(csum=0), "checksum"),
    ],
)
def test_malformed_headers_rejected(raw: bytes, field: str) -> None:
    with pytest.raises(PacketError, match=field):
        parse_ipv4(raw)


def test_build_fields_and_checksum() -> None:
    raw = build_ipv4(GATEWAY, GUEST, PROTO_ICMP, b"ping", ttl=255, ident=7, tos=0xB8)
    assert raw[:2] == b"\x45\xb8" and struct.unpack("!H", raw[2:4])[0] == 24
    assert struct.unpack("!HH", raw[4:8]) == (7, FLAG_DF << 13)
    assert raw[8:10] == bytes([255, PROTO_ICMP])
    assert slow_checksum(raw[:20]) == 0
    assert raw[12:20] == GATEWAY.packed + GUEST.packed and raw[20:] == b"ping"
    assert build_ipv4(GATEWAY, GUEST, PROTO_UDP, b"", dont_fragment=False)[6:8] == b"\x00\x00"


def test_build_size_limit() -> None:
    assert len(build_ipv4(GATEWAY, GUEST, PROTO_UDP, bytes(65515))) == 65535
    with pytest.raises(ValueError):
        build_ipv4(GATEWAY, GUEST, PROTO_UDP, bytes(65516))


addresses = st.ip_addresses(v=4)


@settings(max_examples=200, deadline=None)
@given(addresses, addresses, st.integers(0, 255), st.binary(max_size=1500), st.integers(0, 255),
       st.integers(0, 0xFFFF), st.integers(0, 255), st.booleans())
def test_round_trip(src: IPv4Address, dst: IPv4Address, proto: int, payload: bytes, ttl: int, ident: int,
                    tos: int, df: bool) -> None:
    raw = build_ipv4(src, dst, proto, payload, ttl=ttl, ident=ident, tos=tos, dont_fragment=df)
    assert slow_checksum(raw[:20]) == 0
    ip = parse_ipv4(raw + b"\x00" * 7)  # padding must not change anything
    assert ip == Ipv4Packet(src, dst, proto, ttl, ident, FLAG_DF if df else 0, 0, payload, 20, tos)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=80))
def test_random_bytes_only_packet_error(data: bytes) -> None:
    try:
        parse_ipv4(data)
    except PacketError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 15), st.integers(0, 15), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF),
       st.binary(max_size=80))
def test_random_headers_with_valid_checksum(version: int, ihl: int, total_len: int, frag: int, rest: bytes) -> None:
    # Random fields behind a correct checksum reach the length and version checks.
    raw = header(version=version, ihl=max(ihl, 5), total_len=total_len, flags=frag >> 13,
                 offset_units=frag & 0x1FFF, options=rest[:40], payload=rest)
    if ihl < 5:
        raw = bytes([(version << 4) | ihl]) + raw[1:]
    try:
        ip = parse_ipv4(raw)
    except PacketError:
        return
    assert version == 4 and ihl >= 5
    assert ip.total_length == total_len <= len(raw)


@settings(max_examples=200, deadline=None)
@given(addresses, addresses, st.binary(max_size=64), st.data())
def test_single_bit_flip_in_header_detected(src: IPv4Address, dst: IPv4Address, payload: bytes,
                                            data: st.DataObject) -> None:
    raw = build_ipv4(src, dst, PROTO_UDP, payload)
    bit = data.draw(st.integers(0, len(raw) * 8 - 1))
    flipped = bytearray(raw)
    flipped[bit // 8] ^= 0x80 >> (bit % 8)
    try:
        ip = parse_ipv4(bytes(flipped))
    except PacketError:
        return
    # Only the payload is outside the header checksum.
    assert bit >= 160
    assert ip.src == src and ip.dst == dst and len(ip.payload) == len(payload)
