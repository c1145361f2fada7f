"""The cluster switch alone (allocation, delivery, spoof refusal, layout agreement, leaving) and
two or three real Gateways joined by it, driven with raw frames over socket pairs."""
from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from ipaddress import IPv4Address, IPv4Network

import dns.message
import pytest

from engine.errors import ConfigError
from engine.netstack.arp import OP_REPLY, build_arp_request, parse_arp
from engine.netstack.cluster import ClusterPort, ClusterRegistry, MemberNames
from engine.netstack.config import NetworkMode, UserNatConfig
from engine.netstack.dns import NameVerdict
from engine.netstack.flowlog import FlowEvent
from engine.netstack.ethernet import parse_ethernet
from engine.netstack.gateway.gateway import Gateway
from engine.netstack.icmp import TYPE_ECHO_REQUEST, build_echo
from engine.netstack.ipv4 import PROTO_ICMP
from engine.netstack.policy.policy import NetworkPolicy
from engine.netstack.tcp.segment import ACK, SYN
from engine.netstack.udp import parse_udp
from tests.netstack.gateway_harness import (DNS_IP, G_MAC, GW_MAC, Guest, a_records, dhcp_lease, ip_frame,
                                            ipv4_of, tcp_frame, udp_frame)

SUBNET = IPv4Network("10.0.2.0/24")
RANGE = (IPv4Address("10.0.2.15"), IPv4Address("10.0.2.254"))
A1, A2, A3 = (IPv4Address(f"10.0.2.{n}") for n in (15, 16, 17))


class Sink:
    def __init__(self) -> None:
        self.packets: list[bytes] = []
        self.changes = 0

    def deliver(self, packet: bytes) -> None:
        self.packets.append(packet)

    def changed(self) -> None:
        self.changes += 1


def join(registry: ClusterRegistry, name: str, sink: Sink, hostname: str | None = None,
         subnet: IPv4Network = SUBNET, dhcp_range: tuple[IPv4Address, IPv4Address] = RANGE) -> ClusterPort:
    return registry.join(name, subnet, dhcp_range, hostname=hostname,
                         deliver=sink.deliver, changed=sink.changed)


# ----- the switch alone ---------------------------------------------------------------------------

def test_members_get_distinct_addresses_from_the_range_and_reuse_freed_ones() -> None:
    registry = ClusterRegistry()
    sinks = [Sink() for _ in range(3)]
    ports = [join(registry, "a", s) for s in sinks]
    assert [p.address for p in ports] == [A1, A2, A3]
    ports[1].leave()
    again = join(registry, "a", Sink())
    assert again.address == A2
    assert ports[0].peers() == {A2, A3}


def test_a_full_cluster_refuses_the_next_member() -> None:
    registry = ClusterRegistry()
    small = (IPv4Address("10.0.2.15"), IPv4Address("10.0.2.16"))
    join(registry, "a", Sink(), dhcp_range=small)
    join(registry, "a", Sink(), dhcp_range=small)
    with pytest.raises(ConfigError, match="cluster 'a' is full"):
        join(registry, "a", Sink(), dhcp_range=small)


def test_members_must_agree_on_the_subnet() -> None:
    registry = ClusterRegistry()
    join(registry, "a", Sink())
    other = IPv4Network("10.9.0.0/24")
    with pytest.raises(ConfigError, match="same subnet.*10.0.2.0/24.*10.9.0.0/24"):
        join(registry, "a", Sink(), subnet=other, dhcp_range=(IPv4Address("10.9.0.15"), IPv4Address("10.9.0.254")))
    # Another cluster may use any layout, the same one included.
    assert join(registry, "b", Sink(), subnet=other,
                dhcp_range=(IPv4Address("10.9.0.15"), IPv4Address("10.9.0.254"))).address == IPv4Address("10.9.0.15")


def test_delivery_goes_to_the_member_at_the_destination_only() -> None:
    registry = ClusterRegistry()
    s1, s2, s3 = Sink(), Sink(), Sink()
    p1, _p2, _p3 = join(registry, "a", s1), join(registry, "a", s2), join(registry, "a", s3)
    assert p1.carries(A2) and not p1.carries(A1) and not p1.carries(IPv4Address("10.0.2.99"))
    assert p1.send(A1, A2, b"packet")
    assert s2.packets == [b"packet"] and s3.packets == [] and s1.packets == []


def test_a_spoofed_source_is_refused() -> None:
    registry = ClusterRegistry()
    s2, s3 = Sink(), Sink()
    p1 = join(registry, "a", Sink())
    join(registry, "a", s2)
    join(registry, "a", s3)
    assert not p1.send(A2, A3, b"as if from member 2")
    assert s3.packets == [] and p1.counters["cluster_spoofed"] == 1


def test_other_clusters_are_unreachable() -> None:
    registry = ClusterRegistry()
    in_b = Sink()
    p1 = join(registry, "a", Sink())
    join(registry, "b", in_b)            # also 10.0.2.15, on another switch
    pb2 = join(registry, "b", Sink())    # 10.0.2.16 in b only
    assert not p1.carries(pb2.address)
    assert not p1.send(A1, pb2.address, b"x") and in_b.packets == []


def test_leaving_stops_delivery_announces_and_the_last_drops_the_switch() -> None:
    registry = ClusterRegistry()
    s1, s2 = Sink(), Sink()
    p1, p2 = join(registry, "a", s1), join(registry, "a", s2, "web")
    assert registry.members("a") == {A1: None, A2: "web"}
    before = s1.changes
    p2.leave()
    p2.leave()  # idempotent
    assert s1.changes == before + 1
    assert not p1.carries(A2) and not p1.send(A1, A2, b"x") and s2.packets == []
    assert not p2.send(A2, A1, b"x") and s1.packets == []
    p1.leave()
    assert "a" not in registry.switches and registry.members("a") == {}


def test_names_list_every_member_and_shared_names_answer_all() -> None:
    registry = ClusterRegistry()
    p1 = join(registry, "a", Sink(), "Web")
    join(registry, "a", Sink(), "db")
    join(registry, "a", Sink(), "web")
    join(registry, "a", Sink())
    assert p1.names() == {"web": [A1, A3], "db": [A2]}


def test_member_names_pass_the_filter_others_ask_the_policy() -> None:
    names = MemberNames(lambda name: NameVerdict(False, "deny all"), "a")
    names.names = frozenset({"web"})
    assert names("web") == NameVerdict(True, "cluster a member")
    assert names("WEB.") == NameVerdict(True, "cluster a member")
    assert names("web.example") == NameVerdict(False, "deny all")


def test_cluster_names_are_checked() -> None:
    assert NetworkMode.cluster("a-1.b_c").build().cluster == "a-1.b_c"
    assert NetworkMode.user_nat().build().cluster is None
    for bad in ("", "-a", "a b", "x" * 64, "a/b"):
        with pytest.raises(ConfigError, match="cluster name"):
            NetworkMode.cluster(bad).build()


# ----- real gateways joined by one registry --------------------------------------------------------

@contextlib.asynccontextmanager
async def member(registry: ClusterRegistry, config: UserNatConfig, hostname: str) -> AsyncIterator[tuple[Gateway, Guest]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.setblocking(False)
    b.setblocking(False)
    gw = Gateway(config, hostname, hostname=hostname, clusters=registry)
    await gw.start(a)
    try:
        yield gw, Guest(b)
    finally:
        await gw.close()
        b.close()
    assert gw.counters["internal_error"] == 0, gw.counters


def deny_all() -> UserNatConfig:
    return NetworkMode.cluster("a").policy(NetworkPolicy.deny_all()).dns_upstream("127.0.0.1:9").build()


def echo(src: IPv4Address, dst: IPv4Address, seq: int) -> bytes:
    return ip_frame(src, dst, PROTO_ICMP, build_echo(TYPE_ECHO_REQUEST, 7, seq, b"ping"))


def is_icmp_from(src: IPv4Address) -> Callable[[bytes], bool]:
    def pred(raw: bytes) -> bool:
        ip = ipv4_of(raw)
        return ip is not None and ip.protocol == PROTO_ICMP and ip.src == src
    return pred


async def test_gateways_lease_the_switch_address_proxy_arp_and_deliver() -> None:
    registry = ClusterRegistry()
    async with member(registry, deny_all(), "one") as (gw1, guest1), \
            member(registry, deny_all(), "two") as (gw2, guest2):
        assert await dhcp_lease(guest1) == A1
        assert await dhcp_lease(guest2) == A2
        await guest1.send(build_arp_request(G_MAC, A1, A2))
        reply = parse_ethernet(await guest1.expect(lambda raw: raw[12:14] == b"\x08\x06"))
        arp = parse_arp(reply.payload)
        assert arp.op == OP_REPLY and arp.sender_ip == A2 and arp.sender_mac == GW_MAC
        # An ICMP echo (never relayed beyond a gateway otherwise) crosses the switch unchanged.
        sent = echo(A1, A2, 1)
        await guest1.send(sent)
        got = await guest2.expect(is_icmp_from(A1))
        assert got[:6] == G_MAC and got[6:12] == GW_MAC
        assert got[14:] == sent[14:]
        assert gw1.stats()["counters"]["cluster_out"] == 1 and gw2.stats()["counters"]["cluster_in"] == 1
        assert gw1.flow_log.count == 0  # intra-cluster traffic is the cluster's, not the policy's


async def test_a_guest_cannot_send_from_another_members_address() -> None:
    registry = ClusterRegistry()
    async with member(registry, deny_all(), "one") as (gw1, guest1), \
            member(registry, deny_all(), "two") as (_gw2, _guest2), \
            member(registry, deny_all(), "three") as (_gw3, guest3):
        await guest1.send(echo(A2, A3, 1))         # member 1 posing as member 2
        await guest1.send(echo(A1, A3, 2))         # then honestly
        got = await guest3.expect(is_icmp_from(A1))
        assert got[14:] == echo(A1, A3, 2)[14:]
        assert not any(is_icmp_from(A2)(raw) for raw in guest3.frames)
        assert gw1.counters["cluster_refused"] == 1


async def test_a_gateway_in_no_cluster_or_another_one_is_not_reached() -> None:
    registry = ClusterRegistry()
    other = NetworkMode.cluster("b").policy(NetworkPolicy.deny_all()).dns_upstream("127.0.0.1:9").build()
    async with member(registry, deny_all(), "one") as (gw1, guest1), \
            member(registry, other, "b1") as (_gwb, guest_b), \
            member(registry, other, "b2") as (_gwb2, _guest_b2):
        await guest1.send(build_arp_request(G_MAC, A1, A2))  # A2 is b2's, in cluster b
        await guest1.send(echo(A1, A2, 1))
        await guest1.send(build_arp_request(G_MAC, A1, IPv4Address("10.0.2.2")))
        await guest1.expect(lambda raw: raw[12:14] == b"\x08\x06")  # the gateway's own: answered
        assert not any(raw[12:14] == b"\x08\x06" for raw in guest1.frames)  # A2: not proxied
        assert gw1.counters["subnet_dropped"] == 1
        assert not guest_b.frames
    # A gateway in no cluster never joins one.
    plain = Gateway(NetworkMode.user_nat().build(), "plain", hostname="plain", clusters=registry)
    assert plain.cluster is None and registry.switches == {}


async def test_member_names_resolve_under_a_deny_all_policy_and_follow_leaves() -> None:
    registry = ClusterRegistry()
    async with member(registry, deny_all(), "one") as (gw1, guest1):
        async with member(registry, deny_all(), "two") as (_gw2, _guest2):
            assert a_records(await ask_from(guest1, A1, "two", 1)) == [str(A2)]
            assert a_records(await ask_from(guest1, A1, "ONE", 2)) == [str(A1)]
        answer = await ask_from(guest1, A1, "two", 3)
        assert answer.rcode() == dns.rcode.NXDOMAIN  # left: the policy decides the name again
        assert gw1._arp.addresses == {IPv4Address("10.0.2.2"), DNS_IP}
    assert registry.switches == {}


async def test_a_config_static_host_wins_over_a_member_name() -> None:
    registry = ClusterRegistry()
    config = (NetworkMode.cluster("a").host("two", "192.0.2.1")
              .policy(NetworkPolicy.deny_all()).dns_upstream("127.0.0.1:9").build())
    async with member(registry, config, "one") as (_gw1, guest1), \
            member(registry, deny_all(), "two") as (_gw2, _guest2):
        answer = await ask_from(guest1, A1, "two", 1)
        assert answer.rcode() == dns.rcode.NXDOMAIN  # its own entry, which its policy denies


async def test_members_of_different_subnets_are_refused_at_start() -> None:
    registry = ClusterRegistry()
    other = NetworkMode.cluster("a").subnet("10.5.0.0/24").build()
    async with member(registry, deny_all(), "one"):
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        a.setblocking(False)
        gw = Gateway(other, "two", hostname="two", clusters=registry)
        with pytest.raises(ConfigError, match="same subnet"):
            await gw.start(a)
        b.close()
        assert a.fileno() == -1  # the gateway closed the socket it was handed
        assert len(registry.members("a")) == 1


async def test_a_restored_lease_becomes_the_members_own_address() -> None:
    """A clone wakes up with its template's address: the member keeps the switch's, which the
    caller gives the guest (the clone's identity fix-up)."""
    registry = ClusterRegistry()
    async with member(registry, deny_all(), "one") as (gw1, _guest1):
        assert gw1.adopt_lease(A1) == A1
        assert gw1.adopt_lease(A2) == A1 and gw1.guest_ip == A1


async def ask_from(guest: Guest, src: IPv4Address, name: str, qid: int) -> dns.message.Message:
    await guest.send(udp_frame(5353, DNS_IP, 53, dns.message.make_query(name, "A", id=qid).to_wire(), src=src))

    def pred(raw: bytes) -> bool:
        ip = ipv4_of(raw)
        return ip is not None and ip.src == DNS_IP and ip.dst == src

    ip = ipv4_of(await guest.expect(pred))
    assert ip is not None
    return dns.message.from_wire(parse_udp(ip).payload)



async def test_a_member_whose_guest_is_not_reading_drops_what_others_send() -> None:
    registry = ClusterRegistry()
    async with member(registry, deny_all(), "one") as (_gw1, guest1), \
            member(registry, deny_all(), "two") as (gw2, guest2):
        gw2._pause(True)  # QEMU stopped reading: its write buffer is full
        await guest1.send(echo(A1, A2, 1))
        await guest1.barrier()
        assert gw2.counters["cluster_dropped_busy"] == 1
        gw2._pause(False)
        await guest1.send(echo(A1, A2, 2))
        got = await guest2.expect(is_icmp_from(A1))
        assert got[14:] == echo(A1, A2, 2)[14:]


async def test_each_new_connection_to_a_member_is_one_flow_log_event_spoofs_are_denials() -> None:
    registry = ClusterRegistry()
    async with member(registry, deny_all(), "one") as (gw1, guest1), \
            member(registry, deny_all(), "two") as (_gw2, guest2), \
            member(registry, deny_all(), "three") as (_gw3, _guest3):
        seen: list[FlowEvent] = []

        async def pump() -> None:
            async for event in gw1.flow_log.subscribe():
                seen.append(event)

        task = asyncio.ensure_future(pump())
        for _ in range(3):
            await asyncio.sleep(0)
        await guest1.send(tcp_frame(40000, A2, 8080, 1, 0, SYN, src=A1),
                          tcp_frame(40000, A2, 8080, 2, 1, ACK, b"data", src=A1),  # not logged
                          tcp_frame(40001, A2, 8080, 1, 0, SYN, src=A3))          # spoofed
        await guest2.expect(lambda raw: (ip := ipv4_of(raw)) is not None and ip.protocol == 6 and b"data" in ip.payload)
        await guest1.barrier()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert [(e.src, e.dst, e.port, e.action, e.rule) for e in seen] == [
            (str(A1), str(A2), 8080, "allow", "cluster a"),
            (str(A3), str(A2), 8080, "deny", "cluster a: not this VM's address"),
        ]
