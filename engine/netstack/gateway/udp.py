"""UDP through the gateway: one connected host socket per allowed guest flow, and port forwards.

A guest flow is (guest port, destination address, destination port). Its first datagram is
decided by the policy; allowed flows get a host datagram socket connected to the destination,
so only that peer's answers come back. Idle flows are closed after ``UDP_IDLE_S``. Each flow's
socket is leased from the process's host-socket budget (``gateway.budget``) when its first
datagram is allowed, and given back when the socket closes; a refused flow is a deny event, and
the guest gets the same ICMP "administratively prohibited" as for a flow the policy denies.

Forwards: a host socket bound to the forward's address receives datagrams from host clients;
each client gets a port of the gateway's own address, from which the datagram reaches the
guest, and the guest's answers to that port go back to that client.
"""
from __future__ import annotations

import asyncio
import functools
import itertools
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Any

from engine.netstack.config import PortForward, forward_error
from engine.netstack.gateway.budget import Lease, Refusal
from engine.netstack.gateway.seam import FlowRelayHost
from engine.netstack.icmp import UNREACH_ADMIN_PROHIBITED, dest_unreachable, may_send_error
from engine.netstack.ipv4 import PROTO_ICMP, PROTO_UDP, Ipv4Packet, build_ipv4
from engine.netstack.policy.policy import Protocol
from engine.netstack.udp import UdpDatagram, build_udp


MAX_UDP_FLOWS = 512
UDP_IDLE_S = 60.0
_PENDING_LIMIT = 64  # datagrams held while a flow's host socket opens
MAX_FORWARD_CLIENTS = 4096  # UDP forward clients remembered; past it the oldest is forgotten
UdpKey = tuple[IPv4Address, int, IPv4Address, int]


@dataclass(eq=False)
class UdpFlow:
    """One guest flow and its host socket."""

    key: UdpKey
    transport: asyncio.DatagramTransport | None = None
    pending: list[bytes] = field(default_factory=list)
    last_active: float = 0.0
    closed: bool = False
    lease: Lease | None = None  # its place in the host-socket budget
    bytes_up: int = 0  # guest -> host
    bytes_down: int = 0  # host -> guest


class UdpRelay:
    """All UDP flows and UDP forwards of one gateway."""

    def __init__(self, gateway: FlowRelayHost) -> None:
        self.gw = gateway
        self.flows: dict[UdpKey, UdpFlow] = {}
        self.bytes_up = 0
        self.bytes_down = 0
        self._forward_ports: dict[int, tuple[_ForwardUdp, Any]] = {}  # gateway port -> (listener, client)
        self._client_ports: dict[tuple[int, Any], int] = {}
        self._listeners: list[asyncio.DatagramTransport] = []
        self._ports = itertools.cycle(range(49152, 65536))
        self._sweeper: asyncio.TimerHandle | None = None

    # ----- guest flows -----------------------------------------------------------------------

    def datagram(self, ip: Ipv4Packet, udp: UdpDatagram) -> None:
        gw = self.gw
        if udp.dst_port == 53:
            # Port 53 is the gateway's resolver wherever the guest sends it (gateway._dispatch):
            # relaying it would make DNS a tunnel, so it never gets a host socket, whatever the policy.
            gw.counters["udp_dns_not_relayed"] += 1
            return
        key = (ip.src, udp.src_port, ip.dst, udp.dst_port)
        flow = self.flows.get(key)
        if flow is None:
            if len(self.flows) >= MAX_UDP_FLOWS:
                gw.counters["udp_table_full"] += 1
                return
            decision = gw.decide(Protocol.UDP, ip.src, udp.src_port, ip.dst, udp.dst_port)
            if not decision.allowed:
                self._unreachable(ip)
                return
            lease = gw.host_sockets.acquire("udp")
            if isinstance(lease, Refusal):
                gw.counters["udp_budget_refused"] += 1
                gw.flow_log.emit("udp", str(ip.src), str(gw.host_address(ip.dst)), udp.dst_port, None,
                                 lease.reason, "deny", "host socket budget")
                self._unreachable(ip)
                return
            flow = UdpFlow(key, lease=lease)
            self.flows[key] = flow
            gw.loop.create_task(self._open(flow))
            self._arm_sweeper()
        flow.last_active = gw.now()
        self.bytes_up += len(udp.payload)
        flow.bytes_up += len(udp.payload)
        if flow.transport is not None:
            flow.transport.sendto(udp.payload)
        elif len(flow.pending) < _PENDING_LIMIT:
            flow.pending.append(udp.payload)
        else:
            gw.counters["udp_pending_dropped"] += 1

    def _unreachable(self, ip: Ipv4Packet) -> None:
        if may_send_error(ip):
            original = build_ipv4(ip.src, ip.dst, ip.protocol, ip.payload, ttl=ip.ttl, ident=ip.ident)
            self.gw.send_ip(ip.dst, ip.src, PROTO_ICMP, dest_unreachable(original, UNREACH_ADMIN_PROHIBITED))

    async def _open(self, flow: UdpFlow) -> None:
        _guest_ip, _guest_port, far_ip, far_port = flow.key
        try:
            transport, _ = await self.gw.loop.create_datagram_endpoint(
                lambda: _HostUdp(self, flow), remote_addr=(str(self.gw.host_address(far_ip)), far_port)
            )
        except BaseException as err:
            # No transport: no connection_lost will release the lease, so this path does.
            if flow.lease is not None:
                flow.lease.release()
            if not isinstance(err, OSError):
                raise
            self.gw.counters["udp_open_failed"] += 1
            self._drop(flow)
            return
        if flow.closed:
            transport.close()
            return
        flow.transport = transport
        for payload in flow.pending:
            transport.sendto(payload)
        flow.pending.clear()

    def from_host(self, flow: UdpFlow, data: bytes) -> None:
        guest_ip, guest_port, far_ip, far_port = flow.key
        if len(data) > self.gw.config.mtu - 28:
            self.gw.counters["udp_too_big"] += 1  # we do not fragment toward the guest
            return
        flow.last_active = self.gw.now()
        self.bytes_down += len(data)
        flow.bytes_down += len(data)
        self.gw.send_ip(far_ip, guest_ip, PROTO_UDP, build_udp(far_ip, guest_ip, far_port, guest_port, data))

    def _drop(self, flow: UdpFlow) -> None:
        flow.closed = True
        self.flows.pop(flow.key, None)
        if flow.transport is not None:
            flow.transport.close()

    def _arm_sweeper(self) -> None:
        if self._sweeper is None:
            self._sweeper = self.gw.loop.call_later(UDP_IDLE_S / 4, self._sweep)

    def _sweep(self) -> None:
        self._sweeper = None
        cutoff = self.gw.now() - UDP_IDLE_S
        for flow in [f for f in self.flows.values() if f.last_active < cutoff]:
            self._drop(flow)
        if self.flows:
            self._arm_sweeper()

    # ----- forwards --------------------------------------------------------------------------

    async def start_forwards(self) -> None:
        for fwd in self.gw.config.forwards:
            if fwd.protocol != "udp":
                continue
            try:
                transport, _ = await self.gw.loop.create_datagram_endpoint(
                    functools.partial(_ForwardUdp, self, fwd), local_addr=(fwd.host_addr, fwd.host_port)
                )
            except OSError as err:
                raise forward_error(fwd, err) from None
            self._listeners.append(transport)
            self.gw.forwarded_ports.append((fwd, transport.get_extra_info("sockname")[1]))

    def from_forward_client(self, listener: _ForwardUdp, data: bytes, client: Any) -> None:
        gw = self.gw
        if gw.guest_ip is None:
            gw.counters["forward_refused"] += 1
            return
        port = self._client_ports.get((id(listener), client))
        if port is None:
            if len(self._forward_ports) >= MAX_FORWARD_CLIENTS:
                # Without a bound, 16384 clients exhaust the ports and next() below never returns.
                old_listener, old_client = self._forward_ports.pop(next(iter(self._forward_ports)))
                self._client_ports.pop((id(old_listener), old_client), None)
            port = next(p for p in self._ports if p not in self._forward_ports)
            self._client_ports[(id(listener), client)] = port
            self._forward_ports[port] = (listener, client)
            gw.flow_log.emit("udp", f"{client[0]}:{client[1]}", str(gw.guest_ip), listener.fwd.guest_port,
                             None, f"forward {listener.fwd.describe()}", "allow")
        if len(data) > gw.config.mtu - 28:
            gw.counters["udp_too_big"] += 1  # we do not fragment toward the guest
            return
        self.bytes_down += len(data)
        gw.send_ip(gw.gateway_ip, gw.guest_ip, PROTO_UDP,
                   build_udp(gw.gateway_ip, gw.guest_ip, port, listener.fwd.guest_port, data))

    def forward_reply(self, ip: Ipv4Packet, udp: UdpDatagram) -> None:
        entry = self._forward_ports.get(udp.dst_port)
        if entry is None or udp.src_port != entry[0].fwd.guest_port:
            self.gw.counters["udp_to_gateway_dropped"] += 1
            return
        listener, client = entry
        self.bytes_up += len(udp.payload)
        if listener.transport is not None:
            listener.transport.sendto(udp.payload, client)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for flow in list(self.flows.values()):
            self._drop(flow)
        for listener in self._listeners:
            listener.close()


class _HostUdp(asyncio.DatagramProtocol):
    def __init__(self, relay: UdpRelay, flow: UdpFlow) -> None:
        self.relay = relay
        self.flow = flow

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.relay.from_host(self.flow, data)

    def error_received(self, exc: Exception) -> None:
        self.relay.gw.counters["udp_host_error"] += 1

    def connection_lost(self, exc: Exception | None) -> None:
        if self.flow.lease is not None:
            self.flow.lease.release()


class _ForwardUdp(asyncio.DatagramProtocol):
    def __init__(self, relay: UdpRelay, fwd: PortForward) -> None:
        self.relay = relay
        self.fwd = fwd
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # asyncio hands a datagram protocol a DatagramTransport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.relay.from_forward_client(self, data, addr)
