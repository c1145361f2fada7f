"""Network modes of a VM: none, or user-mode NAT through our gateway (plain data + builder).

    net = (NetworkMode.user_nat().subnet("10.0.2.0/24")
           .forward_tcp(8080, 80).forward_udp(5353, 53)
           .host("api.example.test", "127.0.0.1")
           .policy(NetworkPolicy.deny_all().allow_dns().allow_https())
           .build())

Addresses follow QEMU's user networking (gateway .2, DNS .3, DHCP from .15) so guides written
for QEMU apply. Without ``policy()``, the guest may reach any public address, but never the
host's loopback, link-local, private ranges or other VMs (see ``engine.netstack.policy``).
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Network
from typing import Literal

from engine.errors import ConfigError
from engine.netstack.policy import NetworkPolicy

ForwardProtocol = Literal["tcp", "udp"]
DEFAULT_SUBNET = IPv4Network("10.0.2.0/24")
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

    @property
    def gateway(self) -> IPv4Address:
        return self.subnet.network_address + 2

    @property
    def dns(self) -> IPv4Address:
        return self.subnet.network_address + 3

    @property
    def dhcp_start(self) -> IPv4Address:
        return self.subnet.network_address + 15

    @property
    def dhcp_end(self) -> IPv4Address:
        return self.subnet.broadcast_address - 1

    def validate(self) -> None:
        if self.subnet.prefixlen > 27:
            raise ConfigError(f"subnet {self.subnet} is too small: use a /27 or larger (the guest starts at .15)")
        if not self.subnet.is_private:
            raise ConfigError(f"subnet {self.subnet} must be a private range (e.g. 10.0.2.0/24)")
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

    def build(self) -> UserNatConfig:
        self._config.validate()
        return self._config


class NetworkMode:
    """``NetworkMode.none()`` or ``NetworkMode.user_nat()...build()``."""

    @staticmethod
    def none() -> NoNetwork:
        return NoNetwork()

    @staticmethod
    def user_nat() -> UserNatBuilder:
        return UserNatBuilder()


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
