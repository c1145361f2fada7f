"""Network policy: a default action plus ordered rules, decided per flow and per DNS name.

capsa's model: the first rule whose criteria match decides; ALLOW and DENY stop, LOG records the
rule and goes on; if no rule decides, the default does. Policies are immutable, so a running VM
swaps one for another atomically (every builder method returns a new policy).

Domain rules, exactly (the security-relevant part):

* A flow carries ``domains`` (names the gateway's own DNS answers mapped to its destination,
  see :class:`~engine.netstack.domains.DomainTracker`) and ``sni_or_host`` (the TLS SNI or HTTP
  Host the guest sent, when the gateway read one).
* For an **ALLOW** rule all evidence must agree: some name in ``domains`` matches the pattern
  *and*, when ``sni_or_host`` is not None, it matches the pattern too. Sharing an IP with an
  allowed name therefore does not let a guest ask that IP for another name, and an SNI alone
  (to an address no allowed name resolved to) opens nothing. Only plain host names can be
  allowed; ``sni_or_host=""`` (the gateway read a hello it could not parse) allows nothing.
* For **DENY** and **LOG** rules any evidence suffices: a name in ``domains`` *or* the
  ``sni_or_host`` matching the pattern, compared by suffix even when the name is odd, so a
  lying or malformed name cannot dodge a deny.
* A domain rule names an off-limits address (below) only for a static host entry of the
  profile (``Flow.static_host``): a public name that resolves to 127.0.0.1 or 169.254.169.254
  (DNS rebinding) opens nothing.

Off-limits destinations (:func:`is_restricted`): ``0/8``, loopback, link-local and metadata
(169.254/16), the private ranges, CGNAT (100.64/10), multicast, reserved and broadcast, plus
the networks the gateway passes as ``protected`` (its guest subnet, i.e. other VMs, and the
host's own addresses). To such a destination an ALLOW rule — and an allow-by-default — applies
only if its criteria *name* the address: an ``ip`` equal to it, an ``ip_range`` containing it
that is no wider than every off-limits block holding it (``10.0.0.0/8`` names ``10.1.2.3``,
``0.0.0.0/0`` names nothing), or a domain rule on a static host. Any other matching ALLOW
rule is passed over (evaluation goes on), and the default ALLOW becomes DENY.

Names on the wire, for a connection's whole life: the gateway reads every name a TCP stream
presents (each HTTP request's Host, each TLS ClientHello's SNI:
:mod:`engine.netstack.inspector`) and decides each new one again; a deny cuts the connection.
A stream that presents *no* name (SSH, a database protocol, TLS without SNI, a server that
speaks first, a guest that sends nothing) is decided by ``require_names``:

* ``True`` (the default): such a stream is decided with ``sni_or_host=""``, so no domain ALLOW
  rule can match it; it goes through only if a rule that is not about names (an ``ip``, a
  port) or the default allows it. A domain allow means "this name", and an address shared with
  other names (a CDN, shared hosting) is not that name.
* ``False``: it is decided with ``sni_or_host=None``: DNS evidence alone (the address is one an
  allowed name resolved to) lets it through, as before this switch existed.

DNS questions (:meth:`NetworkPolicy.evaluate_name`): see that method.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from enum import Enum
from ipaddress import IPv4Address, IPv4Network

from engine.netstack.domains import DomainPattern, DomainTracker, PolicyError, canonical_name
from engine.netstack.policy.flow import Flow, Protocol
from engine.netstack.policy.criteria import (
    AllMatch, AnyMatch, DomainMatch, IpMatch, IpRangeMatch, MatchCriteria, PortMatch, PortRangeMatch,
    ProtocolMatch, covers, criteria_from_data, criteria_to_data, domain_patterns, names_destinations)

# The flow, criteria and domain types live in sibling modules (one concept each); callers may
# import them from here, the policy's public face.
__all__ = [
    "PolicyAction", "Protocol", "MatchCriteria", "AnyMatch", "IpMatch", "IpRangeMatch", "PortMatch",
    "PortRangeMatch", "ProtocolMatch", "DomainMatch", "AllMatch", "DomainPattern", "DomainTracker",
    "Rule", "Flow", "Decision", "NetworkPolicy", "PolicyWarning", "PolicyError", "RESTRICTED_NETWORKS",
    "is_restricted", "restricted_blocks",
]

RESTRICTED_NETWORKS: tuple[tuple[IPv4Network, str], ...] = tuple(
    (IPv4Network(net), label) for net, label in (
        ("0.0.0.0/8", "'this network'"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local / cloud metadata"),
        ("10.0.0.0/8", "private"),
        ("172.16.0.0/12", "private"),
        ("192.168.0.0/16", "private"),
        ("100.64.0.0/10", "shared address space (CGNAT)"),
        ("224.0.0.0/4", "multicast"),
        ("255.255.255.255/32", "broadcast"),
        ("240.0.0.0/4", "reserved"),
    ))


class PolicyAction(Enum):
    """What a rule (or the default) does with a matching flow."""

    ALLOW = "allow"
    DENY = "deny"
    LOG = "log"


def restricted_blocks(ip: IPv4Address, protected: Iterable[IPv4Network] = ()) -> list[tuple[IPv4Network, str]]:
    """Every off-limits block holding ``ip`` (built-in ones and ``protected``), with its label."""
    found = [(net, label) for net, label in RESTRICTED_NETWORKS if ip in net]
    found += [(net, "protected by the gateway (guest subnet or host address)") for net in protected if ip in net]
    return found


def is_restricted(ip: IPv4Address | str, protected: Iterable[IPv4Network] = ()) -> str | None:
    """Why ``ip`` is off-limits unless a rule names it (e.g. ``"loopback (127.0.0.0/8)"``), or None."""
    return _reason(restricted_blocks(IPv4Address(ip), protected))


def _reason(blocks: list[tuple[IPv4Network, str]]) -> str | None:
    return "; ".join(f"{label} ({net})" for net, label in blocks) or None


@dataclass(frozen=True, slots=True)
class Rule:
    """One policy rule: an action and the criteria a flow must match."""

    action: PolicyAction
    criteria: MatchCriteria

    def __post_init__(self) -> None:
        if not isinstance(self.action, PolicyAction):
            raise PolicyError(f"rule action must be a PolicyAction, not {self.action!r}")
        if not isinstance(self.criteria, MatchCriteria):
            raise PolicyError(f"rule criteria must be MatchCriteria, not {self.criteria!r}")

    def matches(self, flow: Flow) -> bool:
        # ALLOW needs every piece of domain evidence to agree; DENY/LOG any of it (module doc).
        return self.criteria.matches(flow, strict=self.action is PolicyAction.ALLOW)

    def describe(self) -> str:
        """One line for the TUI, e.g. ``allow domain *.github.com``."""
        return f"{self.action.value} {self.criteria.describe()}"

    def to_dict(self) -> dict[str, object]:
        return {"action": self.action.value, **criteria_to_data(self.criteria, flat=True)}

    @classmethod
    def from_dict(cls, data: object, path: tuple[str | int, ...] = ()) -> Rule:
        if not isinstance(data, dict) and not hasattr(data, "items"):
            raise PolicyError(f"a rule is a mapping with 'action' and criteria, found {data!r}", path)
        items = dict(data.items())
        if "action" not in items:
            raise PolicyError("the rule has no 'action' (allow, deny or log)", path)
        action = _parse_action(items.pop("action"), (*path, "action"), default=False)
        if not items:
            raise PolicyError("the rule has no criteria (write 'any: true' to match all traffic)", path)
        return cls(action, criteria_from_data(items, path))


@dataclass(frozen=True)
class PolicyWarning:
    """A lint finding about rule ``rule`` (0-based): ``note`` says what is wrong with it (a
    table's note column), ``str()`` the whole sentence."""

    rule: int
    note: str
    rule_text: str

    def __str__(self) -> str:
        return f"rule {self.rule + 1} ({self.rule_text}) is {self.note}"


_DNS_PORT = MatchCriteria.port(53)


def _opens_names(rule: Rule) -> bool:
    """Whether ``rule`` could allow a connection to any address a name resolves to (see
    :meth:`NetworkPolicy.evaluate_name`): an ALLOW that names no domain, pins no destination
    and reaches more than port 53 (which is never a connection: the gateway answers it)."""
    if rule.action is not PolicyAction.ALLOW or rule.criteria.has_domain():
        return False
    if covers(_DNS_PORT, rule.criteria):
        return False
    return not _pins_destination(rule.criteria)


def _pins_destination(criteria: MatchCriteria) -> bool:
    if isinstance(criteria, IpMatch):
        return True
    if isinstance(criteria, IpRangeMatch):
        return criteria.network.prefixlen > 0
    return isinstance(criteria, AllMatch) and any(_pins_destination(part) for part in criteria.criteria)


def _shadows(earlier: Rule, later: Rule) -> bool:
    """Whether ``earlier`` decides every flow ``later`` would match (see NetworkPolicy.lint)."""
    if earlier.action is PolicyAction.LOG or not covers(earlier.criteria, later.criteria):
        return False
    if (earlier.action is PolicyAction.ALLOW and later.action is PolicyAction.ALLOW
            and names_destinations(later.criteria) and not names_destinations(earlier.criteria)):
        return False
    return earlier.criteria.has_domain() or not later.criteria.has_domain()


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome for one flow or DNS name.

    ``action`` is ALLOW or DENY; ``rule_index`` the deciding rule (None: the default);
    ``logged`` the LOG rules the evaluation passed through; ``rule_text`` a line for the flow
    log; ``restricted`` why the destination is off-limits, when it is.
    """

    action: PolicyAction
    rule_index: int | None
    logged: tuple[int, ...] = ()
    rule_text: str = ""
    restricted: str | None = None

    @property
    def allowed(self) -> bool:
        return self.action is PolicyAction.ALLOW


def _parse_action(value: object, path: tuple[str | int, ...], default: bool) -> PolicyAction:
    choices = ("allow", "deny") if default else ("allow", "deny", "log")
    if isinstance(value, PolicyAction):
        text = value.value
    elif isinstance(value, str):
        text = value.strip().lower()
    else:
        text = None
    if text not in choices:
        raise PolicyError(f"expected {', '.join(choices[:-1])} or {choices[-1]}, found {value!r}", path)
    return PolicyAction(text)


@dataclass(frozen=True, slots=True)
class NetworkPolicy:
    """A default action (ALLOW or DENY) and ordered rules; immutable, built fluently."""

    default: PolicyAction = PolicyAction.DENY
    rules: tuple[Rule, ...] = field(default=())
    require_names: bool = True  # streams that present no name get no domain allow (module doc)

    def __post_init__(self) -> None:
        if self.default not in (PolicyAction.ALLOW, PolicyAction.DENY):
            raise PolicyError(f"the default must be allow or deny, not {self.default!r}", ("default",))
        if not isinstance(self.require_names, bool):
            raise PolicyError(f"require_names must be true or false, not {self.require_names!r}", ("require_names",))
        rules = tuple(self.rules)
        for i, rule in enumerate(rules):
            if not isinstance(rule, Rule):
                raise PolicyError(f"expected a Rule, found {rule!r}", ("rules", i))
        object.__setattr__(self, "rules", rules)

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def deny_all(cls) -> NetworkPolicy:
        return cls(PolicyAction.DENY)

    @classmethod
    def allow_all(cls) -> NetworkPolicy:
        return cls(PolicyAction.ALLOW)

    def rule(self, action: PolicyAction, criteria: MatchCriteria) -> NetworkPolicy:
        """A copy with one more rule at the end."""
        return replace(self, rules=(*self.rules, Rule(action, criteria)))

    def allow(self, criteria: MatchCriteria) -> NetworkPolicy:
        return self.rule(PolicyAction.ALLOW, criteria)

    def deny(self, criteria: MatchCriteria) -> NetworkPolicy:
        return self.rule(PolicyAction.DENY, criteria)

    def log(self, criteria: MatchCriteria) -> NetworkPolicy:
        return self.rule(PolicyAction.LOG, criteria)

    def allow_dns(self) -> NetworkPolicy:
        """UDP port 53 (capsa's meaning): DNS as a service; domain rules still decide names."""
        return self.allow(MatchCriteria.all(MatchCriteria.protocol(Protocol.UDP), MatchCriteria.port(53)))

    def allow_https(self) -> NetworkPolicy:
        """TCP port 443."""
        return self.allow(MatchCriteria.all(MatchCriteria.protocol(Protocol.TCP), MatchCriteria.port(443)))

    def allow_port(self, port: int) -> NetworkPolicy:
        """``port`` over any protocol."""
        return self.allow(MatchCriteria.port(port))

    def allow_tcp_port(self, port: int) -> NetworkPolicy:
        return self.allow(MatchCriteria.all(MatchCriteria.protocol(Protocol.TCP), MatchCriteria.port(port)))

    def allow_udp_port(self, port: int) -> NetworkPolicy:
        return self.allow(MatchCriteria.all(MatchCriteria.protocol(Protocol.UDP), MatchCriteria.port(port)))

    def allow_port_range(self, start: int, end: int) -> NetworkPolicy:
        return self.allow(MatchCriteria.port_range(start, end))

    def allow_ip(self, ip: IPv4Address | str) -> NetworkPolicy:
        return self.allow(MatchCriteria.ip(ip))

    def allow_ip_range(self, network: str, prefix: int | None = None) -> NetworkPolicy:
        return self.allow(MatchCriteria.ip_range(network, prefix))

    def allow_domain(self, pattern: str) -> NetworkPolicy:
        return self.allow(MatchCriteria.domain(pattern))

    def deny_port(self, port: int) -> NetworkPolicy:
        return self.deny(MatchCriteria.port(port))

    def deny_ip(self, ip: IPv4Address | str) -> NetworkPolicy:
        return self.deny(MatchCriteria.ip(ip))

    def deny_ip_range(self, network: str, prefix: int | None = None) -> NetworkPolicy:
        return self.deny(MatchCriteria.ip_range(network, prefix))

    def deny_domain(self, pattern: str) -> NetworkPolicy:
        return self.deny(MatchCriteria.domain(pattern))

    # -- editing (the TUI's rule editor) ----------------------------------------------------
    def with_default(self, action: PolicyAction) -> NetworkPolicy:
        return replace(self, default=action)

    def with_require_names(self, required: bool = True) -> NetworkPolicy:
        """A copy where a stream that presents no name gets no domain allow (True), or is
        decided on DNS evidence alone (False). See the module docstring."""
        return replace(self, require_names=required)

    def with_rule(self, rule: Rule, index: int | None = None) -> NetworkPolicy:
        """A copy with ``rule`` inserted before ``index`` (appended when None)."""
        rules = list(self.rules)
        if index is None:
            rules.append(rule)
        else:
            if not 0 <= index <= len(rules):
                raise PolicyError(f"cannot insert at {index}: the policy has {len(rules)} rules", ("rules",))
            rules.insert(index, rule)
        return replace(self, rules=tuple(rules))

    def without_rule(self, index: int) -> NetworkPolicy:
        self._check_index(index)
        return replace(self, rules=self.rules[:index] + self.rules[index + 1:])

    def replace_rule(self, index: int, rule: Rule) -> NetworkPolicy:
        self._check_index(index)
        return replace(self, rules=(*self.rules[:index], rule, *self.rules[index + 1:]))

    def move_rule(self, index: int, to: int) -> NetworkPolicy:
        """A copy with the rule at ``index`` moved so that it ends up at position ``to``."""
        self._check_index(index)
        self._check_index(to)
        rules = list(self.rules)
        rules.insert(to, rules.pop(index))
        return replace(self, rules=tuple(rules))

    def _check_index(self, index: int) -> None:
        if not 0 <= index < len(self.rules):
            raise PolicyError(f"no rule {index}: the policy has {len(self.rules)} rules", ("rules", index))

    # -- decisions --------------------------------------------------------------------------
    @property
    def has_domain_rules(self) -> bool:
        """Whether any rule looks at names (only then is reading SNI/Host worth it)."""
        return any(r.criteria.has_domain() for r in self.rules)

    def presented_name(self, name: str | None) -> str | None:
        """``Flow.sni_or_host`` for a stream whose reader is done: ``name`` as read, except that
        a stream that presented none (None) becomes ``""`` under ``require_names``."""
        return "" if name is None and self.require_names else name

    def evaluate(self, flow: Flow, protected: Iterable[IPv4Network] = ()) -> Decision:
        """Decide a new flow: first ALLOW/DENY rule that matches, else the default.

        ``protected``: networks off-limits besides the built-in ones (the gateway's guest subnet,
        the host's own addresses). See the module docstring for domain and off-limits rules.
        """
        found = restricted_blocks(flow.dst_ip, protected)
        blocks = [net for net, _ in found]
        reason = _reason(found)
        logged: list[int] = []
        passed_over: int | None = None
        for i, rule in enumerate(self.rules):
            if not rule.matches(flow):
                continue
            if rule.action is PolicyAction.LOG:
                logged.append(i)
                continue
            if rule.action is PolicyAction.ALLOW and blocks and not rule.criteria.names_address(flow, blocks):
                # This allow does not name the off-limits destination; a later rule may.
                passed_over = i if passed_over is None else passed_over
                continue
            return Decision(rule.action, i, tuple(logged), rule.describe(), reason)
        text = f"default {self.default.value}"
        if reason and (self.default is PolicyAction.ALLOW or passed_over is not None):
            by = ("the default allow" if passed_over is None
                  else f"rule {passed_over + 1} ({self.rules[passed_over].describe()})")
            text = f"deny {flow.dst_ip}: {reason}; {by} does not name it"
            return Decision(PolicyAction.DENY, None, tuple(logged), text, reason)
        if self.default is PolicyAction.DENY and flow.sni_or_host == "":
            text = self._nameless_text(flow) or text
        return Decision(self.default, None, tuple(logged), text, reason)

    def _nameless_text(self, flow: Flow) -> str | None:
        """Why a stream with no readable name is denied, when a domain allow would take it by
        DNS evidence alone (for the flow log), else None."""
        bare = replace(flow, sni_or_host=None)
        for i, rule in enumerate(self.rules):
            if rule.action is PolicyAction.ALLOW and rule.criteria.has_domain() and rule.matches(bare):
                return (f"deny: no name read on the connection (or an unreadable one); rule {i + 1} "
                        f"({rule.describe()}) allows by name only")
        return None

    def evaluate_name(self, name: str, protocol: Protocol = Protocol.UDP, port: int = 53) -> Decision:
        """Decide whether the gateway may resolve ``name`` for the guest (DENY: NXDOMAIN, no upstream).

        The principle: a name is resolved (and only then forwarded upstream) when some rule of
        the policy could allow a connection to it. Anything else would let a guest that may
        reach nothing still leak data through the names it asks about (``secret123.exfil.test``).

        Rules split in two kinds. *Name rules* have a domain criterion; such a rule matches the
        name when its domain criteria match it and — for DENY only — it has no other criterion
        but ``any`` (a rule that denies a name only on port 25 must not hide the name; an ALLOW
        of the name on port 443 must let it resolve). *Transport rules* (no domain criterion,
        e.g. ``allow_dns``, ``deny_port(53)``, ``any``) are matched against the DNS service itself,
        by ``protocol`` and ``port`` alone: ``ip``/``ip_range`` criteria never match it (the
        query goes to the gateway, whose upstream is not the guest's business, so
        ``deny_ip_range("10.0.0.0", 8)`` does not switch DNS off). Walking the rules in order:

        * a matching name rule decides (LOG: recorded, go on);
        * the first matching transport rule, if DENY, decides (DNS itself is refused before any
          name rule spoke); if ALLOW it is remembered and the walk goes on, so ``allow_dns()``
          first does not hide a later ``deny_domain``;
        * at the end, with DNS as a service allowed (a remembered transport ALLOW, or the
          default ALLOW), the name resolves only if the policy could allow a connection to
          whatever address it has: the default is ALLOW, or some ALLOW rule without a domain
          criterion is *open*, i.e. its criteria do not pin the destination to an ``ip`` or
          ``ip_range`` (``0.0.0.0/0`` pins nothing) and it does not match port 53 only (port 53
          anywhere is the gateway's own resolver, never a connection). Otherwise DENY.

        So: ``deny_all().allow_dns().allow_domain("x.test")`` resolves only names under
        ``x.test`` (the allow-domain rule), ``deny_all().allow_dns().allow_https()`` resolves
        names (any address on 443 may be reached by name), ``deny_all().allow_dns()`` alone
        resolves nothing, and an allow-all resolves everything not denied; ``deny_domain``
        wins wherever it stands. A rule that allows only addresses (``allow_ip``,
        ``allow_ip_range``) makes no name resolve: which names point into the range is known
        only after asking upstream, which is the leak. Name such services with a static host
        or an allow-domain rule. Without ``allow_dns()`` under a default DENY, only names an
        allow-domain rule covers resolve (and the profile's static hosts, which never go upstream,
        are decided by this method like any name).
        """
        qname = canonical_name(name)
        logged: list[int] = []
        transport: int | None = None
        for i, rule in enumerate(self.rules):
            if rule.criteria.has_domain():
                if not rule.criteria.name_match(qname, deny=rule.action is PolicyAction.DENY):
                    continue
                if rule.action is PolicyAction.LOG:
                    logged.append(i)
                    continue
                return Decision(rule.action, i, tuple(logged), rule.describe())
            if not rule.criteria.matches_service(protocol, port):
                continue
            if rule.action is PolicyAction.LOG:
                logged.append(i)
            elif transport is None:
                if rule.action is PolicyAction.DENY:
                    return Decision(PolicyAction.DENY, i, tuple(logged), rule.describe())
                transport = i
        if transport is None and self.default is PolicyAction.DENY:
            return Decision(PolicyAction.DENY, None, tuple(logged), "default deny")
        if self.default is PolicyAction.ALLOW or self._has_open_rule():
            if transport is not None:
                return Decision(PolicyAction.ALLOW, transport, tuple(logged), self.rules[transport].describe())
            return Decision(PolicyAction.ALLOW, None, tuple(logged), "default allow")
        return Decision(PolicyAction.DENY, None, tuple(logged),
                        f"deny name {qname}: no rule allows a connection to it, so it is not resolved")

    def _has_open_rule(self) -> bool:
        """Whether an ALLOW rule open to any address (:func:`_opens_names`) is ever reached: one
        that an earlier ALLOW or DENY decides every flow of (``deny_port(443)`` before
        ``allow_https()``) lets no connection through, so it opens no name either."""
        return any(_opens_names(rule) and not any(_shadows(self.rules[i], rule) for i in range(j))
                   for j, rule in enumerate(self.rules))

    # -- presentation and plain data ------------------------------------------------------
    def describe(self) -> str:
        """Numbered rules (from 1) and the default, one per line."""
        lines = [f"{i + 1}. {rule.describe()}" for i, rule in enumerate(self.rules)]
        if not self.require_names:
            lines.append("unnamed connections: allowed on DNS evidence (require_names: false)")
        return "\n".join([*lines, f"default: {self.default.value}"])

    def lint(self) -> list[PolicyWarning]:
        """Warnings for the editor, certain ones only (see :func:`covers`), in rule order:

        * a rule no flow reaches: an earlier ALLOW/DENY rule matches every flow it matches. Not
          when the later rule is an ALLOW naming destinations after an earlier ALLOW that does not
          (that one is passed over for off-limits addresses it does not name), nor when only the
          later rule has a domain criterion (it still decides DNS questions: :meth:`evaluate_name`);
        * an ALLOW of a domain the gateway's resolver refuses: the gateway knows a name's
          addresses only from the answers it serves, so no flow can ever carry that name;
        * an ALLOW of port 53 only (``allow_dns()``) in a policy where no name can resolve: no
          allow-domain rule, no rule open to any address and a default DENY, so
          :meth:`evaluate_name` refuses every name and the rule does nothing.
        """
        warnings: list[PolicyWarning] = []
        allows_a_domain = any(rule.action is PolicyAction.ALLOW and rule.criteria.has_domain() for rule in self.rules)
        resolves_nothing = self.default is PolicyAction.DENY and not allows_a_domain and not self._has_open_rule()
        for j, later in enumerate(self.rules):
            shadow = next((i for i in range(j) if _shadows(self.rules[i], later)), None)
            if shadow is not None:
                earlier = self.rules[shadow]
                why = ("matches all traffic" if earlier.criteria == MatchCriteria.any()
                       else f"({earlier.describe()}) matches every flow it matches")
                warnings.append(PolicyWarning(j, f"never reached: rule {shadow + 1} {why}", later.describe()))
                continue
            if later.action is not PolicyAction.ALLOW:
                continue
            if resolves_nothing and covers(_DNS_PORT, later.criteria):
                warnings.append(PolicyWarning(
                    j, "resolving no name: no rule allows a connection to a name's address "
                       "(add an allow-domain rule, or a rule open to any address)", later.describe()))
                continue
            for pattern in domain_patterns(later.criteria):
                name = pattern.name if pattern.kind == "exact" else f"any.{pattern.name}"
                refused = self.evaluate_name(name)
                if refused.action is PolicyAction.DENY:
                    by = "the default" if refused.rule_index is None else f"rule {refused.rule_index + 1}"
                    warnings.append(PolicyWarning(
                        j, f"never matched: the gateway refuses DNS for {pattern} ({by})", later.describe()))
                    break
        return warnings

    def to_dict(self) -> dict[str, object]:
        """Plain data for YAML: ``{"default": "deny", "rules": [{"action": "allow", ...}, ...]}``,
        plus ``"require_names": False`` when it is off (left out at its default, True)."""
        data: dict[str, object] = {"default": self.default.value, "rules": [rule.to_dict() for rule in self.rules]}
        if not self.require_names:
            data["require_names"] = False
        return data

    @classmethod
    def from_dict(cls, data: object) -> NetworkPolicy:
        """The inverse of :meth:`to_dict`; ``default`` may be left out (deny). Raises PolicyError."""
        if not hasattr(data, "items"):
            raise PolicyError(f"a policy is a mapping with 'default' and 'rules', found {data!r}")
        items = dict(data.items())
        unknown = sorted(set(items) - {"default", "rules", "require_names"}, key=str)
        if unknown:
            raise PolicyError(f"unknown key {unknown[0]!r} (a policy has 'default', 'rules' and 'require_names')",
                              (str(unknown[0]),))
        require_names = items.get("require_names", True)
        if not isinstance(require_names, bool):
            raise PolicyError(f"expected true or false, found {require_names!r}", ("require_names",))
        default = _parse_action(items.get("default", "deny"), ("default",), default=True)
        raw_rules = items.get("rules", [])
        if raw_rules is None:
            raw_rules = []
        if isinstance(raw_rules, (str, bytes)) or not isinstance(raw_rules, Iterable) or hasattr(raw_rules, "items"):
            raise PolicyError(f"expected a list of rules, found {raw_rules!r}", ("rules",))
        return cls(default, tuple(Rule.from_dict(r, ("rules", i)) for i, r in enumerate(raw_rules)), require_names)

