"""Domain names for the network policy: patterns, name canonicalisation, and the IP -> names map.

Two kinds of names meet here and are handled differently on purpose:

* names a *profile author* writes (``allow_domain("*.github.com")``) are validated strictly:
  a bad pattern is a :class:`PolicyError` naming the field, non-ASCII names are converted to
  their IDNA (punycode) form, case and one trailing dot are dropped;
* names from the *wire* (DNS questions and answers, TLS SNI, HTTP Host) never raise: they are
  only lowercased (ASCII letters only, so no Unicode case folding can turn one name into
  another) and stripped of one trailing dot. Whether such a name is *plain* (only letters,
  digits, ``-`` and ``_`` in non-empty labels) is a separate question, asked by the allow side
  of the policy: a name with escapes or odd bytes can still be *denied* by suffix, but it can
  never be *allowed* by a domain rule.

:class:`DomainTracker` remembers which names the gateway's own DNS answers mapped to each
address, with expiry, so a flow to an address can be matched against domain rules.
"""
from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # dnspython is loaded by whoever parsed the response (~25 ms a policy need not pay)
    import dns.message
    import dns.name
    import dns.rrset

from engine.errors import ConfigError

MAX_NAME_LEN = 253
_LABEL_RE = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")
_PLAIN_RE = re.compile(r"^(?:[a-z0-9_-]{1,63}\.)*[a-z0-9_-]{1,63}$")
# str.lower() would also fold non-ASCII letters (e.g. "K" KELVIN SIGN -> "k"), letting a wire
# name that no resolver treats as "k" match a pattern with "k"; only ASCII is folded.
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


class PolicyError(ConfigError):
    """A network policy, rule or criterion is invalid.

    ``path`` locates the offending value in the policy's plain-data form, e.g.
    ``("rules", 2, "port")``, so the profile loader can add file and line; ``str(err)`` starts
    with the same location written as ``rules[2].port``.
    """

    def __init__(self, message: str, path: tuple[str | int, ...] = ()) -> None:
        self.path = path
        self.detail = message
        where = format_path(path)
        super().__init__(f"{where}: {message}" if where else message)


def format_path(path: tuple[str | int, ...]) -> str:
    """``("rules", 2, "all", 0, "port")`` -> ``rules[2].all[0].port``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def canonical_name(name: str) -> str:
    """A wire name as the policy compares it: ASCII-lowercased, one trailing dot removed. Never raises."""
    name = name.translate(_ASCII_LOWER)
    return name[:-1] if name.endswith(".") else name


def is_plain_name(name: str) -> bool:
    """Whether a canonical name is an ordinary host name (no escapes, spaces or empty labels)."""
    return len(name) <= MAX_NAME_LEN and _PLAIN_RE.match(name) is not None


def normalize_domain(text: str, path: tuple[str | int, ...] = ("domain",)) -> str:
    """A host name a user wrote, validated and in canonical form (IDNA for non-ASCII)."""
    if not isinstance(text, str):
        raise PolicyError(f"expected a domain name, found {text!r}", path)
    name = text.strip()
    if name.endswith("."):
        name = name[:-1]
    if not name:
        raise PolicyError("the domain name is empty", path)
    if not name.isascii():
        try:
            # The IDNA codec applies nameprep (which lowercases) and punycode per label.
            name = name.encode("idna").decode("ascii")
        except UnicodeError as err:
            raise PolicyError(f"{text!r} is not a valid internationalised domain name ({err})", path) from None
    name = name.lower()
    if len(name) > MAX_NAME_LEN:
        raise PolicyError(f"{text!r} is longer than {MAX_NAME_LEN} characters", path)
    for label in name.split("."):
        if "*" in label:
            raise PolicyError(f"{text!r}: '*' is only allowed as the whole first label ('*.example.com')", path)
        if not _LABEL_RE.match(label):
            raise PolicyError(
                f"{text!r}: label {label!r} must be 1-63 letters, digits, '-' or '_' "
                "and must not start or end with '-'", path)
    return name


@dataclass(frozen=True, slots=True)
class DomainPattern:
    """An exact name (``api.example.com``) or a wildcard (``*.github.com``).

    A wildcard matches every name *below* its base at any depth (``a.github.com``,
    ``a.b.github.com``) but not the base itself (``github.com``) nor look-alikes
    (``evilgithub.com``). Matching is case-insensitive and ignores one trailing dot.
    ``name`` holds the canonical exact name or wildcard base, without ``*.``.
    """

    kind: Literal["exact", "wildcard"]
    name: str

    @classmethod
    def exact(cls, name: str) -> DomainPattern:
        return cls("exact", normalize_domain(name))

    @classmethod
    def wildcard(cls, pattern: str) -> DomainPattern:
        """``"*.github.com"`` (the ``*.`` may be left out: ``"github.com"`` means the same here)."""
        text = pattern.strip() if isinstance(pattern, str) else pattern
        if isinstance(text, str) and text.startswith("*."):
            text = text[2:]
        return cls("wildcard", normalize_domain(text))

    @classmethod
    def parse(cls, text: str, path: tuple[str | int, ...] = ("domain",)) -> DomainPattern:
        """``*.x`` is a wildcard, anything else an exact name; errors carry ``path``."""
        if not isinstance(text, str):
            raise PolicyError(f"expected a domain name or '*.domain' pattern, found {text!r}", path)
        stripped = text.strip()
        if stripped in ("*", "*."):
            raise PolicyError("'*' alone would match every name; use 'any: true' for all traffic", path)
        if stripped.startswith("*."):
            return cls("wildcard", normalize_domain(stripped[2:], path))
        return cls("exact", normalize_domain(stripped, path))

    def __post_init__(self) -> None:
        if self.kind not in ("exact", "wildcard"):
            raise PolicyError(f"domain pattern kind must be 'exact' or 'wildcard', not {self.kind!r}")

    def matches(self, name: str, *, plain_only: bool = True) -> bool:
        """Whether wire name ``name`` matches. ``plain_only=False`` also matches odd names by suffix
        (the deny side uses it, so escapes or stray bytes cannot dodge a deny rule)."""
        name = canonical_name(name)
        if plain_only and not is_plain_name(name):
            return False
        if self.kind == "exact":
            return name == self.name
        return len(name) > len(self.name) + 1 and name.endswith("." + self.name)

    def __str__(self) -> str:
        return self.name if self.kind == "exact" else f"*.{self.name}"


Address = IPv4Address | IPv6Address


class DomainTracker:
    """Which names the gateway's DNS answers mapped to each address, until their TTL runs out.

    Fed only with answers the gateway itself served to the guest (never with what the guest
    claims), so a domain rule can only be satisfied for an address that a name really resolved
    to. Entries are ``(address, name)`` pairs with an expiry; the table is bounded: past
    ``max_entries`` the least recently recorded or looked-up pair is dropped. TTLs are clamped to
    ``[min_ttl, max_ttl]``: a guest connects *after* reading the answer (so a 0-second TTL must
    still hold for a moment) and may cache it a little longer than told.
    """

    def __init__(self, max_entries: int = 8192, min_ttl: float = 60.0, max_ttl: float = 86400.0) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self.min_ttl = min_ttl
        self.max_ttl = max_ttl
        self._expiry: OrderedDict[tuple[Address, str], float] = OrderedDict()
        self._by_ip: dict[Address, set[str]] = {}

    def __len__(self) -> int:
        return len(self._expiry)

    def record(self, name: str, ips: Iterable[Address | str], ttl: float, now: float,
               aliases: Iterable[str] = ()) -> None:
        """Remember that ``name`` (and each CNAME in ``aliases``) resolved to ``ips`` for ``ttl`` s."""
        if not math.isfinite(ttl):
            ttl = self.max_ttl
        expiry = now + min(max(ttl, self.min_ttl), self.max_ttl)
        names = {canonical_name(n) for n in (name, *aliases)}
        names.discard("")
        for raw in ips:
            try:
                ip = raw if isinstance(raw, (IPv4Address, IPv6Address)) else ip_address(raw)
            except ValueError:
                continue  # a caller passing junk must not break the DNS path
            for n in names:
                key = (ip, n)
                # Keep the later expiry: a shorter-TTL answer for the same pair must not cut
                # short what an earlier answer already promised the guest.
                self._expiry[key] = max(expiry, self._expiry.get(key, expiry))
                self._expiry.move_to_end(key)
                self._by_ip.setdefault(ip, set()).add(n)
        while len(self._expiry) > self.max_entries:
            (ip, n), _ = self._expiry.popitem(last=False)
            self._drop_index(ip, n)

    def record_response(self, response: dns.message.Message, now: float) -> int:
        """Record the A/AAAA answer of a response the gateway served; returns addresses recorded.

        Only the CNAME chain that starts at the question name is followed (at most 16 links),
        so stray records an upstream put in the answer section cannot map other names; every
        name on the chain is recorded for the final addresses, with the smallest TTL on it.
        """
        import dns.rdatatype

        if len(response.question) != 1:
            return 0
        question = response.question[0]
        current = question.name
        chain: list[dns.name.Name] = [current]
        ttl = math.inf
        for _ in range(16):
            cname = _find(response, current, dns.rdatatype.CNAME)
            if cname is None:
                break
            ttl = min(ttl, cname.ttl)
            current = next(iter(cname)).target
            if current in chain:
                return 0  # a CNAME loop names nothing
            chain.append(current)
        ips: list[Address] = []
        for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            rrset = _find(response, current, rdtype)
            if rrset is not None:
                ttl = min(ttl, rrset.ttl)
                ips.extend(ip_address(rdata.address) for rdata in rrset)
        if not ips:
            return 0
        names = [n.to_text(omit_final_dot=True) for n in chain]
        self.record(names[0], ips, ttl, now, aliases=names[1:])
        return len(ips)

    def domains_for(self, ip: Address | str, now: float) -> frozenset[str]:
        """The names that map to ``ip`` and have not expired at ``now`` (expired ones are dropped)."""
        try:
            key_ip = ip if isinstance(ip, (IPv4Address, IPv6Address)) else ip_address(ip)
        except ValueError:
            return frozenset()
        names = self._by_ip.get(key_ip)
        if not names:
            return frozenset()
        live = []
        for n in list(names):
            key = (key_ip, n)
            if self._expiry[key] > now:
                self._expiry.move_to_end(key)  # in use: evict others first
                live.append(n)
            else:
                del self._expiry[key]
                self._drop_index(key_ip, n)
        return frozenset(live)

    def expire(self, now: float) -> int:
        """Drop every pair expired at ``now``; returns how many were dropped."""
        dead = [key for key, expiry in self._expiry.items() if expiry <= now]
        for ip, n in dead:
            del self._expiry[(ip, n)]
            self._drop_index(ip, n)
        return len(dead)

    def _drop_index(self, ip: Address, name: str) -> None:
        names = self._by_ip.get(ip)
        if names is not None:
            names.discard(name)
            if not names:
                del self._by_ip[ip]


_CLASS_IN = 1  # dns.rdataclass.IN (RFC 1035), compared without importing dnspython here


def _find(response: dns.message.Message, name: dns.name.Name,
          rdtype: int) -> dns.rrset.RRset | None:
    """The non-empty IN ``rdtype`` RRset for ``name`` in the answer section.

    Scans the list rather than using ``Message.find_rrset``, whose index misses RRsets that
    code appended to ``response.answer`` directly (as a DNS core building answers may)."""
    for rrset in response.answer:
        if rrset.name == name and rrset.rdclass == _CLASS_IN and rrset.rdtype == rdtype and len(rrset):
            return rrset
    return None
