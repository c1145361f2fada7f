"""TCP through the gateway: each guest connection terminated here and relayed over a host socket.

Outbound (guest -> world): the guest's SYN is decided by the policy. When the policy has domain
rules, the gateway first completes the guest's handshake and reads its first bytes (TLS SNI or
HTTP Host, up to ``SNIFF_LIMIT`` bytes or ``SNIFF_WAIT_S``), decides again with that name, and
only then connects the host socket; otherwise it connects the host socket first, so a refused
connection reaches the guest as a refused connection (RST to its SYN).

Names hold for the whole connection: a flow that was read this way keeps its
:class:`~engine.netstack.inspector.StreamInspector` for its life; every new name it presents
(a keep-alive or pipelined request's Host, a retried ClientHello's SNI) is decided again before
the bytes that carry it go to the host, and a deny cuts the flow (RST to the guest, host socket
closed, a deny event). A stream that presents no name is decided as
:meth:`NetworkPolicy.presented_name` says (``require_names``), except to a static host's own
address, which stands for the profile's entry alone (decided on DNS evidence).

Inbound (port forwards): a host listener accepts a connection and the gateway opens a TCP
connection to the guest from its own address (``TcpConnection.connect``).

Host sockets come from the process's budget (``gateway.budget``): each outbound connect takes a
lease first (refused: the guest gets a RST, and the flow log a deny event saying why) and gives
it back when its socket closes. At most ``MAX_CONNECTING`` connects are in progress per VM, so
half-open flows hold a bounded few sockets: a SYN beyond that, when no name is awaited, is
dropped and not answered (the guest retransmits it, and a later copy is served once a connect
finishes; a RST would fail a legitimate burst at once, and an answered SYN would hold a socket).
A flow waiting for its name already has its handshake done here, so past the bound it waits in
a queue, holding no socket, until a connect finishes.

Flow control both ways: host bytes the guest's window cannot take yet wait in a per-flow
backlog while the host socket stops being read; guest bytes count as consumed (opening the
guest's window again) only once the host socket's write buffer drains.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import itertools
import logging
from ipaddress import IPv4Address

from engine.netstack.config import PortForward, forward_error
from engine.netstack.errors import PacketError
from engine.netstack.gateway.budget import Lease, Refusal
from engine.netstack.gateway.seam import FlowKey, TcpRelayHost
from engine.netstack.gateway.tcp_socket import HOST_WRITE_HIGH, ForwardTcp, HostTcp, TcpFlow
from engine.netstack.ipv4 import PROTO_TCP, Ipv4Packet
from engine.netstack.policy.policy import Protocol
from engine.netstack.inspector import StreamInspector
from engine.netstack.sniff import SniffResult, SniffStatus
from engine.netstack.tcp.segment import TcpSegment, tcp_from_ipv4
from engine.netstack.tcp.connection import (Closed, Connected, DataReceived, PeerClosed, TcpConfig, TcpConnection,
                                      TcpState, Writable, reset_for)


log = logging.getLogger(__name__)

MAX_TCP_FLOWS = 1024
MAX_CONNECTING = 16  # host connects in progress per VM: the half-open flows that hold a socket
SNIFF_LIMIT = 16384
SNIFF_WAIT_S = 1.0
CONNECT_TIMEOUT_S = 10.0
# 1 MiB in flight keeps a guest that ACKs merged segments busy (256 KiB left it idle half the
# time on host -> guest transfers; 2 MiB measured worse again).
TCP_CONFIG = TcpConfig(send_buffer=1 << 20, recv_buffer=1 << 20)


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
        self._connecting = 0
        self._waiting: collections.deque[tuple[TcpFlow, bool]] = collections.deque()  # (flow, accept)

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
        if self._connecting >= MAX_CONNECTING and not gw.policy.has_domain_rules:
            gw.counters["tcp_syn_deferred"] += 1  # dropped unanswered: the guest sends it again
            return
        decision = gw.decide(Protocol.TCP, ip.src, seg.src_port, ip.dst, seg.dst_port)
        if not decision.allowed:
            self._reset(seg, ip.dst, ip.src)
            return
        flow = TcpFlow(key, syn=seg)
        self.flows[key] = flow
        if gw.policy.has_domain_rules:
            flow.conn = self._accept(flow)
            flow.inspector = StreamInspector(SNIFF_LIMIT)
            flow.sniff_timer = gw.loop.call_later(SNIFF_WAIT_S, self._sniff_done, flow)
            self.pump(flow)
        else:
            self._start_connect(flow, accept=True)

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

    # ----- reading names: the first bytes, then every request and hello ---------------------

    def _guest_data(self, flow: TcpFlow, data: bytes) -> None:
        """Guest bytes of an outbound flow: judge the names they present, then pass them on."""
        inspector = flow.inspector
        if inspector is not None:
            for result in inspector.feed(data):
                self._judge(flow, result)
                if flow.closed or (flow.conn is not None and flow.conn.state is TcpState.CLOSED):
                    return  # cut: these bytes never reach the host
            if inspector.done:
                flow.inspector = None
        if flow.host is not None:
            self._to_host(flow, data)
            return
        flow.early += data
        if not self._decided(flow) and len(flow.early) >= SNIFF_LIMIT:
            self._decide_sniffed(flow, "")

    def _decided(self, flow: TcpFlow) -> bool:
        """Whether the flow's first name was decided (it connects, waits for a slot, or is
        connected): every name from now on is judged as a new name on a live flow."""
        return flow.connect_task is not None or flow.connect_queued or flow.host is not None

    def _name_of(self, result: SniffResult | None, flow: TcpFlow) -> str | None:
        """The ``sni_or_host`` a verdict is decided with (MALFORMED: "", allows nothing by domain).

        A stream that presents no name to a static host's address is decided on DNS evidence
        whatever ``require_names`` says: that address stands for the profile's own entry, never
        for names an upstream shares it with, which is what ``require_names`` guards against."""
        if result is None or result.status in (SniffStatus.ABSENT, SniffStatus.NOT_PROTOCOL):
            if self.gw.is_static_address(flow.key[2]):
                return None
            return self.gw.policy.presented_name(None)
        return result.name if result.status is SniffStatus.FOUND else ""

    def _judge(self, flow: TcpFlow, result: SniffResult) -> None:
        name = self._name_of(result, flow)
        if result.status is SniffStatus.NOT_PROTOCOL and self._decided(flow):
            return  # a tunnel's opaque bytes: allowed on the name of the request that opened it
        if not self._decided(flow):
            self._decide_sniffed(flow, name)
            return
        if name in flow.names:
            return
        flow.names.add(name)
        flow.domain = name
        guest_ip, guest_port, far_ip, far_port = flow.key
        if not self.gw.decide(Protocol.TCP, guest_ip, guest_port, far_ip, far_port, name).allowed:
            self._cut(flow)

    def _cut(self, flow: TcpFlow) -> None:
        """A name the policy denies on a live flow: RST to the guest, the host socket closed."""
        self.gw.counters["tcp_name_denied"] += 1
        flow.inspector = None
        flow.outgoing.clear()
        flow.early.clear()
        if flow.host is not None:
            flow.host.abort()
            flow.host = None
        assert flow.conn is not None
        flow.conn.abort(self.gw.now())
        self.pump(flow)

    def _sniff_done(self, flow: TcpFlow) -> None:
        flow.sniff_timer = None
        if flow.closed or self._decided(flow):
            return
        # Nothing at all (a server-speaks-first protocol): no name. A partial head or hello: "".
        self._decide_sniffed(flow, self._name_of(flow.inspector.finish() if flow.inspector else None, flow))

    def _decide_sniffed(self, flow: TcpFlow, name: str | None) -> None:
        if self._decided(flow) or flow.closed:
            return
        if flow.sniff_timer is not None:
            flow.sniff_timer.cancel()
            flow.sniff_timer = None
        guest_ip, guest_port, far_ip, far_port = flow.key
        flow.domain = name
        flow.names.add(name)
        decision = self.gw.decide(Protocol.TCP, guest_ip, guest_port, far_ip, far_port, name)
        if not decision.allowed:
            assert flow.conn is not None
            flow.inspector = None
            flow.conn.abort(self.gw.now())
            self.pump(flow)
            return
        self._start_connect(flow, accept=False)

    # ----- host side -------------------------------------------------------------------------

    def _start_connect(self, flow: TcpFlow, accept: bool) -> None:
        """Connect the flow's host socket if a connect slot and the budget allow; else queue it
        (a flow whose handshake is done) or refuse it."""
        if self._connecting >= MAX_CONNECTING:
            flow.connect_queued = True
            self._waiting.append((flow, accept))
            return
        guest_ip, _guest_port, far_ip, far_port = flow.key
        lease = self.gw.host_sockets.acquire("tcp")
        if isinstance(lease, Refusal):
            self.gw.counters["tcp_budget_refused"] += 1
            self.gw.flow_log.emit("tcp", str(guest_ip), str(self.gw.host_address(far_ip)), far_port, flow.domain,
                                  lease.reason, "deny", "host socket budget")
            self._connect_failed(flow)
            return
        self._connecting += 1
        flow.connect_task = self.gw.loop.create_task(self._connect_host(flow, accept, lease))

    def _next_waiting(self) -> None:
        while self._waiting and self._connecting < MAX_CONNECTING:
            flow, accept = self._waiting.popleft()
            flow.connect_queued = False
            if not flow.closed:
                self._start_connect(flow, accept)

    def _connect_failed(self, flow: TcpFlow) -> None:
        if flow.conn is None:
            self._reset(flow.syn, flow.key[2], flow.key[0])
            self._drop(flow)
        else:
            flow.conn.abort(self.gw.now())
            self.pump(flow)

    async def _connect_host(self, flow: TcpFlow, accept: bool, lease: Lease) -> None:
        _guest_ip, _guest_port, far_ip, far_port = flow.key
        protocol = HostTcp(self, flow, lease)
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await self.gw.loop.create_connection(
                    protocol.made_by_asyncio, str(self.gw.host_address(far_ip)), far_port
                )
        except (OSError, TimeoutError) as err:
            self.gw.counters["tcp_connect_failed"] += 1
            log.debug("%s: connect to %s:%s failed: %s", self.gw.name, far_ip, far_port, err)
            self._connect_failed(flow)
            return
        finally:
            # A transport, once made, calls connection_lost (which releases); before that, the
            # socket died inside create_connection and the lease is ours to give back.
            if not protocol.has_transport:
                lease.release()
            self._connecting -= 1
            self._next_waiting()
        if flow.closed:
            if flow.host is not None:
                flow.host.abort()
            return
        if accept:
            flow.conn = self._accept(flow)
        self.pump(flow)

    def host_connected(self, flow: TcpFlow, transport: asyncio.Transport) -> None:
        flow.host = transport
        transport.set_write_buffer_limits(high=HOST_WRITE_HIGH)
        if self.gw.guest_paused:
            transport.pause_reading()
        # What the guest sent while its first bytes were sniffed goes first, before any
        # DataReceived that arrives from now on.
        if flow.early and flow.conn is not None:
            early = bytes(flow.early)
            flow.early.clear()
            self._to_host(flow, early)
        if flow.guest_eof and transport.can_write_eof():
            self._half_close(flow, transport)

    def _half_close(self, flow: TcpFlow, transport: asyncio.Transport) -> None:
        """Pass the guest's FIN on. A peer that is gone already makes ``shutdown`` fail
        (ENOTCONN): that is the end of the host side, not a bug of this frame."""
        self._flush(flow)
        try:
            transport.write_eof()
        except OSError:
            transport.abort()  # connection_lost follows, and host_lost resets the guest

    def from_host(self, flow: TcpFlow, data: bytes) -> None:
        if flow.conn is None or flow.closed:
            return
        if flow.inspector is not None:
            flow.inspector.feed_server(data)  # up to the TLS ServerHello; nothing for HTTP
            if flow.inspector.done:
                flow.inspector = None
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
        if flow.host.get_write_buffer_size() < HOST_WRITE_HIGH:
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
            elif not flow.inbound:
                self._guest_data(flow, event.data)
            elif flow.host is not None:
                self._to_host(flow, event.data)
        elif isinstance(event, PeerClosed):
            flow.guest_eof = True
            if flow.local_dns and not flow.dns_pending:
                conn.shutdown_write(self.gw.now())
            elif flow.local_dns:
                pass  # the FIN follows the last answer
            elif flow.host is not None and flow.host.can_write_eof():
                self._half_close(flow, flow.host)
            elif not flow.inbound and not self._decided(flow):
                self._decide_sniffed(flow, self._name_of(flow.inspector.finish() if flow.inspector else None, flow))
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
                    functools.partial(ForwardTcp, self, fwd), fwd.host_addr, fwd.host_port, reuse_address=True
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
