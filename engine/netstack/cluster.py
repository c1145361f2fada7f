"""Cluster networks: VMs that name the same cluster share one subnet behind one switch.

Each VM keeps its own gateway and its own link; a :class:`ClusterSwitch` joins the gateways of
one cluster. A member joins when its gateway starts and leaves when it closes; the switch
allocates each member a distinct address from the cluster's DHCP range (the member's DHCP server
grants exactly that one), and the switch is dropped with its last member. This module knows no
gateways, machines or sockets: a member is an address, a host name and two callbacks
(deliver a packet to its guest; the membership changed), so it is tested with frames alone.

The choices, for a demanding user:

- **Only members are reachable.** A packet is carried only from a member's own address to
  another member's address of the same switch. Other clusters and VMs in no cluster are other
  switches or none: there is no path to them at all (each gateway still drops the rest of its
  subnet, ``subnet_dropped``).
- **No spoofing.** A guest may send into the cluster only from the address the switch gave it;
  anything else is refused (``cluster_spoofed``), so no member can pose as another.
- **Intra-cluster traffic is the cluster's, not the policy's.** It is not NATed, not decided by
  the sender's or the receiver's policy (the gateways count it; each new TCP connection to a
  member, and each refused one, is one flow-log event of the sender, ``detail`` "cluster");
  everything else a member sends goes through its own gateway and policy as before. A policy
  cannot deny another member: put VMs that must not talk in different clusters.
- **Names.** Each member's host name resolves, in every member's DNS, to its cluster address,
  whatever the policy says of names (a member's name is no way out of the cluster). Members
  that share a host name share the name (a pool names each VM by its member id, so this is two
  VMs built with one explicit host name): it answers all of their
  addresses. A static host of a member's own config with the same name wins over the cluster's.
- **Agreement.** Every member must use the same subnet and DHCP range; a VM that names a
  cluster with another layout is refused with a ConfigError, as is one that finds it full.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

from engine.errors import ConfigError
from engine.netstack.dns import NameFilter, NameVerdict

Deliver = Callable[[bytes], None]     # one IPv4 packet (header included) for the member's guest
Changed = Callable[[], None]          # the membership changed: refresh proxy ARP and names


@dataclass(eq=False)
class ClusterPort:
    """One member's place on a switch: its address, and the way packets leave and reach it."""

    switch: ClusterSwitch
    address: IPv4Address
    hostname: str | None
    deliver: Deliver
    changed: Changed
    counters: dict[str, int] = field(default_factory=dict)
    joined: bool = True

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def peers(self) -> frozenset[IPv4Address]:
        """The other members' addresses: the gateway answers ARP for them (proxy ARP)."""
        return frozenset(a for a in self.switch.members if a != self.address) if self.joined else frozenset()

    def names(self) -> dict[str, list[IPv4Address]]:
        """Every member's host name and its addresses (several members may share a name)."""
        return self.switch.names() if self.joined else {}

    def carries(self, dst: IPv4Address) -> bool:
        """Whether ``dst`` is another member's address (the gateway hands such packets here)."""
        return self.joined and dst != self.address and dst in self.switch.members

    def send(self, src: IPv4Address, dst: IPv4Address, packet: bytes) -> bool:
        """Carry ``packet`` (from ``src`` to ``dst``) to the member at ``dst``; False: refused."""
        if not self.joined:
            self._count("cluster_left")
            return False
        if src != self.address:
            self._count("cluster_spoofed")
            return False
        target = self.switch.members.get(dst)
        if target is None or target is self:
            self._count("cluster_no_member")
            return False
        self._count("cluster_out")
        target._count("cluster_in")
        target.deliver(packet)
        return True

    def leave(self) -> None:
        """Leave the switch (idempotent); the last member to leave drops the switch."""
        if self.joined:
            self.joined = False
            self.switch.remove(self)


class ClusterSwitch:
    """The members of one named cluster, by address; allocates their addresses."""

    def __init__(self, registry: ClusterRegistry, name: str, subnet: IPv4Network,
                 dhcp_range: tuple[IPv4Address, IPv4Address]) -> None:
        self.registry = registry
        self.name = name
        self.subnet = subnet
        self.dhcp_range = dhcp_range
        self.members: dict[IPv4Address, ClusterPort] = {}

    def _free_address(self) -> IPv4Address:
        first, last = self.dhcp_range
        for number in range(int(first), int(last) + 1):
            address = IPv4Address(number)
            if address not in self.members:
                return address
        raise ConfigError(f"cluster {self.name!r} is full: all {int(last) - int(first) + 1} addresses "
                          f"of its range {first}-{last} are taken (widen the subnet or the DHCP range)")

    def add(self, hostname: str | None, deliver: Deliver, changed: Changed) -> ClusterPort:
        port = ClusterPort(self, self._free_address(), hostname, deliver, changed)
        self.members[port.address] = port
        self._announce()
        return port

    def remove(self, port: ClusterPort) -> None:
        if self.members.get(port.address) is port:
            del self.members[port.address]
        if not self.members:
            self.registry.drop(self)
        self._announce()

    def names(self) -> dict[str, list[IPv4Address]]:
        table: dict[str, list[IPv4Address]] = {}
        for address, port in sorted(self.members.items()):
            if port.hostname:
                table.setdefault(port.hostname.lower(), []).append(address)
        return table

    def _announce(self) -> None:
        for port in list(self.members.values()):
            port.changed()


class ClusterRegistry:
    """The cluster switches of a process, by name (``CLUSTERS`` is the one gateways use)."""

    def __init__(self) -> None:
        self.switches: dict[str, ClusterSwitch] = {}

    def join(self, name: str, subnet: IPv4Network, dhcp_range: tuple[IPv4Address, IPv4Address], *,
             hostname: str | None, deliver: Deliver, changed: Changed) -> ClusterPort:
        """Join (or found) cluster ``name``; ConfigError if it has another layout or is full."""
        switch = self.switches.get(name)
        if switch is None:
            switch = self.switches[name] = ClusterSwitch(self, name, subnet, dhcp_range)
        elif switch.subnet != subnet or switch.dhcp_range != dhcp_range:
            first, last = switch.dhcp_range
            raise ConfigError(
                f"cluster {name!r}: every member must use the same subnet and DHCP range; its members use "
                f"{switch.subnet} ({first}-{last}), this VM {subnet} ({dhcp_range[0]}-{dhcp_range[1]})")
        return switch.add(hostname, deliver, changed)

    def drop(self, switch: ClusterSwitch) -> None:
        if self.switches.get(switch.name) is switch:
            del self.switches[switch.name]

    def members(self, name: str) -> dict[IPv4Address, str | None]:
        """Cluster ``name``'s members now: address -> host name (empty when it has none)."""
        switch = self.switches.get(name)
        return {a: p.hostname for a, p in sorted(switch.members.items())} if switch is not None else {}


CLUSTERS = ClusterRegistry()


class MemberNames:
    """A DNS name filter: the cluster's member names pass, every other name asks ``inner``.

    ``names`` is live: the gateway replaces it when members join or leave.
    """

    def __init__(self, inner: NameFilter, cluster: str) -> None:
        self.inner = inner
        self.reason = f"cluster {cluster} member"
        self.names: frozenset[str] = frozenset()

    def __call__(self, name: str) -> NameVerdict | bool:
        if name.rstrip(".").lower() in self.names:
            return NameVerdict(True, self.reason)
        return self.inner(name)
