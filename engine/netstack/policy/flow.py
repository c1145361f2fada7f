"""What the policy decides on: a flow's transport :class:`Protocol` and the :class:`Flow` itself.

Its own module because both the policy and its match criteria speak of flows; with the flow
here neither has to import the other.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from ipaddress import IPv4Address

from engine.netstack.domains import canonical_name


class Protocol(Enum):
    """Transport of a flow. ICMP is only for the gateway's own decisions (no ports)."""

    TCP = "tcp"
    UDP = "udp"
    ICMP = "icmp"


@dataclass(frozen=True, slots=True)
class Flow:
    """What the gateway knows about a new flow when it asks the policy.

    ``domains``: names the gateway's DNS answers mapped to ``dst_ip`` (not expired).
    ``sni_or_host``: the TLS SNI or HTTP Host the guest sent; None when none was sent or the
    gateway did not look (or, with ``require_names`` off, the stream presented none); ``""`` when
    it looked and could not parse what it read, or the stream presented no name under
    ``require_names`` (either way it allows nothing by domain). ``static_host``: ``dst_ip`` comes from a static host entry of the
    profile whose name is in ``domains``. ``dst_port`` is 0 for ICMP (port criteria never match
    it). Strings are accepted for addresses; names are canonicalised.
    """

    protocol: Protocol
    dst_ip: IPv4Address
    dst_port: int = 0
    src_ip: IPv4Address = IPv4Address(0)
    src_port: int = 0
    domains: frozenset[str] = frozenset()
    sni_or_host: str | None = None
    static_host: bool = False

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise once here so matching stays cheap
        if not isinstance(self.protocol, Protocol):
            set_(self, "protocol", Protocol(self.protocol))
        if not isinstance(self.dst_ip, IPv4Address):
            set_(self, "dst_ip", IPv4Address(self.dst_ip))
        if not isinstance(self.src_ip, IPv4Address):
            set_(self, "src_ip", IPv4Address(self.src_ip))
        set_(self, "domains", frozenset(canonical_name(d) for d in self.domains))
        if self.sni_or_host is not None:
            set_(self, "sni_or_host", canonical_name(self.sni_or_host))
