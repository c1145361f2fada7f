"""ICMP: echo replies, destination unreachable, RFC 1122 error rules, property tests."""
from __future__ import annotations

import struct
from ipaddress import IPv4Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.netstack.errors import PacketError
from engine.netstack.icmp import (
    TYPE_DEST_UNREACHABLE,
    TYPE_ECHO_REPLY,
    TYPE_ECHO_REQUEST,
    UNREACH_ADMIN_PROHIBITED,
    UNREACH_FRAG_NEEDED,
    UNREACH_PORT,
    IcmpMessage,
    build_echo,
    build_icmp,
    dest_unreachable,
    echo_reply,
    may_send_error,
    parse_icmp,
)
from engine.netstack.ipv4 import FLAG_MF, PROTO_ICMP, PROTO_TCP, PROTO_UDP, Ipv4Packet, build_ipv4, parse_ipv4
from tests.netstack.test_checksum import slow_checksum

GUEST = IPv4Address("10.0.2.15")
GATEWAY = IPv4Address("10.0.2.2")


def echo_request_bytes(ident: int = 0x1C46, seq: int = 1, payload: bytes = b"abcdefgh") -> bytes:
    """A hand-made echo request with the slow reference checksum."""
    body = struct.pack("!BBHHH", TYPE_ECHO_REQUEST, 0, 0, ident, seq) + payload
    return body[:2] + struct.pack("!H", slow_checksum(body)) + body[4:]


def ip_of(icmp: bytes, **kwargs: object) -> Ipv4Packet:
    defaults: dict[str, object] = dict(src=GUEST, dst=GATEWAY, protocol=PROTO_ICMP, ttl=64, ident=0, flags=0,
                                       frag_offset=0, payload=icmp)
    defaults.update(kwargs)
    return Ipv4Packet(**defaults)  # type: ignore[arg-type]


def test_parse_echo_request() -> None:
    msg = parse_icmp(echo_request_bytes())
    assert msg == IcmpMessage(TYPE_ECHO_REQUEST, 0, b"\x1c\x46\x00\x01", b"abcdefgh")
    assert (msg.ident, msg.seq, msg.is_error) == (0x1C46, 1, False)


@pytest.mark.parametrize("raw, field", [(b"\x08\x00\x00", "shorter"), (b"", "shorter"),
                                        (echo_request_bytes()[:-1], "checksum")])
def test_parse_rejects(raw: bytes, field: str) -> None:
    with pytest.raises(PacketError, match=field):
        parse_icmp(raw)


def test_echo_reply_keeps_id_seq_payload() -> None:
    reply = echo_reply(ip_of(echo_request_bytes(ident=77, seq=9, payload=b"x" * 56)))
    assert reply is not None and slow_checksum(reply) == 0
    msg = parse_icmp(reply)
    assert (msg.type, msg.code, msg.ident, msg.seq, msg.payload) == (TYPE_ECHO_REPLY, 0, 77, 9, b"x" * 56)


def test_echo_reply_through_ipv4() -> None:
    request = parse_ipv4(build_ipv4(GUEST, GATEWAY, PROTO_ICMP, echo_request_bytes()) + b"\x00" * 10)
    reply = echo_reply(request)
    assert reply is not None
    back = parse_ipv4(build_ipv4(request.dst, request.src, PROTO_ICMP, reply))
    assert parse_icmp(back.payload).type == TYPE_ECHO_REPLY and back.dst == GUEST


def test_echo_reply_ignores_others() -> None:
    assert echo_reply(ip_of(build_echo(TYPE_ECHO_REPLY, 1, 1))) is None
    assert echo_reply(ip_of(dest_unreachable(build_ipv4(GUEST, GATEWAY, PROTO_UDP, bytes(8)), 3))) is None
    assert echo_reply(ip_of(echo_request_bytes(), protocol=PROTO_UDP)) is None
    assert echo_reply(ip_of(echo_request_bytes(), flags=FLAG_MF)) is None
    with pytest.raises(PacketError):
        echo_reply(ip_of(echo_request_bytes()[:-1]))


def test_build_icmp() -> None:
    raw = build_icmp(TYPE_ECHO_REQUEST, 0, b"\x1c\x46\x00\x01", b"abcdefgh")
    assert raw == echo_request_bytes()
    assert build_echo(TYPE_ECHO_REQUEST, 0x1C46, 1, b"abcdefgh") == raw
    assert slow_checksum(build_icmp(0, 0)) == 0  # all-zero message: checksum 0xffff
    with pytest.raises(ValueError):
        build_icmp(0, 0, b"\x00")


def test_dest_unreachable_quotes_header_and_8_bytes() -> None:
    udp = struct.pack("!HHHH", 40000, 53, 8 + 100, 0) + bytes(100)
    original = build_ipv4(GUEST, IPv4Address("192.0.2.1"), PROTO_UDP, udp)
    raw = dest_unreachable(original, UNREACH_PORT)
    assert slow_checksum(raw) == 0
    msg = parse_icmp(raw)
    assert (msg.type, msg.code, msg.rest) == (TYPE_DEST_UNREACHABLE, UNREACH_PORT, b"\x00" * 4)
    assert msg.is_error and msg.payload == original[:28]


def test_dest_unreachable_with_options_and_padding() -> None:
    # IHL 6 (4 bytes of options): quote 24 + 8 bytes. A short packet with Ethernet padding: no padding quoted.
    opt = bytearray(build_ipv4(GUEST, GATEWAY, PROTO_TCP, bytes(20)))
    opt[0] = 0x46
    opt[20:20] = b"\x01\x01\x01\x00"
    assert len(parse_icmp(dest_unreachable(bytes(opt), UNREACH_ADMIN_PROHIBITED)).payload) == 32
    short = build_ipv4(GUEST, GATEWAY, PROTO_UDP, b"\x00\x01") + b"\x00" * 20
    assert parse_icmp(dest_unreachable(short, UNREACH_PORT)).payload == short[:22]


def test_frag_needed_carries_mtu() -> None:
    original = build_ipv4(GUEST, GATEWAY, PROTO_TCP, bytes(40))
    assert parse_icmp(dest_unreachable(original, UNREACH_FRAG_NEEDED, 1500)).rest == b"\x00\x00\x05\xdc"
    assert parse_icmp(dest_unreachable(original, UNREACH_PORT, 1500)).rest == b"\x00" * 4


@pytest.mark.parametrize("bad", [b"", bytes(19), b"\x60" + bytes(39), b"\x44" + bytes(39)])
def test_dest_unreachable_needs_an_ipv4_packet(bad: bytes) -> None:
    with pytest.raises(PacketError):
        dest_unreachable(bad, UNREACH_PORT)


def test_may_send_error() -> None:
    udp = ip_of(bytes(8), protocol=PROTO_UDP)
    assert may_send_error(udp)
    assert may_send_error(ip_of(echo_request_bytes()))
    assert not may_send_error(ip_of(dest_unreachable(build_ipv4(GUEST, GATEWAY, PROTO_UDP, bytes(8)), 3)))
    assert not may_send_error(ip_of(b""))
    assert not may_send_error(ip_of(bytes(8), protocol=PROTO_UDP, frag_offset=8))
    assert may_send_error(ip_of(bytes(8), protocol=PROTO_UDP, flags=FLAG_MF))  # first fragment is fine
    for dst in ("255.255.255.255", "224.0.0.251"):
        assert not may_send_error(ip_of(bytes(8), protocol=PROTO_UDP, dst=IPv4Address(dst)))
    for src in ("0.0.0.0", "127.0.0.1", "239.1.2.3", "255.255.255.255"):
        assert not may_send_error(ip_of(bytes(8), protocol=PROTO_UDP, src=IPv4Address(src)))


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 255), st.integers(0, 255), st.binary(min_size=4, max_size=4), st.binary(max_size=1500))
def test_round_trip(icmp_type: int, code: int, rest: bytes, payload: bytes) -> None:
    raw = build_icmp(icmp_type, code, rest, payload)
    assert slow_checksum(raw) == 0
    assert parse_icmp(raw) == IcmpMessage(icmp_type, code, rest, payload)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.binary(max_size=1472))
def test_echo_round_trip(ident: int, seq: int, payload: bytes) -> None:
    reply = echo_reply(ip_of(build_echo(TYPE_ECHO_REQUEST, ident, seq, payload)))
    assert reply is not None
    assert parse_icmp(reply) == IcmpMessage(TYPE_ECHO_REPLY, 0, struct.pack("!HH", ident, seq), payload)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=100))
def test_random_bytes_only_packet_error(data: bytes) -> None:
    for fn in (parse_icmp, lambda d: echo_reply(ip_of(d)), lambda d: dest_unreachable(d, UNREACH_PORT)):
        try:
            fn(data)
        except PacketError:
            pass
    may_send_error(ip_of(data))


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.binary(max_size=64), st.data())
def test_single_bit_flip_detected(ident: int, seq: int, payload: bytes, data: st.DataObject) -> None:
    raw = bytearray(build_echo(TYPE_ECHO_REQUEST, ident, seq, payload))
    bit = data.draw(st.integers(0, len(raw) * 8 - 1))
    raw[bit // 8] ^= 0x80 >> (bit % 8)
    with pytest.raises(PacketError):
        parse_icmp(bytes(raw))
    with pytest.raises(PacketError):
        echo_reply(ip_of(bytes(raw)))
