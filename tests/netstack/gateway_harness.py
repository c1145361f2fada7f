"""Harness for the gateway adapter tests: loopback peers, a scripted guest on a socketpair, frames.

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

from engine.netstack.arp import OP_REPLY, build_arp_request, parse_arp
from engine.netstack.config import GATEWAY_MAC, GUEST_MAC, PortForward, UserNatConfig
from engine.netstack.dhcp import DHCPACK, DHCPDISCOVER, DHCPOFFER, DHCPREQUEST, parse_dhcp
from engine.netstack.ethernet import (BROADCAST_MAC, ETHERTYPE_IPV4, build_ethernet, parse_ethernet,
                                      parse_mac)
from engine.netstack.flowlog import FlowEvent
from engine.netstack.frames import StreamDeframer, frame
from engine.netstack.gateway.budget import FdBudget
from engine.netstack.gateway.gateway import Gateway
from engine.netstack.icmp import (TYPE_ECHO_REQUEST, build_echo)
from engine.netstack.ipv4 import PROTO_ICMP, PROTO_TCP, PROTO_UDP, Ipv4Packet, build_ipv4, parse_ipv4
from engine.netstack.policy.policy import NetworkPolicy
from engine.netstack.tcp.segment import ACK, SYN, TcpSegment, build_options, build_tcp, parse_tcp
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
async def running(config: UserNatConfig, budget: FdBudget | None = None,
                  name: str = "test-vm") -> AsyncIterator[tuple[Gateway, Guest, Events]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.setblocking(False)
    b.setblocking(False)
    gw = Gateway(config, name, budget=budget)
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


async def ask(guest: Guest, name: str, qid: int, sport: int = 5353, *, server: IPv4Address = DNS_IP,
              rdtype: str = "A") -> dns.message.Message:
    """The guest's DNS question to ``server`` (the gateway's DNS address by default) and its answer."""
    wire = dns.message.make_query(name, rdtype, id=qid).to_wire()
    await guest.send(udp_frame(sport, server, 53, wire))
    raw = await guest.expect(is_udp(server, 53, sport))
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
