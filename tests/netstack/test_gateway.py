"""The gateway's asyncio adapter, driven without QEMU: the test plays the guest on a socketpair.

Every host-side peer is on the loopback: a stub DNS resolver, an HTTP-ish TCP server and a UDP
echo server, reached through static hosts (the guest sees them at stand-in addresses). The
policies deny everything else, so nothing here ever leaves the machine.
"""
from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address

import dns.message
import dns.rcode
import dns.rrset
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from engine.netstack.arp import OP_REPLY, build_arp_request, parse_arp
from engine.netstack.checksum import internet_checksum, pseudo_header_sum
from engine.netstack.config import GATEWAY_MAC, GUEST_MAC, PortForward, UserNatConfig
from engine.netstack.dhcp import DHCPACK, DHCPDISCOVER, DHCPOFFER, DHCPREQUEST, parse_dhcp
from engine.netstack.ethernet import (BROADCAST_MAC, ETHERTYPE_ARP, ETHERTYPE_IPV4, build_ethernet,
                                      parse_ethernet, parse_mac)
from engine.netstack.flowlog import FlowEvent
from engine.netstack import gateway_udp
from engine.netstack.frames import MAX_FRAME, StreamDeframer, frame
from engine.netstack.gateway import Gateway
from engine.netstack.icmp import (TYPE_DEST_UNREACHABLE, TYPE_ECHO_REPLY, TYPE_ECHO_REQUEST,
                                  UNREACH_ADMIN_PROHIBITED, build_echo, parse_icmp)
from engine.netstack.ipv4 import PROTO_ICMP, PROTO_TCP, PROTO_UDP, Ipv4Packet, build_ipv4, parse_ipv4
from engine.netstack.policy import MatchCriteria, NetworkPolicy, Protocol
from engine.netstack.tcp import ACK, FIN, PSH, RST, SYN, TcpSegment, build_options, build_tcp, parse_tcp
from engine.netstack.tcp_conn import TcpState
from engine.netstack.udp import build_udp, parse_udp
from tests.netstack.test_dhcp import client_msg

GW_MAC = parse_mac(GATEWAY_MAC)
G_MAC = parse_mac(GUEST_MAC)
GW_IP = IPv4Address("10.0.2.2")
DNS_IP = IPv4Address("10.0.2.3")
GUEST_IP = IPv4Address("10.0.2.15")
ZERO = IPv4Address(0)
BCAST = IPv4Address("255.255.255.255")
DENIED_IP = IPv4Address("203.0.113.9")  # TEST-NET-3: denied by every policy here, never contacted
WEB_STAND_IN = IPv4Address("198.18.0.1")  # hosts[0]
ECHO_STAND_IN = IPv4Address("198.18.0.2")  # hosts[1]
UPSTREAM_ANSWER = "192.0.2.44"  # what the stub resolver answers (TEST-NET-1, never contacted)
LOOPBACK = IPv4Address("127.0.0.1")
TIMEOUT = 5.0


# ----- host-side peers on the loopback ------------------------------------------------------------

@dataclass
class Peers:
    dns_port: int
    web_port: int
    echo_port: int
    dns_questions: list[str] = field(default_factory=list)
    http_requests: list[bytes] = field(default_factory=list)
    held_closed: asyncio.Event = field(default_factory=asyncio.Event)


class _StubResolver(asyncio.DatagramProtocol):
    def __init__(self, peers: list[Peers]) -> None:
        self.peers = peers
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = dns.message.from_wire(data)
        question = query.question[0]
        self.peers[0].dns_questions.append(question.name.to_text(omit_final_dot=True))
        response = dns.message.make_response(query)
        # Names under rebind.test point at a stand-in address, as a hostile public zone could.
        address = str(WEB_STAND_IN) if question.name.to_text().endswith("rebind.test.") else UPSTREAM_ANSWER
        response.answer.append(dns.rrset.from_text(question.name, 30, "IN", "A", address))
        assert self.transport is not None
        self.transport.sendto(response.to_wire(), addr)


class _Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data, addr)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
async def peers() -> AsyncIterator[Peers]:
    loop = asyncio.get_running_loop()
    holder: list[Peers] = []

    async def web(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            holder[0].http_requests.append(request)
            if request.startswith(b"GET /hold "):
                await asyncio.wait_for(reader.read(), 10)  # until the gateway closes its socket
                holder[0].held_closed.set()
            else:
                writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello")
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass
        finally:
            writer.close()

    dns_transport, _ = await loop.create_datagram_endpoint(lambda: _StubResolver(holder),
                                                           local_addr=("127.0.0.1", 0))
    echo_transport, _ = await loop.create_datagram_endpoint(_Echo, local_addr=("127.0.0.1", 0))
    server = await asyncio.start_server(web, "127.0.0.1", 0)
    holder.append(Peers(dns_transport.get_extra_info("sockname")[1],
                        server.sockets[0].getsockname()[1],
                        echo_transport.get_extra_info("sockname")[1]))
    try:
        yield holder[0]
    finally:
        server.close()
        await server.wait_closed()
        dns_transport.close()
        echo_transport.close()


def main_policy() -> NetworkPolicy:
    return (NetworkPolicy.deny_all()
            .deny_domain("blocked.test")
            .allow_domain("web.test")
            .allow_domain("echo.test")
            .allow_domain("fwd.test"))


def make_config(peers: Peers, policy: NetworkPolicy | None = None,
                forwards: tuple[PortForward, ...] = ()) -> UserNatConfig:
    return UserNatConfig(
        hosts=(("web.test", LOOPBACK), ("echo.test", LOOPBACK)),
        policy=policy if policy is not None else main_policy(),
        dns_upstream=(("127.0.0.1", peers.dns_port),),
        forwards=forwards,
    )


# ----- the guest's side of the link --------------------------------------------------------------

class Guest:
    """The QEMU end of the stream socket: sends frames and picks the gateway's replies."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.deframer = StreamDeframer()
        self.frames: list[bytes] = []
        self.barriers = 0

    async def send(self, *frames: bytes) -> None:
        await self.loop.sock_sendall(self.sock, b"".join(frame(f) for f in frames))

    async def sock_send_raw(self, data: bytes) -> None:
        await self.loop.sock_sendall(self.sock, data)

    async def _fill(self, timeout: float) -> bytes:
        data = await asyncio.wait_for(self.loop.sock_recv(self.sock, 1 << 16), timeout)
        self.frames += self.deframer.feed(data)
        return data

    async def expect(self, pred: Callable[[bytes], bool], timeout: float = TIMEOUT) -> bytes:
        """The first frame (received or to come) matching ``pred``; others stay queued."""
        deadline = self.loop.time() + timeout
        while True:
            for i, raw in enumerate(self.frames):
                if pred(raw):
                    return self.frames.pop(i)
            left = deadline - self.loop.time()
            if left <= 0:
                raise TimeoutError("the gateway did not send the expected frame")
            if not await self._fill(left):
                raise EOFError("the gateway closed the link")

    async def expect_eof(self, timeout: float = TIMEOUT) -> None:
        deadline = self.loop.time() + timeout
        while await self._fill(max(0.0, deadline - self.loop.time())):
            pass

    async def barrier(self) -> None:
        """Every frame sent before has been handled: the gateway answered an ARP sent after them."""
        self.barriers += 1
        mac = bytes((0x02, 0xBA, 0xBB, 0x00, (self.barriers >> 8) & 0xFF, self.barriers & 0xFF))
        await self.send(build_arp_request(mac, GUEST_IP, GW_IP))
        reply = parse_ethernet(await self.expect(lambda raw: raw[:6] == mac and raw[12:14] == b"\x08\x06"))
        arp = parse_arp(reply.payload)
        assert arp.op == OP_REPLY and arp.sender_mac == GW_MAC and arp.sender_ip == GW_IP

    def drop(self, pred: Callable[[bytes], bool]) -> list[bytes]:
        taken = [raw for raw in self.frames if pred(raw)]
        self.frames = [raw for raw in self.frames if not pred(raw)]
        return taken


class Events:
    """Collects the flow log through ``subscribe()``."""

    def __init__(self, gw: Gateway) -> None:
        self.items: list[FlowEvent] = []
        self._task = asyncio.ensure_future(self._run(gw))

    async def _run(self, gw: Gateway) -> None:
        async for event in gw.flow_log.subscribe():
            self.items.append(event)

    async def started(self) -> None:
        for _ in range(3):
            await asyncio.sleep(0)  # the generator registers its queue on its first step

    async def finish(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self._task, TIMEOUT)

    def of(self, action: str, protocol: str | None = None) -> list[FlowEvent]:
        return [e for e in self.items if e.action == action and (protocol is None or e.protocol == protocol)]


@contextlib.asynccontextmanager
async def running(config: UserNatConfig) -> AsyncIterator[tuple[Gateway, Guest, Events]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.setblocking(False)
    b.setblocking(False)
    gw = Gateway(config, "test-vm")
    events = Events(gw)
    await events.started()
    await gw.start(a)
    try:
        yield gw, Guest(b), events
    finally:
        await gw.close()
        await events.finish()
        b.close()
    assert gw.counters["internal_error"] == 0, gw.counters


# ----- frames ------------------------------------------------------------------------------------

def ip_frame(src: IPv4Address, dst: IPv4Address, proto: int, payload: bytes) -> bytes:
    return build_ethernet(GW_MAC, G_MAC, ETHERTYPE_IPV4, build_ipv4(src, dst, proto, payload))


def udp_frame(sport: int, dst: IPv4Address, dport: int, payload: bytes, src: IPv4Address = GUEST_IP) -> bytes:
    return ip_frame(src, dst, PROTO_UDP, build_udp(src, dst, sport, dport, payload))


def tcp_frame(sport: int, dst: IPv4Address, dport: int, seq: int, ack: int, flags: int,
              payload: bytes = b"", options: bytes = b"", src: IPv4Address = GUEST_IP) -> bytes:
    return ip_frame(src, dst, PROTO_TCP, build_tcp(src, dst, sport, dport, seq, ack, flags, 65535, payload, options))


def dns_query_frame(name: str, qid: int, sport: int = 5353) -> bytes:
    wire = dns.message.make_query(name, "A", id=qid).to_wire()
    return udp_frame(sport, DNS_IP, 53, wire)


def dhcp_frame(payload: bytes) -> bytes:
    ip = build_ipv4(ZERO, BCAST, PROTO_UDP, build_udp(ZERO, BCAST, 68, 67, payload))
    return build_ethernet(BROADCAST_MAC, G_MAC, ETHERTYPE_IPV4, ip)


def icmp_echo_frame(ident: int, seq: int, data: bytes) -> bytes:
    return ip_frame(GUEST_IP, GW_IP, PROTO_ICMP, build_echo(TYPE_ECHO_REQUEST, ident, seq, data))


def ipv4_of(raw: bytes) -> Ipv4Packet | None:
    eth = parse_ethernet(raw)
    return parse_ipv4(eth.payload) if eth.ethertype == ETHERTYPE_IPV4 else None


def is_udp(src: IPv4Address, sport: int, dport: int) -> Callable[[bytes], bool]:
    def pred(raw: bytes) -> bool:
        ip = ipv4_of(raw)
        if ip is None or ip.protocol != PROTO_UDP or ip.src != src:
            return False
        udp = parse_udp(ip)
        return udp.src_port == sport and udp.dst_port == dport
    return pred


def is_tcp(src: IPv4Address, sport: int, dport: int) -> Callable[[bytes], bool]:
    def pred(raw: bytes) -> bool:
        ip = ipv4_of(raw)
        if ip is None or ip.protocol != PROTO_TCP or ip.src != src:
            return False
        seg = parse_tcp(ip.src, ip.dst, ip.payload)
        return seg.src_port == sport and seg.dst_port == dport
    return pred


def is_icmp(raw: bytes) -> bool:
    ip = ipv4_of(raw)
    return ip is not None and ip.protocol == PROTO_ICMP


def tcp_of(raw: bytes) -> TcpSegment:
    ip = ipv4_of(raw)
    assert ip is not None and ip.dst == GUEST_IP
    return parse_tcp(ip.src, ip.dst, ip.payload)


async def ask(guest: Guest, name: str, qid: int, sport: int = 5353) -> dns.message.Message:
    await guest.send(dns_query_frame(name, qid, sport))
    raw = await guest.expect(is_udp(DNS_IP, 53, sport))
    ip = ipv4_of(raw)
    assert ip is not None and ip.dst == GUEST_IP
    answer = dns.message.from_wire(parse_udp(ip).payload)
    assert answer.id == qid
    return answer


def a_records(answer: dns.message.Message) -> list[str]:
    return [rd.address for rrset in answer.answer for rd in rrset if rrset.rdtype == dns.rdatatype.A]


async def dhcp_lease(guest: Guest) -> IPv4Address:
    await guest.send(dhcp_frame(client_msg(DHCPDISCOVER, G_MAC, xid=0x1111, flags=0x8000)))
    offer_raw = await guest.expect(is_udp(GW_IP, 67, 68))
    assert parse_ethernet(offer_raw).dst == BROADCAST_MAC
    offer_ip = ipv4_of(offer_raw)
    assert offer_ip is not None and offer_ip.dst == BCAST
    offer = parse_dhcp(parse_udp(offer_ip).payload)
    assert offer.message_type == DHCPOFFER and offer.xid == 0x1111
    await guest.send(dhcp_frame(client_msg(DHCPREQUEST, G_MAC, xid=0x1112, flags=0x8000,
                                           requested=str(offer.yiaddr), server=GW_IP)))
    ack_ip = ipv4_of(await guest.expect(is_udp(GW_IP, 67, 68)))
    assert ack_ip is not None
    ack = parse_dhcp(parse_udp(ack_ip).payload)
    assert ack.message_type == DHCPACK and ack.yiaddr == offer.yiaddr
    return ack.yiaddr


async def handshake(guest: Guest, sport: int, dst: IPv4Address, dport: int, isn: int = 1000) -> int:
    """Open a connection as the guest; returns the gateway's next sequence number."""
    await guest.send(tcp_frame(sport, dst, dport, isn, 0, SYN, options=build_options(mss=1460)))
    seg = tcp_of(await guest.expect(is_tcp(dst, dport, sport)))
    assert seg.flags == SYN | ACK and seg.ack == isn + 1, seg
    srv = (seg.seq + 1) & 0xFFFFFFFF
    await guest.send(tcp_frame(sport, dst, dport, isn + 1, srv, ACK))
    return srv


# ----- 1. ARP, ICMP echo, DHCP -------------------------------------------------------------------

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
        assert a_records(answer) == [str(WEB_STAND_IN)]  # the guest may learn it, not use it
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
        assert a_records(await ask(guest, "evil.rebind.test", 322)) == [str(WEB_STAND_IN)]
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

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
