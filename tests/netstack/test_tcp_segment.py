"""TCP segment format: parse/build, options, checksum, malformed input, sequence arithmetic."""
from __future__ import annotations

import struct
from ipaddress import IPv4Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.netstack.errors import PacketError
from engine.netstack.tcp.segment import (ACK, FIN, PSH, RST, SYN, URG, TcpSegment, build_options,
                                 build_tcp, parse_options, parse_tcp, seq_add, seq_diff, seq_ge,
                                 seq_gt, seq_le, seq_lt, tcp_from_ipv4)

GUEST = IPv4Address("10.0.2.15")
SERVER = IPv4Address("93.184.216.34")


def ref_checksum(data: bytes) -> int:
    """A word-by-word RFC 1071 checksum, independent of engine.netstack.checksum."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def handmade(seq: int = 1000, ack: int = 0, flags: int = SYN, window: int = 64240,
             options: bytes = b"", payload: bytes = b"", src: IPv4Address = GUEST,
             dst: IPv4Address = SERVER) -> bytes:
    hl = 20 + len(options)
    hdr = struct.pack("!HHIIBBHHH", 40000, 443, seq, ack, (hl // 4) << 4, flags, window, 0, 0) + options
    seg = hdr + payload
    pseudo = src.packed + dst.packed + struct.pack("!BBH", 0, 6, len(seg))
    c = ref_checksum(pseudo + seg)
    return seg[:16] + struct.pack("!H", c) + seg[18:]


def test_parse_handmade_syn_with_linux_options() -> None:
    # What a Linux guest puts in its SYN: MSS, SACK-permitted, timestamps, NOP, wscale 7.
    opts = (struct.pack("!BBH", 2, 4, 1460) + bytes((4, 2)) + struct.pack("!BBII", 8, 10, 12345, 0)
            + bytes((1, 3, 3, 7)))
    seg = parse_tcp(GUEST, SERVER, handmade(options=opts))
    assert (seg.src_port, seg.dst_port, seg.seq, seg.ack, seg.window) == (40000, 443, 1000, 0, 64240)
    assert seg.syn and not seg.ack_flag and not seg.fin and not seg.rst and not seg.psh
    assert seg.mss == 1460 and seg.wscale == 7 and seg.sack_permitted
    assert seg.timestamps == (12345, 0)
    assert seg.payload == b"" and seg.seg_len == 1


def test_build_matches_reference_checksum_and_roundtrips() -> None:
    data = build_tcp(SERVER, GUEST, 443, 40000, 0xFFFFFFF0, 1001, ACK | PSH | FIN, 502, b"hello!x",
                     build_options(mss=1400, wscale=3))
    assert ref_checksum(SERVER.packed + GUEST.packed + struct.pack("!BBH", 0, 6, len(data)) + data) == 0
    seg = parse_tcp(SERVER, GUEST, data)
    assert seg == TcpSegment(443, 40000, 0xFFFFFFF0, 1001, ACK | PSH | FIN, 502, b"hello!x", 1400, 3)
    assert seg.seg_len == 8 and seg.fin and seg.psh and seg.ack_flag


def test_odd_payload_checksum_matches_reference() -> None:
    for n in range(0, 7):
        payload = bytes(range(200, 200 + n))
        data = build_tcp(GUEST, SERVER, 40000, 443, 3, 4, ACK, 5, payload)
        assert data == handmade(seq=3, ack=4, flags=ACK, window=5, payload=payload)
        pseudo = GUEST.packed + SERVER.packed + struct.pack("!BBH", 0, 6, len(data))
        assert ref_checksum(pseudo + data) == 0


def test_bad_checksum_rejected_unless_offloaded() -> None:
    data = bytearray(handmade(flags=ACK, payload=b"abc"))
    data[-1] ^= 0x40
    with pytest.raises(PacketError, match="checksum"):
        parse_tcp(GUEST, SERVER, bytes(data))
    assert parse_tcp(GUEST, SERVER, bytes(data), verify=False).payload == b"ab#"
    # The wrong pseudo-header (another destination) is a checksum error too.
    with pytest.raises(PacketError):
        parse_tcp(GUEST, IPv4Address("10.0.2.2"), handmade())


def test_truncated_and_bad_offsets() -> None:
    good = handmade(payload=b"xyz")
    for n in range(20):
        with pytest.raises(PacketError, match="shorter"):
            parse_tcp(GUEST, SERVER, good[:n])
    low = good[:12] + bytes([4 << 4]) + good[13:]
    with pytest.raises(PacketError, match="minimum"):
        parse_tcp(GUEST, SERVER, low, verify=False)
    high = good[:12] + bytes([15 << 4]) + good[13:]
    with pytest.raises(PacketError, match="exceeds"):
        parse_tcp(GUEST, SERVER, high, verify=False)


def test_options_lenient_parsing() -> None:
    assert parse_options(b"") == (None, None, False, None)
    assert parse_options(bytes((1, 1, 0, 2, 4, 5, 0))) == (None, None, False, None)  # EOL stops
    assert parse_options(bytes((3, 3, 200))) == (None, 14, False, None)  # shift clamped
    assert parse_options(bytes((2, 3, 5, 4, 2))) == (None, None, True, None)  # bad MSS length skipped
    assert parse_options(bytes((2, 4, 5, 180, 99, 0))) == (1460, None, False, None)  # unknown len 0: stop
    assert parse_options(bytes((2, 4, 5, 180, 99, 9, 1))) == (1460, None, False, None)  # overruns: stop
    assert parse_options(bytes((2,))) == (None, None, False, None)
    assert parse_options(bytes((99, 2, 2, 4, 1, 0))) == (256, None, False, None)  # unknown skipped
    assert build_options() == b""
    assert len(build_options(1460, 7, True, (1, 2))) % 4 == 0
    assert parse_options(build_options(1460, 7, True, (1, 2))) == (1460, 7, True, (1, 2))


def test_urgent_pointer_only_with_urg() -> None:
    hdr = bytearray(handmade(flags=ACK | URG, payload=b"u"))
    struct.pack_into("!H", hdr, 18, 1)
    struct.pack_into("!H", hdr, 16, 0)
    pseudo = GUEST.packed + SERVER.packed + struct.pack("!BBH", 0, 6, len(hdr))
    struct.pack_into("!H", hdr, 16, ref_checksum(pseudo + bytes(hdr)))
    assert parse_tcp(GUEST, SERVER, bytes(hdr)).urgent == 1


def test_build_rejects_unpadded_options() -> None:
    with pytest.raises(ValueError):
        build_tcp(GUEST, SERVER, 1, 2, 3, 4, ACK, 5, b"", b"\x01")


def test_tcp_from_ipv4_duck_typed() -> None:
    class Ip:
        src, dst, payload = GUEST, SERVER, handmade(flags=RST)
    assert tcp_from_ipv4(Ip()).rst


def test_sequence_arithmetic_at_wraparound() -> None:
    top = 0xFFFFFFFF
    assert seq_add(top, 1) == 0 and seq_add(0, -1) == top and seq_add(top - 5, 10) == 4
    assert seq_diff(4, top - 5) == 10 and seq_diff(top - 5, 4) == -10
    assert seq_lt(top, 0) and seq_gt(0, top) and seq_le(top, top) and seq_ge(0, 0)
    assert seq_lt(0xFFFFFF00, 0x100) and not seq_lt(0x100, 0xFFFFFF00)
    assert seq_diff(0x80000000, 0) == -(1 << 31)  # the ambiguous half-way point is "before"
    assert seq_lt(5, 6) and not seq_lt(6, 5) and seq_le(5, 5) and not seq_gt(5, 5)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(-(2**31) + 1, 2**31 - 1))
def test_seq_add_diff_inverse(a: int, n: int) -> None:
    b = seq_add(a, n)
    assert seq_diff(b, a) == n
    assert seq_lt(a, b) == (n > 0) and seq_gt(a, b) == (n < 0)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 65535), st.integers(0, 65535), st.integers(0, 2**32 - 1),
       st.integers(0, 2**32 - 1), st.integers(0, 255), st.integers(0, 65535), st.binary(max_size=300),
       st.one_of(st.none(), st.integers(0, 65535)), st.one_of(st.none(), st.integers(0, 14)), st.booleans())
def test_roundtrip(sp: int, dp: int, seq: int, ack: int, flags: int, win: int, payload: bytes,
                   mss: int | None, ws: int | None, sack: bool) -> None:
    data = build_tcp(SERVER, GUEST, sp, dp, seq, ack, flags & ~URG, win, payload, build_options(mss, ws, sack))
    seg = parse_tcp(SERVER, GUEST, data)
    assert (seg.src_port, seg.dst_port, seg.seq, seg.ack, seg.flags, seg.window) == (sp, dp, seq, ack, flags & ~URG, win)
    assert (seg.payload, seg.mss, seg.wscale, seg.sack_permitted) == (payload, mss, ws, sack)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=120), st.booleans())
def test_random_bytes_only_packet_error(data: bytes, verify: bool) -> None:
    try:
        parse_tcp(GUEST, SERVER, data, verify)
    except PacketError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_segments_only_packet_error(data: st.DataObject) -> None:
    good = bytearray(build_tcp(GUEST, SERVER, 1234, 80, 77, 88, SYN | ACK, 1000, b"payload",
                               build_options(1460, 7, True, (5, 6))))
    for _ in range(data.draw(st.integers(1, 6))):
        i = data.draw(st.integers(0, len(good) - 1))
        good[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(good)))
    try:
        seg = parse_tcp(GUEST, SERVER, bytes(good[:cut]), verify=data.draw(st.booleans()))
    except PacketError:
        return
    assert 0 <= seg.seq < 2**32 and seg.seg_len >= 0
