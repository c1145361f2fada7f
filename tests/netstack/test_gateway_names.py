"""The gateway with raw frames: every name on a connection is decided, not just the first."""
from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from engine.netstack.tcp.segment import ACK, PSH, RST
from tests.netstack.gateway_harness import (
    GUEST_IP, UPSTREAM_ANSWER, WEB_STAND_IN, Guest, Peers, a_records, ask, handshake, is_tcp, main_policy, make_config,
    peers, running, tcp_frame, tcp_of)
from tests.waiting import until

__all__ = ["peers"]  # the fixture, imported for pytest

FIRST = b"GET / HTTP/1.1\r\nHost: web.test\r\n\r\n"
SECOND = b"GET / HTTP/1.1\r\nHost: elsewhere.example\r\n\r\n"


async def _until_rst(guest: Guest, sport: int, port: int) -> None:
    while True:
        seg = tcp_of(await guest.expect(is_tcp(WEB_STAND_IN, port, sport)))
        if seg.flags & RST:
            return


async def test_a_pipelined_request_for_another_host_cuts_the_flow_before_the_host_sees_it(peers: Peers) -> None:
    async with running(make_config(peers)) as (gw, guest, events):
        await ask(guest, "web.test", 401)
        sport, isn = 40101, 5000
        srv = await handshake(guest, sport, WEB_STAND_IN, peers.web_port, isn)
        await guest.send(tcp_frame(sport, WEB_STAND_IN, peers.web_port, isn + 1, srv, PSH | ACK, FIRST + SECOND))
        await _until_rst(guest, sport, peers.web_port)
        await guest.barrier()
        assert (GUEST_IP, sport, WEB_STAND_IN, peers.web_port) not in gw.tcp.flows
        assert peers.http_requests == []  # not even the allowed first request went out
        assert [e.domain for e in events.of("deny", "tcp")] == ["elsewhere.example"]
        assert gw.counters["tcp_name_denied"] == 1


async def test_a_malformed_request_line_is_refused(peers: Peers) -> None:
    async with running(make_config(peers)) as (gw, guest, events):
        await ask(guest, "web.test", 402)
        sport, isn = 40102, 6000
        srv = await handshake(guest, sport, WEB_STAND_IN, peers.web_port, isn)
        bad = b"GET / HTTP/1.10\r\nHost: elsewhere.example\r\n\r\n"
        await guest.send(tcp_frame(sport, WEB_STAND_IN, peers.web_port, isn + 1, srv, PSH | ACK, bad))
        await _until_rst(guest, sport, peers.web_port)
        assert peers.http_requests == []
        denied = events.of("deny", "tcp")
        assert len(denied) == 1 and "by name only" in denied[0].rule


@pytest.mark.parametrize("required", [True, False])
async def test_a_flow_that_sends_nothing_follows_require_names(peers: Peers, required: bool) -> None:
    """To an address known only from an upstream answer (a CDN's, shared with other names)."""
    policy = main_policy().allow_domain("cdn.test").with_require_names(required)
    async with running(make_config(peers, policy)) as (gw, guest, events):
        assert a_records(await ask(guest, "cdn.test", 403)) == [UPSTREAM_ANSWER]
        cdn, sport, isn = IPv4Address(UPSTREAM_ANSWER), 40103, 7000
        await handshake(guest, sport, cdn, 443, isn)
        key = (GUEST_IP, sport, cdn, 443)
        if required:
            while True:  # after the first-bytes wait
                if tcp_of(await guest.expect(is_tcp(cdn, 443, sport))).flags & RST:
                    break
            assert key not in gw.tcp.flows
            assert "by name only" in events.of("deny", "tcp")[-1].rule
        else:
            # decided on DNS evidence: the host connect starts (TEST-NET-1: it never completes)
            await until(lambda: key in gw.tcp.flows and gw.tcp.flows[key].connect_task is not None,
                        10, "a host connect for the silent flow")
            assert not events.of("deny", "tcp")
            assert [e.domain for e in events.of("allow", "tcp")][-1] == "cdn.test"


async def test_a_silent_flow_to_a_static_host_is_decided_on_dns_evidence(peers: Peers) -> None:
    """A static host's stand-in stands for the profile's entry alone, so require_names (on) does
    not apply there: a server-speaks-first service on the host's loopback stays reachable."""
    async with running(make_config(peers, main_policy())) as (gw, guest, events):
        await ask(guest, "web.test", 404)
        sport, isn = 40104, 8000
        await handshake(guest, sport, WEB_STAND_IN, peers.web_port, isn)
        key = (GUEST_IP, sport, WEB_STAND_IN, peers.web_port)
        await until(lambda: key in gw.tcp.flows and gw.tcp.flows[key].host is not None, 10,
                    "the host socket of the silent flow")
        assert not events.of("deny", "tcp")
