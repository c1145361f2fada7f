"""Cluster networks with real guests: members reach each other, outsiders do not, policies hold.

Three small VMs share one boot: ``alpha`` and ``beta`` in cluster ``a``, ``gamma`` in cluster
``b`` (same subnet layout, another switch). The only host servers are on 127.0.0.1 and started
here: an HTTP server named to the guests by a static host, and a DNS stub that answers NXDOMAIN
to every question forwarded upstream. No packet leaves the machine.
"""
from __future__ import annotations

import asyncio
import http.server
import re
import socket
import socketserver
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import engine
from engine.netstack.cluster import CLUSTERS
from tests.netstack.guest_net import serve_stub_resolver

pytestmark = pytest.mark.guest

HOST_PAGE = b"host secret\n"
GUEST_PAGE = "served by beta"


class _Http(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.send_response(200)
        self.send_header("Content-Length", str(len(HOST_PAGE)))
        self.end_headers()
        self.wfile.write(HOST_PAGE)


@dataclass
class Host:
    http_port: int
    dns_port: int


@pytest.fixture(scope="module")
def host() -> Iterator[Host]:
    httpd = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Http)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    resolver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    resolver.bind(("127.0.0.1", 0))
    serve_stub_resolver(resolver, lambda name: None)  # every name NXDOMAIN
    try:
        yield Host(httpd.server_address[1], resolver.getsockname()[1])
    finally:
        httpd.shutdown()
        httpd.server_close()
        resolver.close()


@dataclass
class Member:
    vm: engine.VmHandle
    console: engine.Console
    ip: str


@dataclass
class Cluster:
    alpha: Member
    beta: Member
    gamma: Member


def _net(cluster: str, policy: engine.NetworkPolicy, host: Host) -> engine.UserNatConfig:
    return (engine.NetworkMode.cluster(cluster).host("secret.test", "127.0.0.1")
            .dns_upstream(f"127.0.0.1:{host.dns_port}").policy(policy).build())


async def _member(vm: engine.VmHandle) -> Member:
    await vm.wait_ready(240)
    console = await vm.console()
    out = (await console.run("ip -4 addr show eth0", timeout=60)).output
    found = re.search(r"inet (10\.0\.2\.\d+)/24", out)
    assert found, out
    return Member(vm, console, found.group(1))


@pytest.fixture(scope="module")
async def cluster(boot: engine.LinuxDirectBoot, host: Host) -> AsyncIterator[Cluster]:
    allow_secret = engine.NetworkPolicy.deny_all().allow_dns().allow_domain("secret.test")
    deny_secret = engine.NetworkPolicy.deny_all().allow_dns()
    shapes = [
        ("alpha", _net("a", allow_secret, host)),
        ("beta", _net("a", deny_secret, host)),
        ("gamma", _net("b", engine.NetworkPolicy.allow_all(), host)),
    ]
    started = await asyncio.gather(
        *(engine.vm(boot).memory_mb(128).hostname(name).network(net).console_enabled().build()
          for name, net in shapes),
        return_exceptions=True)
    vms = [vm for vm in started if isinstance(vm, engine.VmHandle)]
    try:
        for failure in started:
            if isinstance(failure, BaseException):
                raise failure
        alpha, beta, gamma = await asyncio.gather(*(_member(vm) for vm in vms))
        yield Cluster(alpha, beta, gamma)
    finally:
        await asyncio.gather(*(vm.kill() for vm in vms))


async def sh(member: Member, command: str, timeout: float = 90) -> engine.CommandResult:
    return await member.console.run(command, timeout=timeout)


async def test_members_of_a_cluster_get_distinct_addresses_and_ping_by_address(cluster: Cluster) -> None:
    assert cluster.alpha.ip != cluster.beta.ip
    assert {cluster.alpha.ip, cluster.beta.ip} == {"10.0.2.15", "10.0.2.16"}
    result = await sh(cluster.alpha, f"ping -c 2 -W 10 {cluster.beta.ip}")
    assert result.exit_code == 0, result.output
    assert f"from {cluster.beta.ip}" in result.output


async def test_a_member_fetches_from_another_by_host_name(cluster: Cluster) -> None:
    served = await sh(cluster.beta, f"mkdir -p /www && echo '{GUEST_PAGE}' > /www/index.html && httpd -p 8080 -h /www")
    assert served.exit_code == 0, served.output
    result = await sh(cluster.alpha, "timeout 60 wget -qO- http://beta:8080/index.html")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == GUEST_PAGE
    lookup = await sh(cluster.beta, "nslookup alpha")
    assert cluster.alpha.ip in lookup.output, lookup.output


async def test_a_vm_of_another_cluster_is_refused(cluster: Cluster) -> None:
    await sh(cluster.beta, f"pidof httpd || (mkdir -p /www && echo '{GUEST_PAGE}' > /www/index.html && httpd -p 8080 -h /www)")
    # gamma is alone in cluster b, on the same subnet layout: its own address may be beta's.
    target = cluster.beta.ip if cluster.beta.ip != cluster.gamma.ip else cluster.alpha.ip
    ping = await sh(cluster.gamma, f"ping -c 1 -W 5 {target}")
    assert ping.exit_code != 0, ping.output
    fetch = await sh(cluster.gamma, f"timeout 20 wget -qO- http://{cluster.beta.ip}:8080/index.html")
    assert GUEST_PAGE not in fetch.output and fetch.exit_code != 0, fetch.output
    by_name = await sh(cluster.gamma, "timeout 20 wget -qO- http://beta:8080/index.html")
    assert GUEST_PAGE not in by_name.output and by_name.exit_code != 0, by_name.output
    # The path gamma tried works from inside the cluster: the refusal is the cluster's.
    inside = await sh(cluster.alpha, f"timeout 60 wget -qO- http://{cluster.beta.ip}:8080/index.html")
    assert inside.output.strip() == GUEST_PAGE, inside.output


async def test_a_members_policy_still_denies_what_it_denies(cluster: Cluster, host: Host) -> None:
    allowed = await sh(cluster.alpha, f"timeout 60 wget -qO- http://secret.test:{host.http_port}/")
    assert allowed.output == HOST_PAGE.decode(), allowed.output
    denied = await sh(cluster.beta, f"timeout 60 wget -qO- http://secret.test:{host.http_port}/")
    assert denied.exit_code != 0 and HOST_PAGE.decode() not in denied.output, denied.output


async def test_every_vm_of_a_cluster_pool_joins_with_its_own_name(boot: engine.LinuxDirectBoot, host: Host) -> None:
    net = _net("pool-c", engine.NetworkPolicy.deny_all().allow_dns(), host)
    # snapshot(True): refilled by clones of one template, each re-addressed as it joins.
    pool = await (engine.vm_pool(boot).memory_mb(128).console_enabled().network(net).name("cp")
                  .snapshot(True).build(2))
    try:
        first, second = await pool.reserve(timeout=240), await pool.reserve(timeout=240)
        names = (first.spec.hostname, second.spec.hostname)
        assert len(set(names)) == 2, names
        assert pool.stats().snapshot_error is None
        assert first.guest_ip != second.guest_ip
        console = await first.console()
        own = (await console.run("ip -4 addr show eth0", timeout=60)).output
        assert f"inet {first.guest_ip}/24" in own, own  # the guest took the address it was given
        result = await console.run(f"timeout 60 ping -c 1 -W 10 {names[1]}", timeout=90)
        assert result.exit_code == 0, result.output
        assert f"from {second.guest_ip}" in result.output
        # (Another cluster's switch reuses the same addresses, so isolation from cluster a is
        # shown by gamma above, not here.)
    finally:
        await pool.close()


async def test_a_member_cannot_send_into_the_cluster_from_another_address(cluster: Cluster) -> None:
    before = cluster.beta.vm.network_stats()["counters"].get("cluster_spoofed", 0)
    honest = await sh(cluster.beta, f"ping -c 1 -W 10 {cluster.alpha.ip}")
    assert honest.exit_code == 0, honest.output
    await sh(cluster.beta, "ip addr add 10.0.2.99/32 dev eth0")
    try:
        spoofed = await sh(cluster.beta, f"ping -c 1 -W 5 -I 10.0.2.99 {cluster.alpha.ip}")
    finally:
        await sh(cluster.beta, "ip addr del 10.0.2.99/32 dev eth0")
    assert spoofed.exit_code != 0 and "bytes from" not in spoofed.output, spoofed.output
    assert cluster.beta.vm.network_stats()["counters"].get("cluster_spoofed", 0) > before


async def test_a_clone_restored_into_a_cluster_takes_an_address_of_its_own(cluster: Cluster, host: Host,
                                                                           tmp_path: Path) -> None:
    # gamma's saved guest holds gamma's address (cluster b's first), which alpha holds in cluster a.
    path = await cluster.gamma.vm.snapshot(tmp_path / "gamma")
    clone = await engine.vm_from_snapshot(path, network=_net("a", engine.NetworkPolicy.deny_all(), host))
    try:
        address = str(clone.guest_ip)
        assert address not in (cluster.alpha.ip, cluster.beta.ip), address
        assert sorted(map(str, CLUSTERS.members("a"))) == sorted((cluster.alpha.ip, cluster.beta.ip, address))
        console = await clone.console()
        shown = (await console.run("ip -4 addr show eth0; ip route", timeout=90)).output
        assert f"inet {address}/24" in shown and "default via 10.0.2.2" in shown, shown
        there = await console.run(f"ping -c 1 -W 10 {cluster.alpha.ip}", timeout=90)
        assert there.exit_code == 0, there.output
        back = await sh(cluster.alpha, f"ping -c 1 -W 10 {address}")
        assert back.exit_code == 0, back.output
    finally:
        await clone.kill()
    assert sorted(map(str, CLUSTERS.members("a"))) == sorted((cluster.alpha.ip, cluster.beta.ip))
