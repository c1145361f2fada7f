"""The gateway's asyncio adapter, driven without QEMU: the test plays the guest on a socketpair."""
from __future__ import annotations

import asyncio
import socket

import dns.message
import dns.rcode
import dns.rrset
import pytest

from engine.netstack.arp import OP_REPLY, build_arp_request, parse_arp
from engine.netstack.config import PortForward
from engine.netstack.ethernet import (ETHERTYPE_ARP, parse_ethernet)
from engine.netstack.gateway import udp as gateway_udp
from engine.netstack.frames import MAX_FRAME
from engine.netstack.icmp import (TYPE_DEST_UNREACHABLE, TYPE_ECHO_REPLY, UNREACH_ADMIN_PROHIBITED,
                                  parse_icmp)
from engine.netstack.ipv4 import PROTO_TCP, PROTO_UDP
from engine.netstack.policy.policy import MatchCriteria, NetworkPolicy
from engine.netstack.tcp.segment import ACK, FIN, PSH, RST, SYN, build_options, parse_tcp
from engine.netstack.tcp.connection import TcpState
from engine.netstack.udp import parse_udp

from tests.waiting import free_port
from tests.netstack.gateway_harness import (
    GW_MAC,
    G_MAC,
    GW_IP,
    GUEST_IP,
    DENIED_IP,
    WEB_STAND_IN,
    ECHO_STAND_IN,
    UPSTREAM_ANSWER,
    TIMEOUT,
    Peers,
    make_config,
    running,
    udp_frame,
    tcp_frame,
    icmp_echo_frame,
    ipv4_of,
    is_udp,
    is_tcp,
    is_icmp,
    tcp_of,
    ask,
    a_records,
    dhcp_lease,
    handshake,
)


async def test_arp_icmp_echo_and_dhcp(peers: Peers) -> None:
    async with running(make_config(peers)) as (gw, guest, _events):
        await guest.send(build_arp_request(G_MAC, GUEST_IP, GW_IP))
        reply = parse_ethernet(await guest.expect(lambda raw: raw[12:14] == b"\x08\x06"))
        assert reply.dst == G_MAC and reply.src == GW_MAC and reply.ethertype == ETHERTYPE_ARP
        arp = parse_arp(reply.payload)
        assert (arp.op, arp.sender_mac, arp.sender_ip) == (OP_REPLY, GW_MAC, GW_IP)
        assert (arp.target_mac, arp.target_ip) == (G_MAC, GUEST_IP)

        await guest.send(icmp_echo_frame(0x4242, 7, b"ping payload"))
        raw = await guest.expect(is_icmp)
        ip = ipv4_of(raw)
        assert ip is not None and (ip.src, ip.dst) == (GW_IP, GUEST_IP)
        echo = parse_icmp(ip.payload)
        assert (echo.type, echo.ident, echo.seq, echo.payload) == (TYPE_ECHO_REPLY, 0x4242, 7, b"ping payload")

        assert gw.guest_ip is None
        leased = await dhcp_lease(guest)
        assert leased == GUEST_IP
        assert gw.guest_ip == leased


# ----- 2. DNS ------------------------------------------------------------------------------------

async def test_dns_static_denied_and_forwarded(peers: Peers) -> None:
    async with running(make_config(peers)) as (gw, guest, events):
        answer = await ask(guest, "web.test", 101)
        assert answer.rcode() == dns.rcode.NOERROR
        assert a_records(answer) == [str(WEB_STAND_IN)]

        answer = await ask(guest, "blocked.test", 102)
        assert answer.rcode() == dns.rcode.NXDOMAIN and not answer.answer
        denied = events.of("deny", "dns")
        assert [e.domain for e in denied] == ["blocked.test"]

        answer = await ask(guest, "fwd.test", 103)
        assert answer.rcode() == dns.rcode.NOERROR
        assert a_records(answer) == [UPSTREAM_ANSWER]
        assert "fwd.test" in peers.dns_questions
        assert "blocked.test" not in peers.dns_questions and "web.test" not in peers.dns_questions
        assert gw.counters["dns_foreign_answer"] == 0


# ----- 3. TCP ------------------------------------------------------------------------------------

async def test_tcp_syn_to_a_denied_destination_is_reset_without_a_flow(peers: Peers,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()
    connects: list[tuple[object, ...]] = []
    real_connect = loop.create_connection

    async def spy(*args: object, **kwargs: object) -> object:
        connects.append(args)
        return await real_connect(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(loop, "create_connection", spy)
    async with running(make_config(peers)) as (gw, guest, events):
        await guest.send(tcp_frame(40002, DENIED_IP, 80, 5000, 0, SYN, options=build_options(mss=1460)))
        seg = tcp_of(await guest.expect(is_tcp(DENIED_IP, 80, 40002)))
        assert seg.flags == RST | ACK and seg.ack == 5001
        await guest.barrier()
        assert gw.tcp.flows == {}
        assert gw.counters["tcp_connect_failed"] == 0
        await asyncio.sleep(0.05)
        assert connects == []  # no host socket was even attempted
        denied = events.of("deny", "tcp")
        assert len(denied) == 1 and denied[0].dst == str(DENIED_IP) and denied[0].port == 80


async def test_tcp_to_a_static_host_relays_an_http_exchange(peers: Peers) -> None:
    async with running(make_config(peers)) as (gw, guest, events):
        assert a_records(await ask(guest, "web.test", 201)) == [str(WEB_STAND_IN)]
        sport, isn = 40003, 7000
        srv = await handshake(guest, sport, WEB_STAND_IN, peers.web_port, isn)
        request = b"GET / HTTP/1.1\r\nHost: web.test\r\nUser-Agent: test\r\n\r\n"
        await guest.send(tcp_frame(sport, WEB_STAND_IN, peers.web_port, isn + 1, srv, PSH | ACK, request))
        mine = isn + 1 + len(request)

        body = b""
        fin = False
        while not fin:
            seg = tcp_of(await guest.expect(is_tcp(WEB_STAND_IN, peers.web_port, sport)))
            assert not seg.flags & RST, seg
            if seg.payload and seg.seq == srv:
                body += seg.payload
                srv = (srv + len(seg.payload)) & 0xFFFFFFFF
            if seg.fin and (seg.seq + len(seg.payload)) & 0xFFFFFFFF == srv:
                srv = (srv + 1) & 0xFFFFFFFF
                fin = True
            if seg.payload or seg.fin:
                await guest.send(tcp_frame(sport, WEB_STAND_IN, peers.web_port, mine, srv, ACK))
        assert body == b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello"
        assert any(b"Host: web.test" in r for r in peers.http_requests)

        # Our FIN: the gateway acknowledges it and the connection waits out TIME_WAIT.
        await guest.send(tcp_frame(sport, WEB_STAND_IN, peers.web_port, mine, srv, FIN | ACK))
        while True:
            seg = tcp_of(await guest.expect(is_tcp(WEB_STAND_IN, peers.web_port, sport)))
            if seg.ack == mine + 1:
                break
        assert not seg.flags & (RST | SYN)
        key = (GUEST_IP, sport, WEB_STAND_IN, peers.web_port)
        flow = gw.tcp.flows.get(key)
        assert flow is None or (flow.conn is not None and flow.conn.state is TcpState.TIME_WAIT)
        allowed = events.of("allow", "tcp")
        assert allowed and all(e.dst == "127.0.0.1" and e.port == peers.web_port for e in allowed)
        assert any(e.domain == "web.test" for e in allowed)
        assert not events.of("deny", "tcp")
        assert gw.counters["tcp_connect_failed"] == 0


async def test_tcp_with_a_host_header_naming_another_site_is_reset(peers: Peers) -> None:
    async with running(make_config(peers)) as (gw, guest, events):
        await ask(guest, "web.test", 301)
        sport, isn = 40004, 9000
        srv = await handshake(guest, sport, WEB_STAND_IN, peers.web_port, isn)
        before = len(peers.http_requests)
        request = b"GET / HTTP/1.1\r\nHost: elsewhere.example\r\n\r\n"
        await guest.send(tcp_frame(sport, WEB_STAND_IN, peers.web_port, isn + 1, srv, PSH | ACK, request))
        while True:
            seg = tcp_of(await guest.expect(is_tcp(WEB_STAND_IN, peers.web_port, sport)))
            if seg.flags & RST:
                break
        await guest.barrier()
        assert (GUEST_IP, sport, WEB_STAND_IN, peers.web_port) not in gw.tcp.flows
        assert len(peers.http_requests) == before
        assert [e.domain for e in events.of("deny", "tcp")] == ["elsewhere.example"]


async def test_a_public_name_pointing_at_a_stand_in_does_not_open_the_host_loopback(peers: Peers) -> None:
    """Only the profile's static entry may reach the host's loopback through a stand-in address.

    An allowed wildcard whose upstream answer is 198.18.0.1 (DNS rebinding into the stand-in
    block) must not count as the static host.
    """
    policy = NetworkPolicy.deny_all().allow_domain("*.rebind.test").allow_udp_port(9)
    async with running(make_config(peers, policy)) as (gw, guest, events):
        answer = await ask(guest, "evil.rebind.test", 311)
        # The rebinding answer is withheld (was: passed on, "the guest may learn it, not use it").
        assert answer.rcode() == dns.rcode.NXDOMAIN and a_records(answer) == []
        withheld = [e for e in events.of("deny", "dns") if "withheld" in e.detail]
        assert withheld and withheld[0].domain == "evil.rebind.test" and str(WEB_STAND_IN) in withheld[0].rule
        before = len(peers.http_requests)
        await guest.send(tcp_frame(40005, WEB_STAND_IN, peers.web_port, 100, 0, SYN, options=build_options(mss=1460)))
        seg = tcp_of(await guest.expect(is_tcp(WEB_STAND_IN, peers.web_port, 40005)))
        assert seg.flags == RST | ACK
        await guest.send(udp_frame(41005, WEB_STAND_IN, peers.echo_port, b"x"))
        icmp_ip = ipv4_of(await guest.expect(is_icmp))
        assert icmp_ip is not None and parse_icmp(icmp_ip.payload).code == UNREACH_ADMIN_PROHIBITED
        await guest.barrier()
        assert gw.tcp.flows == {} and gw.udp.flows == {}
        assert len(peers.http_requests) == before
        assert len(events.of("deny", "tcp")) == 1 and len(events.of("deny", "udp")) == 1


async def test_a_rebound_name_cannot_ride_on_a_resolved_static_host(peers: Peers) -> None:
    """With the static name resolved too, a Host naming the rebound name is still refused."""
    policy = (NetworkPolicy.deny_all()
              .allow(MatchCriteria.all(MatchCriteria.domain("web.test"), MatchCriteria.port(peers.web_port)))
              .allow_domain("*.rebind.test"))
    async with running(make_config(peers, policy)) as (gw, guest, events):
        assert a_records(await ask(guest, "web.test", 321)) == [str(WEB_STAND_IN)]
        assert a_records(await ask(guest, "evil.rebind.test", 322)) == []  # withheld (was: answered)
        # Another port of the loopback: only the rebound name's rule could allow it.
        await guest.send(tcp_frame(40006, WEB_STAND_IN, 22, 100, 0, SYN))
        assert tcp_of(await guest.expect(is_tcp(WEB_STAND_IN, 22, 40006))).flags == RST | ACK
        # The static host's port, but the request names the rebound host.
        before = len(peers.http_requests)
        srv = await handshake(guest, 40007, WEB_STAND_IN, peers.web_port, 500)
        request = b"GET / HTTP/1.1\r\nHost: evil.rebind.test\r\n\r\n"
        await guest.send(tcp_frame(40007, WEB_STAND_IN, peers.web_port, 501, srv, PSH | ACK, request))
        while not tcp_of(await guest.expect(is_tcp(WEB_STAND_IN, peers.web_port, 40007))).flags & RST:
            pass
        await guest.barrier()
        assert gw.tcp.flows == {}
        assert len(peers.http_requests) == before
        assert gw.counters["tcp_connect_failed"] == 0


# ----- 4. UDP ------------------------------------------------------------------------------------

async def test_udp_to_a_denied_destination_gets_admin_prohibited(peers: Peers) -> None:
    async with running(make_config(peers)) as (gw, guest, events):
        await guest.send(udp_frame(41000, DENIED_IP, 9999, b"hello?"))
        ip = ipv4_of(await guest.expect(is_icmp))
        assert ip is not None and (ip.src, ip.dst) == (DENIED_IP, GUEST_IP)
        msg = parse_icmp(ip.payload)
        assert (msg.type, msg.code) == (TYPE_DEST_UNREACHABLE, UNREACH_ADMIN_PROHIBITED)
        assert msg.payload[12:16] == GUEST_IP.packed and msg.payload[16:20] == DENIED_IP.packed
        assert msg.payload[20:22] == (41000).to_bytes(2, "big") and msg.payload[22:24] == (9999).to_bytes(2, "big")
        assert gw.udp.flows == {}
        denied = events.of("deny", "udp")
        assert len(denied) == 1 and denied[0].dst == str(DENIED_IP) and denied[0].port == 9999


async def test_udp_to_a_static_host_is_echoed(peers: Peers) -> None:
    async with running(make_config(peers)) as (gw, guest, events):
        assert a_records(await ask(guest, "echo.test", 401)) == [str(ECHO_STAND_IN)]
        await guest.send(udp_frame(41001, ECHO_STAND_IN, peers.echo_port, b"marco"))
        ip = ipv4_of(await guest.expect(is_udp(ECHO_STAND_IN, peers.echo_port, 41001)))
        assert ip is not None and ip.dst == GUEST_IP
        assert parse_udp(ip).payload == b"marco"
        assert list(gw.udp.flows) == [(GUEST_IP, 41001, ECHO_STAND_IN, peers.echo_port)]
        # A second datagram reuses the flow's host socket.
        await guest.send(udp_frame(41001, ECHO_STAND_IN, peers.echo_port, b"polo"))
        ip = ipv4_of(await guest.expect(is_udp(ECHO_STAND_IN, peers.echo_port, 41001)))
        assert ip is not None and parse_udp(ip).payload == b"polo"
        assert len(gw.udp.flows) == 1
        assert [e.domain for e in events.of("allow", "udp")] == ["echo.test"]


# ----- 5. properties -----------------------------------------------------------------------------

async def test_close_ends_the_link_and_every_host_socket(peers: Peers) -> None:
    port = free_port()
    config = make_config(peers, forwards=(PortForward("tcp", port, 8080),))
    async with running(config) as (gw, guest, _events):
        await dhcp_lease(guest)
        # An outbound TCP flow whose server waits for EOF.
        await ask(guest, "web.test", 601)
        sport, isn = 40010, 3000
        srv = await handshake(guest, sport, WEB_STAND_IN, peers.web_port, isn)
        request = b"GET /hold HTTP/1.1\r\nHost: web.test\r\n\r\n"
        await guest.send(tcp_frame(sport, WEB_STAND_IN, peers.web_port, isn + 1, srv, PSH | ACK, request))
        for _ in range(200):
            if any(r.startswith(b"GET /hold ") for r in peers.http_requests):
                break
            await asyncio.sleep(0.01)
        flow = gw.tcp.flows[(GUEST_IP, sport, WEB_STAND_IN, peers.web_port)]
        assert flow.host is not None
        peers.held_closed.clear()
        # A UDP flow with its host socket.
        await ask(guest, "echo.test", 602)
        await guest.send(udp_frame(41010, ECHO_STAND_IN, peers.echo_port, b"x"))
        await guest.expect(is_udp(ECHO_STAND_IN, peers.echo_port, 41010))
        udp_flow = gw.udp.flows[(GUEST_IP, 41010, ECHO_STAND_IN, peers.echo_port)]
        assert udp_flow.transport is not None
        # A host client of the forward: the gateway opens a connection to the guest.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        syn = tcp_of(await guest.expect(lambda raw: _to_port(raw, 8080)))
        assert syn.flags == SYN
        assert len(gw.tcp.flows) == 2

        await gw.close()
        await gw.close()  # idempotent
        await guest.expect_eof()
        assert gw.tcp.flows == {} and gw.udp.flows == {}
        assert udp_flow.transport.is_closing()
        assert gw.dns._transport is not None and gw.dns._transport.is_closing()
        await asyncio.wait_for(peers.held_closed.wait(), TIMEOUT)  # the held host socket closed
        assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""  # the forward client too
        writer.close()
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)


async def test_udp_forward_round_trip_and_a_bounded_client_table(peers: Peers, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gateway_udp, "MAX_FORWARD_CLIENTS", 3)
    port = free_port()
    loop = asyncio.get_running_loop()
    config = make_config(peers, forwards=(PortForward("udp", port, 5353),))
    async with running(config) as (gw, guest, events):
        await dhcp_lease(guest)
        clients = []
        for _ in range(5):
            client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            client.setblocking(False)
            client.bind(("127.0.0.1", 0))
            clients.append(client)
        try:
            seen_ports = []
            for i, client in enumerate(clients):
                await loop.sock_sendto(client, b"query %d" % i, ("127.0.0.1", port))
                ip = ipv4_of(await guest.expect(
                    lambda raw: (p := ipv4_of(raw)) is not None and p.protocol == PROTO_UDP
                    and p.src == GW_IP and parse_udp(p).dst_port == 5353))
                assert ip is not None and ip.dst == GUEST_IP
                udp = parse_udp(ip)
                assert udp.payload == b"query %d" % i
                seen_ports.append(udp.src_port)
                # The guest answers from the forwarded port; the client gets it.
                await guest.send(udp_frame(5353, GW_IP, udp.src_port, b"answer %d" % i))
                assert await asyncio.wait_for(loop.sock_recv(client, 100), TIMEOUT) == b"answer %d" % i
            assert len(set(seen_ports)) == 5
            assert len(gw.udp._forward_ports) <= 3  # the oldest clients were forgotten
            assert len([e for e in events.of("allow", "udp") if e.rule.startswith("forward")]) == 5
            # A forgotten client's port no longer reaches anyone.
            await guest.send(udp_frame(5353, GW_IP, seen_ports[0], b"late"))
            await guest.barrier()
            assert gw.counters["udp_to_gateway_dropped"] == 1
        finally:
            for client in clients:
                client.close()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", port))  # the forward's socket was released


async def test_a_corrupt_stream_closes_the_link_and_the_gateway(peers: Peers) -> None:
    async with running(make_config(peers)) as (gw, guest, events):
        await guest.send(udp_frame(41020, ECHO_STAND_IN, peers.echo_port, b"x"))
        await guest.barrier()
        await guest.sock_send_raw((MAX_FRAME + 1).to_bytes(4, "big") + b"junk")
        await guest.expect_eof()
        await events.finish()  # the flow log ends: the gateway closed itself
        assert gw.counters["stream_corrupt"] == 1
        assert gw.udp.flows == {} and gw.tcp.flows == {}


async def test_the_guest_hanging_up_closes_the_gateway(peers: Peers) -> None:
    async with running(make_config(peers)) as (gw, guest, events):
        await ask(guest, "echo.test", 701)
        await guest.send(udp_frame(41030, ECHO_STAND_IN, peers.echo_port, b"x"))
        await guest.expect(is_udp(ECHO_STAND_IN, peers.echo_port, 41030))
        flow = next(iter(gw.udp.flows.values()))
        guest.sock.shutdown(socket.SHUT_WR)  # QEMU went away
        await events.finish()
        assert gw.udp.flows == {} and flow.transport is not None and flow.transport.is_closing()


def _to_port(raw: bytes, port: int) -> bool:
    ip = ipv4_of(raw)
    if ip is None or ip.protocol != PROTO_TCP or ip.src != GW_IP:
        return False
    return parse_tcp(ip.src, ip.dst, ip.payload).dst_port == port
