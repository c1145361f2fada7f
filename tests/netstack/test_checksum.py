"""The Internet checksum against RFC 1071's worked example, real headers and a slow reference."""
from __future__ import annotations

import struct
from ipaddress import IPv4Address

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.netstack.checksum import (
    internet_checksum,
    ones_complement_sum,
    pseudo_header,
    pseudo_header_sum,
    verify_checksum,
)


def slow_sum(data: bytes) -> int:
    """RFC 1071's reference algorithm: add 16-bit words, fold the carries back in."""
    if len(data) % 2:
        data += b"\x00"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        while total > 0xFFFF:
            total = (total & 0xFFFF) + (total >> 16)
    return total


def slow_checksum(data: bytes) -> int:
    return ~slow_sum(data) & 0xFFFF


def test_rfc1071_example() -> None:
    # RFC 1071 section 3: bytes 00 01 f2 03 f4 f5 f6 f7 sum to 0xddf2 (checksum 0x220d).
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert ones_complement_sum(data) == 0xDDF2
    assert internet_checksum(data) == 0x220D
    assert verify_checksum(data + struct.pack("!H", 0x220D))


def test_known_ipv4_header() -> None:
    # A captured header (192.168.0.1 -> 192.168.0.199, UDP) whose checksum field is 0xb861.
    header = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")
    assert internet_checksum(header) == 0xB861
    fixed = header[:10] + b"\xb8\x61" + header[12:]
    assert verify_checksum(fixed)
    assert not verify_checksum(header[:10] + b"\xb8\x60" + header[12:])


def test_odd_length_pads_with_zero() -> None:
    assert ones_complement_sum(b"\x12") == 0x1200
    assert internet_checksum(b"\x12\x34\x56") == slow_checksum(b"\x12\x34\x56")


def test_zero_and_negative_zero() -> None:
    assert ones_complement_sum(b"") == 0
    assert internet_checksum(b"") == 0xFFFF
    assert internet_checksum(b"\x00" * 10) == 0xFFFF
    # A non-zero sum that is a multiple of 0xFFFF is "negative zero", as end-around carry gives.
    assert ones_complement_sum(b"\xff\xff") == 0xFFFF
    assert ones_complement_sum(b"\x80\x00\x7f\xff") == 0xFFFF
    assert internet_checksum(b"\xff\xff") == 0


def test_accepts_bytearray_and_memoryview() -> None:
    data = bytes(range(37))
    expected = slow_checksum(data)
    assert internet_checksum(bytearray(data)) == expected
    assert internet_checksum(memoryview(data)) == expected
    assert internet_checksum(memoryview(b"xx" + data)[2:]) == expected


def test_pseudo_header() -> None:
    src, dst = IPv4Address("10.0.2.15"), IPv4Address("93.184.216.34")
    ph = pseudo_header(src, dst, 17, 1234)
    assert ph == bytes([10, 0, 2, 15, 93, 184, 216, 34, 0, 17]) + struct.pack("!H", 1234)
    assert pseudo_header_sum(src, dst, 17, 1234) == slow_sum(ph)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3000))
def test_matches_slow_reference(data: bytes) -> None:
    assert ones_complement_sum(data) == slow_sum(data)
    assert internet_checksum(data) == slow_checksum(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.binary(max_size=200))
def test_sums_compose_after_even_prefix(a: bytes, b: bytes) -> None:
    if len(a) % 2:
        a += b"\x00"
    assert internet_checksum(b, ones_complement_sum(a)) == slow_checksum(a + b)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=2, max_size=600).filter(lambda d: len(d) % 2 == 0), st.data())
def test_inserted_checksum_verifies_and_detects_single_bit_flips(body: bytes, data: st.DataObject) -> None:
    pos = data.draw(st.integers(0, len(body) // 2 - 1)) * 2
    zeroed = body[:pos] + b"\x00\x00" + body[pos + 2 :]
    csum = internet_checksum(zeroed)
    good = zeroed[:pos] + struct.pack("!H", csum) + zeroed[pos + 2 :]
    assert verify_checksum(good)
    # A flip changes one word by 2**k, which is never 0 mod 0xFFFF: always detected.
    bit = data.draw(st.integers(0, len(good) * 8 - 1))
    flipped = bytearray(good)
    flipped[bit // 8] ^= 0x80 >> (bit % 8)
    assert not verify_checksum(bytes(flipped))


@settings(max_examples=200, deadline=None)
@given(st.ip_addresses(v=4), st.ip_addresses(v=4), st.integers(0, 255), st.integers(0, 0xFFFF))
def test_pseudo_header_sum_matches_bytes(src: IPv4Address, dst: IPv4Address, proto: int, length: int) -> None:
    assert pseudo_header_sum(src, dst, proto, length) == slow_sum(pseudo_header(src, dst, proto, length))
