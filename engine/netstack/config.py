"""Network modes of a VM: none, or user-mode NAT through our gateway (plain data + builder).

    net = (NetworkMode.user_nat().subnet("10.0.2.0/24")
           .forward_tcp(8080, 80).forward_udp(5353, 53)
           .host("api.example.test", "127.0.0.1")
           .policy(NetworkPolicy.deny_all().allow_dns().allow_https())
           .build())

    net = NetworkMode.cluster("backend").policy(NetworkPolicy.deny_all().allow_dns()).build()

``NetworkMode.cluster(name)`` is user-mode NAT plus membership of a cluster network: VMs that
name the same cluster share its subnet and reach each other by address and host name (see
``engine.netstack.cluster``); everything else still goes through each VM's own policy.

Addresses follow QEMU's user networking (gateway .2, DNS .3, DHCP from .15) so guides written
for QEMU apply. Without ``policy()``, the guest may reach any public address, but never the
host's loopback, link-local, private ranges or other VMs (see ``engine.netstack.policy.policy``).
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Network
from typing import Literal

from engine.errors import ConfigError
from engine.netstack.policy.policy import NetworkPolicy

ForwardProtocol = Literal["tcp", "udp"]
DEFAULT_SUBNET = IPv4Network("10.0.2.0/24")

# The guest subnet's layout and rules, in one place (the profile parser asks these too).
# The guest subnet must lie in one of these (IPv4Network.is_private also counts loopback and
# link-local, which are no place for a guest).
PRIVATE_BLOCKS = tuple(IPv4Network(net) for net in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
MAX_PREFIX = 27            # a /27 or larger: room for the guest's addresses from .15 on
GATEWAY_HOST = 2           # the gateway's address: network + 2
DNS_HOST = 3               # the DNS server's address: network + 3
FIRST_GUEST_HOST = 15      # the default DHCP range: network + 15 up to the last host
SubnetProblem = Literal["too small", "not private"]
# A cluster's name: what a profile, a log line and the dashboard can show as it is.
CLUSTER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def subnet_problem(subnet: IPv4Network) -> SubnetProblem | None:
    """Which rule ``subnet`` breaks as a guest subnet, or None (callers word the error)."""
    if subnet.prefixlen > MAX_PREFIX:
        return "too small"
    if not any(subnet.subnet_of(block) for block in PRIVATE_BLOCKS):
        return "not private"
    return None


def gateway_address(subnet: IPv4Network) -> IPv4Address:
    return subnet.network_address + GATEWAY_HOST


def dns_address(subnet: IPv4Network) -> IPv4Address:
    return subnet.network_address + DNS_HOST


def default_dhcp_range(subnet: IPv4Network) -> tuple[IPv4Address, IPv4Address]:
    """QEMU's range: .15 up to the address below the broadcast."""
    return subnet.network_address + FIRST_GUEST_HOST, subnet.broadcast_address - 1


def dhcp_range_problem(subnet: IPv4Network, start: IPv4Address,
                       end: IPv4Address) -> tuple[Literal["dhcp_start", "dhcp_end"], str] | None:
    """Which end of a DHCP range is wrong in ``subnet`` and why, or None.

    The range must hold host addresses of the subnet (not its network or broadcast address),
    leave out the gateway and DNS addresses, and run upwards.
    """
    reserved = {gateway_address(subnet): "the gateway's", dns_address(subnet): "the DNS server's"}
    ends: tuple[tuple[Literal["dhcp_start", "dhcp_end"], IPv4Address], ...] = (("dhcp_start", start), ("dhcp_end", end))
    for name, address in ends:
        if address not in subnet or address in (subnet.network_address, subnet.broadcast_address):
            return name, f"{address} is not a host address of the subnet {subnet}"
    if int(start) > int(end):
        return "dhcp_end", f"the range ends at {end}, before its start {start}"
    for address, whose in reserved.items():
        if start <= address <= end:  # both sit low in the subnet, so the start is what to move
            return "dhcp_start", f"the range {start}-{end} holds {whose} address {address}"
    return None
GUEST_MAC = "52:54:00:12:34:56"
GATEWAY_MAC = "52:55:0a:00:02:02"


@dataclass(frozen=True)
class PortForward:
    """Host ``host_addr:host_port`` relayed to the guest's ``guest_port`` (loopback by default).

    ``host_port`` 0 takes any free port (the VM reports which): the way to forward a port of
    every VM of a pool, since one fixed host port can belong to one VM only.
    """

    protocol: ForwardProtocol
    host_port: int
    guest_port: int
    host_addr: str = "127.0.0.1"

    def describe(self) -> str:
        return f"{self.protocol} {self.host_addr}:{self.host_port} -> guest:{self.guest_port}"


@dataclass(frozen=True)
class UserNatConfig:
    """Everything the gateway of one VM needs (immutable; ``set_policy`` swaps only the policy)."""

    subnet: IPv4Network = DEFAULT_SUBNET
    forwards: tuple[PortForward, ...] = ()
    hosts: tuple[tuple[str, IPv4Address], ...] = ()
    policy: NetworkPolicy = field(default_factory=NetworkPolicy.allow_all)
    dns_upstream: tuple[tuple[str, int], ...] | None = None  # None: the host's resolv.conf
    mtu: int = 1500
    guest_mac: str = GUEST_MAC
    # capsa's names. None: the default range of the subnet (.15 up to the last host).
    dhcp_start: IPv4Address | None = None
    dhcp_end: IPv4Address | None = None
    cluster: str | None = None  # the cluster network this VM joins (None: none, the default)

    @property
    def gateway(self) -> IPv4Address:
        return gateway_address(self.subnet)

    @property
    def dns(self) -> IPv4Address:
        return dns_address(self.subnet)

    @property
    def dhcp_range(self) -> tuple[IPv4Address, IPv4Address]:
        """The addresses the DHCP server leases from, first and last (both included)."""
        first, last = default_dhcp_range(self.subnet)
        return (self.dhcp_start if self.dhcp_start is not None else first,
                self.dhcp_end if self.dhcp_end is not None else last)

    def validate(self) -> None:
        problem = subnet_problem(self.subnet)
        if problem == "too small":
            raise ConfigError(f"subnet {self.subnet} is too small: use a /27 or larger (the guest starts at .15)")
        if problem == "not private":
            raise ConfigError(f"subnet {self.subnet} must be a private range (e.g. 10.0.2.0/24)")
        range_problem = dhcp_range_problem(self.subnet, *self.dhcp_range)
        if range_problem is not None:
            raise ConfigError(f"{range_problem[0]}: {range_problem[1]}")
        if self.cluster is not None and not CLUSTER_NAME_RE.match(self.cluster):
            raise ConfigError(f"cluster name {self.cluster!r} must be 1-63 letters, digits, '.', '_' or '-', "
                              "starting with a letter or digit")
        if not 576 <= self.mtu <= 65520:
            raise ConfigError(f"mtu must be between 576 and 65520, got {self.mtu}")
        seen: set[tuple[str, str, int]] = set()
        for fwd in self.forwards:
            if not 1 <= fwd.guest_port <= 65535:
                raise ConfigError(f"forward {fwd.describe()}: guest_port must be 1..65535, got {fwd.guest_port}")
            if not 0 <= fwd.host_port <= 65535:
                raise ConfigError(f"forward {fwd.describe()}: host_port must be 0 (any free port) to 65535")
            key = (fwd.protocol, fwd.host_addr, fwd.host_port)
            if fwd.host_port and key in seen:
                raise ConfigError(f"forward {fwd.describe()}: host port {fwd.host_port}/{fwd.protocol} is forwarded twice")
            seen.add(key)


@dataclass(frozen=True)
class NoNetwork:
    """No network card at all."""


NetworkConfig = NoNetwork | UserNatConfig


class UserNatBuilder:
    """Fluent builder of a :class:`UserNatConfig`."""

    def __init__(self) -> None:
        self._config = UserNatConfig()

    def _with(self, **changes: object) -> UserNatBuilder:
        self._config = replace(self._config, **changes)  # type: ignore[arg-type]  # keys are UserNatConfig fields; validate() checks values
        return self

    def subnet(self, cidr: str) -> UserNatBuilder:
        try:
            network = IPv4Network(cidr, strict=True)
        except ValueError as err:
            raise ConfigError(f"subnet {cidr!r} is not an IPv4 network in CIDR form: {err}") from None
        return self._with(subnet=network)

    def forward_tcp(self, host_port: int, guest_port: int, host_addr: str = "127.0.0.1") -> UserNatBuilder:
        return self._forward("tcp", host_port, guest_port, host_addr)

    def forward_udp(self, host_port: int, guest_port: int, host_addr: str = "127.0.0.1") -> UserNatBuilder:
        return self._forward("udp", host_port, guest_port, host_addr)

    def _forward(self, proto: ForwardProtocol, host_port: int, guest_port: int, host_addr: str) -> UserNatBuilder:
        _check_address(host_addr, "forward host address")
        fwd = PortForward(proto, int(host_port), int(guest_port), host_addr)
        return self._with(forwards=self._config.forwards + (fwd,))

    def host(self, name: str, ip: str) -> UserNatBuilder:
        """A static DNS entry the gateway serves (and a domain rule may open even on loopback)."""
        address = _check_address(ip, f"address of host {name!r}")
        canonical = name.strip().rstrip(".").lower()
        if not canonical or " " in canonical:
            raise ConfigError(f"host name {name!r} is empty or has spaces")
        return self._with(hosts=self._config.hosts + ((canonical, address),))

    def policy(self, policy: NetworkPolicy) -> UserNatBuilder:
        return self._with(policy=policy)

    def dns_upstream(self, *servers: str) -> UserNatBuilder:
        """Resolvers the gateway forwards to, as ``"ip"`` or ``"ip:port"`` (default: the host's)."""
        parsed = []
        for server in servers:
            host, _, port = server.partition(":")
            _check_address(host, "DNS upstream")
            parsed.append((host, int(port) if port else 53))
        return self._with(dns_upstream=tuple(parsed))

    def mtu(self, mtu: int) -> UserNatBuilder:
        return self._with(mtu=int(mtu))

    def dhcp_range(self, start: str | None, end: str | None) -> UserNatBuilder:
        """Lease guest addresses from ``start`` to ``end`` (None: that end of the default range)."""
        first = _check_address(start, "dhcp_start") if start is not None else None
        last = _check_address(end, "dhcp_end") if end is not None else None
        return self._with(dhcp_start=first, dhcp_end=last)

    def cluster(self, name: str | None) -> UserNatBuilder:
        """Join the cluster network ``name`` (None: none); its members must agree on the subnet."""
        return self._with(cluster=name)

    def build(self) -> UserNatConfig:
        self._config.validate()
        return self._config


class NetworkMode:
    """``NetworkMode.none()``, ``NetworkMode.user_nat()...build()`` or ``NetworkMode.cluster(name)...build()``."""

    @staticmethod
    def none() -> NoNetwork:
        return NoNetwork()

    @staticmethod
    def user_nat() -> UserNatBuilder:
        return UserNatBuilder()

    @staticmethod
    def cluster(name: str) -> UserNatBuilder:
        """User-mode NAT in cluster ``name``: the same builder as ``user_nat()``, cluster set."""
        return UserNatBuilder().cluster(name)


def forward_error(fwd: PortForward, err: OSError) -> ConfigError:
    """Why a forward's host socket could not be opened, in words a user can act on."""
    hint = " (another VM or program holds it; host_port 0 takes any free port)" if fwd.host_port else ""
    return ConfigError(f"cannot listen on {fwd.host_addr}:{fwd.host_port} for forward {fwd.describe()}: "
                       f"{err.strerror or err}{hint}")


def _check_address(text: str, what: str) -> IPv4Address:
    try:
        return IPv4Address(text)
    except ipaddress.AddressValueError:
        raise ConfigError(f"{what} {text!r} is not an IPv4 address") from None
