"""Tests of the DHCP server core: DORA, renew, NAKs, pool exhaustion, expiry and bad input."""
from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import given, settings, strategies as st

from engine.errors import ConfigError
from engine.netstack.dhcp import (
    BROADCAST_IP, BROADCAST_MAC, DHCPACK, DHCPDECLINE, DHCPDISCOVER, DHCPINFORM, DHCPNAK,
    DHCPOFFER, DHCPRELEASE, DHCPREQUEST, DhcpConfig, DhcpServer, PacketError, parse_dhcp,
)

MAC1 = bytes.fromhex("525400123401")
MAC2 = bytes.fromhex("525400123402")
MAC3 = bytes.fromhex("525400123403")
GW = IPv4Address("10.0.2.2")
OTHER_SERVER = IPv4Address("10.0.2.99")


def ip(text: str) -> IPv4Address:
    return IPv4Address(text)


def client_msg(mtype: int | None, mac: bytes = MAC1, xid: int = 0x1234, *, flags: int = 0,
               ciaddr: str = "0.0.0.0", requested: str | None = None, server: IPv4Address | None = None,
               params: bytes | None = None, op: int = 1, htype: int = 1, hlen: int = 6,
               giaddr: str = "0.0.0.0", extra: bytes = b"", cookie: bytes = b"\x63\x82\x53\x63") -> bytes:
    """A client message built by hand, the way busybox udhcpc lays it out."""
    fixed = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", op, htype, hlen, 0, xid, 0, flags,
                        ip(ciaddr).packed, bytes(4), bytes(4), ip(giaddr).packed,
                        mac.ljust(16, b"\x00"), b"", b"")
    opts = b""
    if mtype is not None:
        opts += bytes((53, 1, mtype))
    if requested is not None:
        opts += bytes((50, 4)) + ip(requested).packed
    if server is not None:
        opts += bytes((54, 4)) + server.packed
    if params is not None:
        opts += bytes((55, len(params))) + params
    opts += extra + b"\xff"
    return fixed + cookie + opts


def server(**kwargs: object) -> DhcpServer:
    return DhcpServer(DhcpConfig.for_subnet("10.0.2.0/24", **kwargs))


def opt_u32(value: bytes) -> int:
    return struct.unpack("!I", value)[0]


def dora(srv: DhcpServer, mac: bytes = MAC1, now: float = 0.0) -> IPv4Address:
    offer = srv.handle(client_msg(DHCPDISCOVER, mac, flags=0x8000), now)
    assert offer is not None
    yiaddr = parse_dhcp(offer.payload).yiaddr
    ack = srv.handle(client_msg(DHCPREQUEST, mac, requested=str(yiaddr), server=GW), now)
    assert ack is not None and ack.message_type == DHCPACK
    return yiaddr


def test_full_dora_exchange() -> None:
    srv = server(domain="sandbox.test", hostname="guest")
    offer = srv.handle(client_msg(DHCPDISCOVER, flags=0x8000, params=bytes((1, 3, 6, 12, 15, 28, 42))), 10.0)
    assert offer is not None and offer.message_type == DHCPOFFER
    assert offer.dst_ip == BROADCAST_IP and offer.dst_mac == BROADCAST_MAC and offer.src_ip == GW
    assert len(offer.payload) >= 300
    msg = parse_dhcp(offer.payload)
    assert msg.op == 2 and msg.xid == 0x1234 and msg.chaddr == MAC1 and msg.flags == 0x8000
    assert msg.yiaddr == ip("10.0.2.15") and msg.ciaddr == ip("0.0.0.0")
    assert msg.message_type == DHCPOFFER
    o = msg.options
    assert o[1] == ip("255.255.255.0").packed and o[3] == GW.packed and o[6] == ip("10.0.2.3").packed
    assert o[15] == b"sandbox.test" and o[12] == b"guest" and o[54] == GW.packed
    assert opt_u32(o[51]) == 3600 and opt_u32(o[58]) == 1800 and opt_u32(o[59]) == 3150
    assert struct.unpack("!H", o[26])[0] == 1500 and o[28] == ip("10.0.2.255").packed
    codes = _option_codes(offer.payload)
    assert codes[:2] == [53, 54]
    # The requested parameters come first in the client's order (42 unknown: skipped).
    assert codes[2:8] == [1, 3, 6, 12, 15, 28]

    ack = srv.handle(client_msg(DHCPREQUEST, flags=0x8000, requested="10.0.2.15", server=GW), 11.0)
    assert ack is not None and ack.message_type == DHCPACK and ack.dst_ip == BROADCAST_IP
    assert parse_dhcp(ack.payload).yiaddr == ip("10.0.2.15")
    assert srv.lease_of(MAC1, 12.0) == ip("10.0.2.15")
    assert srv.lease_of(MAC1, 11.0 + 3600) is None


def _option_codes(payload: bytes) -> list[int]:
    codes, pos = [], 240
    while payload[pos] != 255:
        codes.append(payload[pos])
        pos += 2 + payload[pos + 1]
    return codes


def test_unicast_reply_without_broadcast_flag() -> None:
    srv = server()
    offer = srv.handle(client_msg(DHCPDISCOVER), 0.0)
    assert offer is not None and offer.dst_ip == ip("10.0.2.15") and offer.dst_mac == MAC1


def test_sticky_lease_and_distinct_clients() -> None:
    srv = server()
    a = dora(srv, MAC1)
    b = dora(srv, MAC2)
    assert a != b
    again = srv.handle(client_msg(DHCPDISCOVER, MAC1), 5.0)
    assert again is not None and parse_dhcp(again.payload).yiaddr == a


def test_renewing_and_rebinding() -> None:
    srv = server()
    addr = dora(srv)
    renew = srv.handle(client_msg(DHCPREQUEST, ciaddr=str(addr)), 1800.0)
    assert renew is not None and renew.message_type == DHCPACK
    assert renew.dst_ip == addr and renew.dst_mac == MAC1       # unicast to ciaddr
    assert parse_dhcp(renew.payload).ciaddr == addr
    assert srv.lease_of(MAC1, 1800.0 + 3599) == addr             # extended from the renewal
    rebind = srv.handle(client_msg(DHCPREQUEST, ciaddr=str(addr), flags=0x8000), 4000.0)
    assert rebind is not None and rebind.message_type == DHCPACK


def test_init_reboot_after_gateway_restart_is_granted() -> None:
    srv = server()          # no record of the client's remembered address
    ack = srv.handle(client_msg(DHCPREQUEST, requested="10.0.2.40"), 0.0)
    assert ack is not None and ack.message_type == DHCPACK
    assert srv.lease_of(MAC1, 1.0) == ip("10.0.2.40")


def test_nak_cases() -> None:
    srv = server()
    addr = dora(srv, MAC1)
    # Another client asks for MAC1's address in every way.
    for msg in (client_msg(DHCPREQUEST, MAC2, requested=str(addr), server=GW),
                client_msg(DHCPREQUEST, MAC2, requested=str(addr)),
                client_msg(DHCPREQUEST, MAC2, ciaddr=str(addr))):
        nak = srv.handle(msg, 1.0)
        assert nak is not None and nak.message_type == DHCPNAK
        assert nak.dst_ip == BROADCAST_IP and nak.dst_mac == BROADCAST_MAC
        assert parse_dhcp(nak.payload).yiaddr == ip("0.0.0.0")
    # Outside the range, outside the subnet, and the gateway's own address.
    for wrong in ("192.168.1.5", "10.0.2.2", "10.0.2.5"):
        nak = srv.handle(client_msg(DHCPREQUEST, MAC3, requested=wrong), 1.0)
        assert nak is not None and nak.message_type == DHCPNAK
    assert srv.counters["nak"] == 6


def test_request_for_other_server_releases_offer() -> None:
    srv = server(range_start=ip("10.0.2.15"), range_end=ip("10.0.2.15"))
    assert srv.handle(client_msg(DHCPDISCOVER, MAC1), 0.0) is not None
    assert srv.handle(client_msg(DHCPDISCOVER, MAC2), 0.0) is None      # held for MAC1
    assert srv.handle(client_msg(DHCPREQUEST, MAC1, requested="10.0.2.15", server=OTHER_SERVER), 1.0) is None
    assert srv.counters["other_server"] == 1
    offer = srv.handle(client_msg(DHCPDISCOVER, MAC2), 2.0)
    assert offer is not None and parse_dhcp(offer.payload).yiaddr == ip("10.0.2.15")


def test_pool_exhaustion_and_expiry_reuse() -> None:
    srv = server(range_start=ip("10.0.2.15"), range_end=ip("10.0.2.16"), lease_seconds=600)
    a = dora(srv, MAC1, now=0.0)
    b = dora(srv, MAC2, now=100.0)
    assert {a, b} == {ip("10.0.2.15"), ip("10.0.2.16")}
    assert srv.handle(client_msg(DHCPDISCOVER, MAC3), 200.0) is None
    assert srv.counters["pool_exhausted"] == 1
    # MAC1's lease expired at 600: MAC3 gets it (the longest-expired one).
    offer = srv.handle(client_msg(DHCPDISCOVER, MAC3), 650.0)
    assert offer is not None and parse_dhcp(offer.payload).yiaddr == a
    # Offers that time out return to the pool.
    assert srv.handle(client_msg(DHCPDISCOVER, MAC1), 651.0) is None
    offer = srv.handle(client_msg(DHCPDISCOVER, MAC1), 800.0)
    assert offer is not None


def test_expired_lease_prefers_fresh_addresses_then_returns_to_owner() -> None:
    srv = server(lease_seconds=600)
    a = dora(srv, MAC1, now=0.0)
    b = dora(srv, MAC2, now=1000.0)       # MAC1 expired; MAC2 still gets a never-used address
    assert b != a
    assert dora(srv, MAC1, now=2000.0) == a


def test_selecting_after_offer_timeout_still_granted_when_free() -> None:
    srv = server()
    offer = srv.handle(client_msg(DHCPDISCOVER), 0.0)
    assert offer is not None
    addr = parse_dhcp(offer.payload).yiaddr
    ack = srv.handle(client_msg(DHCPREQUEST, requested=str(addr), server=GW), 500.0)
    assert ack is not None and ack.message_type == DHCPACK


def test_release_and_decline() -> None:
    srv = server(range_start=ip("10.0.2.15"), range_end=ip("10.0.2.16"))
    a = dora(srv, MAC1)
    assert srv.handle(client_msg(DHCPRELEASE, ciaddr=str(a), server=GW), 10.0) is None
    assert srv.lease_of(MAC1, 11.0) is None
    offer = srv.handle(client_msg(DHCPDISCOVER, MAC2), 12.0)       # a fresh address first
    assert offer is not None and parse_dhcp(offer.payload).yiaddr == ip("10.0.2.16")
    # MAC2 finds .16 in use and declines it: .16 stays out of the pool.
    assert srv.handle(client_msg(DHCPDECLINE, MAC2, requested="10.0.2.16", server=GW), 13.0) is None
    assert srv.counters["decline"] == 1
    offer = srv.handle(client_msg(DHCPDISCOVER, MAC2), 14.0)
    assert offer is not None and parse_dhcp(offer.payload).yiaddr == a
    nak = srv.handle(client_msg(DHCPREQUEST, MAC3, requested="10.0.2.16"), 15.0)
    assert nak is not None and nak.message_type == DHCPNAK


def test_inform_acks_without_lease() -> None:
    srv = server()
    ack = srv.handle(client_msg(DHCPINFORM, ciaddr="10.0.2.77"), 0.0)
    assert ack is not None and ack.message_type == DHCPACK and ack.dst_ip == ip("10.0.2.77")
    msg = parse_dhcp(ack.payload)
    assert msg.yiaddr == ip("0.0.0.0") and msg.ciaddr == ip("10.0.2.77")
    assert 51 not in msg.options and 58 not in msg.options and 6 in msg.options
    assert srv.lease_of(MAC1, 1.0) is None


@pytest.mark.parametrize("payload, counter", [
    (b"", "malformed"),
    (client_msg(DHCPDISCOVER)[:200], "malformed"),
    (client_msg(DHCPDISCOVER, cookie=b"\x00\x00\x00\x00"), "malformed"),
    (client_msg(DHCPDISCOVER)[:-2], "malformed"),                      # option value cut off
    (client_msg(None, extra=bytes((50, 10, 1, 2))), "malformed"),        # length past the end
    (client_msg(DHCPDISCOVER, op=2), "not_request"),
    (client_msg(DHCPDISCOVER, htype=6), "bad_hardware"),
    (client_msg(DHCPDISCOVER, hlen=16), "bad_hardware"),
    (client_msg(DHCPDISCOVER, mac=bytes.fromhex("ffffffffffff")), "bad_hardware"),
    (client_msg(DHCPDISCOVER, giaddr="10.0.2.9"), "relayed"),
    (client_msg(None), "no_message_type"),
    (client_msg(99), "unknown_type"),
])
def test_bad_messages_are_dropped_and_counted(payload: bytes, counter: str) -> None:
    srv = server()
    assert srv.handle(payload, 0.0) is None
    assert srv.counters[counter] == 1


def test_parse_errors_are_packet_errors() -> None:
    with pytest.raises(PacketError):
        parse_dhcp(b"\x01" * 100)
    # Missing END is tolerated; split options are joined (RFC 3396).
    msg = parse_dhcp(client_msg(DHCPDISCOVER)[:-1] + bytes((12, 2)) + b"ab" + bytes((12, 1)) + b"c")
    assert msg.options[12] == b"abc"


def test_config_validation() -> None:
    with pytest.raises(ConfigError):
        DhcpConfig.for_subnet("10.0.2.0/24", gateway=ip("10.0.3.2"))
    with pytest.raises(ConfigError):
        DhcpConfig.for_subnet("10.0.2.0/24", range_start=ip("10.0.2.200"), range_end=ip("10.0.2.100"))
    with pytest.raises(ConfigError):
        DhcpConfig.for_subnet("10.0.2.0/24", mtu=100)
    cfg = DhcpConfig(IPv4Network("10.0.2.0/24"), GW, ip("10.0.2.3"), ip("10.0.2.15"), ip("10.0.2.20"))
    assert cfg.dns == (ip("10.0.2.3"),) and cfg.server_id == GW


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_never_raise(data: bytes) -> None:
    srv = server()
    srv.handle(data, 0.0)
    srv.handle(client_msg(DHCPDISCOVER)[:240] + data, 0.0)
    assert srv.counters.get("internal_error", 0) == 0


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([DHCPDISCOVER, DHCPREQUEST, DHCPRELEASE, DHCPDECLINE, DHCPINFORM]),
       st.integers(0, 300), st.binary(min_size=1, max_size=8), st.floats(0, 1e6))
def test_mutated_messages_never_raise(mtype: int, pos: int, junk: bytes, now: float) -> None:
    srv = server()
    dora(srv, MAC2)
    good = client_msg(mtype, requested="10.0.2.15", server=GW, ciaddr="10.0.2.15")
    pos = min(pos, len(good))
    mutated = good[:pos] + junk + good[pos + len(junk):]
    reply = srv.handle(mutated, now)
    if reply is not None:
        assert parse_dhcp(reply.payload).op == 2
    assert srv.counters.get("internal_error", 0) == 0


def test_large_range_is_not_materialised() -> None:
    srv = DhcpServer(DhcpConfig.for_subnet("10.0.0.0/8"))
    offer = srv.handle(client_msg(DHCPDISCOVER), 0.0)
    assert offer is not None and parse_dhcp(offer.payload).yiaddr == ip("10.0.0.15")
    ack = srv.handle(client_msg(DHCPREQUEST, requested="10.200.0.1"), 0.0)    # init-reboot
    assert ack is not None and ack.message_type == DHCPACK
