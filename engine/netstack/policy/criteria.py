"""Match criteria of network policy rules (capsa's ``MatchCriteria``) and their plain-data form.

Build criteria with the constructors on :class:`MatchCriteria` (``MatchCriteria.port(443)``);
each returns an immutable, hashable value of one of the subclasses below. A criterion answers
three questions for :mod:`engine.netstack.policy.policy`: does it match a flow, does it match a DNS
question name, and does it *name* an off-limits destination (see the policy module docstring).

Plain data (for YAML) is one key per criterion: ``any: true``, ``ip: 8.8.8.8``,
``ip_range: 10.0.0.0/8``, ``port: 443``, ``port_range: 8000-8100``, ``protocol: tcp``,
``domain: "*.github.com"``, ``all: [{...}, {...}]``; several keys in one mapping mean AND.
"""
from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, NetmaskValueError
from typing import cast

from engine.netstack.domains import DomainPattern, PolicyError
from engine.netstack.policy.flow import Flow, Protocol

Path = tuple[str | int, ...]
KEYS = ("any", "ip", "ip_range", "port", "port_range", "protocol", "domain", "all")


class MatchCriteria:
    """Base of every criterion; its static methods are the constructors."""

    __slots__ = ()

    @staticmethod
    def any() -> AnyMatch:
        return AnyMatch()

    @staticmethod
    def ip(address: IPv4Address | str) -> IpMatch:
        return IpMatch(_parse_ip(address, ("ip",)))

    @staticmethod
    def ip_range(network: str | IPv4Network, prefix: int | None = None) -> IpRangeMatch:
        """``ip_range("10.0.0.0", 8)`` or ``ip_range("10.0.0.0/8")``; host bits must be zero."""
        text = str(network) if prefix is None else f"{network}/{prefix}"
        return IpRangeMatch(_parse_network(text, ("ip_range",)))

    @staticmethod
    def port(port: int) -> PortMatch:
        return PortMatch(_parse_port(port, ("port",)))

    @staticmethod
    def port_range(start: int, end: int) -> PortRangeMatch:
        return PortRangeMatch(_parse_port(start, ("port_range",)), _parse_port(end, ("port_range",)))

    @staticmethod
    def protocol(protocol: Protocol | str) -> ProtocolMatch:
        return ProtocolMatch(_parse_protocol(protocol, ("protocol",)))

    @staticmethod
    def domain(pattern: str | DomainPattern) -> DomainMatch:
        """Exact ``"api.example.com"`` or wildcard ``"*.github.com"`` (subdomains, not the apex)."""
        return DomainMatch(pattern if isinstance(pattern, DomainPattern) else DomainPattern.parse(pattern))

    @staticmethod
    def all(*criteria: MatchCriteria) -> AllMatch:
        """Matches when every one of ``criteria`` matches (AND)."""
        return AllMatch(tuple(criteria))

    # What the policy asks; the subclasses override.
    def matches(self, flow: Flow, strict: bool) -> bool:
        """Whether ``flow`` matches; ``strict``: the rule allows (domain evidence must all agree)."""
        raise NotImplementedError

    def matches_service(self, protocol: Protocol, port: int) -> bool:
        """For DNS questions: whether this matches the gateway's DNS service on ``protocol``/``port``
        (destination-address criteria never do)."""
        return False

    def has_domain(self) -> bool:
        return False

    def name_match(self, name: str, deny: bool) -> bool:
        """For a DNS question: could traffic to ``name`` match (allow/log), or does all of it (deny)?"""
        return not deny  # a transport criterion matches some traffic to a name, never all of it

    def names_address(self, flow: Flow, blocks: list[IPv4Network]) -> bool:
        """Whether this criterion names ``flow.dst_ip`` explicitly (may open an off-limits address)."""
        return False

    def describe(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class AnyMatch(MatchCriteria):
    """All traffic."""

    def matches(self, flow: Flow, strict: bool) -> bool:
        return True

    def matches_service(self, protocol: Protocol, port: int) -> bool:
        return True

    def name_match(self, name: str, deny: bool) -> bool:
        return True

    def describe(self) -> str:
        return "any"


@dataclass(frozen=True, slots=True)
class IpMatch(MatchCriteria):
    """One destination address."""

    address: IPv4Address

    def matches(self, flow: Flow, strict: bool) -> bool:
        return flow.dst_ip == self.address

    def names_address(self, flow: Flow, blocks: list[IPv4Network]) -> bool:
        return flow.dst_ip == self.address

    def describe(self) -> str:
        return f"ip {self.address}"


@dataclass(frozen=True, slots=True)
class IpRangeMatch(MatchCriteria):
    """Destinations in a CIDR block."""

    network: IPv4Network

    def matches(self, flow: Flow, strict: bool) -> bool:
        return flow.dst_ip in self.network

    def names_address(self, flow: Flow, blocks: list[IPv4Network]) -> bool:
        # 10.0.0.0/8 names 10.1.2.3, but 0.0.0.0/0 or 8.0.0.0/5 does not name loopback or 10/8:
        # the range must be no wider than every off-limits block that holds the address.
        return flow.dst_ip in self.network and all(self.network.subnet_of(b) for b in blocks)

    def describe(self) -> str:
        return f"ip range {self.network}"


@dataclass(frozen=True, slots=True)
class PortMatch(MatchCriteria):
    """One destination port (TCP or UDP)."""

    # The field shares its name with the MatchCriteria.port constructor (capsa's API has both).
    port: int  # type: ignore[assignment]  # a field shadowing the base's constructor on purpose

    def matches(self, flow: Flow, strict: bool) -> bool:
        return flow.protocol is not Protocol.ICMP and flow.dst_port == self.port

    def matches_service(self, protocol: Protocol, port: int) -> bool:
        return protocol is not Protocol.ICMP and port == self.port

    def describe(self) -> str:
        return f"port {self.port}"


@dataclass(frozen=True, slots=True)
class PortRangeMatch(MatchCriteria):
    """Destination ports ``start``..``end`` inclusive."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if self.start > self.end:
            raise PolicyError(f"port range {self.start}-{self.end} starts after it ends", ("port_range",))

    def matches(self, flow: Flow, strict: bool) -> bool:
        return flow.protocol is not Protocol.ICMP and self.start <= flow.dst_port <= self.end

    def matches_service(self, protocol: Protocol, port: int) -> bool:
        return protocol is not Protocol.ICMP and self.start <= port <= self.end

    def describe(self) -> str:
        return f"ports {self.start}-{self.end}"


@dataclass(frozen=True, slots=True)
class ProtocolMatch(MatchCriteria):
    """One transport protocol."""

    protocol: Protocol  # type: ignore[assignment]  # a field shadowing the base's constructor on purpose

    def matches(self, flow: Flow, strict: bool) -> bool:
        return flow.protocol is self.protocol

    def matches_service(self, protocol: Protocol, port: int) -> bool:
        return protocol is self.protocol

    def describe(self) -> str:
        return f"protocol {self.protocol.value}"


@dataclass(frozen=True, slots=True)
class DomainMatch(MatchCriteria):
    """A destination known by a name matching ``pattern`` (see the policy module for evidence)."""

    pattern: DomainPattern

    def matches(self, flow: Flow, strict: bool) -> bool:
        if strict:
            if flow.sni_or_host is not None and not self.pattern.matches(flow.sni_or_host):
                return False
            return any(self.pattern.matches(d) for d in flow.domains)
        names = flow.domains if flow.sni_or_host is None else flow.domains | {flow.sni_or_host}
        return any(self.pattern.matches(n, plain_only=False) for n in names)

    def has_domain(self) -> bool:
        return True

    def name_match(self, name: str, deny: bool) -> bool:
        return self.pattern.matches(name, plain_only=not deny)

    def names_address(self, flow: Flow, blocks: list[IPv4Network]) -> bool:
        # Only the profile's own static host table may point a name at an off-limits address;
        # a public DNS answer doing so (rebinding) must not open it.
        return flow.static_host

    def describe(self) -> str:
        return f"domain {self.pattern}"


@dataclass(frozen=True, slots=True)
class AllMatch(MatchCriteria):
    """Every one of ``criteria`` (AND)."""

    criteria: tuple[MatchCriteria, ...]

    def __post_init__(self) -> None:
        if not self.criteria:
            raise PolicyError("'all' needs at least one criterion", ("all",))
        for i, c in enumerate(self.criteria):
            if not isinstance(c, MatchCriteria):
                raise PolicyError(f"expected a MatchCriteria, found {c!r}", ("all", i))

    def matches(self, flow: Flow, strict: bool) -> bool:
        return all(c.matches(flow, strict) for c in self.criteria)

    def matches_service(self, protocol: Protocol, port: int) -> bool:
        return all(c.matches_service(protocol, port) for c in self.criteria)

    def has_domain(self) -> bool:
        return any(c.has_domain() for c in self.criteria)

    def name_match(self, name: str, deny: bool) -> bool:
        return all(c.name_match(name, deny) for c in self.criteria)

    def names_address(self, flow: Flow, blocks: list[IPv4Network]) -> bool:
        return any(c.names_address(flow, blocks) for c in self.criteria)

    def describe(self) -> str:
        return " and ".join(f"({c.describe()})" if isinstance(c, AllMatch) else c.describe() for c in self.criteria)


# -- plain data ------------------------------------------------------------------------------
def criteria_to_data(criteria: MatchCriteria, flat: bool = False) -> dict[str, object]:
    """One-key mapping; with ``flat``, an AND of two or more distinct simple criteria becomes
    several keys of one mapping (``{protocol: tcp, port: 443}``), as a user would write it."""
    if isinstance(criteria, AllMatch):
        keys = [_key(c) for c in criteria.criteria]
        if flat and len(keys) >= 2 and "all" not in keys and len(set(keys)) == len(keys):
            out: dict[str, object] = {}
            for c in criteria.criteria:
                out.update(criteria_to_data(c))
            return out
        return {"all": [criteria_to_data(c, flat=True) for c in criteria.criteria]}
    if isinstance(criteria, AnyMatch):
        return {"any": True}
    if isinstance(criteria, IpMatch):
        return {"ip": str(criteria.address)}
    if isinstance(criteria, IpRangeMatch):
        return {"ip_range": str(criteria.network)}
    if isinstance(criteria, PortMatch):
        return {"port": criteria.port}
    if isinstance(criteria, PortRangeMatch):
        return {"port_range": f"{criteria.start}-{criteria.end}"}
    if isinstance(criteria, ProtocolMatch):
        return {"protocol": criteria.protocol.value}
    if isinstance(criteria, DomainMatch):
        return {"domain": str(criteria.pattern)}
    raise PolicyError(f"cannot write criterion {criteria!r}")


def _key(criteria: MatchCriteria) -> str:
    return next(iter(criteria_to_data(criteria)))


def criteria_from_data(data: Mapping[object, object], path: Path) -> MatchCriteria:
    """A criterion from a mapping of criterion keys (several keys: AND, in the mapping's order)."""
    parts: list[MatchCriteria] = []
    for key, value in data.items():
        here = (*path, str(key))
        if key not in KEYS:
            close = difflib.get_close_matches(str(key), KEYS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f" (criteria: {', '.join(KEYS)})"
            raise PolicyError(f"unknown criterion {key!r}{hint}", here)
        parts.append(_one_from_data(str(key), value, here))
    if not parts:
        raise PolicyError("empty criteria mapping (write 'any: true' to match all traffic)", path)
    return parts[0] if len(parts) == 1 else AllMatch(tuple(parts))


def _one_from_data(key: str, value: object, path: Path) -> MatchCriteria:
    if key == "any":
        if value is not True:
            raise PolicyError(f"write 'any: true' (found {value!r})", path)
        return AnyMatch()
    if key == "ip":
        return IpMatch(_parse_ip(value, path))
    if key == "ip_range":
        return IpRangeMatch(_parse_network(value, path))
    if key == "port":
        return PortMatch(_parse_port(value, path))
    if key == "port_range":
        return _parse_port_range(value, path)
    if key == "protocol":
        return ProtocolMatch(_parse_protocol(value, path))
    if key == "domain":
        return DomainMatch(DomainPattern.parse(value, path))  # type: ignore[arg-type]  # parse checks it is a string
    # key == "all"
    if isinstance(value, (str, bytes)) or hasattr(value, "items") or not isinstance(value, (list, tuple)):
        raise PolicyError(f"'all' takes a list of criteria mappings, found {value!r}", path)
    if not value:
        raise PolicyError("'all' needs at least one criterion", path)
    subs = []
    for i, item in enumerate(value):
        if not hasattr(item, "items"):
            raise PolicyError(f"expected a criteria mapping such as {{port: 443}}, found {item!r}", (*path, i))
        subs.append(criteria_from_data(item, (*path, i)))
    return AllMatch(tuple(subs))


def _parse_ip(value: object, path: Path) -> IPv4Address:
    if isinstance(value, IPv4Address):
        return value
    if isinstance(value, str):
        try:
            return IPv4Address(value.strip())
        except ValueError:
            pass
    raise PolicyError(f"expected an IPv4 address such as 8.8.8.8, found {value!r}", path)


def _parse_network(value: object, path: Path) -> IPv4Network:
    if isinstance(value, IPv4Network):
        return value
    if not isinstance(value, str) or "/" not in value:
        raise PolicyError(f"expected a CIDR block such as 10.0.0.0/8, found {value!r}", path)
    try:
        return IPv4Network(value.strip())
    except (ValueError, NetmaskValueError) as err:
        try:
            wide = IPv4Network(value.strip(), strict=False)
        except ValueError:
            raise PolicyError(f"expected a CIDR block such as 10.0.0.0/8, found {value!r} ({err})", path) from None
        raise PolicyError(f"{value!r} has host bits set; did you mean {wide}?", path) from None


def _parse_port(value: object, path: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise PolicyError(f"expected a port number 1-65535, found {value!r}", path)
    return value


def _parse_port_range(value: object, path: Path) -> PortRangeMatch:
    """``"8000-8100"``, ``[8000, 8100]`` or ``{start: 8000, end: 8100}``."""
    start: object
    end: object
    if isinstance(value, str) and value.count("-") == 1:
        a, b = (part.strip() for part in value.split("-"))
        start, end = (int(a) if a.isdigit() else a), (int(b) if b.isdigit() else b)
    elif isinstance(value, (list, tuple)) and len(value) == 2:
        start, end = value
    elif hasattr(value, "items") and set(cast("Mapping[object, object]", value)) == {"start", "end"}:
        mapping = cast("Mapping[object, object]", value)  # it has items(): a mapping from YAML
        start, end = mapping["start"], mapping["end"]
    else:
        raise PolicyError(f"expected a port range such as 8000-8100, found {value!r}", path)
    first, last = _parse_port(start, path), _parse_port(end, path)
    if first > last:
        raise PolicyError(f"port range {first}-{last} starts after it ends", path)
    return PortRangeMatch(first, last)


def _parse_protocol(value: object, path: Path) -> Protocol:
    if isinstance(value, Protocol):
        return value
    text = value.strip().lower() if isinstance(value, str) else None
    if text not in ("tcp", "udp", "icmp"):
        raise PolicyError(f"expected tcp, udp or icmp, found {value!r}", path)
    return Protocol(text)


# -- what one criterion says of another (the policy's lint) ------------------------------------


def covers(a: MatchCriteria, b: MatchCriteria) -> bool:
    """Whether every flow that ``b`` matches is matched by ``a`` too. False when not certain:
    a lint warning built on it is then never wrong, only sometimes missing."""
    if isinstance(a, AnyMatch) or a == b:
        return True
    if isinstance(a, AllMatch):
        return all(covers(part, b) for part in a.criteria)
    if isinstance(b, AllMatch):
        return any(covers(a, part) for part in b.criteria)
    if isinstance(a, IpRangeMatch):
        if isinstance(b, IpMatch):
            return b.address in a.network
        if isinstance(b, IpRangeMatch):
            return b.network.subnet_of(a.network)
    if isinstance(a, PortRangeMatch):
        if isinstance(b, PortMatch):
            return a.start <= b.port <= a.end
        if isinstance(b, PortRangeMatch):
            return a.start <= b.start and b.end <= a.end
    if isinstance(a, PortMatch) and isinstance(b, PortRangeMatch):
        return b.start == b.end == a.port
    if isinstance(a, DomainMatch) and isinstance(b, DomainMatch) and a.pattern.kind == "wildcard":
        # *.x matches every name below x, so every exact name or wildcard below x is inside it.
        return b.pattern.name.endswith("." + a.pattern.name) or (
            b.pattern.kind == "wildcard" and b.pattern.name == a.pattern.name)
    return False


def names_destinations(criteria: MatchCriteria) -> bool:
    """Whether ``criteria`` name addresses or names (what an off-limits destination needs)."""
    if isinstance(criteria, (IpMatch, IpRangeMatch, DomainMatch)):
        return True
    return isinstance(criteria, AllMatch) and any(names_destinations(part) for part in criteria.criteria)


def domain_patterns(criteria: MatchCriteria) -> list[DomainPattern]:
    """The domain patterns ``criteria`` require (every one of them, for an ``all``)."""
    if isinstance(criteria, DomainMatch):
        return [criteria.pattern]
    if isinstance(criteria, AllMatch):
        return [pattern for part in criteria.criteria for pattern in domain_patterns(part)]
    return []
