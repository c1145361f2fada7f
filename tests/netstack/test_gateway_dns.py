"""The gateway with raw frames: port 53 anywhere is our resolver, the host's addresses are off-limits,
names no rule could reach never go upstream, and answers pointing off-limits are withheld.

Every peer is on the loopback (tests/netstack/gateway_harness.py); the far addresses the guest
asks (TEST-NET blocks) are never contacted: nothing here leaves the machine.
"""
from __future__ import annotations

import asyncio
import socket
from ipaddress import IPv4Address, IPv4Network

import dns.message
import dns.rcode

from engine.netstack import host_addresses
from engine.netstack.policy.policy import Flow, NetworkPolicy, Protocol
from engine.netstack.tcp.segment import ACK, PSH, RST, SYN, build_options
from tests.netstack.gateway_harness import (
    DENIED_IP, GUEST_IP, UPSTREAM_ANSWER, WEB_STAND_IN, Guest, Peers, a_records, ask, handshake, is_tcp,
    make_config, running, tcp_frame, tcp_of, udp_frame)

OTHER_RESOLVER = IPv4Address("203.0.113.53")   # TEST-NET-3: "8.8.8.8" for the guest, never contacted


def host_address() -> IPv4Address:
    """One non-loopback address of this host's interfaces (this machine's eth0: 192.0.2.2)."""
    watcher = host_addresses.acquire()
    try:
        found = sorted(n.network_address for n in watcher.networks()
                       if n.prefixlen == 32 and not n.network_address.is_loopback
                       and not str(n.network_address).endswith(".255"))
    finally:
        watcher.release()
    assert found, "the host has no address besides loopback"
    return found[0]


def _query(name: str, qid: int, rdtype: str = "A") -> bytes:
    return dns.message.make_query(name, rdtype, id=qid).to_wire()


async def ask_at(guest: Guest, server: IPv4Address, name: str, qid: int, sport: int = 5454,
                 rdtype: str = "A") -> dns.message.Message:
    return await ask(guest, name, qid, sport, server=server, rdtype=rdtype)


async def ask_tcp_at(guest: Guest, server: IPv4Address, name: str, qid: int, sport: int) -> dns.message.Message:
    srv = await handshake(guest, sport, server, 53, 700)
    wire = _query(name, qid)
    await guest.send(tcp_frame(sport, server, 53, 701, srv, PSH | ACK, len(wire).to_bytes(2, "big") + wire))
    data = b""
    while len(data) < 2 or len(data) < 2 + int.from_bytes(data[:2], "big"):
        seg = tcp_of(await guest.expect(is_tcp(server, 53, sport)))
        assert not seg.flags & RST, seg
        data += seg.payload
    answer = dns.message.from_wire(data[2:])
    assert answer.id == qid
    return answer


# ----- port 53 anywhere is our resolver -----------------------------------------------------------

async def test_udp_dns_to_another_resolver_is_answered_by_ours_even_under_allow_all(peers: Peers) -> None:
    async with running(make_config(peers, NetworkPolicy.allow_all())) as (gw, guest, events):
        static = await ask_at(guest, OTHER_RESOLVER, "web.test", 901)     # a static host: ours only
        assert a_records(static) == [str(WEB_STAND_IN)]
        before = list(peers.dns_questions)
        upstream = await ask_at(guest, OTHER_RESOLVER, "www.example.com", 902)
        assert a_records(upstream) == [UPSTREAM_ANSWER]                   # through our upstream
        assert peers.dns_questions[len(before):] == ["www.example.com"]
        assert gw.udp.flows == {} and gw.counters["dns_intercepted"] == 2
        assert any(e.protocol == "dns" and e.dst == str(OTHER_RESOLVER) for e in events.items)


async def test_non_dns_bytes_to_port_53_are_no_tunnel(peers: Peers) -> None:
    """Under allow-all, a raw datagram to port 53 elsewhere opens no host socket, whatever it holds."""
    async with running(make_config(peers, NetworkPolicy.allow_all())) as (gw, guest, events):
        await guest.send(udp_frame(5455, DENIED_IP, 53, b"\x00\x01tunnel me please" * 4))
        await guest.send(udp_frame(5456, DENIED_IP, 53, b"x"))
        await guest.barrier()
        assert gw.udp.flows == {} and gw.counters["dns_intercepted"] == 2
        assert not [e for e in events.items if e.protocol == "udp"]       # never decided as a flow


async def test_a_denied_name_asked_of_another_resolver_is_still_denied(peers: Peers) -> None:
    policy = NetworkPolicy.allow_all().deny_domain("blocked.test")
    async with running(make_config(peers, policy)) as (gw, guest, events):
        before = list(peers.dns_questions)
        answer = await ask_at(guest, OTHER_RESOLVER, "blocked.test", 903)
        assert answer.rcode() == dns.rcode.NXDOMAIN
        assert peers.dns_questions == before


async def test_tcp_dns_to_another_resolver_is_answered_locally(peers: Peers) -> None:
    async with running(make_config(peers, NetworkPolicy.allow_all())) as (gw, guest, events):
        answer = await ask_tcp_at(guest, OTHER_RESOLVER, "web.test", 904, 40100)
        assert a_records(answer) == [str(WEB_STAND_IN)]
        assert all(flow.local_dns for flow in gw.tcp.flows.values())
        assert gw.counters["tcp_connect_failed"] == 0 and gw.counters["dns_intercepted"] == 1
        assert not [e for e in events.items if e.protocol == "tcp"]       # never a relayed flow


# ----- names no rule could reach ------------------------------------------------------------------

async def test_exfiltration_names_never_reach_upstream_udp_or_tcp(peers: Peers) -> None:
    policy = NetworkPolicy.deny_all().allow_dns().allow_domain("ok.test")
    async with running(make_config(peers, policy)) as (gw, guest, events):
        before = list(peers.dns_questions)
        for qid, rdtype in enumerate(("A", "AAAA", "ANY", "CNAME", "TXT"), start=910):
            answer = await ask(guest, f"secret{qid}.exfil.test", qid)
            assert answer.rcode() == dns.rcode.NXDOMAIN, rdtype
        tcp_answer = await ask_tcp_at(guest, gw.dns_ip, "secret999.exfil.test", 999, 40101)
        assert tcp_answer.rcode() == dns.rcode.NXDOMAIN
        assert peers.dns_questions == before                              # nothing went upstream
        denied = [e.domain for e in events.of("deny", "dns")]
        assert "secret999.exfil.test" in denied and "secret910.exfil.test" in denied
        assert a_records(await ask(guest, "ok.test", 920)) == [UPSTREAM_ANSWER]  # the allowed one works


# ----- the host's own addresses -------------------------------------------------------------------

async def test_the_hosts_own_address_is_refused_under_allow_all(peers: Peers) -> None:
    address = host_address()
    listener = socket.create_server((str(address), 0))
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        async with running(make_config(peers, NetworkPolicy.allow_all())) as (gw, guest, events):
            await guest.send(tcp_frame(40102, address, port, 100, 0, SYN, options=build_options(mss=1460)))
            seg = tcp_of(await guest.expect(is_tcp(address, port, 40102)))
            assert seg.flags == RST | ACK
            await guest.barrier()
            denied = events.of("deny", "tcp")
            assert denied and "protected by the gateway" in denied[0].detail, events.items
        await asyncio.sleep(0)
        try:
            listener.accept()
            raise AssertionError("the guest reached a service on the host's own address")
        except BlockingIOError:
            pass
    finally:
        listener.close()


async def test_a_rule_naming_the_host_address_opens_it(peers: Peers) -> None:
    address = host_address()
    policy = NetworkPolicy.allow_all().allow_ip(address)
    async with running(make_config(peers, policy)) as (gw, guest, events):
        assert gw.decide(Protocol.TCP, GUEST_IP, 1, address, 80, emit=False).allowed
        flow = Flow(Protocol.TCP, address, 80, GUEST_IP, 1, frozenset(), None)
        assert not NetworkPolicy.allow_all().evaluate(flow, protected=gw.protected()).allowed


async def test_an_upstream_answer_pointing_at_a_host_address_is_withheld(peers: Peers) -> None:
    """The stub upstream answers UPSTREAM_ANSWER; here that address is one of the host's."""
    async with running(make_config(peers, NetworkPolicy.allow_all())) as (gw, guest, events):
        real = gw.host_addresses

        class _AlsoTheStubsAnswer:
            def networks(self) -> frozenset[IPv4Network]:
                return real.networks() | {IPv4Network(f"{UPSTREAM_ANSWER}/32")}

            def release(self) -> None:
                real.release()

        gw.host_addresses = _AlsoTheStubsAnswer()  # type: ignore[assignment]  # a stand-in with the two methods used
        answer = await ask(guest, "www.example.com", 930)
        assert answer.rcode() == dns.rcode.NXDOMAIN and a_records(answer) == []
        withheld = [e for e in events.of("deny", "dns") if "withheld" in e.detail]
        assert withheld and UPSTREAM_ANSWER in withheld[0].rule
        assert gw.tracker.domains_for(IPv4Address(UPSTREAM_ANSWER), gw.now()) == frozenset()
        assert a_records(await ask(guest, "web.test", 931)) == [str(WEB_STAND_IN)]   # static: exempt

