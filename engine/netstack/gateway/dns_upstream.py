"""The DNS server's I/O: guest questions in, upstream resolvers over UDP, answers back out.

The decisions live in ``dns.DnsCore`` (sans-IO); this adapter owns one UDP socket toward the
upstream resolvers, the timer of the core's pending table, and the translation of the core's
events into flow-log events. Answers are accepted only from the configured resolvers.

A guest's question may be addressed to any address on port 53 (the gateway intercepts them
all, see ``gateway.gateway``); the answer goes back from the address the guest asked, so its
resolver accepts it, and the flow-log event names that address.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from ipaddress import IPv4Address
from pathlib import Path

from engine.netstack.dns import DnsCore, Forward, NameVerdict, Reply
from engine.netstack.gateway.budget import Refusal
from engine.netstack.gateway.seam import DnsHost
from engine.netstack.ipv4 import PROTO_UDP
from engine.netstack.udp import build_udp


log = logging.getLogger(__name__)
_TCP_UPSTREAM_TIMEOUT_S = 5.0


def host_resolvers(resolv_conf: Path = Path("/etc/resolv.conf")) -> list[tuple[str, int]]:
    """IPv4 nameservers of the host's resolv.conf (the default upstream)."""
    servers: list[tuple[str, int]] = []
    with contextlib.suppress(OSError):
        for line in resolv_conf.read_text().splitlines():
            words = line.split()
            if len(words) >= 2 and words[0] == "nameserver":
                with contextlib.suppress(ValueError):
                    servers.append((str(IPv4Address(words[1])), 53))
    return servers


class DnsAdapter:
    """Drives a DnsCore for one gateway."""

    def __init__(self, gateway: DnsHost) -> None:
        self.gateway = gateway
        hosts: dict[str, list[IPv4Address]] = {}
        for name, ip in gateway.guest_hosts:
            hosts.setdefault(name, []).append(ip)
        self.core = DnsCore(hosts, self._allowed, gateway.tracker, address_filter=gateway.off_limits)
        configured = gateway.config.dns_upstream
        self.upstreams = list(configured) if configured is not None else host_resolvers()
        self._transport: asyncio.DatagramTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._tcp_tasks: set[asyncio.Task[None]] = set()

    def _allowed(self, name: str) -> NameVerdict:
        decision = self.gateway.policy.evaluate_name(name)
        return NameVerdict(decision.allowed, decision.rule_text)

    async def start(self) -> None:
        if not self.upstreams:
            return  # every forwarded question then times out into SERVFAIL; static hosts work
        loop = self.gateway.loop
        self._transport, _ = await loop.create_datagram_endpoint(
            lambda: _UpstreamProtocol(self), local_addr=("0.0.0.0", 0), family=2
        )

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for task in self._tcp_tasks:
            task.cancel()
        if self._transport is not None:
            self._transport.close()

    def query(self, src: IPv4Address, src_port: int, payload: bytes, server: IPv4Address | None = None) -> None:
        """A question over UDP to ``server`` (default: the gateway's DNS address), answered from there."""
        asked = self.gateway.dns_ip if server is None else server
        if asked != self.gateway.dns_ip:
            self.gateway.counters["dns_intercepted"] += 1
        self._apply(self.core.handle_query(payload, (src, src_port, asked), self.gateway.now()))

    def query_tcp(self, flow_key: tuple[object, ...], payload: bytes) -> None:
        """A question the guest asked over TCP; the answer goes back on that connection."""
        if flow_key[2] != self.gateway.dns_ip:
            self.gateway.counters["dns_intercepted"] += 1
        self._apply(self.core.handle_query(payload, ("tcp", flow_key), self.gateway.now(), tcp=True))

    def upstream_answer(self, data: bytes, addr: tuple[str, int]) -> None:
        if (addr[0], addr[1]) not in self.upstreams:
            self.gateway.counters["dns_foreign_answer"] += 1
            return
        self._apply(self.core.handle_upstream(data, self.gateway.now()))

    def _tick(self) -> None:
        self._timer = None
        self._apply(self.core.tick(self.gateway.now()))

    def _apply(self, actions: list[Reply | Forward]) -> None:
        gw = self.gateway
        for action in actions:
            if isinstance(action, Reply):
                if action.client[0] == "tcp":
                    gw.tcp.dns_reply(action.client[1], action.wire)
                    continue
                ip, port, asked = action.client
                gw.send_ip(asked, ip, PROTO_UDP, build_udp(asked, ip, 53, port, action.wire))
            elif not self.upstreams:
                gw.counters["dns_no_upstream"] += 1
            elif action.tcp:
                server = self.upstreams[action.attempt % len(self.upstreams)]
                task = gw.loop.create_task(self._ask_over_tcp(action.wire, server))
                self._tcp_tasks.add(task)
                task.add_done_callback(self._tcp_tasks.discard)
            elif self._transport is not None:
                server = self.upstreams[action.attempt % len(self.upstreams)]
                self._transport.sendto(action.wire, server)
        for event in self.core.poll_events():
            verdict = "deny" if event.action in ("deny", "withheld") else "allow"
            guest, asked = _ends(event.client)
            gw.flow_log.emit("dns", str(guest), str(asked), 53, event.name,
                             event.reason or event.action, verdict, f"{event.qtype} {event.action}")
        self._schedule()

    async def _ask_over_tcp(self, wire: bytes, server: tuple[str, int]) -> None:
        """One question over TCP (truncated UDP answers, TCP guests); the core times out failures.
        Its socket is leased from the VM's host-socket budget: a refused question times out too."""
        lease = self.gateway.host_sockets.acquire("dns-tcp")
        if isinstance(lease, Refusal):
            self.gateway.counters["dns_tcp_budget_refused"] += 1
            return
        writer = None
        try:
            async with asyncio.timeout(_TCP_UPSTREAM_TIMEOUT_S):
                reader, writer = await asyncio.open_connection(*server)
                writer.write(len(wire).to_bytes(2, "big") + wire)
                size = int.from_bytes(await reader.readexactly(2), "big")
                answer = await reader.readexactly(size)
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as err:
            self.gateway.counters["dns_tcp_upstream_failed"] += 1
            log.debug("DNS over TCP to %s failed: %s", server, err)
            return
        finally:
            if writer is not None:
                writer.close()
            lease.release()
        self._apply(self.core.handle_upstream(answer, self.gateway.now()))

    def _schedule(self) -> None:
        deadline = self.core.next_timer()
        if self._timer is not None:
            if deadline is not None and abs(self._timer.when() - deadline) < 1e-3:
                return
            self._timer.cancel()
            self._timer = None
        if deadline is not None:
            self._timer = self.gateway.loop.call_at(deadline, self._tick)


def _ends(client: tuple[object, ...]) -> tuple[object, object]:
    """The guest's address and the address it asked, from a core client (UDP or TCP)."""
    if client[0] == "tcp":
        key = client[1]
        assert isinstance(key, tuple)
        return key[0], key[2]
    return client[0], client[2]


class _UpstreamProtocol(asyncio.DatagramProtocol):
    def __init__(self, adapter: DnsAdapter) -> None:
        self.adapter = adapter

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.adapter.upstream_answer(data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("DNS upstream socket error: %s", exc)
