"""UDP: length and checksum checks, zero checksums, building, and whole-frame property tests."""
from __future__ import annotations

import struct
from ipaddress import IPv4Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.netstack.errors import PacketError
from engine.netstack.ethernet import ETHERTYPE_IPV4, build_ethernet, parse_ethernet
from engine.netstack.ipv4 import FLAG_MF, PROTO_TCP, PROTO_UDP, Ipv4Packet, build_ipv4, parse_ipv4
from engine.netstack.udp import MAX_PAYLOAD_LEN, UdpDatagram, build_udp, parse_udp
from tests.netstack.test_checksum import slow_checksum

GUEST = IPv4Address("10.0.2.15")
DNS = IPv4Address("10.0.2.3")
GUEST_MAC = bytes.fromhex("525400123456")
GATEWAY_MAC = bytes.fromhex("52550a000202")


def udp_bytes(sport: int, dport: int, payload: bytes, src: IPv4Address = GUEST, dst: IPv4Address = DNS,
              length: int | None = None, csum: int | None = None, extra: bytes = b"") -> bytes:
    """A hand-made datagram; the checksum (slow reference over the pseudo-header) unless given."""
    if length is None:
        length = 8 + len(payload)
    if csum is None:
        pseudo = src.packed + dst.packed + struct.pack("!BBH", 0, PROTO_UDP, length)
        csum = slow_checksum(pseudo + struct.pack("!HHHH", sport, dport, length, 0) + payload) or 0xFFFF
    return struct.pack("!HHHH", sport, dport, length, csum) + payload + extra


def ip_of(udp: bytes, **kwargs: object) -> Ipv4Packet:
    defaults: dict[str, object] = dict(src=GUEST, dst=DNS, protocol=PROTO_UDP, ttl=64, ident=0, flags=0,
                                       frag_offset=0, payload=udp)
    defaults.update(kwargs)
    return Ipv4Packet(**defaults)  # type: ignore[arg-type]


def test_parse_hand_made() -> None:
    dgram = parse_udp(ip_of(udp_bytes(40000, 53, b"query")))
    assert dgram == UdpDatagram(40000, 53, b"query")


def test_odd_payload_checksum() -> None:
    assert parse_udp(ip_of(udp_bytes(1, 2, b"abc"))).payload == b"abc"


def test_zero_checksum_is_not_checked() -> None:
    assert parse_udp(ip_of(udp_bytes(1234, 5678, b"anything", csum=0))).payload == b"anything"


def test_bad_checksum_rejected() -> None:
    raw = udp_bytes(1234, 53, b"query")
    with pytest.raises(PacketError, match="checksum"):
        parse_udp(ip_of(raw[:-1] + b"Y"))
    # The pseudo-header counts: the same bytes from another source address fail.
    with pytest.raises(PacketError, match="checksum"):
        parse_udp(ip_of(raw, src=IPv4Address("10.0.2.16")))


def test_computed_zero_is_sent_as_ffff_and_accepted() -> None:
    # A 2-byte payload equal to the checksum of the rest makes the sum 0xFFFF: checksum zero.
    partial = udp_bytes(1000, 2000, b"\x00\x00", csum=0)
    pseudo = GUEST.packed + DNS.packed + struct.pack("!BBH", 0, PROTO_UDP, 10)
    word = slow_checksum(pseudo + partial)
    raw = build_udp(GUEST, DNS, 1000, 2000, struct.pack("!H", word))
    assert raw[6:8] == b"\xff\xff"
    assert parse_udp(ip_of(raw)).payload == struct.pack("!H", word)


@pytest.mark.parametrize(
    "udp, field",
    [
        (b"", "shorter than the 8-byte header"),
        (udp_bytes(1, 2, b"")[:7], "shorter than the 8-byte header"),
        (udp_bytes(1, 2, b"abc", length=7), "below the 8-byte header"),
        (udp_bytes(1, 2, b"abc", length=12), "exceeds the 11-byte IP payload"),
    ],
)
def test_length_checks(udp: bytes, field: str) -> None:
    with pytest.raises(PacketError, match=field):
        parse_udp(ip_of(udp))


def test_bytes_after_length_field_are_ignored() -> None:
    raw = udp_bytes(1, 2, b"abc", extra=b"trailing")
    assert parse_udp(ip_of(raw)).payload == b"abc"


def test_not_udp_or_fragment_rejected() -> None:
    raw = udp_bytes(1, 2, b"abc")
    with pytest.raises(PacketError, match="not UDP"):
        parse_udp(ip_of(raw, protocol=PROTO_TCP))
    with pytest.raises(PacketError, match="fragment"):
        parse_udp(ip_of(raw, flags=FLAG_MF))
    with pytest.raises(PacketError, match="fragment"):
        parse_udp(ip_of(raw, frag_offset=8))


def test_padded_short_frame_end_to_end() -> None:
    udp = build_udp(GUEST, DNS, 68, 67, b"hi")
    frame = build_ethernet(GATEWAY_MAC, GUEST_MAC, ETHERTYPE_IPV4, build_ipv4(GUEST, DNS, PROTO_UDP, udp))
    padded = frame.ljust(60, b"\x00")
    assert len(padded) > len(frame)
    ip = parse_ipv4(parse_ethernet(padded).payload)
    assert parse_udp(ip) == UdpDatagram(68, 67, b"hi")


def test_build_matches_hand_made_and_limits() -> None:
    assert build_udp(GUEST, DNS, 40000, 53, b"query") == udp_bytes(40000, 53, b"query")
    assert build_udp(GUEST, DNS, 1, 2, memoryview(b"odd")) == udp_bytes(1, 2, b"odd")
    assert len(build_udp(GUEST, DNS, 1, 2, bytes(MAX_PAYLOAD_LEN))) == 65515
    for sport, dport, payload in ((-1, 2, b""), (1, 65536, b""), (1, 2, bytes(MAX_PAYLOAD_LEN + 1))):
        with pytest.raises(ValueError):
            build_udp(GUEST, DNS, sport, dport, payload)


addresses = st.ip_addresses(v=4)
ports = st.integers(0, 0xFFFF)


@settings(max_examples=200, deadline=None)
@given(addresses, addresses, ports, ports, st.binary(max_size=1472))
def test_round_trip(src: IPv4Address, dst: IPv4Address, sport: int, dport: int, payload: bytes) -> None:
    udp = build_udp(src, dst, sport, dport, payload)
    assert udp == udp_bytes(sport, dport, payload, src=src, dst=dst)
    ip = parse_ipv4(build_ipv4(src, dst, PROTO_UDP, udp))
    assert parse_udp(ip) == UdpDatagram(sport, dport, payload)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64), st.sampled_from([0, FLAG_MF]), st.sampled_from([PROTO_UDP, PROTO_TCP]))
def test_random_bytes_only_packet_error(data: bytes, flags: int, proto: int) -> None:
    try:
        parse_udp(ip_of(data, flags=flags, protocol=proto))
    except PacketError:
        pass


@settings(max_examples=200, deadline=None)
@given(addresses, addresses, ports, ports, st.binary(max_size=64), st.data())
def test_single_bit_flip_in_frame(src: IPv4Address, dst: IPv4Address, sport: int, dport: int, payload: bytes,
                                  data: st.DataObject) -> None:
    udp = build_udp(src, dst, sport, dport, payload)
    frame = build_ethernet(GATEWAY_MAC, GUEST_MAC, ETHERTYPE_IPV4, build_ipv4(src, dst, PROTO_UDP, udp))
    bit = data.draw(st.integers(0, len(frame) * 8 - 1))
    flipped = bytearray(frame)
    flipped[bit // 8] ^= 0x80 >> (bit % 8)
    try:
        dgram = parse_udp(parse_ipv4(parse_ethernet(bytes(flipped)).payload))
    except PacketError:
        assert bit >= 14 * 8  # the Ethernet header has no checksum: flips there go unnoticed
        return
    byte = bit // 8
    udp_start = 14 + 20
    # Everything from the IP header on is checksummed; the exceptions are a flip that zeroes the
    # UDP checksum field (which then means "no checksum") and a shortened UDP length field, whose
    # trimmed bytes can, rarely, cancel the change in the sum.
    if byte >= 14:
        assert byte >= udp_start
        if byte in (udp_start + 6, udp_start + 7):
            assert flipped[udp_start + 6 : udp_start + 8] == b"\x00\x00"
        else:
            assert byte in (udp_start + 4, udp_start + 5)
            assert payload.startswith(dgram.payload)
    else:
        assert dgram == UdpDatagram(sport, dport, payload)
