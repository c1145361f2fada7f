"""DHCP server core of the userspace NAT gateway (RFC 2131/2132), sans-IO.

The adapter hands :meth:`DhcpServer.handle` the UDP payload of every datagram a guest sends to
port 67 and, for each :class:`DhcpReply`, builds the UDP (67 -> 68), IPv4 and Ethernet headers
from the reply's addresses. Leases are sticky per client MAC (``chaddr``): a client that comes
back gets its old address while nobody else holds it, and expired leases are reused once the
never-used addresses of the range run out.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

from engine.errors import ConfigError
from engine.netstack.config import default_dhcp_range, dns_address, gateway_address
from engine.netstack.errors import PacketError

# Message types (option 53).
DHCPDISCOVER, DHCPOFFER, DHCPREQUEST, DHCPDECLINE = 1, 2, 3, 4
DHCPACK, DHCPNAK, DHCPRELEASE, DHCPINFORM = 5, 6, 7, 8

# Options we read or write.
OPT_PAD, OPT_END = 0, 255
OPT_SUBNET_MASK, OPT_ROUTER, OPT_DNS, OPT_HOSTNAME, OPT_DOMAIN = 1, 3, 6, 12, 15
OPT_MTU, OPT_BROADCAST = 26, 28
OPT_REQUESTED_IP, OPT_LEASE_TIME, OPT_MSG_TYPE, OPT_SERVER_ID = 50, 51, 53, 54
OPT_PARAM_LIST, OPT_MESSAGE, OPT_T1, OPT_T2 = 55, 56, 58, 59

MAGIC_COOKIE = b"\x63\x82\x53\x63"
BOOTP_FIXED_LEN = 236          # op .. file, before the magic cookie
MIN_REPLY_LEN = 300            # old BOOTP relays and clients expect at least this much
BROADCAST_FLAG = 0x8000
BROADCAST_IP = IPv4Address("255.255.255.255")
BROADCAST_MAC = b"\xff" * 6
ZERO_IP = IPv4Address(0)

_FIXED = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")


@dataclass(frozen=True)
class DhcpMessage:
    """A parsed BOOTP/DHCP message; ``options`` maps each option code to its (joined) value."""

    op: int
    htype: int
    hlen: int
    hops: int
    xid: int
    secs: int
    flags: int
    ciaddr: IPv4Address
    yiaddr: IPv4Address
    siaddr: IPv4Address
    giaddr: IPv4Address
    chaddr: bytes                     # the 6-byte hardware address (hlen bytes of the field)
    chaddr_field: bytes               # the raw 16-byte field, echoed back in replies
    options: dict[int, bytes] = field(default_factory=dict)

    @property
    def message_type(self) -> int | None:
        """The DHCP message type (option 53), or None for plain BOOTP."""
        value = self.options.get(OPT_MSG_TYPE)
        return value[0] if value and len(value) == 1 else None

    def ip_option(self, code: int) -> IPv4Address | None:
        """An option holding one IPv4 address, or None when absent or the wrong size."""
        value = self.options.get(code)
        return IPv4Address(value) if value is not None and len(value) == 4 else None


def parse_dhcp(data: bytes) -> DhcpMessage:
    """Parse a BOOTP/DHCP message; raise PacketError naming the bad field."""
    if len(data) < BOOTP_FIXED_LEN + len(MAGIC_COOKIE):
        raise PacketError(f"dhcp: message of {len(data)} bytes is shorter than the fixed header")
    (op, htype, hlen, hops, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr,
     chaddr, _sname, _file) = _FIXED.unpack_from(data)
    if data[BOOTP_FIXED_LEN:BOOTP_FIXED_LEN + 4] != MAGIC_COOKIE:
        raise PacketError("dhcp: bad magic cookie")
    if hlen > 16:
        raise PacketError(f"dhcp: hlen {hlen} exceeds the 16-byte chaddr field")
    options: dict[int, bytes] = {}
    pos = BOOTP_FIXED_LEN + 4
    while pos < len(data):
        code = data[pos]
        if code == OPT_END:
            break
        if code == OPT_PAD:
            pos += 1
            continue
        if pos + 2 > len(data):
            raise PacketError(f"dhcp: option {code} has no length byte")
        length = data[pos + 1]
        if pos + 2 + length > len(data):
            raise PacketError(f"dhcp: option {code} of length {length} runs past the end")
        # RFC 3396: a repeated option continues the previous one.
        options[code] = options.get(code, b"") + data[pos + 2:pos + 2 + length]
        pos += 2 + length
    return DhcpMessage(op, htype, hlen, hops, xid, secs, flags, IPv4Address(ciaddr),
                       IPv4Address(yiaddr), IPv4Address(siaddr), IPv4Address(giaddr),
                       chaddr[:hlen], chaddr, options)


def _encode_options(options: list[tuple[int, bytes]]) -> bytes:
    """Encode options, splitting values longer than 255 bytes (RFC 3396)."""
    out = bytearray()
    for code, value in options:
        chunks = [value[i:i + 255] for i in range(0, len(value), 255)] or [b""]
        for chunk in chunks:
            out += bytes((code, len(chunk))) + chunk
    out.append(OPT_END)
    return bytes(out)


def build_dhcp_reply(request: DhcpMessage, yiaddr: IPv4Address, ciaddr: IPv4Address,
                     options: list[tuple[int, bytes]]) -> bytes:
    """Build a BOOTREPLY answering ``request`` (xid, flags, giaddr and chaddr echoed)."""
    fixed = _FIXED.pack(2, request.htype, request.hlen, 0, request.xid, 0, request.flags,
                        ciaddr.packed, yiaddr.packed, ZERO_IP.packed, request.giaddr.packed,
                        request.chaddr_field, b"", b"")
    payload = fixed + MAGIC_COOKIE + _encode_options(options)
    return payload.ljust(MIN_REPLY_LEN, b"\x00")


@dataclass(frozen=True)
class DhcpConfig:
    """What the server hands out: the subnet, router, resolvers and the address range."""

    subnet: IPv4Network
    gateway: IPv4Address
    dns: tuple[IPv4Address, ...]
    range_start: IPv4Address
    range_end: IPv4Address
    lease_seconds: int = 3600
    mtu: int = 1500
    domain: str | None = None
    hostname: str | None = None
    server_id: IPv4Address | None = None      # defaults to the gateway address
    offer_hold_seconds: float = 60.0           # how long an OFFER reserves its address

    def __post_init__(self) -> None:
        if isinstance(self.dns, IPv4Address):      # one resolver given bare: accept it
            object.__setattr__(self, "dns", (self.dns,))
        else:
            object.__setattr__(self, "dns", tuple(self.dns))
        if self.server_id is None:
            object.__setattr__(self, "server_id", self.gateway)
        if self.gateway not in self.subnet:
            raise ConfigError(f"dhcp: gateway {self.gateway} is not in subnet {self.subnet}")
        if self.range_start not in self.subnet or self.range_end not in self.subnet:
            raise ConfigError(f"dhcp: range {self.range_start}-{self.range_end} is not inside "
                              f"subnet {self.subnet}")
        if int(self.range_start) > int(self.range_end):
            raise ConfigError(f"dhcp: range start {self.range_start} is after its end "
                              f"{self.range_end}")
        if not 60 <= self.lease_seconds <= 0xFFFFFFFE:
            raise ConfigError(f"dhcp: lease_seconds {self.lease_seconds} must be 60..2^32-2")
        if not 576 <= self.mtu <= 65535:
            raise ConfigError(f"dhcp: mtu {self.mtu} must be 576..65535")
        for label, text in (("domain", self.domain), ("hostname", self.hostname)):
            if text is not None and (not text or len(text) > 255 or not text.isascii()):
                raise ConfigError(f"dhcp: {label} {text!r} must be 1..255 ASCII characters")

    @property
    def server_ip(self) -> IPv4Address:
        """The server identifier sent to clients: ``server_id``, else the gateway."""
        return self.server_id if self.server_id is not None else self.gateway

    @classmethod
    def for_subnet(cls, subnet: IPv4Network | str = "10.0.2.0/24", **kwargs: object) -> DhcpConfig:
        """The conventional layout (:mod:`engine.netstack.config`): gateway .2, DNS .3, range .15
        up to the last host."""
        net = IPv4Network(subnet)
        first, last = default_dhcp_range(net)
        defaults: dict[str, object] = {
            "gateway": gateway_address(net), "dns": (dns_address(net),), "range_start": first, "range_end": last,
        }
        defaults.update(kwargs)
        return cls(subnet=net, **defaults)  # type: ignore[arg-type]  # keys are this class's fields; __post_init__ checks values


@dataclass(frozen=True)
class DhcpReply:
    """A reply to send from ``src_ip``:67 to ``dst_ip``:68 in an Ethernet frame to ``dst_mac``."""

    payload: bytes
    dst_ip: IPv4Address
    dst_mac: bytes
    src_ip: IPv4Address
    message_type: int


@dataclass
class Lease:
    """One address of the range: who holds it (None when declined) and until when."""

    ip: IPv4Address
    mac: bytes | None
    expires: float
    bound: bool          # False while only offered (or declined)


class DhcpServer:
    """The gateway's DHCP server: one lease table, one ``handle`` call per client message."""

    def __init__(self, config: DhcpConfig) -> None:
        self.config = config
        self.counters: dict[str, int] = {}
        self._leases: dict[IPv4Address, Lease] = {}     # every address ever handed out
        self._by_mac: dict[bytes, IPv4Address] = {}      # sticky: last address of each MAC
        self._reserved = {config.gateway, config.server_id, *config.dns,
                          config.subnet.network_address, config.subnet.broadcast_address}
        self._next_fresh = int(config.range_start)   # below it every address was handed out

    # -- public -------------------------------------------------------------------------
    def handle(self, payload: bytes, now: float) -> DhcpReply | None:
        """Answer one client message (UDP payload, port 68 -> 67); None when nothing is sent."""
        try:
            return self._handle(payload, now)
        except Exception:   # noqa: BLE001 - a safety net: bad input must never kill the gateway
            self._count("internal_error")
            return None

    def _handle(self, payload: bytes, now: float) -> DhcpReply | None:
        try:
            msg = parse_dhcp(payload)
        except PacketError:
            self._count("malformed")
            return None
        if msg.op != 1:
            self._count("not_request")
            return None
        if msg.htype != 1 or msg.hlen != 6 or msg.chaddr[0] & 1 or msg.chaddr == bytes(6):
            self._count("bad_hardware")
            return None
        if msg.giaddr != ZERO_IP:
            # Relayed messages cannot reach a point-to-point gateway; never answer them.
            self._count("relayed")
            return None
        handler = {DHCPDISCOVER: self._discover, DHCPREQUEST: self._request,
                   DHCPDECLINE: self._decline, DHCPRELEASE: self._release,
                   DHCPINFORM: self._inform}.get(msg.message_type or 0)
        if handler is None:
            self._count("no_message_type" if msg.message_type is None else "unknown_type")
            return None
        return handler(msg, now)

    def lease_of(self, mac: bytes, now: float) -> IPv4Address | None:
        """The address bound to ``mac`` right now, if any (for the adapter and tests)."""
        ip = self._by_mac.get(mac)
        lease = self._leases.get(ip) if ip is not None else None
        if lease is None or not lease.bound or lease.mac != mac or lease.expires <= now:
            return None
        return ip

    def grant(self, mac: bytes, ip: IPv4Address, now: float) -> None:
        """Bind ``ip`` to ``mac`` without a DHCP exchange: a guest restored from a snapshot
        already holds it (ValueError if it is outside the range or someone else's)."""
        if not self._in_pool(ip):
            raise ValueError(f"{ip} is outside the DHCP range {self.config.range_start}-{self.config.range_end}")
        if not self._available(ip, mac, now):
            raise ValueError(f"{ip} is leased to another client")
        self._leases[ip] = Lease(ip, mac, now + self.config.lease_seconds, bound=True)
        self._by_mac[mac] = ip
        self._count("granted")

    def leases(self) -> list[Lease]:
        """A snapshot of the lease table."""
        return [Lease(le.ip, le.mac, le.expires, le.bound) for le in self._leases.values()]

    # -- message types --------------------------------------------------------------------
    def _discover(self, msg: DhcpMessage, now: float) -> DhcpReply | None:
        self._count("discover")
        ip = self._choose(msg.chaddr, msg.ip_option(OPT_REQUESTED_IP), now)
        if ip is None:
            self._count("pool_exhausted")
            return None
        lease = self._leases.get(ip)
        hold = now + self.config.offer_hold_seconds
        if lease is not None and lease.mac == msg.chaddr and lease.bound and lease.expires > now:
            lease.expires = max(lease.expires, hold)     # an offer never shortens a live lease
        else:
            self._leases[ip] = Lease(ip, msg.chaddr, hold, bound=False)
        self._by_mac[msg.chaddr] = ip
        self._count("offer")
        return self._reply(msg, DHCPOFFER, ip, ZERO_IP, with_lease=True)

    def _request(self, msg: DhcpMessage, now: float) -> DhcpReply | None:
        self._count("request")
        server_id = msg.ip_option(OPT_SERVER_ID)
        requested = msg.ip_option(OPT_REQUESTED_IP)
        mac = msg.chaddr
        if server_id is not None:
            # SELECTING: the client answers an OFFER; another server's id means it chose them.
            if server_id != self.config.server_ip:
                self._count("other_server")
                self._drop_offer(mac)
                return None
            # An offer that timed out is still granted while nobody else took the address.
            if requested is None or not self._in_pool(requested) or not self._available(requested, mac, now):
                return self._nak(msg, "requested address was not offered to you")
            return self._ack(msg, requested, now)
        if requested is not None and msg.ciaddr == ZERO_IP:
            # INIT-REBOOT: the client verifies the address it remembers.
            return self._confirm(msg, requested, now)
        if msg.ciaddr != ZERO_IP:
            # RENEWING (unicast) or REBINDING (broadcast): extend the lease on ciaddr.
            return self._confirm(msg, msg.ciaddr, now)
        self._count("request_without_address")
        return self._nak(msg, "request names no address")

    def _confirm(self, msg: DhcpMessage, ip: IPv4Address, now: float) -> DhcpReply:
        """ACK a remembered address that is still (or can again be) this client's, else NAK.

        A gateway restarted after the guest got its lease (or a snapshot clone) has no record;
        an address of the range nobody else holds is then granted instead of forcing the
        client through a fresh DISCOVER.
        """
        if not self._in_pool(ip):
            return self._nak(msg, "address not in this server's range")
        if not self._available(ip, msg.chaddr, now):
            return self._nak(msg, "address is leased to another client or declined")
        return self._ack(msg, ip, now)

    def _decline(self, msg: DhcpMessage, now: float) -> None:
        self._count("decline")
        ip = msg.ip_option(OPT_REQUESTED_IP)
        if msg.ip_option(OPT_SERVER_ID) != self.config.server_ip or ip is None or not self._in_pool(ip):
            return None
        if not self._available(ip, msg.chaddr, now):
            return None
        # Someone else answers ARP for this address: keep it out of the pool for a lease time.
        self._leases[ip] = Lease(ip, None, now + self.config.lease_seconds, bound=False)
        if self._by_mac.get(msg.chaddr) == ip:
            del self._by_mac[msg.chaddr]
        return None

    def _release(self, msg: DhcpMessage, now: float) -> None:
        self._count("release")
        lease = self._leases.get(msg.ciaddr)
        if msg.ip_option(OPT_SERVER_ID) not in (None, self.config.server_ip):
            return None
        if lease is not None and lease.mac == msg.chaddr:
            # Expire it but keep the MAC's claim, so the same guest gets it back first.
            lease.expires = min(lease.expires, now)
            lease.bound = False
        return None

    def _inform(self, msg: DhcpMessage, now: float) -> DhcpReply | None:
        self._count("inform")
        if msg.ciaddr == ZERO_IP or msg.ciaddr not in self.config.subnet:
            return None
        self._count("ack")
        return self._reply(msg, DHCPACK, ZERO_IP, msg.ciaddr, with_lease=False)

    # -- helpers ---------------------------------------------------------------------------
    def _ack(self, msg: DhcpMessage, ip: IPv4Address, now: float) -> DhcpReply:
        old = self._by_mac.get(msg.chaddr)
        old_lease = self._leases.get(old) if old is not None and old != ip else None
        if old_lease is not None and old_lease.mac == msg.chaddr:
            # The client moved to another address: its previous one returns to the pool.
            old_lease.expires = min(old_lease.expires, now)
            old_lease.bound = False
        self._leases[ip] = Lease(ip, msg.chaddr, now + self.config.lease_seconds, bound=True)
        self._by_mac[msg.chaddr] = ip
        self._count("ack")
        return self._reply(msg, DHCPACK, ip, msg.ciaddr, with_lease=True)

    def _nak(self, msg: DhcpMessage, reason: str) -> DhcpReply:
        self._count("nak")
        options = [(OPT_MSG_TYPE, bytes((DHCPNAK,))), (OPT_SERVER_ID, self.config.server_ip.packed),
                   (OPT_MESSAGE, reason.encode())]
        payload = build_dhcp_reply(msg, ZERO_IP, ZERO_IP, options)
        # RFC 2131 4.1: without a relay a NAK is always broadcast.
        return DhcpReply(payload, BROADCAST_IP, BROADCAST_MAC, self.config.server_ip, DHCPNAK)

    def _in_pool(self, ip: IPv4Address) -> bool:
        """Whether ``ip`` is in the configured range and is not one of our own addresses."""
        cfg = self.config
        return int(cfg.range_start) <= int(ip) <= int(cfg.range_end) and ip not in self._reserved

    def _available(self, ip: IPv4Address, mac: bytes, now: float) -> bool:
        """Whether ``mac`` may take ``ip``: unused, expired, or already its own (not declined)."""
        lease = self._leases.get(ip)
        return lease is None or lease.expires <= now or lease.mac == mac

    def _drop_offer(self, mac: bytes) -> None:
        """Forget an address only offered to ``mac`` so it returns to the pool."""
        ip = self._by_mac.get(mac)
        lease = self._leases.get(ip) if ip is not None else None
        if lease is not None and lease.mac == mac and not lease.bound:
            lease.expires = 0.0

    def _choose(self, mac: bytes, requested: IPv4Address | None, now: float) -> IPv4Address | None:
        """Pick the address to offer: the MAC's own, the requested one, fresh, then expired."""
        own = self._by_mac.get(mac)
        if own is not None and self._available(own, mac, now):
            return own
        if requested is not None and self._in_pool(requested) and self._available(requested, mac, now):
            return requested
        while self._next_fresh <= int(self.config.range_end):
            ip = IPv4Address(self._next_fresh)
            self._next_fresh += 1
            if self._in_pool(ip) and ip not in self._leases:
                return ip
        # Reuse: prefer leases expired longest ago, leaving recent ones to their old owners.
        expired = [le for le in self._leases.values() if le.expires <= now]
        if not expired:
            return None
        return min(expired, key=lambda le: le.expires).ip

    def _reply(self, msg: DhcpMessage, mtype: int, yiaddr: IPv4Address, ciaddr: IPv4Address,
               with_lease: bool) -> DhcpReply:
        payload = build_dhcp_reply(msg, yiaddr, ciaddr, self._options(msg, mtype, with_lease))
        if ciaddr != ZERO_IP:
            dst_ip, dst_mac = ciaddr, msg.chaddr           # the client already owns an address
        elif msg.flags & BROADCAST_FLAG:
            dst_ip, dst_mac = BROADCAST_IP, BROADCAST_MAC
        else:
            # We build the Ethernet frame ourselves, so unicast to the new address needs no ARP.
            dst_ip, dst_mac = yiaddr, msg.chaddr
        return DhcpReply(payload, dst_ip, dst_mac, self.config.server_ip, mtype)

    def _options(self, msg: DhcpMessage, mtype: int, with_lease: bool) -> list[tuple[int, bytes]]:
        cfg = self.config
        available: dict[int, bytes] = {
            OPT_SUBNET_MASK: cfg.subnet.netmask.packed,
            OPT_ROUTER: cfg.gateway.packed,
            OPT_DNS: b"".join(ip.packed for ip in cfg.dns),
            OPT_MTU: struct.pack("!H", cfg.mtu),
            OPT_BROADCAST: cfg.subnet.broadcast_address.packed,
        }
        if cfg.domain:
            available[OPT_DOMAIN] = cfg.domain.encode("ascii")
        if cfg.hostname:
            available[OPT_HOSTNAME] = cfg.hostname.encode("ascii")
        if with_lease:
            lease = cfg.lease_seconds
            available[OPT_LEASE_TIME] = struct.pack("!I", lease)
            available[OPT_T1] = struct.pack("!I", lease // 2)
            available[OPT_T2] = struct.pack("!I", lease * 7 // 8)
        # Message type and server id first, then what the client asked for in its order, then
        # every remaining essential (udhcpc asks for few options but needs mask/router/dns).
        order = [code for code in msg.options.get(OPT_PARAM_LIST, b"") if code in available]
        order += [code for code in available if code not in order]
        seen: set[int] = set()
        options = [(OPT_MSG_TYPE, bytes((mtype,))), (OPT_SERVER_ID, cfg.server_ip.packed)]
        for code in order:
            if code not in seen:
                seen.add(code)
                options.append((code, available[code]))
        return options

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1
