"""Tests of the gateway's DNS core: static hosts, policy, forwarding, timeouts and bad input."""
from __future__ import annotations

import random
import struct
from ipaddress import IPv4Address, IPv4Network
from typing import Iterable

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import given, settings, strategies as st

from engine.netstack.dns import DnsCore, Forward, NameVerdict, Reply

CLIENT = ("10.0.2.15", 40000)
STATIC = {"Api.Example.Test.": [IPv4Address("10.0.2.100")], "multi.test": ["10.0.2.101", "10.0.2.102"]}


class Filter:
    """Denies names ending in one of ``denied`` (a stand-in for NetworkPolicy.evaluate_name)."""

    def __init__(self, *denied: str) -> None:
        self.denied = denied
        self.asked: list[str] = []

    def __call__(self, name: str) -> NameVerdict:
        self.asked.append(name)
        for suffix in self.denied:
            if name == suffix or name.endswith("." + suffix):
                return NameVerdict(False, f"deny domain *.{suffix}")
        return NameVerdict(True, "default allow")


class Recorder:
    """Collects what DomainTracker.record would learn."""

    def __init__(self) -> None:
        self.records: list[tuple[str, list[IPv4Address], float, float]] = []

    def record(self, name: str, ips: Iterable[IPv4Address], ttl: float, now: float) -> None:
        self.records.append((name, list(ips), ttl, now))


def core(*denied: str, **kwargs: object) -> tuple[DnsCore, Recorder]:
    rec = Recorder()
    return DnsCore(STATIC, Filter(*denied), rec, rng=random.Random(7), **kwargs), rec  # type: ignore[arg-type]


def query(name: str, rdtype: str = "A", qid: int = 4242, edns: bool = False) -> bytes:
    msg = dns.message.make_query(name, rdtype, use_edns=0 if edns else None, id=qid)
    return msg.to_wire()


def reply_of(actions: list, qid: int = 4242) -> dns.message.Message:
    assert len(actions) == 1 and isinstance(actions[0], Reply), actions
    assert actions[0].client == CLIENT
    msg = dns.message.from_wire(actions[0].wire)
    assert msg.id == qid and msg.flags & dns.flags.QR
    return msg


def a_addresses(msg: dns.message.Message) -> list[str]:
    return [rd.address for rrset in msg.answer if rrset.rdtype == dns.rdatatype.A for rd in rrset]


def upstream_answer(fwd: Forward, records: list[tuple[str, str, int, str]], rcode: int = dns.rcode.NOERROR,
                    qid: int | None = None, soa: bool = False, tc: bool = False) -> bytes:
    """The resolver's answer to ``fwd``: records are (owner, type, ttl, rdata)."""
    upq = dns.message.from_wire(fwd.wire)
    resp = dns.message.make_response(upq)
    resp.flags |= dns.flags.RA | (dns.flags.TC if tc else 0)
    resp.set_rcode(rcode)
    for owner, rdtype, ttl, data in records:
        resp.answer.append(dns.rrset.from_text(owner, ttl, "IN", rdtype, data))
    if soa:
        resp.authority.append(dns.rrset.from_text("example.com.", 3600, "IN", "SOA",
                                                  "ns. host. 1 2 3 4 600"))
    if qid is not None:
        resp.id = qid
    return resp.to_wire(max_size=65535)


def forward_of(actions: list) -> Forward:
    assert len(actions) == 1 and isinstance(actions[0], Forward), actions
    return actions[0]


# -- static hosts -------------------------------------------------------------------------------
def test_static_answer_case_insensitive_and_recorded() -> None:
    c, rec = core()
    for name in ("api.example.test", "API.EXAMPLE.TEST.", "aPi.ExAmPlE.tEsT"):
        msg = reply_of(c.handle_query(query(name), CLIENT, 1.0))
        assert msg.rcode() == dns.rcode.NOERROR and msg.flags & dns.flags.AA
        assert a_addresses(msg) == ["10.0.2.100"] and msg.answer[0].ttl == 60
    assert rec.records[0] == ("api.example.test", [IPv4Address("10.0.2.100")], 60, 1.0)
    msg = reply_of(c.handle_query(query("multi.test", "ANY"), CLIENT, 1.0))
    assert sorted(a_addresses(msg)) == ["10.0.2.101", "10.0.2.102"]
    events = c.poll_events()
    assert [e.action for e in events] == ["static"] * 4 and events[0].name == "api.example.test"
    assert c.poll_events() == []


def test_static_aaaa_and_other_types_are_nodata() -> None:
    c, rec = core()
    for rdtype in ("AAAA", "MX", "TXT", "CNAME"):
        msg = reply_of(c.handle_query(query("api.example.test", rdtype), CLIENT, 0.0))
        assert msg.rcode() == dns.rcode.NOERROR and msg.answer == []
    assert rec.records == []


def test_https_and_svcb_nodata_never_forwarded() -> None:
    c, _ = core()
    for name in ("api.example.test", "www.example.com"):
        for rdtype in ("HTTPS", "SVCB"):
            msg = reply_of(c.handle_query(query(name, rdtype), CLIENT, 0.0))
            assert msg.rcode() == dns.rcode.NOERROR and msg.answer == []
    assert c.counters["https_svcb_refused"] == 4 and c.pending_count() == 0


# -- policy -------------------------------------------------------------------------------------
def test_denied_name_nxdomain_without_forward() -> None:
    c, _ = core("evil.com")
    for name, rdtype in (("www.evil.com", "A"), ("EVIL.COM.", "AAAA"), ("x.evil.com", "HTTPS")):
        msg = reply_of(c.handle_query(query(name, rdtype), CLIENT, 5.0))
        assert msg.rcode() == dns.rcode.NXDOMAIN and msg.answer == []
    assert c.pending_count() == 0 and c.counters["denied"] == 3
    ev = c.poll_events()[0]
    assert (ev.name, ev.qtype, ev.action, ev.reason, ev.client, ev.time) == \
        ("www.evil.com", "A", "deny", "deny domain *.evil.com", CLIENT, 5.0)


def test_denied_static_host_is_nxdomain() -> None:
    c, rec = core("example.test")
    msg = reply_of(c.handle_query(query("api.example.test"), CLIENT, 0.0))
    assert msg.rcode() == dns.rcode.NXDOMAIN and rec.records == []


def test_bool_filter_is_accepted() -> None:
    c = DnsCore({}, lambda name: name != "no.test")
    assert reply_of(c.handle_query(query("no.test"), CLIENT, 0.0)).rcode() == dns.rcode.NXDOMAIN


# -- forwarding ---------------------------------------------------------------------------------
def test_forward_round_trip_with_id_rewrite() -> None:
    c, rec = core()
    fwd = forward_of(c.handle_query(query("WWW.Example.com", qid=777, edns=True), CLIENT, 10.0))
    up = dns.message.from_wire(fwd.wire)
    assert up.id == fwd.upstream_id and up.flags & dns.flags.RD and not fwd.tcp
    assert str(up.question[0].name).lower() == "www.example.com." and up.question[0].rdtype == dns.rdatatype.A
    assert c.next_timer() == 12.0 and c.poll_events()[0].action == "allow"
    actions = c.handle_upstream(upstream_answer(fwd, [("www.example.com.", "A", 3600, "93.184.216.34"),
                                                      ("www.example.com.", "AAAA", 60, "2001:db8::1"),
                                                      ("junk.example.org.", "A", 60, "6.6.6.6")]), 10.5)
    msg = reply_of(actions, qid=777)
    assert msg.rcode() == dns.rcode.NOERROR and msg.flags & dns.flags.RA and msg.edns == 0
    assert a_addresses(msg) == ["93.184.216.34"] and msg.answer[0].ttl == 300     # capped
    assert rec.records == [("www.example.com", [IPv4Address("93.184.216.34")], 300, 10.5)]
    assert c.pending_count() == 0 and c.next_timer() is None


def test_ttl_floor_for_the_tracker() -> None:
    c, rec = core()
    fwd = forward_of(c.handle_query(query("zero.example.com"), CLIENT, 0.0))
    msg = reply_of(c.handle_upstream(upstream_answer(fwd, [("zero.example.com.", "A", 0, "1.2.3.4")]), 0.1))
    assert msg.answer[0].ttl == 0 and rec.records[0][2] == 60


def test_aaaa_forwarded_and_stripped() -> None:
    c, rec = core()
    fwd = forward_of(c.handle_query(query("v6.example.com", "AAAA"), CLIENT, 0.0))
    assert dns.message.from_wire(fwd.wire).question[0].rdtype == dns.rdatatype.AAAA
    msg = reply_of(c.handle_upstream(upstream_answer(fwd, [("v6.example.com.", "AAAA", 60, "2001:db8::1")]), 0.1))
    assert msg.rcode() == dns.rcode.NOERROR and msg.answer == [] and rec.records == []


def test_nxdomain_passes_through_with_soa() -> None:
    c, rec = core()
    fwd = forward_of(c.handle_query(query("nope.example.com"), CLIENT, 0.0))
    msg = reply_of(c.handle_upstream(upstream_answer(fwd, [], dns.rcode.NXDOMAIN, soa=True), 0.1))
    assert msg.rcode() == dns.rcode.NXDOMAIN and msg.authority[0].rdtype == dns.rdatatype.SOA
    assert msg.authority[0].ttl == 300 and rec.records == []


def test_upstream_servfail_and_refused_become_servfail() -> None:
    c, _ = core()
    fwd = forward_of(c.handle_query(query("a.example.com"), CLIENT, 0.0))
    msg = reply_of(c.handle_upstream(upstream_answer(fwd, [], dns.rcode.REFUSED), 0.1))
    assert msg.rcode() == dns.rcode.SERVFAIL


def test_cname_chain_recorded_for_every_name() -> None:
    c, rec = core()
    fwd = forward_of(c.handle_query(query("www.shop.com"), CLIENT, 0.0))
    answer = upstream_answer(fwd, [("www.shop.com.", "CNAME", 200, "shop.cdn.net."),
                                   ("shop.cdn.net.", "CNAME", 100, "edge.cdn.net."),
                                   ("edge.cdn.net.", "A", 250, "5.6.7.8"),
                                   ("edge.cdn.net.", "A", 250, "5.6.7.9")])
    msg = reply_of(c.handle_upstream(answer, 1.0))
    assert [r.rdtype for r in msg.answer] == [dns.rdatatype.CNAME, dns.rdatatype.CNAME, dns.rdatatype.A]
    assert all(r.ttl == 100 for r in msg.answer)
    ips = [IPv4Address("5.6.7.8"), IPv4Address("5.6.7.9")]
    assert [(n, sorted(i), t) for n, i, t, _ in rec.records] == \
        [("www.shop.com", ips, 100), ("shop.cdn.net", ips, 100), ("edge.cdn.net", ips, 100)]


def test_cname_to_denied_name_is_nxdomain() -> None:
    c, rec = core("evil.com")
    fwd = forward_of(c.handle_query(query("innocent.example.com"), CLIENT, 0.0))
    c.poll_events()
    answer = upstream_answer(fwd, [("innocent.example.com.", "CNAME", 60, "x.evil.com."),
                                   ("x.evil.com.", "A", 60, "6.6.6.6")])
    msg = reply_of(c.handle_upstream(answer, 1.0))
    assert msg.rcode() == dns.rcode.NXDOMAIN and msg.answer == [] and rec.records == []
    ev = c.poll_events()[0]
    assert ev.action == "deny" and ev.name == "x.evil.com" and "innocent.example.com" in ev.reason


def test_cname_loop_terminates() -> None:
    c, _ = core()
    fwd = forward_of(c.handle_query(query("a.loop.com"), CLIENT, 0.0))
    answer = upstream_answer(fwd, [("a.loop.com.", "CNAME", 60, "b.loop.com."),
                                   ("b.loop.com.", "CNAME", 60, "a.loop.com.")])
    assert reply_of(c.handle_upstream(answer, 1.0)).answer


def test_unknown_and_mismatched_upstream_dropped() -> None:
    c, _ = core()
    fwd = forward_of(c.handle_query(query("www.example.com"), CLIENT, 0.0))
    good = [("www.example.com.", "A", 60, "1.1.1.1")]
    assert c.handle_upstream(upstream_answer(fwd, good, qid=(fwd.upstream_id + 1) % 65536), 0.1) == []
    other = dns.message.make_response(dns.message.make_query("other.example.com", "A", id=fwd.upstream_id))
    assert c.handle_upstream(other.to_wire(), 0.1) == []
    aaaa = dns.message.make_response(dns.message.make_query("www.example.com", "AAAA", id=fwd.upstream_id))
    assert c.handle_upstream(aaaa.to_wire(), 0.1) == []
    assert c.handle_upstream(fwd.wire, 0.1) == []                  # a query, not a response
    assert c.handle_upstream(b"\x00\x01garbage", 0.1) == []
    assert c.counters["upstream_unknown_id"] == 2 and c.counters["upstream_mismatch"] == 2
    assert c.counters["upstream_malformed"] == 1
    assert c.pending_count() == 1                                  # the real answer still counts
    assert a_addresses(reply_of(c.handle_upstream(upstream_answer(fwd, good), 0.2))) == ["1.1.1.1"]
    assert c.handle_upstream(upstream_answer(fwd, good), 0.3) == []   # answered only once


def test_retransmitted_query_not_forwarded_twice() -> None:
    c, _ = core()
    forward_of(c.handle_query(query("www.example.com"), CLIENT, 0.0))
    assert c.handle_query(query("www.example.com"), CLIENT, 0.5) == []
    forward_of(c.handle_query(query("www.example.com", qid=5), CLIENT, 0.5))
    assert c.pending_count() == 2


def test_timeout_retry_then_servfail() -> None:
    c, _ = core(upstream_timeout=3.0, upstream_retries=1)
    fwd = forward_of(c.handle_query(query("slow.example.com", qid=9), CLIENT, 0.0))
    assert c.tick(2.9) == []
    retry = forward_of(c.tick(3.0))
    assert retry.upstream_id == fwd.upstream_id and retry.wire == fwd.wire and retry.attempt == 1
    assert c.next_timer() == 6.0
    msg = reply_of(c.tick(6.0), qid=9)
    assert msg.rcode() == dns.rcode.SERVFAIL and c.pending_count() == 0
    assert c.counters["upstream_timeouts"] == 1 and c.tick(100.0) == []


def test_truncated_upstream_retried_over_tcp() -> None:
    c, _ = core()
    fwd = forward_of(c.handle_query(query("big.example.com"), CLIENT, 0.0))
    tcp = forward_of(c.handle_upstream(upstream_answer(fwd, [], tc=True), 0.1))
    assert tcp.tcp and tcp.upstream_id == fwd.upstream_id
    msg = reply_of(c.handle_upstream(upstream_answer(fwd, [("big.example.com.", "A", 60, "1.2.3.4")]), 0.2))
    assert a_addresses(msg) == ["1.2.3.4"]


def test_large_answer_truncated_for_udp_client() -> None:
    c, _ = core()
    fwd = forward_of(c.handle_query(query("many.example.com"), CLIENT, 0.0))
    records = [("many.example.com.", "A", 60, f"10.1.{i // 250}.{i % 250}") for i in range(100)]
    msg = reply_of(c.handle_upstream(upstream_answer(fwd, records), 0.1))
    assert msg.flags & dns.flags.TC and msg.answer == []
    fwd = forward_of(c.handle_query(query("many.example.com", qid=1), CLIENT, 1.0, tcp=True))
    assert fwd.tcp
    msg = reply_of(c.handle_upstream(upstream_answer(fwd, records), 1.1), qid=1)
    assert len(a_addresses(msg)) == 100


def test_pending_table_bounded() -> None:
    c, _ = core(max_pending=3)
    for i in range(3):
        forward_of(c.handle_query(query(f"n{i}.example.com", qid=i), CLIENT, 0.0))
    msg = reply_of(c.handle_query(query("n9.example.com", qid=9), CLIENT, 0.0), qid=9)
    assert msg.rcode() == dns.rcode.SERVFAIL and c.counters["pending_full"] == 1


def test_unsupported_types_nodata_locally() -> None:
    c, _ = core()
    for rdtype in ("MX", "TXT", "PTR", "SRV"):
        msg = reply_of(c.handle_query(query("www.example.com", rdtype), CLIENT, 0.0))
        assert msg.rcode() == dns.rcode.NOERROR and msg.answer == []
    assert c.pending_count() == 0


# -- malformed input ----------------------------------------------------------------------------
def test_malformed_queries() -> None:
    c, _ = core()
    assert c.handle_query(b"", CLIENT, 0.0) == []
    assert c.handle_query(b"\x12\x34\x01", CLIENT, 0.0) == []
    header = struct.pack("!HHHHHH", 0xBEEF, 0x0100, 1, 0, 0, 0)
    msg = reply_of(c.handle_query(header + b"\x03www", CLIENT, 0.0), qid=0xBEEF)   # cut question
    assert msg.rcode() == dns.rcode.FORMERR and msg.flags & dns.flags.RD
    # A response from the guest is never answered, parsed or not.
    assert c.handle_query(struct.pack("!HHHHHH", 1, 0x8000, 1, 0, 0, 0) + b"\x03www", CLIENT, 0.0) == []
    resp = dns.message.make_response(dns.message.make_query("a.com", "A"))
    assert c.handle_query(resp.to_wire(), CLIENT, 0.0) == []
    # Zero and two questions.
    empty = struct.pack("!HHHHHH", 7, 0x0100, 0, 0, 0, 0)
    assert reply_of(c.handle_query(empty, CLIENT, 0.0), qid=7).rcode() == dns.rcode.FORMERR
    two = dns.message.make_query("a.com", "A", id=8)
    two.question.append(dns.message.make_query("b.com", "A").question[0])
    assert reply_of(c.handle_query(two.to_wire(), CLIENT, 0.0), qid=8).rcode() == dns.rcode.FORMERR
    assert c.counters["malformed"] == 4


def test_opcode_and_class() -> None:
    c, _ = core()
    notify = dns.message.make_query("a.com", "SOA", id=3)
    notify.set_opcode(dns.opcode.NOTIFY)
    assert reply_of(c.handle_query(notify.to_wire(), CLIENT, 0.0), qid=3).rcode() == dns.rcode.NOTIMP
    chaos = dns.message.make_query("version.bind", "TXT", "CH", id=4)
    assert reply_of(c.handle_query(chaos.to_wire(), CLIENT, 0.0), qid=4).rcode() == dns.rcode.REFUSED


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_raise(data: bytes) -> None:
    c, _ = core("evil.com")
    for action in c.handle_query(data, CLIENT, 0.0):
        assert isinstance(action, (Reply, Forward))
    c.handle_upstream(data, 0.0)
    assert c.counters.get("internal_error", 0) == 0


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 80), st.binary(min_size=1, max_size=6), st.booleans())
def test_mutated_messages_never_raise(pos: int, junk: bytes, upstream: bool) -> None:
    c, _ = core("evil.com")
    fwd = forward_of(c.handle_query(query("www.example.com", edns=True), CLIENT, 0.0))
    good = upstream_answer(fwd, [("www.example.com.", "CNAME", 60, "x.example.net."),
                                 ("x.example.net.", "A", 60, "1.2.3.4")]) if upstream \
        else query("api.example.test", edns=True)
    pos = min(pos, len(good))
    mutated = good[:pos] + junk + good[pos + len(junk):]
    actions = c.handle_upstream(mutated, 0.1) if upstream else c.handle_query(mutated, CLIENT, 0.1)
    for action in actions + c.tick(100.0):
        assert isinstance(action, (Reply, Forward))
        if isinstance(action, Reply):
            dns.message.from_wire(action.wire)
    assert c.counters.get("internal_error", 0) == 0


# -- off-limits answers are withheld ----------------------------------------------------------
def _off_limits(ip: IPv4Address) -> str | None:
    """A stand-in for Gateway.off_limits: the built-in ranges plus one host address."""
    from engine.netstack.policy.policy import is_restricted  # noqa: PLC0415 - test helper only
    return is_restricted(ip, [IPv4Network("192.0.2.2/32"), IPv4Network("10.0.2.0/24")])


def withholding_core(*denied: str) -> tuple[DnsCore, Recorder]:
    rec = Recorder()
    return DnsCore(STATIC, Filter(*denied), rec, rng=random.Random(7), address_filter=_off_limits), rec


@pytest.mark.parametrize("address", ["192.0.2.2", "127.0.0.1", "169.254.169.254", "10.0.2.15", "10.9.9.9"])
def test_an_answer_pointing_off_limits_is_withheld_as_nxdomain(address: str) -> None:
    c, rec = withholding_core()
    fwd = forward_of(c.handle_query(query("host.example.com"), CLIENT, 0.0))
    c.poll_events()
    msg = reply_of(c.handle_upstream(upstream_answer(fwd, [
        ("host.example.com.", "CNAME", 60, "alias.example.net."),
        ("alias.example.net.", "A", 60, address)]), 0.1))
    assert msg.rcode() == dns.rcode.NXDOMAIN and msg.answer == []   # not even the CNAME chain
    assert rec.records == []                                        # the tracker never learns it
    events = c.poll_events()
    assert [(e.action, e.name) for e in events] == [("withheld", "host.example.com")]
    assert address in events[0].reason and c.counters["answers_withheld"] == 1


def test_off_limits_records_are_stripped_and_the_rest_kept() -> None:
    c, rec = withholding_core()
    fwd = forward_of(c.handle_query(query("mixed.example.com"), CLIENT, 0.0))
    msg = reply_of(c.handle_upstream(upstream_answer(fwd, [
        ("mixed.example.com.", "A", 60, "198.51.100.1"), ("mixed.example.com.", "A", 60, "192.0.2.2"),
        ("mixed.example.com.", "A", 60, "127.0.0.2")]), 0.1))
    assert msg.rcode() == dns.rcode.NOERROR and a_addresses(msg) == ["198.51.100.1"]
    assert rec.records == [("mixed.example.com", [IPv4Address("198.51.100.1")], 60, 0.1)]
    withheld = [e for e in c.poll_events() if e.action == "withheld"]
    assert len(withheld) == 1 and "192.0.2.2" in withheld[0].reason and "127.0.0.2" in withheld[0].reason


def test_public_answers_pass_and_static_hosts_are_exempt() -> None:
    c, rec = withholding_core()
    fwd = forward_of(c.handle_query(query("www.example.com"), CLIENT, 0.0))
    msg = reply_of(c.handle_upstream(upstream_answer(fwd, [("www.example.com.", "A", 60, "198.51.100.7")]), 0.1))
    assert a_addresses(msg) == ["198.51.100.7"] and c.counters.get("answers_withheld", 0) == 0
    # STATIC maps api.example.test to 10.0.2.100, inside the protected subnet: answered anyway
    assert a_addresses(reply_of(c.handle_query(query("api.example.test"), CLIENT, 0.2))) == ["10.0.2.100"]


# -- names no rule could reach are refused locally, for every qtype -----------------------------
@pytest.mark.parametrize("rdtype", ["A", "AAAA", "ANY", "CNAME", "TXT", "MX", "HTTPS", "NULL", "PTR"])
@pytest.mark.parametrize("tcp", [False, True])
def test_a_name_the_policy_cannot_reach_never_goes_upstream(rdtype: str, tcp: bool) -> None:
    from engine.netstack.policy.policy import NetworkPolicy  # noqa: PLC0415 - the real filter
    policy = NetworkPolicy.deny_all().allow_dns().allow_domain("ok.test")

    def by_policy(name: str) -> NameVerdict:
        decision = policy.evaluate_name(name)
        return NameVerdict(decision.allowed, decision.rule_text)

    c = DnsCore({}, by_policy, None, rng=random.Random(1))
    msg = reply_of(c.handle_query(query("secret123.exfil.test", rdtype), CLIENT, 0.0, tcp=tcp))
    assert msg.rcode() == dns.rcode.NXDOMAIN and c.pending_count() == 0
    assert [(e.action, e.name) for e in c.poll_events()] == [("deny", "secret123.exfil.test")]
    # The allowed name still works (so the refusal above was the name, not the type).
    allowed = c.handle_query(query("ok.test", rdtype), CLIENT, 0.0, tcp=tcp)
    forwarded = rdtype in ("A", "AAAA", "ANY", "CNAME")
    assert len(allowed) == 1 and isinstance(allowed[0], Forward) is forwarded
