"""DNS server core of the gateway (sans-IO, dnspython for the messages).

The guest's resolver is the gateway's DNS address. :meth:`DnsCore.handle_query` decides each
query: the policy first (a denied name gets NXDOMAIN and never reaches upstream), then HTTPS/SVCB
(answered NODATA locally, so clients fall back to A lookups instead of learning endpoints or ECH
keys we cannot police), then the profile's static hosts, then a ``Forward`` to the host's
resolver with a fresh random query id. :meth:`DnsCore.handle_upstream` matches the resolver's
answer by id and question, keeps only the CNAME chain of the question and its A records
(we are IPv4-only: AAAA answers are stripped), refuses a chain through a denied name, caps the
TTL, records name -> addresses in the domain tracker and replies to the guest.
:meth:`DnsCore.tick` retries and finally SERVFAILs queries the resolver never answered.

Names: the policy decides each question before anything else (``NetworkPolicy.evaluate_name``:
a name no rule could allow a connection to is refused), for every qtype and over UDP and TCP
alike, so a refused name is answered NXDOMAIN here and never reaches upstream; each refusal is
a "deny" event.

Off-limits answers (DNS rebinding, and names pointing at the host): an upstream A record whose
address the ``address_filter`` calls off-limits (the built-in ranges, the guest subnet, the
host's own addresses, the stand-ins of static hosts) is **withheld**: stripped from the answer,
never recorded in the domain tracker, and reported as one "deny" event per answer naming the
withheld addresses. When every A record of an answer was withheld, the guest gets NXDOMAIN
(nothing of the upstream answer, not even its CNAME chain): the name is unusable to it, and
NXDOMAIN ends the lookup at once where an empty NOERROR makes resolvers try other types or
search domains. The profile's static hosts are answered locally and are exempt: they are the
one way to name an off-limits address on purpose.
"""
from __future__ import annotations

import random
import struct
from collections import deque
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any, Callable, Iterable, Mapping, Protocol, Union

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from engine.errors import ConfigError

Client = tuple[Any, ...]          # the guest's (address, port) as the adapter names it

UDP_PAYLOAD = 1232                # what we accept from upstream and send at most over UDP
MAX_CNAME_CHAIN = 16
_A, _AAAA, _CNAME, _ANY = (dns.rdatatype.A, dns.rdatatype.AAAA, dns.rdatatype.CNAME,
                           dns.rdatatype.ANY)
_REFUSED_TYPES = frozenset({dns.rdatatype.HTTPS, dns.rdatatype.SVCB})
_FORWARDED_TYPES = frozenset({_A, _AAAA, _CNAME, _ANY})


@dataclass(frozen=True)
class NameVerdict:
    """Whether the policy lets the guest resolve a name, and why (rule text for events)."""

    allowed: bool
    reason: str = ""


class NameFilter(Protocol):
    """Decides names; the gateway wraps ``NetworkPolicy.evaluate_name`` (ALLOW/DENY) in one."""

    def __call__(self, name: str) -> NameVerdict | bool: ...


class AnswerRecorder(Protocol):
    """Learns which names resolved to which addresses (``DomainTracker`` has this method)."""

    def record(self, name: str, ips: Iterable[IPv4Address], ttl: float, now: float) -> Any: ...


@dataclass(frozen=True)
class Reply:
    """Send ``wire`` to the guest at ``client`` (over TCP: the adapter adds the length prefix)."""

    wire: bytes
    client: Client


@dataclass(frozen=True)
class Forward:
    """Send ``wire`` (a query with id ``upstream_id``) to the upstream resolver.

    ``tcp`` asks for TCP (the guest used TCP, or UDP came back truncated); ``attempt`` counts
    retries of the same query so an adapter with several resolvers can rotate between them.
    """

    upstream_id: int
    wire: bytes
    tcp: bool = False
    attempt: int = 0


DnsAction = Union[Reply, Forward]


@dataclass(frozen=True)
class DnsEvent:
    """One decision about a name, for the flow log: action is "deny", "allow", "static" or
    "withheld" (an upstream answer pointed at an off-limits address)."""

    time: float
    client: Client
    name: str
    qtype: str
    action: str
    reason: str


@dataclass
class _Pending:
    """A query waiting for the upstream resolver."""

    upstream_id: int
    key: tuple[Any, ...]
    client: Client
    query: dns.message.Message
    qname: dns.name.Name
    qtype: dns.rdatatype.RdataType
    wire: bytes
    deadline: float
    max_size: int
    tcp: bool
    attempt: int = 0


def _text(name: dns.name.Name) -> str:
    """The lower-case name without its final dot, as policies and static hosts spell names."""
    return "" if name == dns.name.root else name.to_text(omit_final_dot=True).lower()


def _normalise(name: str) -> str:
    return name.strip().rstrip(".").lower()


class DnsCore:
    """The gateway's DNS server: decisions, static answers and the upstream pending table."""

    def __init__(self, static_hosts: Mapping[str, Iterable[IPv4Address | str]],
                 name_filter: NameFilter, recorder: AnswerRecorder | None = None,
                 ttl_static: int = 60, *, ttl_cap: int = 300, record_min_ttl: int = 60,
                 upstream_timeout: float = 2.0, upstream_retries: int = 1,
                 max_pending: int = 1024, max_events: int = 4096,
                 rng: random.Random | None = None,
                 address_filter: Callable[[IPv4Address], str | None] | None = None) -> None:
        if not 1 <= max_pending <= 32768:
            raise ConfigError(f"max_pending {max_pending} must be 1..32768 (16-bit query ids)")
        self.name_filter = name_filter
        self.address_filter = address_filter        # why an answer's address is off-limits, or None
        self.recorder = recorder
        self.ttl_static = ttl_static
        self.ttl_cap = ttl_cap                      # guests re-ask often, the tracker stays fresh
        self.record_min_ttl = record_min_ttl        # a TTL-0 answer must outlive the connect
        self.upstream_timeout = upstream_timeout
        self.upstream_retries = upstream_retries
        self.max_pending = max_pending
        self.counters: dict[str, int] = {}
        self._rng = rng or random.SystemRandom()    # unpredictable ids resist answer spoofing
        self._pending: dict[int, _Pending] = {}
        self._by_key: dict[tuple[Any, ...], int] = {}
        self._events: deque[DnsEvent] = deque(maxlen=max_events)
        self.static_hosts: dict[str, list[IPv4Address]] = {}
        self.set_static_hosts(static_hosts)

    # -- configuration ----------------------------------------------------------------------
    def set_static_hosts(self, hosts: Mapping[str, Iterable[IPv4Address | str]]) -> None:
        """Replace the static host table (names case-insensitive, trailing dot optional)."""
        self.static_hosts = {_normalise(name): [IPv4Address(ip) for ip in ips]
                             for name, ips in hosts.items()}

    # -- guest side -----------------------------------------------------------------------------
    def handle_query(self, wire: bytes, client: Client, now: float,
                     tcp: bool = False) -> list[DnsAction]:
        """Decide one query from the guest (``tcp``: it came over TCP, without length prefix)."""
        self._count("queries")
        try:
            return self._handle_query(wire, client, now, tcp)
        except Exception:   # noqa: BLE001 - a safety net: bad input must never kill the gateway
            self._count("internal_error")
            return []

    def _handle_query(self, wire: bytes, client: Client, now: float, tcp: bool) -> list[DnsAction]:
        try:
            query = dns.message.from_wire(wire)
        except Exception:   # noqa: BLE001 - dnspython raises many types on malformed messages
            return self._formerr_raw(wire, client)
        if query.flags & dns.flags.QR:
            self._count("not_a_query")
            return []
        max_size = 65535 if tcp else self._udp_limit(query)
        if query.opcode() != dns.opcode.QUERY:
            self._count("notimp")
            return self._respond(query, client, max_size, dns.rcode.NOTIMP)
        if len(query.question) != 1:
            self._count("formerr")
            return self._respond(query, client, max_size, dns.rcode.FORMERR)
        question = query.question[0]
        if question.rdclass != dns.rdataclass.IN:
            self._count("refused_class")
            return self._respond(query, client, max_size, dns.rcode.REFUSED)
        name, qtype = _text(question.name), question.rdtype
        qtype_text = dns.rdatatype.to_text(qtype)
        verdict = self._check(name)
        if not verdict.allowed:
            self._count("denied")
            self._event(now, client, name, qtype_text, "deny", verdict.reason)
            return self._respond(query, client, max_size, dns.rcode.NXDOMAIN)
        if qtype in _REFUSED_TYPES:
            # NODATA rather than REFUSED: resolvers treat REFUSED as a server failure and may
            # retry or give up; an empty answer makes browsers and curl fall back to A.
            self._count("https_svcb_refused")
            return self._respond(query, client, max_size, dns.rcode.NOERROR)
        static = self.static_hosts.get(name)
        if static is not None:
            return self._static(query, client, now, max_size, name, qtype, verdict)
        if qtype not in _FORWARDED_TYPES:
            # Only A and CNAME records survive our filtering, so asking upstream is pointless.
            self._count("nodata_type")
            return self._respond(query, client, max_size, dns.rcode.NOERROR)
        return self._forward(query, client, now, max_size, tcp, question.name, qtype, verdict)

    def _static(self, query: dns.message.Message, client: Client, now: float, max_size: int,
                name: str, qtype: dns.rdatatype.RdataType, verdict: NameVerdict) -> list[DnsAction]:
        self._count("static")
        self._event(now, client, name, dns.rdatatype.to_text(qtype), "static", verdict.reason)
        ips = self.static_hosts[name]
        response = self._response(query, dns.rcode.NOERROR)
        response.flags |= dns.flags.AA
        if qtype in (_A, _ANY) and ips:
            # AAAA and every other type get NODATA: the name exists, IPv4 only.
            response.answer.append(dns.rrset.from_text_list(
                query.question[0].name, self.ttl_static, "IN", "A", [str(ip) for ip in ips]))
            self._record(name, ips, self.ttl_static, now)
        return self._render(response, client, max_size)

    def _forward(self, query: dns.message.Message, client: Client, now: float, max_size: int,
                 tcp: bool, qname: dns.name.Name, qtype: dns.rdatatype.RdataType,
                 verdict: NameVerdict) -> list[DnsAction]:
        upstream_type = _A if qtype == _ANY else qtype      # RFC 8482: ANY gets a subset
        key = (client, query.id, _text(qname), qtype)
        if key in self._by_key:
            # The guest's resolver retransmitted; the upstream query is already on its way.
            self._count("duplicate_query")
            return []
        if len(self._pending) >= self.max_pending:
            self._count("pending_full")
            return self._respond(query, client, max_size, dns.rcode.SERVFAIL)
        upstream_id = self._rng.randrange(65536)
        while upstream_id in self._pending:
            upstream_id = self._rng.randrange(65536)
        # A fresh, minimal query: nothing else the guest put in its message goes upstream.
        upstream = dns.message.make_query(qname, upstream_type, use_edns=0, payload=UDP_PAYLOAD,
                                          id=upstream_id)
        wire = upstream.to_wire()
        self._pending[upstream_id] = _Pending(upstream_id, key, client, query, qname,
                                              upstream_type, wire, now + self.upstream_timeout,
                                              max_size, tcp)
        self._by_key[key] = upstream_id
        self._count("forwarded")
        self._event(now, client, _text(qname), dns.rdatatype.to_text(qtype), "allow", verdict.reason)
        return [Forward(upstream_id, wire, tcp, 0)]

    # -- upstream side ------------------------------------------------------------------------
    def handle_upstream(self, wire: bytes, now: float) -> list[DnsAction]:
        """Take one message from the upstream resolver; the adapter checks its source address."""
        try:
            return self._handle_upstream(wire, now)
        except Exception:   # noqa: BLE001 - same safety net as handle_query
            self._count("internal_error")
            return []

    def _handle_upstream(self, wire: bytes, now: float) -> list[DnsAction]:
        try:
            msg = dns.message.from_wire(wire)
        except Exception:   # noqa: BLE001 - malformed upstream answer: the retry timer covers it
            self._count("upstream_malformed")
            return []
        pending = self._pending.get(msg.id)
        if not msg.flags & dns.flags.QR or pending is None:
            self._count("upstream_unknown_id")
            return []
        if len(msg.question) != 1 or msg.question[0].name != pending.qname \
                or msg.question[0].rdtype != pending.qtype \
                or msg.question[0].rdclass != dns.rdataclass.IN:
            # Keep waiting: a forged or stale answer must not cancel the real one.
            self._count("upstream_mismatch")
            return []
        if msg.flags & dns.flags.TC and not pending.tcp:
            self._count("upstream_truncated")
            pending.tcp = True
            pending.deadline = now + self.upstream_timeout
            return [Forward(pending.upstream_id, pending.wire, True, pending.attempt)]
        self._finish(pending)
        self._count("upstream_answers")
        rcode = msg.rcode()
        if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            self._count("upstream_error")
            return self._respond(pending.query, pending.client, pending.max_size, dns.rcode.SERVFAIL)
        return self._answer(pending, msg, rcode, now)

    def _answer(self, pending: _Pending, msg: dns.message.Message, rcode: dns.rcode.Rcode,
                now: float) -> list[DnsAction]:
        """Rebuild the answer from the question's CNAME chain and its A records only."""
        qname = pending.query.question[0].name
        names, current, ttl = [qname], pending.qname, self.ttl_cap
        answer: list[dns.rrset.RRset] = []
        for _ in range(MAX_CNAME_CHAIN):
            cname = _find(msg.answer, current, _CNAME)
            if cname is None:
                break
            target = cname[0].target
            verdict = self._check(_text(target))
            if not verdict.allowed:
                # A CNAME must not launder a denied name into an allowed one.
                self._count("cname_denied")
                self._event(now, pending.client, _text(target), "CNAME", "deny",
                            f"CNAME of {_text(qname)}: {verdict.reason}".rstrip(": "))
                return self._respond(pending.query, pending.client, pending.max_size,
                                     dns.rcode.NXDOMAIN)
            ttl = min(ttl, cname.ttl)
            answer.append(dns.rrset.from_rdata(current, 0, cname[0]))
            if target in names:
                break                       # a loop: stop where it closes
            names.append(target)
            current = target
        else:
            self._count("cname_chain_too_long")
            return self._respond(pending.query, pending.client, pending.max_size, dns.rcode.SERVFAIL)
        ips: list[IPv4Address] = []
        a_rrset = _find(msg.answer, current, _A) if pending.qtype == _A else None
        if a_rrset is not None:
            kept = self._withhold(pending, qname, a_rrset, now)
            if not kept:
                return self._respond(pending.query, pending.client, pending.max_size, dns.rcode.NXDOMAIN)
            ips = [IPv4Address(rd.address) for rd in kept]
            ttl = min(ttl, a_rrset.ttl)
            answer.append(dns.rrset.from_rdata_list(current, 0, kept))
        ttl = max(0, ttl)
        response = self._response(pending.query, rcode)
        for rrset in answer:
            rrset.ttl = ttl
            response.answer.append(rrset)
        if not ips:
            # Negative answers keep the zone's SOA so the guest can cache the absence briefly.
            for soa in msg.authority:
                if soa.rdtype == dns.rdatatype.SOA and soa.rdclass == dns.rdataclass.IN:
                    soa = dns.rrset.from_rdata_list(soa.name, min(soa.ttl, self.ttl_cap), list(soa))
                    response.authority.append(soa)
                    break
        if ips:
            self._count("answers_recorded")
            for name in names:
                self._record(_text(name), ips, ttl, now)
        return self._render(response, pending.client, pending.max_size)

    def _withhold(self, pending: _Pending, qname: dns.name.Name, a_rrset: dns.rrset.RRset,
                  now: float) -> list[Any]:
        """The A records of ``a_rrset`` the guest may see; the others make one deny event."""
        if self.address_filter is None:
            return list(a_rrset)
        kept: list[Any] = []
        withheld: list[str] = []
        for rd in a_rrset:
            why = self.address_filter(IPv4Address(rd.address))
            if why is None:
                kept.append(rd)
            else:
                withheld.append(f"{rd.address}: {why}")
        if withheld:
            self._count("answers_withheld")
            self._event(now, pending.client, _text(qname), dns.rdatatype.to_text(pending.query.question[0].rdtype),
                        "withheld", "answer withheld, off-limits address " + "; ".join(withheld))
        return kept

    # -- timers -------------------------------------------------------------------------------
    def tick(self, now: float) -> list[DnsAction]:
        """Retry overdue upstream queries, then SERVFAIL those out of retries."""
        actions: list[DnsAction] = []
        for pending in [p for p in self._pending.values() if p.deadline <= now]:
            if pending.attempt < self.upstream_retries:
                pending.attempt += 1
                pending.deadline = now + self.upstream_timeout
                self._count("upstream_retries")
                actions.append(Forward(pending.upstream_id, pending.wire, pending.tcp, pending.attempt))
            else:
                self._finish(pending)
                self._count("upstream_timeouts")
                actions += self._respond(pending.query, pending.client, pending.max_size,
                                         dns.rcode.SERVFAIL)
        return actions

    def next_timer(self) -> float | None:
        """When :meth:`tick` next has work, or None with nothing pending."""
        return min((p.deadline for p in self._pending.values()), default=None)

    def pending_count(self) -> int:
        """How many queries wait for the upstream resolver."""
        return len(self._pending)

    def poll_events(self) -> list[DnsEvent]:
        """Take the decisions made since the last call (oldest first; bounded)."""
        events = list(self._events)
        self._events.clear()
        return events

    # -- helpers ------------------------------------------------------------------------------
    def _check(self, name: str) -> NameVerdict:
        verdict = self.name_filter(name)
        return verdict if isinstance(verdict, NameVerdict) else NameVerdict(bool(verdict))

    def _record(self, name: str, ips: list[IPv4Address], ttl: float, now: float) -> None:
        if self.recorder is not None and ips:
            # The tracker must remember at least as long as the guest may cache the answer.
            self.recorder.record(name, list(ips), max(ttl, self.record_min_ttl), now)

    def _event(self, now: float, client: Client, name: str, qtype: str, action: str,
               reason: str) -> None:
        if len(self._events) == self._events.maxlen:
            self._count("events_dropped")
        self._events.append(DnsEvent(now, client, name, qtype, action, reason))

    def _finish(self, pending: _Pending) -> None:
        self._pending.pop(pending.upstream_id, None)
        self._by_key.pop(pending.key, None)

    @staticmethod
    def _udp_limit(query: dns.message.Message) -> int:
        if query.edns < 0:
            return 512
        return max(512, min(query.payload, UDP_PAYLOAD))

    @staticmethod
    def _response(query: dns.message.Message, rcode: dns.rcode.Rcode) -> dns.message.Message:
        response = dns.message.make_response(query, recursion_available=True,
                                             our_payload=UDP_PAYLOAD, pad=0)
        response.set_rcode(rcode)
        return response

    def _respond(self, query: dns.message.Message, client: Client, max_size: int,
                 rcode: dns.rcode.Rcode) -> list[DnsAction]:
        return self._render(self._response(query, rcode), client, max_size)

    def _render(self, response: dns.message.Message, client: Client, max_size: int) -> list[DnsAction]:
        try:
            return [Reply(response.to_wire(max_size=max_size), client)]
        except dns.exception.TooBig:
            # Over UDP the guest retries over TCP when it sees TC.
            self._count("truncated")
            response.answer, response.authority, response.additional = [], [], []
            response.flags |= dns.flags.TC
            return [Reply(response.to_wire(max_size=max_size), client)]

    def _formerr_raw(self, wire: bytes, client: Client) -> list[DnsAction]:
        """FORMERR for an unparsable query whose header is readable; drop anything else."""
        self._count("malformed")
        if len(wire) < 12:
            return []
        ident, flags = struct.unpack_from("!HH", wire)
        if flags & 0x8000:
            return []                                     # a response: never answer those
        flags = 0x8000 | (flags & 0x7800) | (flags & 0x0100) | 0x0080 | dns.rcode.FORMERR
        self._count("formerr")
        return [Reply(struct.pack("!HHHHHH", ident, flags, 0, 0, 0, 0), client)]

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1


def _find(section: list[dns.rrset.RRset], name: dns.name.Name, rdtype: int) -> dns.rrset.RRset | None:
    """The IN rrset of ``rdtype`` owned by ``name`` in ``section`` (names compare caseless)."""
    for rrset in section:
        if rrset.rdtype == rdtype and rrset.rdclass == dns.rdataclass.IN and rrset.name == name \
                and len(rrset) > 0:
            return rrset
    return None
