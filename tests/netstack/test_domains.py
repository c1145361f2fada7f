"""Domain patterns (exact, wildcard, IDNA, odd wire names) and the DomainTracker (TTL, LRU,
CNAME chains from dnspython responses)."""
from __future__ import annotations

from ipaddress import IPv4Address

import dns.message
import dns.rrset
import pytest

from engine.netstack.domains import DomainPattern, DomainTracker, PolicyError, format_path
from engine.netstack.policy.criteria import MatchCriteria as M


# -- domain patterns -----------------------------------------------------------------------
@pytest.mark.parametrize("pattern, name, expected", [
    ("*.github.com", "a.github.com", True),
    ("*.github.com", "a.b.c.github.com", True),
    ("*.github.com", "github.com", False),            # the apex is not a subdomain
    ("*.github.com", "evilgithub.com", False),
    ("*.github.com", "github.com.evil.net", False),
    ("*.github.com", "A.GitHub.COM.", True),           # case and trailing dot
    ("*.github.com", "github.com.", False),
    ("*.GitHub.com.", "api.github.com", True),
    ("api.example.com", "api.example.com", True),
    ("api.example.com", "API.Example.Com.", True),
    ("api.example.com", "x.api.example.com", False),
    ("api.example.com", "example.com", False),
    ("api.example.com", "api.example.com..", False),
    ("*.bücher.example", "www.xn--bcher-kva.example", True),   # IDNA
    ("bücher.example", "XN--BCHER-KVA.EXAMPLE", True),
    ("k.example", "\u212a.example", False),            # KELVIN SIGN is not "k" on the wire
    ("*.github.com", "a b.github.com", False),         # not a plain name: never allowed
    ("*.github.com", "", False),
])
def test_domain_pattern(pattern: str, name: str, expected: bool) -> None:
    assert DomainPattern.parse(pattern).matches(name) is expected


def test_odd_names_match_by_suffix_on_the_deny_side() -> None:
    pattern = DomainPattern.parse("*.evil.com")
    for name in ("a b.evil.com", "x\\032.evil.com", "\u212a.evil.com"):
        assert not pattern.matches(name)
        assert pattern.matches(name, plain_only=False)


def test_domain_pattern_constructors() -> None:
    assert DomainPattern.exact("API.example.com.") == DomainPattern("exact", "api.example.com")
    assert DomainPattern.wildcard("*.github.com") == DomainPattern.wildcard("github.com") == DomainPattern("wildcard", "github.com")
    assert str(DomainPattern.parse("*.GitHub.com")) == "*.github.com"
    assert M.domain("*.github.com") == M.domain(DomainPattern.wildcard("github.com"))


@pytest.mark.parametrize("bad", ["", " ", ".", "*", "*.", "a.*.com", "*a.com", "a*.com", "-a.com", "a-.com",
                                 "a..com", "a b.com", "a" * 64 + ".com", ".".join(["abcdefghi"] * 26), "a/b"])
def test_bad_domain_patterns(bad: str) -> None:
    with pytest.raises(PolicyError):
        M.domain(bad)


# -- the domain tracker --------------------------------------------------------------------
def test_tracker_record_and_expiry() -> None:
    tracker = DomainTracker(min_ttl=0)
    tracker.record("Api.Example.com.", ["1.2.3.4", IPv4Address("1.2.3.5")], ttl=30, now=100)
    tracker.record("other.example", ["1.2.3.4"], ttl=10, now=100)
    assert tracker.domains_for(IPv4Address("1.2.3.4"), 105) == {"api.example.com", "other.example"}
    assert tracker.domains_for("1.2.3.5", 105) == {"api.example.com"}
    assert tracker.domains_for("1.2.3.4", 110) == {"api.example.com"}  # other.example expired
    assert tracker.domains_for("1.2.3.4", 130) == frozenset()
    assert tracker.domains_for("9.9.9.9", 100) == frozenset()
    assert tracker.domains_for("not an ip", 100) == frozenset()
    assert len(tracker) == 1  # 1.2.3.5's entry is still there, the looked-up ones were dropped
    assert tracker.expire(1000) == 1 and len(tracker) == 0


def test_tracker_ttl_clamps_and_longest_expiry_wins() -> None:
    tracker = DomainTracker(min_ttl=60, max_ttl=3600)
    tracker.record("a.example", ["1.1.1.1"], ttl=0, now=0)
    assert tracker.domains_for("1.1.1.1", 59) == {"a.example"}      # a 0 s TTL still holds a minute
    assert tracker.domains_for("1.1.1.1", 61) == frozenset()
    tracker.record("b.example", ["2.2.2.2"], ttl=10**9, now=0)
    assert tracker.domains_for("2.2.2.2", 3601) == frozenset()
    tracker.record("c.example", ["3.3.3.3"], ttl=600, now=0)
    tracker.record("c.example", ["3.3.3.3"], ttl=60, now=10)          # shorter answer later
    assert tracker.domains_for("3.3.3.3", 500) == {"c.example"}
    tracker.record("d.example", ["junk", "4.4.4.4"], ttl=float("inf"), now=0)
    assert tracker.domains_for("4.4.4.4", 100) == {"d.example"}


def test_tracker_is_bounded_lru() -> None:
    tracker = DomainTracker(max_entries=3, min_ttl=0)
    for i in range(3):
        tracker.record(f"n{i}.example", [f"1.0.0.{i}"], ttl=100, now=0)
    assert tracker.domains_for("1.0.0.0", 1) == {"n0.example"}        # touch: n1 is now oldest
    tracker.record("n3.example", ["1.0.0.3"], ttl=100, now=1)
    assert len(tracker) == 3
    assert tracker.domains_for("1.0.0.1", 2) == frozenset()
    assert tracker.domains_for("1.0.0.0", 2) == {"n0.example"}
    assert tracker.domains_for("1.0.0.3", 2) == {"n3.example"}


def _response(qname: str, *answers: tuple[str, int, str, str]) -> dns.message.Message:
    query = dns.message.make_query(qname, "A")
    response = dns.message.make_response(query)
    for name, ttl, rdtype, value in answers:
        response.answer.append(dns.rrset.from_text(name, ttl, "IN", rdtype, value))
    return response


def test_tracker_records_cname_chains_from_responses() -> None:
    tracker = DomainTracker(min_ttl=0)
    response = _response("www.example.com",
                         ("www.example.com.", 300, "CNAME", "edge.cdn.example.net."),
                         ("edge.cdn.example.net.", 120, "CNAME", "a1.cdn.example.net."),
                         ("a1.cdn.example.net.", 60, "A", "203.0.113.7"),
                         ("unrelated.example.", 300, "A", "203.0.113.8"))   # stray: not on the chain
    assert tracker.record_response(response, now=0) == 1
    assert tracker.domains_for("203.0.113.7", 59) == {"www.example.com", "edge.cdn.example.net", "a1.cdn.example.net"}
    assert tracker.domains_for("203.0.113.7", 61) == frozenset()      # the chain's smallest TTL
    assert tracker.domains_for("203.0.113.8", 1) == frozenset()
    loop = _response("a.example", ("a.example.", 60, "CNAME", "b.example."), ("b.example.", 60, "CNAME", "a.example."))
    assert tracker.record_response(loop, now=0) == 0
    assert tracker.record_response(_response("empty.example"), now=0) == 0
    aaaa = _response("v6.example", ("v6.example.", 60, "AAAA", "2001:db8::1"))
    assert tracker.record_response(aaaa, now=0) == 1
    assert tracker.domains_for("2001:db8::1", 1) == {"v6.example"}


def test_format_path() -> None:
    assert format_path(("rules", 2, "all", 0, "port")) == "rules[2].all[0].port"
    assert format_path(()) == ""
    assert str(PolicyError("bad", ("default",))) == "default: bad"
