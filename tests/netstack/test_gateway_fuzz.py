"""Random and mutated frames against the gateway: nothing escapes, no denied flow is ever opened."""
from __future__ import annotations

from ipaddress import IPv4Address

from hypothesis import HealthCheck, given, settings, strategies as st

from engine.netstack.arp import build_arp_request
from engine.netstack.checksum import internet_checksum, pseudo_header_sum
from engine.netstack.dhcp import DHCPDISCOVER, DHCPREQUEST
from engine.netstack.ethernet import (ETHERTYPE_IPV4, build_ethernet)
from engine.netstack.gateway.gateway import Gateway
from engine.netstack.ipv4 import PROTO_ICMP, PROTO_TCP, PROTO_UDP
from engine.netstack.policy.policy import MatchCriteria, NetworkPolicy, Protocol
from engine.netstack.tcp.segment import ACK, PSH, SYN, build_options
from tests.netstack.test_dhcp import client_msg

from tests.netstack.gateway_harness import (
    GW_MAC,
    G_MAC,
    GW_IP,
    DNS_IP,
    GUEST_IP,
    ZERO,
    BCAST,
    DENIED_IP,
    WEB_STAND_IN,
    ECHO_STAND_IN,
    LOOPBACK,
    Peers,
    make_config,
    running,
    ip_frame,
    udp_frame,
    tcp_frame,
    dns_query_frame,
    dhcp_frame,
    icmp_echo_frame,
    ask,
    a_records,
)


def strict_policy(peers: Peers) -> NetworkPolicy:
    """Everything denied but the static host echo.test, on the two test ports."""
    name = MatchCriteria.domain("echo.test")
    return (NetworkPolicy.deny_all()
            .allow(MatchCriteria.all(name, MatchCriteria.protocol(Protocol.TCP), MatchCriteria.port(peers.web_port)))
            .allow(MatchCriteria.all(name, MatchCriteria.protocol(Protocol.UDP), MatchCriteria.port(peers.echo_port))))


def fix_checksums(raw: bytes) -> bytes:
    """Recompute the IPv4 header checksum and the TCP/UDP checksum, so mutations reach deeper."""
    if len(raw) < 34 or raw[12:14] != b"\x08\x00":
        return raw
    b = bytearray(raw)
    ihl = (b[14] & 0x0F) * 4
    if ihl < 20 or 14 + ihl > len(b):
        return raw
    b[24:26] = b"\x00\x00"
    b[24:26] = internet_checksum(bytes(b[14:14 + ihl])).to_bytes(2, "big")
    end = min(len(b), 14 + int.from_bytes(b[16:18], "big"))
    start = 14 + ihl
    proto = b[23]
    src, dst = IPv4Address(bytes(b[26:30])), IPv4Address(bytes(b[30:34]))
    if proto == PROTO_TCP and end - start >= 20:
        b[start + 16:start + 18] = b"\x00\x00"
        csum = internet_checksum(bytes(b[start:end]), pseudo_header_sum(src, dst, PROTO_TCP, end - start))
        b[start + 16:start + 18] = csum.to_bytes(2, "big")
    elif proto == PROTO_UDP and end - start >= 8:
        length = int.from_bytes(b[start + 4:start + 6], "big")
        if 8 <= length <= end - start:
            b[start + 6:start + 8] = b"\x00\x00"
            csum = internet_checksum(bytes(b[start:start + length]), pseudo_header_sum(src, dst, PROTO_UDP, length))
            b[start + 6:start + 8] = (csum or 0xFFFF).to_bytes(2, "big")
    return bytes(b)


def valid_frames(peers: Peers) -> list[bytes]:
    syn_opts = build_options(mss=1460, wscale=7, sack_permitted=True, timestamps=(1, 0))
    return [
        build_arp_request(G_MAC, GUEST_IP, GW_IP),
        build_arp_request(G_MAC, GUEST_IP, DNS_IP),
        icmp_echo_frame(1, 1, b"abcdefgh"),
        dhcp_frame(client_msg(DHCPDISCOVER, G_MAC, flags=0x8000)),
        dhcp_frame(client_msg(DHCPREQUEST, G_MAC, requested=str(GUEST_IP), server=GW_IP)),
        dhcp_frame(client_msg(DHCPREQUEST, G_MAC, ciaddr=str(GUEST_IP))),
        dns_query_frame("echo.test", 0x1001),
        dns_query_frame("other.test", 0x1002),
        tcp_frame(42000, DENIED_IP, 80, 100, 0, SYN, options=syn_opts),
        tcp_frame(42001, ECHO_STAND_IN, peers.web_port, 100, 0, SYN, options=syn_opts),
        tcp_frame(42001, ECHO_STAND_IN, peers.web_port, 101, 1, ACK | PSH, b"GET / HTTP/1.1\r\nHost: echo.test\r\n\r\n"),
        tcp_frame(42002, LOOPBACK, peers.web_port, 100, 0, SYN),
        tcp_frame(42003, GW_IP, 22, 100, 0, SYN),
        udp_frame(42004, ECHO_STAND_IN, peers.echo_port, b"datagram"),
        udp_frame(42005, DENIED_IP, 53, b"datagram"),
        udp_frame(42006, LOOPBACK, peers.echo_port, b"datagram"),
        udp_frame(42007, GW_IP, 50000, b"to a forward port nobody opened"),
    ]


ADDRESSES = [GUEST_IP, GW_IP, DNS_IP, ZERO, BCAST, LOOPBACK, DENIED_IP, ECHO_STAND_IN, WEB_STAND_IN,
             IPv4Address("198.18.0.9"), IPv4Address("10.0.2.255"), IPv4Address("10.0.2.99"),
             IPv4Address("224.0.0.251"), IPv4Address("169.254.169.254"), IPv4Address("192.168.1.1")]


@st.composite
def mutated(draw: st.DrawFn, base: list[bytes]) -> bytes:
    raw = bytearray(draw(st.sampled_from(base)))
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["flip", "byte", "addr", "port", "truncate", "extend"]))
        if kind == "flip" and raw:
            pos = draw(st.integers(0, len(raw) - 1))
            raw[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte" and raw:
            pos = draw(st.integers(0, len(raw) - 1))
            raw[pos] = draw(st.integers(0, 255))
        elif kind == "addr" and len(raw) >= 34:
            offset = draw(st.sampled_from([26, 30]))  # IPv4 source or destination
            raw[offset:offset + 4] = draw(st.sampled_from(ADDRESSES)).packed
        elif kind == "port" and len(raw) >= 38:
            offset = draw(st.sampled_from([34, 36]))  # TCP/UDP source or destination port
            raw[offset:offset + 2] = draw(st.integers(0, 0xFFFF)).to_bytes(2, "big")
        elif kind == "truncate":
            del raw[draw(st.integers(0, len(raw))):]
        elif kind == "extend":
            raw += draw(st.binary(max_size=64))
    out = bytes(raw)
    return fix_checksums(out) if draw(st.booleans()) else out


def check_flows(gw: Gateway, peers: Peers) -> None:
    for _guest_ip, _guest_port, far_ip, far_port in gw.tcp.flows:
        assert (far_ip, far_port) == (ECHO_STAND_IN, peers.web_port), gw.tcp.flows
    for _guest_ip, _guest_port, far_ip, far_port in gw.udp.flows:
        assert (far_ip, far_port) == (ECHO_STAND_IN, peers.echo_port), gw.udp.flows


HYPOTHESIS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

random_frames = st.lists(
    st.one_of(
        st.binary(max_size=120),
        st.binary(max_size=100).map(lambda p: build_ethernet(GW_MAC, G_MAC, ETHERTYPE_IPV4, p)),
        st.tuples(st.sampled_from([PROTO_ICMP, PROTO_TCP, PROTO_UDP, 2, 47]), st.sampled_from(ADDRESSES),
                  st.binary(max_size=100))
        .map(lambda t: ip_frame(GUEST_IP, t[1], t[0], t[2])),
    ),
    min_size=1, max_size=12,
)


@HYPOTHESIS
@given(frames=random_frames)
async def test_random_frames_never_break_the_gateway(peers: Peers, frames: list[bytes]) -> None:
    async with running(make_config(peers, strict_policy(peers))) as (gw, guest, _events):
        await guest.send(*frames)
        await guest.barrier()  # the link is still open and the gateway still answers ARP
        assert gw.counters["internal_error"] == 0, gw.counters
        assert gw.counters["stream_corrupt"] == 0
        assert gw._transport is not None and not gw._transport.is_closing()
        check_flows(gw, peers)


@HYPOTHESIS
@given(data=st.data())
async def test_mutated_frames_never_open_a_denied_flow(peers: Peers, data: st.DataObject) -> None:
    base = valid_frames(peers)
    frames = data.draw(st.lists(mutated(base), min_size=1, max_size=10))
    async with running(make_config(peers, strict_policy(peers))) as (gw, guest, _events):
        # The name is resolved first, so the allowed destination really is allowed.
        assert a_records(await ask(guest, "echo.test", 0x7777, 5300)) == [str(ECHO_STAND_IN)]
        await guest.send(*frames)
        await guest.barrier()
        assert gw.counters["internal_error"] == 0, gw.counters
        check_flows(gw, peers)
    assert gw.tcp.flows == {} and gw.udp.flows == {}


async def test_mutation_setup_reaches_the_allowed_flows(peers: Peers) -> None:
    """The unmutated frames of the property test open exactly the two allowed flows."""
    async with running(make_config(peers, strict_policy(peers))) as (gw, guest, _events):
        await ask(guest, "echo.test", 0x7777, 5300)
        await guest.send(*valid_frames(peers))
        await guest.barrier()
        assert set(gw.tcp.flows) == {(GUEST_IP, 42001, ECHO_STAND_IN, peers.web_port)}
        assert set(gw.udp.flows) == {(GUEST_IP, 42004, ECHO_STAND_IN, peers.echo_port)}
        assert gw.counters["tcp_connect_failed"] == 0


# ----- 6. close ----------------------------------------------------------------------------------
