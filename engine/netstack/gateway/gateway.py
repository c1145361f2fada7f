"""The user-mode NAT gateway of one VM: the asyncio adapter around the sans-IO cores.

QEMU streams the guest's Ethernet frames to a Unix socket (4-byte length + frame); this module
reads them, dispatches by protocol (ARP, ICMP echo, DHCP and DNS at the gateway's addresses,
TCP and UDP flows elsewhere), asks the policy about every new flow, and relays allowed flows
over host sockets (``gateway.tcp``, ``gateway.udp``). Frames to the guest are batched: all that
one turn of the event loop produces goes out in one write.

The gateway answers only at its own two addresses (gateway .2 and DNS .3); every other
destination is a flow that the policy decides, and off-limits addresses (loopback, link-local,
private ranges, the guest subnet, every address of every host interface: see
``engine.netstack.host_addresses``) stay closed unless a rule names them. A gateway whose config
names a cluster also joins that cluster's switch (``engine.netstack.cluster``) for its lifetime:
it answers ARP for the other members, hands them packets from its guest's own address and
passes on what they send.

Port 53 anywhere is the gateway's own resolver: a DNS question over UDP or TCP to any address
but the gateway's own is answered by :class:`DnsAdapter` under this VM's policy, from the
address the guest asked (``nslookup x 8.8.8.8`` gets our answer, as if 8.8.8.8 had given it).
It is never relayed, whatever the policy says, so port 53 is no tunnel and asking another
resolver is no way around ``deny_domain``. Answering rather than refusing keeps guests with a
hard-coded resolver working, under the same rules as everyone else.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
from collections import Counter
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from engine.netstack import host_addresses
from engine.netstack.arp import ArpResponder
from engine.netstack.cluster import CLUSTERS, ClusterPort, ClusterRegistry, MemberNames
from engine.netstack.config import GATEWAY_MAC, PortForward, UserNatConfig
from engine.netstack.dhcp import DhcpConfig, DhcpServer
from engine.netstack.gateway.budget import FdBudget, process_budget
from engine.netstack.gateway.dns_upstream import DnsAdapter
from engine.netstack.domains import DomainTracker
from engine.netstack.errors import PacketError
from engine.netstack.ethernet import ETHERTYPE_ARP, ETHERTYPE_IPV4, build_ethernet, parse_ethernet, parse_mac
from engine.netstack.flowlog import FlowLog
from engine.netstack.frames import StreamDeframer, frame
from engine.netstack.gateway.tcp import TcpRelay
from engine.netstack.gateway.udp import UdpRelay
from engine.netstack.icmp import echo_reply
from engine.netstack.ipv4 import PROTO_ICMP, PROTO_TCP, PROTO_UDP, Ipv4Packet, build_ipv4, parse_ipv4
from engine.netstack.policy.policy import Decision, Flow, NetworkPolicy, Protocol, is_restricted
from engine.netstack.udp import build_udp, parse_udp

log = logging.getLogger(__name__)

BROADCAST = IPv4Address("255.255.255.255")
_GUEST_WRITE_HIGH = 4 << 20
_SOCKET_BUFFER = 4 << 20  # bytes queued toward QEMU before host sockets stop being read
# Static hosts on the host's loopback are shown to the guest at stand-in addresses from the
# benchmarking block (RFC 2544, never routed): 127.0.0.1 inside the guest is the guest itself.
STAND_IN_BASE = IPv4Address("198.18.0.0")


class Gateway:
    """One VM's network: owns the QEMU socket, every host socket of its flows, and the flow log."""

    def __init__(self, config: UserNatConfig, name: str = "vm", budget: FdBudget | None = None, *,
                 hostname: str | None = None, clusters: ClusterRegistry = CLUSTERS) -> None:
        """``budget``: the host-socket budget to share (default: the process's, see ``gateway.budget``)."""
        config.validate()
        self.hostname = hostname  # the guest's host name: what cluster members call it
        self._clusters = clusters
        self.cluster: ClusterPort | None = None
        self.config = config
        self.name = name
        self.policy = config.policy
        self.flow_log = FlowLog(name)
        self.counters: Counter[str] = Counter()
        self.gateway_ip = config.gateway
        self.dns_ip = config.dns
        self.gateway_mac = parse_mac(GATEWAY_MAC)
        self.guest_mac = parse_mac(config.guest_mac)
        self.guest_ip: IPv4Address | None = None
        self.forwarded_ports: list[tuple[PortForward, int]] = []  # each forward and its bound port
        self.rng = random.Random()
        self._ident = self.rng.getrandbits(16)
        self.tracker = DomainTracker()
        self.stand_ins: dict[IPv4Address, IPv4Address] = {}
        self.guest_hosts: list[tuple[str, IPv4Address]] = []
        for index, (host, address) in enumerate(config.hosts):
            if address.is_loopback:
                stand_in = STAND_IN_BASE + index + 1
                self.stand_ins[stand_in] = address
                address = stand_in
            self.guest_hosts.append((host, address))
        self._arp = ArpResponder(self.gateway_mac, {self.gateway_ip, self.dns_ip})
        first, last = config.dhcp_range
        self._dhcp = DhcpServer(DhcpConfig(config.subnet, config.gateway, (config.dns,), first, last, mtu=config.mtu))
        self.dns = DnsAdapter(self)
        self.tcp = TcpRelay(self)
        self.udp = UdpRelay(self)
        self._deframer = StreamDeframer()
        self._transport: asyncio.Transport | None = None
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._guest_paused = False
        self._closed = asyncio.Event()
        self._closing = False
        self.loop = asyncio.get_running_loop()
        # Last: a constructor that raised above has joined nothing it would have to leave.
        self.host_sockets = (budget if budget is not None else process_budget()).join(name)
        self.host_addresses = host_addresses.acquire()  # shared by the process; released in close()

    # ----- lifecycle -------------------------------------------------------------------------

    async def start(self, sock: socket.socket) -> None:
        """Serve the guest on ``sock`` (QEMU's connected stream socket; the gateway owns it now)."""
        try:
            if self.config.cluster is not None:
                self._join_cluster(self.config.cluster)
            await self.dns.start()
            await self.tcp.start_forwards()
            await self.udp.start_forwards()
            # Room for bursts toward QEMU in the kernel, not in asyncio's buffer: a full socket
            # costs a wake-up per drain, and QEMU reads in large chunks anyway.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCKET_BUFFER)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCKET_BUFFER)
            await self.loop.connect_accepted_socket(lambda: _GuestLink(self), sock)
        except BaseException:
            sock.close()
            await self.close()
            raise

    async def close(self) -> None:
        """Close every flow, listener and socket; idempotent."""
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        if self.cluster is not None:
            self.cluster.leave()
        await self.tcp.close()
        await self.udp.close()
        self.dns.close()
        self.host_sockets.close()
        self.host_addresses.release()
        if self._transport is not None:
            self._transport.abort()
        self.flow_log.close()
        self._closed.set()

    def set_policy(self, policy: NetworkPolicy) -> None:
        """Swap the policy: new flows and DNS questions are decided by it from now on."""
        self.policy = policy

    def now(self) -> float:
        return self.loop.time()

    # ----- guest link ------------------------------------------------------------------------

    def _connected(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        transport.set_write_buffer_limits(high=_GUEST_WRITE_HIGH)

    def _received(self, data: bytes) -> None:
        try:
            frames = self._deframer.feed(data)
        except PacketError as err:
            log.error("%s: %s; closing the network link", self.name, err)
            self.counters["stream_corrupt"] += 1
            if self._transport is not None:
                self._transport.abort()
            return
        for raw in frames:
            try:
                self._dispatch(raw)
            except PacketError:
                self.counters["malformed"] += 1
            except Exception:  # a bug must cost one frame, not the VM's network
                self.counters["internal_error"] += 1
                log.exception("%s: frame handling failed", self.name)

    def _dispatch(self, raw: bytes) -> None:
        eth = parse_ethernet(raw)
        self.counters["frames_in"] += 1
        if eth.ethertype == ETHERTYPE_ARP:
            reply = self._arp.handle(eth)
            if reply is not None:
                self.send_frame(reply)
            return
        if eth.ethertype != ETHERTYPE_IPV4:
            self.counters["not_ipv4"] += 1  # IPv6, RARP after restore: not ours to route
            return
        ip = parse_ipv4(eth.payload)
        if ip.is_fragment:
            self.counters["fragment_dropped"] += 1
            return
        if ip.src not in self.config.subnet and not self._dhcp_from_nowhere(ip):
            self.counters["spoofed_source"] += 1
            return
        if ip.dst in (self.gateway_ip, self.dns_ip) or ip.dst == BROADCAST:
            self._to_gateway(ip)
        elif self.cluster is not None and self.cluster.carries(ip.dst):
            # Another member: not NATed, not the policy's; the switch refuses a spoofed source.
            sent = self.cluster.send(ip.src, ip.dst, bytes(eth.payload[:ip.total_length]))
            if not sent:
                self.counters["cluster_refused"] += 1
            self._log_cluster_connect(ip, sent)
        elif ip.dst in self.config.subnet:
            # Another address on the guest's subnet (another VM, the broadcast): never routed.
            self.counters["subnet_dropped"] += 1
        elif ip.protocol == PROTO_TCP:
            self.tcp.segment(ip)
        elif ip.protocol == PROTO_UDP:
            udp = parse_udp(ip)
            if udp.dst_port == 53:
                self.dns.query(ip.src, udp.src_port, udp.payload, server=ip.dst)  # never relayed
            else:
                self.udp.datagram(ip, udp)
        else:
            self.counters["protocol_dropped"] += 1  # ICMP beyond the gateway is not relayed

    def _dhcp_from_nowhere(self, ip: Ipv4Packet) -> bool:
        """A guest without an address yet may only ask the DHCP server."""
        return (
            ip.src == IPv4Address(0)
            and ip.protocol == PROTO_UDP
            and ip.dst in (self.gateway_ip, BROADCAST)
            and ip.payload[2:4] == b"\x00\x43"  # destination port 67
        )

    def _to_gateway(self, ip: Ipv4Packet) -> None:
        if ip.protocol == PROTO_ICMP:
            reply = echo_reply(ip)
            if reply is not None:
                self.send_ip(ip.dst, ip.src, PROTO_ICMP, reply)
            return
        if ip.protocol == PROTO_UDP:
            udp = parse_udp(ip)
            if udp.dst_port == 67:
                self._dhcp_request(udp.payload)
            elif udp.dst_port == 53 and ip.dst == self.dns_ip:
                self.dns.query(ip.src, udp.src_port, udp.payload)
            elif ip.dst == self.gateway_ip:
                self.udp.forward_reply(ip, udp)
            return
        if ip.protocol == PROTO_TCP:
            self.tcp.segment(ip)  # replies on port-forward flows; anything else gets a RST
            return
        self.counters["protocol_dropped"] += 1

    # ----- cluster ---------------------------------------------------------------------------

    def _join_cluster(self, cluster: str) -> None:
        port = self._clusters.join(cluster, self.config.subnet, self.config.dhcp_range,
                                   hostname=self.hostname, deliver=self._from_cluster,
                                   changed=self._cluster_changed)
        self.cluster = port
        # The guest must take exactly the address the switch gave it: that is what the other
        # members reach and the only source the switch accepts from it.
        self._dhcp = DhcpServer(DhcpConfig(self.config.subnet, self.gateway_ip, (self.dns_ip,), port.address,
                                           port.address, mtu=self.config.mtu))
        self._member_names = MemberNames(self.dns.core.name_filter, cluster)
        self.dns.core.name_filter = self._member_names
        self._cluster_changed()

    def _cluster_changed(self) -> None:
        """Members came or went: proxy ARP for the others, DNS names for all of them."""
        port = self.cluster
        if port is None:
            return
        self._arp.addresses = {self.gateway_ip, self.dns_ip} | port.peers()
        hosts: dict[str, list[IPv4Address]] = {}
        for host, address in self.guest_hosts:
            hosts.setdefault(host, []).append(address)
        members = {host: ips for host, ips in port.names().items() if host not in hosts}
        self._member_names.names = frozenset(members)  # a config host of the same name wins
        self.dns.core.set_static_hosts(hosts | members)

    def _log_cluster_connect(self, ip: Ipv4Packet, sent: bool) -> None:
        """A new TCP connection to a member is one flow-log event (its other packets are not):
        the log shows who talked to whom in the cluster, and every spoofed attempt."""
        tcp = ip.payload
        if ip.protocol != PROTO_TCP or len(tcp) < 14 or tcp[13] & 0x12 != 0x02:  # SYN without ACK
            return
        rule = f"cluster {self.config.cluster}" if sent else f"cluster {self.config.cluster}: not this VM's address"
        self.flow_log.emit("tcp", str(ip.src), str(ip.dst), int.from_bytes(tcp[2:4], "big"), None, rule,
                           "allow" if sent else "deny", "cluster")

    def _from_cluster(self, packet: bytes) -> None:
        if self._guest_paused:
            # Our guest reads slower than a member sends: drop, as a switch with a full egress
            # queue does, so one member cannot grow another's buffers without bound.
            self.counters["cluster_dropped_busy"] += 1
        elif not self._closing:
            self.send_frame(build_ethernet(self.guest_mac, self.gateway_mac, ETHERTYPE_IPV4, packet))

    def adopt_lease(self, ip: IPv4Address) -> IPv4Address:
        """Treat the guest, restored from a snapshot that held ``ip``, as leased already: no DHCP
        exchange is needed before its traffic flows. Returns the address the guest must hold:
        ``ip``, except in a cluster, where the switch gave this member its own (a clone wakes up
        with its template's address, which another member may hold): the caller re-addresses
        the guest (the clone's identity fix-up does)."""
        if self.cluster is not None:
            ip = self.cluster.address
        self._dhcp.grant(self.guest_mac, ip, self.now())
        self.guest_ip = ip
        return ip

    def _dhcp_request(self, payload: bytes) -> None:
        reply = self._dhcp.handle(payload, self.now())
        if reply is None:
            return
        if reply.message_type == 5:  # DHCPACK: the guest's address from now on
            self.guest_ip = reply.dst_ip if reply.dst_ip != BROADCAST else self.guest_ip
            lease = self._dhcp.lease_of(self.guest_mac, self.now())
            if lease is not None:
                self.guest_ip = lease
        udp = build_udp(reply.src_ip, reply.dst_ip, 67, 68, reply.payload)
        ip = build_ipv4(reply.src_ip, reply.dst_ip, PROTO_UDP, udp)
        self.send_frame(build_ethernet(reply.dst_mac, self.gateway_mac, ETHERTYPE_IPV4, ip))

    # ----- sending ---------------------------------------------------------------------------

    def send_ip(self, src: IPv4Address, dst: IPv4Address, protocol: int, payload: bytes) -> None:
        # IDs count up: the guest's GRO merges a flow's segments only when they do (or are
        # fixed), and merged segments cost its emulated CPU far less than one by one.
        self._ident = (self._ident + 1) & 0xFFFF
        ip = build_ipv4(src, dst, protocol, payload, ident=self._ident)
        self.send_frame(build_ethernet(self.guest_mac, self.gateway_mac, ETHERTYPE_IPV4, ip))

    def send_frame(self, data: bytes) -> None:
        self._out.append(frame(data))
        self.counters["frames_out"] += 1
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        out, self._out = self._out, []
        if self._transport is not None and not self._transport.is_closing() and out:
            self._transport.write(b"".join(out))

    @property
    def guest_paused(self) -> bool:
        """QEMU reads slower than the host sends: host sockets must wait."""
        return self._guest_paused

    def _pause(self, paused: bool) -> None:
        self._guest_paused = paused
        self.tcp.guest_paused(paused)

    # ----- policy ----------------------------------------------------------------------------

    def host_address(self, dst: IPv4Address) -> IPv4Address:
        """Where on the host side a guest's destination is (stand-ins become loopback)."""
        return self.stand_ins.get(dst, dst)

    def is_static_address(self, dst: IPv4Address) -> bool:
        """Whether the guest's ``dst`` is the address of a static host entry of the profile."""
        return any(ip == dst for _, ip in self.guest_hosts)
    def protected(self) -> list[IPv4Network]:
        """Off-limits networks besides the built-in ones: the guest subnet and the host's own."""
        return [self.config.subnet, *self.host_addresses.networks()]

    def off_limits(self, ip: IPv4Address) -> str | None:
        """Why a DNS answer pointing at ``ip`` is withheld from the guest, or None."""
        if ip in self.stand_ins:
            return f"stand-in of a static host ({ip})"
        return is_restricted(ip, self.protected())

    def decide(self, protocol: Protocol, src: IPv4Address, src_port: int, dst: IPv4Address, dst_port: int,
               sni_or_host: str | None = None, *, emit: bool = True) -> Decision:
        """The policy's decision on a new flow (to its host-side address), logged to the flow log."""
        domains = self.tracker.domains_for(dst, self.now())
        real = self.host_address(dst)
        static_names = frozenset(name for name, ip in self.guest_hosts if ip == dst)
        protected = self.protected()
        if dst in self.stand_ins or (static_names and is_restricted(real, protected)):
            # An off-limits address stands only for its static entries: another name that maps
            # to it came from an upstream answer (DNS rebinding) and must not open it.
            domains = domains & static_names
        static = bool(domains & static_names)
        flow = Flow(protocol, real, dst_port, src, src_port, domains, sni_or_host, static_host=static)
        dst = real
        decision = self.policy.evaluate(flow, protected=protected)
        if emit:
            proto = protocol.value if hasattr(protocol, "value") else str(protocol)
            domain = sni_or_host or (sorted(domains)[0] if domains else None)
            for index in decision.logged:
                self.flow_log.emit(proto, str(src), str(dst), dst_port, domain,
                                   self.policy.rules[index].describe(), "log")
            self.flow_log.emit(proto, str(src), str(dst), dst_port, domain, decision.rule_text,
                               "allow" if decision.allowed else "deny", decision.restricted or "")
        return decision

    def flows(self) -> list[dict[str, Any]]:
        """The open TCP and UDP flows with their byte counts (for the TUI's flow view)."""
        rows: list[dict[str, Any]] = []
        for kind, table in (("tcp", self.tcp.flows), ("udp", self.udp.flows)):
            for flow in table.values():
                guest_ip, guest_port, far_ip, far_port = flow.key
                state = getattr(flow, "conn", None)
                rows.append({
                    "protocol": kind,
                    "guest": f"{guest_ip}:{guest_port}",
                    "remote": f"{self.host_address(far_ip)}:{far_port}",
                    "domain": getattr(flow, "domain", None),
                    "state": state.state.value if state is not None else "open",
                    "bytes_up": flow.bytes_up,
                    "bytes_down": flow.bytes_down,
                })
        return rows

    def stats(self) -> dict[str, Any]:
        return {
            "counters": dict(self.counters) | (self.cluster.counters if self.cluster is not None else {}),
            "tcp_flows": len(self.tcp.flows),
            "udp_flows": len(self.udp.flows),
            "host_sockets": self.host_sockets.held,
            "bytes_to_host": self.tcp.bytes_up + self.udp.bytes_up,
            "bytes_to_guest": self.tcp.bytes_down + self.udp.bytes_down,
            "events": self.flow_log.count,
        }


class _GuestLink(asyncio.Protocol):
    """The QEMU socket as an asyncio protocol (no StreamReader: one copy less per frame)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.gateway._connected(transport)  # type: ignore[arg-type]  # asyncio hands a stream protocol a Transport; its signature says BaseTransport

    def data_received(self, data: bytes) -> None:
        self.gateway._received(data)

    def pause_writing(self) -> None:
        self.gateway._pause(True)

    def resume_writing(self) -> None:
        self.gateway._pause(False)

    def connection_lost(self, exc: Exception | None) -> None:
        with contextlib.suppress(RuntimeError):
            self.gateway.loop.create_task(self.gateway.close())
