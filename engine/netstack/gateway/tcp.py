"""TCP through the gateway: each guest connection terminated here and relayed over a host socket.

Outbound (guest -> world): the guest's SYN is decided by the policy. When the policy has domain
rules, the gateway first completes the guest's handshake and reads its first bytes (TLS SNI or
HTTP Host, up to ``SNIFF_LIMIT`` bytes or ``SNIFF_WAIT_S``), decides again with that name, and
only then connects the host socket; otherwise it connects the host socket first, so a refused
connection reaches the guest as a refused connection (RST to its SYN).

Inbound (port forwards): a host listener accepts a connection and the gateway opens a TCP
connection to the guest from its own address (``TcpConnection.connect``).

Flow control both ways: host bytes the guest's window cannot take yet wait in a per-flow
backlog while the host socket stops being read; guest bytes count as consumed (opening the
guest's window again) only once the host socket's write buffer drains.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from engine.netstack.config import PortForward, forward_error
from engine.netstack.errors import PacketError
from engine.netstack.gateway.seam import FlowKey, TcpRelayHost
from engine.netstack.ipv4 import PROTO_TCP, Ipv4Packet
from engine.netstack.policy.policy import Protocol
from engine.netstack.sniff import SniffStatus, sniff
from engine.netstack.tcp.segment import TcpSegment, tcp_from_ipv4
from engine.netstack.tcp.connection import (Closed, Connected, DataReceived, PeerClosed, TcpConfig, TcpConnection,
                                      TcpState, Writable, reset_for)


log = logging.getLogger(__name__)

MAX_TCP_FLOWS = 1024
SNIFF_LIMIT = 16384
SNIFF_WAIT_S = 1.0
CONNECT_TIMEOUT_S = 10.0
_HOST_WRITE_HIGH = 256 * 1024
# 1 MiB in flight keeps a guest that ACKs merged segments busy (256 KiB left it idle half the
# time on host -> guest transfers; 2 MiB measured worse again).
TCP_CONFIG = TcpConfig(send_buffer=1 << 20, recv_buffer=1 << 20)


@dataclass(eq=False)
class TcpFlow:
    """One relayed connection: the core's state, the host transport and what waits between."""

    key: FlowKey
    conn: TcpConnection | None = None
    host: asyncio.Transport | None = None
    inbound: bool = False
    local_dns: bool = False  # DNS over TCP to port 53 of any address: our resolver answers, no host socket
    dns_pending: int = 0
    outgoing: list[bytes] = field(default_factory=list)  # guest bytes for the host, this loop turn
    bytes_up: int = 0  # guest -> host
    bytes_down: int = 0  # host -> guest
    syn: TcpSegment | None = None
    early: bytearray = field(default_factory=bytearray)  # guest bytes read before the host socket
    guest_eof: bool = False
    backlog: bytearray = field(default_factory=bytearray)  # host bytes the guest window can't take
    host_eof: bool = False
    unconsumed: int = 0
    timer: asyncio.TimerHandle | None = None
    sniff_timer: asyncio.TimerHandle | None = None
    connect_task: asyncio.Task[None] | None = None
    domain: str | None = None
    closed: bool = False


class TcpRelay:
    """All TCP flows of one gateway."""

    def __init__(self, gateway: TcpRelayHost) -> None:
        self.gw = gateway
        self.flows: dict[FlowKey, TcpFlow] = {}
        self.bytes_up = 0
        self.bytes_down = 0
        self._servers: list[asyncio.AbstractServer] = []
        self._dirty: list[TcpFlow] = []
        self._ports = itertools.cycle(range(49152, 65536))

    # ----- from the guest --------------------------------------------------------------------

    def segment(self, ip: Ipv4Packet) -> None:
        gw = self.gw
        try:
            seg = tcp_from_ipv4(ip)
        except PacketError:
            gw.counters["tcp_malformed"] += 1
            return
        key = (ip.src, seg.src_port, ip.dst, seg.dst_port)
        flow = self.flows.get(key)
        new_syn = seg.syn and not seg.ack_flag and not seg.rst
        if flow is not None and flow.conn is not None:
            if new_syn and flow.conn.state is TcpState.TIME_WAIT:
                self._drop(flow)  # the guest reuses the port: start over
            else:
                flow.conn.receive(seg, gw.now())
                self.pump(flow)
                return
        elif flow is not None:
            return  # a retransmitted SYN while the host socket connects
        if new_syn and seg.dst_port == 53 and ip.dst != gw.gateway_ip and len(self.flows) < MAX_TCP_FLOWS:
            # Port 53 anywhere is our resolver, answering as the address asked: never relayed.
            flow = TcpFlow(key, syn=seg, local_dns=True)
            self.flows[key] = flow
            flow.conn = self._accept(flow)
            self.pump(flow)
            return
        if not new_syn or ip.dst in (gw.gateway_ip, gw.dns_ip):
            self._reset(seg, ip.dst, ip.src)
            return
        if len(self.flows) >= MAX_TCP_FLOWS:
            gw.counters["tcp_table_full"] += 1
            self._reset(seg, ip.dst, ip.src)
            return
        decision = gw.decide(Protocol.TCP, ip.src, seg.src_port, ip.dst, seg.dst_port)
        if not decision.allowed:
            self._reset(seg, ip.dst, ip.src)
            return
        flow = TcpFlow(key, syn=seg)
        self.flows[key] = flow
        if gw.policy.has_domain_rules:
            flow.conn = self._accept(flow)
            flow.sniff_timer = gw.loop.call_later(SNIFF_WAIT_S, self._sniff_done, flow)
            self.pump(flow)
        else:
            flow.connect_task = gw.loop.create_task(self._connect_host(flow, accept=True))

    def _reset(self, seg: TcpSegment | None, far_ip: IPv4Address, guest_ip: IPv4Address) -> None:
        """Answer the guest's ``seg`` with the RST that refuses it (none for a RST)."""
        rst = reset_for(seg) if seg is not None else None
        if rst is not None:
            self.gw.send_ip(far_ip, guest_ip, PROTO_TCP, rst.to_bytes(far_ip, guest_ip))

    def _accept(self, flow: TcpFlow) -> TcpConnection:
        guest_ip, guest_port, far_ip, far_port = flow.key
        mss = self.gw.config.mtu - 40
        assert flow.syn is not None  # a flow is accepted only after its SYN was kept
        return TcpConnection.accept(flow.syn, far_ip, far_port, guest_ip, guest_port,
                                    self.gw.now(), self.gw.rng.getrandbits(32), mss=mss, config=TCP_CONFIG)

    # ----- sniffing the first bytes ----------------------------------------------------------

    def _early_data(self, flow: TcpFlow, data: bytes) -> None:
        flow.early += data
        result = sniff(bytes(flow.early), SNIFF_LIMIT)
        if result.status is not SniffStatus.NEED_MORE or len(flow.early) >= SNIFF_LIMIT:
            self._decide_sniffed(flow, result.flow_name)

    def _sniff_done(self, flow: TcpFlow) -> None:
        flow.sniff_timer = None
        if flow.closed or flow.host is not None or flow.connect_task is not None:
            return
        # Nothing at all: a server-speaks-first protocol, no name claimed. A partial hello: "".
        name = sniff(bytes(flow.early), SNIFF_LIMIT).flow_name if flow.early else None
        self._decide_sniffed(flow, name)

    def _decide_sniffed(self, flow: TcpFlow, name: str | None) -> None:
        if flow.connect_task is not None or flow.closed:
            return
        if flow.sniff_timer is not None:
            flow.sniff_timer.cancel()
            flow.sniff_timer = None
        guest_ip, guest_port, far_ip, far_port = flow.key
        flow.domain = name
        decision = self.gw.decide(Protocol.TCP, guest_ip, guest_port, far_ip, far_port, name)
        if not decision.allowed:
            assert flow.conn is not None
            flow.conn.abort(self.gw.now())
            self.pump(flow)
            return
        flow.connect_task = self.gw.loop.create_task(self._connect_host(flow, accept=False))

    # ----- host side -------------------------------------------------------------------------

    async def _connect_host(self, flow: TcpFlow, accept: bool) -> None:
        _guest_ip, _guest_port, far_ip, far_port = flow.key
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await self.gw.loop.create_connection(
                    lambda: _HostTcp(self, flow), str(self.gw.host_address(far_ip)), far_port
                )
        except (OSError, TimeoutError) as err:
            self.gw.counters["tcp_connect_failed"] += 1
            log.debug("%s: connect to %s:%s failed: %s", self.gw.name, far_ip, far_port, err)
            if flow.conn is None:
                self._reset(flow.syn, far_ip, flow.key[0])
                self._drop(flow)
            else:
                flow.conn.abort(self.gw.now())
                self.pump(flow)
            return
        if flow.closed:
            if flow.host is not None:
                flow.host.abort()
            return
        if accept:
            flow.conn = self._accept(flow)
        self.pump(flow)

    def host_connected(self, flow: TcpFlow, transport: asyncio.Transport) -> None:
        flow.host = transport
        transport.set_write_buffer_limits(high=_HOST_WRITE_HIGH)
        if self.gw.guest_paused:
            transport.pause_reading()
        # What the guest sent while its first bytes were sniffed goes first, before any
        # DataReceived that arrives from now on.
        if flow.early and flow.conn is not None:
            early = bytes(flow.early)
            flow.early.clear()
            self._to_host(flow, early)
        if flow.guest_eof and transport.can_write_eof():
            self._flush(flow)
            transport.write_eof()

    def from_host(self, flow: TcpFlow, data: bytes) -> None:
        if flow.conn is None or flow.closed:
            return
        self.bytes_down += len(data)
        flow.bytes_down += len(data)
        if flow.backlog:
            flow.backlog += data
        else:
            taken = flow.conn.send(data, self.gw.now())
            if taken < len(data):
                flow.backlog += data[taken:]
        if flow.backlog and flow.host is not None:
            flow.host.pause_reading()
        self.pump(flow)

    def host_eof(self, flow: TcpFlow) -> None:
        flow.host_eof = True
        if flow.conn is not None and not flow.backlog:
            flow.conn.shutdown_write(self.gw.now())
            self.pump(flow)

    def host_lost(self, flow: TcpFlow, exc: Exception | None) -> None:
        flow.host = None
        if flow.conn is None or flow.closed:
            return
        if exc is not None:
            flow.conn.abort(self.gw.now())
        elif not flow.host_eof:
            self.host_eof(flow)
        self.pump(flow)

    def host_drained(self, flow: TcpFlow) -> None:
        if flow.conn is not None and flow.unconsumed:
            flow.conn.consumed(flow.unconsumed)
            flow.unconsumed = 0
            self.pump(flow)

    def _to_host(self, flow: TcpFlow, data: bytes) -> None:
        """Queue guest bytes for the host socket: one send per flow per loop turn, not per segment."""
        if not flow.outgoing:
            if not self._dirty:
                self.gw.loop.call_soon(self._flush_to_hosts)
            self._dirty.append(flow)
        flow.outgoing.append(data)

    def _flush_to_hosts(self) -> None:
        dirty, self._dirty = self._dirty, []
        for flow in dirty:
            self._flush(flow)
            if flow.conn is not None and not flow.closed:
                self.pump(flow)

    def _flush(self, flow: TcpFlow) -> None:
        if not flow.outgoing:
            return
        data = b"".join(flow.outgoing)
        flow.outgoing.clear()
        if flow.host is None or flow.conn is None:
            return
        flow.host.write(data)
        self.bytes_up += len(data)
        flow.bytes_up += len(data)
        if flow.host.get_write_buffer_size() < _HOST_WRITE_HIGH:
            flow.conn.consumed(len(data) + flow.unconsumed)
            flow.unconsumed = 0
        else:
            flow.unconsumed += len(data)

    # ----- DNS over TCP at the gateway -------------------------------------------------------

    def _dns_bytes(self, flow: TcpFlow, data: bytes) -> None:
        """Split the guest's length-prefixed DNS messages (RFC 1035 4.2.2) and answer each."""
        assert flow.conn is not None
        flow.early += data
        while len(flow.early) >= 2:
            size = int.from_bytes(flow.early[:2], "big")
            if len(flow.early) < 2 + size:
                break
            wire = bytes(flow.early[2 : 2 + size])
            del flow.early[: 2 + size]
            flow.conn.consumed(2 + size)
            flow.dns_pending += 1
            self.gw.dns.query_tcp(flow.key, wire)

    def dns_reply(self, key: FlowKey, wire: bytes) -> None:
        flow = self.flows.get(key)
        if flow is None or flow.conn is None or flow.closed:
            return
        flow.conn.send(len(wire).to_bytes(2, "big") + wire, self.gw.now())
        flow.dns_pending = max(0, flow.dns_pending - 1)
        if flow.guest_eof and not flow.dns_pending:
            flow.conn.shutdown_write(self.gw.now())
        self.pump(flow)

    # ----- driving the core ------------------------------------------------------------------

    def pump(self, flow: TcpFlow) -> None:
        """Send what the core produced and act on its events, until it has nothing more."""
        conn = flow.conn
        if conn is None:
            return
        gw = self.gw
        for _ in range(8):
            packets = conn.poll_packets()
            events = conn.poll_events()
            if not packets and not events:
                break
            for packet in packets:
                gw.send_ip(conn.local_ip, conn.remote_ip, PROTO_TCP, packet)
            for event in events:
                self._on_event(flow, event)
            if flow.closed:
                return
        if conn.state is TcpState.TIME_WAIT and flow.host is not None:
            # Both directions are finished: the host socket has nothing left to do.
            self._flush(flow)
            flow.host.close()
            flow.host = None
        self._schedule(flow)

    def _on_event(self, flow: TcpFlow, event: object) -> None:
        conn = flow.conn
        assert conn is not None
        if isinstance(event, DataReceived):
            if flow.local_dns:
                self._dns_bytes(flow, event.data)
            elif flow.host is not None:
                self._to_host(flow, event.data)
            elif not flow.inbound:
                self._early_data(flow, event.data)
        elif isinstance(event, PeerClosed):
            flow.guest_eof = True
            if flow.local_dns and not flow.dns_pending:
                conn.shutdown_write(self.gw.now())
            elif flow.local_dns:
                pass  # the FIN follows the last answer
            elif flow.host is not None and flow.host.can_write_eof():
                self._flush(flow)
                flow.host.write_eof()
            elif flow.host is None and flow.connect_task is None and not flow.inbound:
                self._decide_sniffed(flow, sniff(bytes(flow.early), SNIFF_LIMIT).flow_name if flow.early else None)
        elif isinstance(event, Writable):
            if flow.backlog:
                taken = conn.send(bytes(flow.backlog), self.gw.now())
                del flow.backlog[:taken]
            if not flow.backlog:
                if flow.host_eof:
                    conn.shutdown_write(self.gw.now())
                elif flow.host is not None and not self.gw.guest_paused:
                    flow.host.resume_reading()
        elif isinstance(event, Connected):
            if flow.inbound and flow.host is not None and not self.gw.guest_paused:
                flow.host.resume_reading()
        elif isinstance(event, Closed):
            self._drop(flow)

    def _schedule(self, flow: TcpFlow) -> None:
        assert flow.conn is not None
        deadline = flow.conn.next_timer()
        if flow.timer is not None:
            if deadline is not None and flow.timer.when() == deadline:
                return
            flow.timer.cancel()
            flow.timer = None
        if deadline is not None:
            flow.timer = self.gw.loop.call_at(deadline, self._tick, flow)

    def _tick(self, flow: TcpFlow) -> None:
        flow.timer = None
        if flow.conn is not None and not flow.closed:
            flow.conn.tick(self.gw.now())
            self.pump(flow)

    def _drop(self, flow: TcpFlow) -> None:
        flow.closed = True
        self.flows.pop(flow.key, None)
        for timer in (flow.timer, flow.sniff_timer):
            if timer is not None:
                timer.cancel()
        if flow.connect_task is not None and not flow.connect_task.done():
            flow.connect_task.cancel()
        if flow.host is not None:
            if flow.outgoing:  # a clean close still delivers what the guest sent last
                flow.host.write(b"".join(flow.outgoing))
                flow.outgoing.clear()
            flow.host.close()
            flow.host = None

    def guest_paused(self, paused: bool) -> None:
        for flow in self.flows.values():
            if flow.host is None:
                continue
            if paused:
                flow.host.pause_reading()
            elif not flow.backlog:
                flow.host.resume_reading()

    # ----- port forwards ---------------------------------------------------------------------

    async def start_forwards(self) -> None:
        for fwd in self.gw.config.forwards:
            if fwd.protocol != "tcp":
                continue
            try:
                server = await self.gw.loop.create_server(
                    functools.partial(_ForwardTcp, self, fwd), fwd.host_addr, fwd.host_port, reuse_address=True
                )
            except OSError as err:
                raise forward_error(fwd, err) from None
            self._servers.append(server)
            self.gw.forwarded_ports.append((fwd, server.sockets[0].getsockname()[1]))

    def forward_accepted(self, fwd: PortForward, transport: asyncio.Transport) -> TcpFlow | None:
        gw = self.gw
        guest_ip = gw.guest_ip
        if guest_ip is None or len(self.flows) >= MAX_TCP_FLOWS:
            gw.counters["forward_refused"] += 1
            transport.abort()
            return None
        port = next(p for p in self._ports if (guest_ip, fwd.guest_port, gw.gateway_ip, p) not in self.flows)
        flow = TcpFlow((guest_ip, fwd.guest_port, gw.gateway_ip, port), inbound=True, host=transport)
        self.flows[flow.key] = flow
        transport.pause_reading()  # until the guest accepts
        gw.flow_log.emit("tcp", fwd.host_addr, str(guest_ip), fwd.guest_port, None,
                         f"forward {fwd.describe()}", "allow")
        flow.conn = TcpConnection.connect(gw.gateway_ip, port, guest_ip, fwd.guest_port, gw.now(),
                                          gw.rng.getrandbits(32), mss=gw.config.mtu - 40, config=TCP_CONFIG)
        self.pump(flow)
        return flow

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for flow in list(self.flows.values()):
            self._drop(flow)
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()


class _HostTcp(asyncio.Protocol):
    """The host socket of an outbound flow."""

    def __init__(self, relay: TcpRelay, flow: TcpFlow) -> None:
        self.relay = relay
        self.flow = flow

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.relay.host_connected(self.flow, transport)  # type: ignore[arg-type]  # asyncio hands a stream protocol a Transport; its signature says BaseTransport

    def data_received(self, data: bytes) -> None:
        self.relay.from_host(self.flow, data)

    def eof_received(self) -> bool:
        self.relay.host_eof(self.flow)
        return True  # keep our write half open: the guest may still send (half close)

    def resume_writing(self) -> None:
        self.relay.host_drained(self.flow)

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.host_lost(self.flow, exc)


class _ForwardTcp(_HostTcp):
    """A host client of a port forward."""

    def __init__(self, relay: TcpRelay, fwd: PortForward) -> None:
        self.relay = relay
        self.fwd = fwd
        self.flow = None  # type: ignore[assignment]  # no flow until the relay accepts; methods check

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        flow = self.relay.forward_accepted(self.fwd, transport)  # type: ignore[arg-type]  # asyncio hands a stream protocol a Transport; its signature says BaseTransport
        if flow is not None:
            self.flow = flow
            transport.set_write_buffer_limits(high=_HOST_WRITE_HIGH)  # type: ignore[attr-defined]  # asyncio hands a stream protocol a Transport; its signature says BaseTransport

    def data_received(self, data: bytes) -> None:
        if self.flow is not None:
            super().data_received(data)

    def eof_received(self) -> bool:
        if self.flow is not None:
            return super().eof_received()
        return False

    def resume_writing(self) -> None:
        if self.flow is not None:
            super().resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.flow is not None:
            super().connection_lost(exc)
