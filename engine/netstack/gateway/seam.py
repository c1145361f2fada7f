"""What the gateway's relays see of it: narrow Protocols, not the whole :class:`Gateway`.

The gateway owns the relays (TCP, UDP, the DNS adapter) and hands each itself; each relay is
typed against the Protocol below that lists only the members it uses, so the relays never import
the gateway module (no cycle) and a test may drive a relay with a small fake. The two relays that
talk to each other (DNS over TCP) see each other through one-method Protocols too.
"""
from __future__ import annotations

import asyncio
import random
from collections import Counter
from ipaddress import IPv4Address
from typing import Protocol

from engine.netstack.config import PortForward, UserNatConfig
from engine.netstack.domains import DomainTracker
from engine.netstack.gateway.budget import FlowAccount
from engine.netstack.policy.flow import Protocol as Transport
from engine.netstack.flowlog import FlowLog
from engine.netstack.policy.policy import Decision, NetworkPolicy

FlowKey = tuple[IPv4Address, int, IPv4Address, int]  # guest ip, guest port, far ip, far port


class DnsOverTcp(Protocol):
    """The DNS adapter as the TCP relay sees it: questions the guest sent over TCP."""

    def query_tcp(self, flow_key: tuple[object, ...], payload: bytes) -> None: ...


class DnsReplySink(Protocol):
    """The TCP relay as the DNS adapter sees it: where answers to TCP questions go."""

    def dns_reply(self, key: FlowKey, wire: bytes) -> None: ...


class RelayHost(Protocol):
    """What every relay uses: the loop and clock, counters, the flow log, the guest's addresses
    and the way to send it an IP packet."""

    @property
    def config(self) -> UserNatConfig: ...
    @property
    def counters(self) -> Counter[str]: ...
    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...
    @property
    def flow_log(self) -> FlowLog: ...
    @property
    def gateway_ip(self) -> IPv4Address: ...
    @property
    def dns_ip(self) -> IPv4Address: ...

    def now(self) -> float: ...

    def send_ip(self, src: IPv4Address, dst: IPv4Address, protocol: int, payload: bytes) -> None: ...


class FlowRelayHost(RelayHost, Protocol):
    """What the TCP and UDP relays add: the policy's decision on new flows, the host side of a
    guest destination, the guest's address, the list of bound port forwards and the VM's account
    in the process's host-socket budget."""

    @property
    def guest_ip(self) -> IPv4Address | None: ...
    @property
    def host_sockets(self) -> FlowAccount: ...
    @property
    def forwarded_ports(self) -> list[tuple[PortForward, int]]: ...

    def host_address(self, dst: IPv4Address) -> IPv4Address: ...

    def is_static_address(self, dst: IPv4Address) -> bool: ...

    def decide(self, protocol: Transport, src: IPv4Address, src_port: int, dst: IPv4Address, dst_port: int,
               sni_or_host: str | None = None, *, emit: bool = True) -> Decision: ...


class TcpRelayHost(FlowRelayHost, Protocol):
    """What the TCP relay adds: a name for logs, randomness for sequence numbers, the policy (does
    it look at names?), back-pressure from the guest link and the DNS adapter (DNS over TCP)."""

    @property
    def name(self) -> str: ...
    @property
    def rng(self) -> random.Random: ...
    @property
    def policy(self) -> NetworkPolicy: ...
    @property
    def guest_paused(self) -> bool: ...
    @property
    def dns(self) -> DnsOverTcp: ...


class DnsHost(RelayHost, Protocol):
    """What the DNS adapter adds: the static hosts, the domain tracker its answers feed, the
    policy that decides names, the TCP relay (answers to questions asked over TCP), the VM's
    host-socket account (questions asked upstream over TCP) and which addresses an upstream
    answer may not point at."""

    @property
    def guest_hosts(self) -> list[tuple[str, IPv4Address]]: ...
    @property
    def tracker(self) -> DomainTracker: ...
    @property
    def policy(self) -> NetworkPolicy: ...
    @property
    def tcp(self) -> DnsReplySink: ...
    @property
    def host_sockets(self) -> FlowAccount: ...

    def off_limits(self, ip: IPv4Address) -> str | None: ...
