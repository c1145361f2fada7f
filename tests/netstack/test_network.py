"""The user-mode NAT gateway with a real guest: DHCP, DNS, TCP and UDP relay, forwards, policy.

Every server the guest reaches runs in this process on 127.0.0.0/8 and is named to the guest
through static host entries; the DNS upstream is a loopback stub. No packet leaves the host.
"""
from __future__ import annotations

import asyncio
import hashlib
import http.server
import random
import socket
import socketserver
import ssl
import threading
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import dns.message
import dns.rcode
import dns.rrset
import pytest

import engine
from tests.netstack.guest_net import NetVm, running_net_vm, serve_stub_resolver
from tests.waiting import collect, free_port

pytestmark = pytest.mark.guest

BIG = random.Random(7).randbytes(20 * 1024 * 1024)
PAGE = b"hello from host\n"
NAMES = ("api.example.test", "denied.test", "sink.test", "tftp.test", "tls.test")


class _Http(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        body = BIG if self.path == "/big" else PAGE
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802
        remaining = int(self.headers["Content-Length"])
        digest = hashlib.sha256()
        while remaining:
            chunk = self.rfile.read(min(remaining, 65536))
            if not chunk:
                break
            digest.update(chunk)
            remaining -= len(chunk)
        body = f"{digest.hexdigest()} {int(self.headers['Content-Length']) - remaining}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@dataclass
class Servers:
    """Loopback servers the guest talks to, and what they saw."""

    http_port: int = 0
    tftp_port: int = 0
    sink_port: int = 0
    dns_port: int = 0
    forward_port: int = 0
    sink_received: list[Received] = field(default_factory=list)
    closers: list[object] = field(default_factory=list)


def _thread(target: object) -> None:
    threading.Thread(target=target, daemon=True).start()  # type: ignore[arg-type]


def _serve_tftp(sock: socket.socket) -> None:
    """A one-file TFTP server answering from its own port (enough for busybox tftp -g)."""
    while True:
        try:
            data, addr = sock.recvfrom(2048)
        except OSError:
            return
        if data[:2] == b"\x00\x01" and b"hello.txt" in data:
            sock.sendto(b"\x00\x03\x00\x01udp works\n", addr)


@dataclass(frozen=True)
class Received:
    """What one connection to the sink delivered before its end."""

    head: bytes
    size: int
    sha256: str


def _serve_sink(server: socket.socket, received: list[Received]) -> None:
    """Reads every connection to its end and records its first bytes, size and digest."""
    while True:
        try:
            conn, _ = server.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(30)
            digest, size, head = hashlib.sha256(), 0, b""
            try:
                while chunk := conn.recv(1 << 16):
                    head = head or chunk[:16]
                    digest.update(chunk)
                    size += len(chunk)
            except OSError:
                pass
            received.append(Received(head, size, digest.hexdigest()))


def _serve_dns_tcp(server: socket.socket) -> None:
    """The stub resolver over TCP: the same answers, length-prefixed."""
    while True:
        try:
            conn, _ = server.accept()
        except OSError:
            return
        with conn:
            data = b""
            while len(data) < 2 or len(data) < 2 + int.from_bytes(data[:2], "big"):
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
            query = dns.message.from_wire(data[2:])
            reply = dns.message.make_response(query)
            reply.answer.append(dns.rrset.from_text("upstream.test.", 60, "IN", "A", "203.0.113.7"))
            wire = reply.to_wire()
            conn.sendall(len(wire).to_bytes(2, "big") + wire)


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    found = Servers()
    httpd = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Http)
    httpd.daemon_threads = True
    found.http_port = httpd.server_address[1]
    _thread(httpd.serve_forever)
    tftp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tftp.bind(("127.0.0.1", 0))
    found.tftp_port = tftp.getsockname()[1]
    _thread(lambda: _serve_tftp(tftp))
    sink = socket.create_server(("127.0.0.1", 0))
    found.sink_port = sink.getsockname()[1]
    _thread(lambda: _serve_sink(sink, found.sink_received))
    resolver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    resolver.bind(("127.0.0.1", 0))
    found.dns_port = resolver.getsockname()[1]
    serve_stub_resolver(resolver, lambda name: "203.0.113.7" if name == "upstream.test" else None)
    resolver_tcp = socket.create_server(("127.0.0.1", found.dns_port))
    _thread(lambda: _serve_dns_tcp(resolver_tcp))
    found.forward_port = free_port()
    yield found
    httpd.shutdown()
    httpd.server_close()
    for sock in (tftp, sink, resolver, resolver_tcp):
        sock.close()


def base_policy() -> engine.NetworkPolicy:
    return (
        engine.NetworkPolicy.deny_all()
        .allow_dns()
        .deny_domain("denied.test")
        .allow_domain("api.example.test")
        .allow_domain("sink.test")
        .allow_domain("tftp.test")
        .allow_domain("tls.test")
        .allow_domain("upstream.test")  # a name no rule could reach is no longer resolved at all
        .rule(engine.PolicyAction.LOG, engine.MatchCriteria.port(80))
    )


@pytest.fixture(scope="module")
async def netvm(boot: engine.LinuxDirectBoot, servers: Servers) -> AsyncIterator[NetVm]:
    nat = engine.NetworkMode.user_nat().forward_tcp(servers.forward_port, 80).forward_tcp(0, 80)
    for name in NAMES:
        nat = nat.host(name, "127.0.0.1")
    net = nat.dns_upstream(f"127.0.0.1:{servers.dns_port}").policy(base_policy()).build()
    async with running_net_vm(engine.vm(boot).cpus(2).memory_mb(384).network(net), 60) as running:
        yield running


@pytest.fixture
async def net(netvm: NetVm) -> NetVm:
    netvm.vm.set_policy(base_policy())
    netvm.events.clear()
    return netvm


async def sh(net: NetVm, command: str, timeout: float = 60) -> engine.CommandResult:
    return await net.sh(command, timeout)


async def test_dhcp_gives_address_route_and_dns(net: NetVm) -> None:
    out = (await sh(net, "ip -4 addr show eth0; ip route; cat /etc/resolv.conf")).output
    assert "inet 10.0.2.15/24" in out
    assert "default via 10.0.2.2 dev eth0" in out
    assert "nameserver 10.0.2.3" in out


async def test_ping_the_gateway(net: NetVm) -> None:
    result = await sh(net, "ping -c 2 -W 3 10.0.2.2")
    assert result.exit_code == 0, result.output
    assert "0% packet loss" in result.output


async def test_wget_of_an_allowed_name_reaches_the_loopback_server(net: NetVm, servers: Servers) -> None:
    result = await sh(net, f"timeout 30 wget -qO- http://api.example.test:{servers.http_port}/index.html")
    assert result.exit_code == 0, result.output
    assert result.output == PAGE.decode()
    allowed = [e for e in net.events if e.protocol == "tcp" and e.action == "allow"]
    assert allowed and allowed[0].domain == "api.example.test" and allowed[0].dst == "127.0.0.1"
    assert allowed[0].rule == "allow domain api.example.test"


async def test_denied_name_is_nxdomain_without_an_upstream_query(net: NetVm, servers: Servers) -> None:
    result = await sh(net, "nslookup denied.test")
    assert "NXDOMAIN" in result.output, result.output
    fetch = await sh(net, f"timeout 30 wget -qO- http://denied.test:{servers.http_port}/")
    assert fetch.exit_code != 0 and "bad address" in fetch.output
    denies = [e for e in net.events if e.protocol == "dns" and e.action == "deny"]
    assert denies and denies[0].domain == "denied.test" and denies[0].rule == "deny domain denied.test"


async def test_the_same_server_by_raw_ip_is_refused(net: NetVm, servers: Servers) -> None:
    lookup = await sh(net, "nslookup -type=a api.example.test | grep '^Address' | tail -1")
    stand_in = lookup.output.split()[-1]
    assert stand_in.startswith("198.18."), lookup.output
    net.events.clear()
    result = await sh(net, f"timeout 30 wget -qO- http://{stand_in}:{servers.http_port}/index.html")
    assert result.exit_code != 0 and PAGE.decode() not in result.output
    denied = [e for e in net.events if e.protocol == "tcp" and e.action == "deny"]
    assert denied, net.events
    assert denied[-1].domain == stand_in  # the Host header named no allowed domain


async def test_upstream_resolver_answers_names_it_knows(net: NetVm) -> None:
    result = await sh(net, "nslookup upstream.test")
    assert "203.0.113.7" in result.output, result.output
    assert any(e.protocol == "dns" and e.domain == "upstream.test" and e.action == "allow" for e in net.events)


async def test_20_mib_download_arrives_intact(net: NetVm, servers: Servers) -> None:
    result = await sh(net, f"timeout 240 wget -qO- http://api.example.test:{servers.http_port}/big | sha256sum", 300)
    assert result.output.split()[0] == hashlib.sha256(BIG).hexdigest()


async def test_20_mib_upload_arrives_intact(net: NetVm, servers: Servers) -> None:
    made = await sh(net, "dd if=/dev/urandom of=/tmp/up bs=1M count=20 2>/dev/null && sha256sum /tmp/up")
    guest_sum = made.output.split()[0]
    servers.sink_received.clear()
    sent = await sh(net, f"timeout 240 nc sink.test {servers.sink_port} < /tmp/up; rm /tmp/up", 300)
    assert sent.exit_code == 0, sent.output
    for _ in range(100):
        if servers.sink_received:
            break
        await asyncio.sleep(0.1)
    assert [(r.size, r.sha256) for r in servers.sink_received] == [(20 * 1024 * 1024, guest_sum)]


async def test_udp_round_trip(net: NetVm, servers: Servers) -> None:
    result = await sh(net, f"cd /tmp && timeout 20 tftp -g -r hello.txt -l t.txt tftp.test {servers.tftp_port} && cat t.txt")
    assert result.output == "udp works\n", result.output
    assert any(e.protocol == "udp" and e.action == "allow" and e.domain == "tftp.test" for e in net.events)


async def test_port_forward_reaches_httpd_in_the_guest(net: NetVm, servers: Servers) -> None:
    await sh(net, "mkdir -p /www && echo guest page > /www/index.html && httpd -p 80 -h /www")

    ports = [port for fwd, port in net.vm.forwarded_ports()]
    assert ports[0] == servers.forward_port and ports[1] > 0  # host_port 0: any free port

    def fetch(port: int) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=30) as reply:
            return reply.read()

    try:
        for port in ports:
            assert await asyncio.to_thread(fetch, port) == b"guest page\n"
    finally:
        await sh(net, "killall httpd")


def _client_hello(server_name: str) -> bytes:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


async def _send_hello(net: NetVm, servers: Servers, server_name: str) -> engine.CommandResult:
    octal = "".join(f"\\{byte:03o}" for byte in _client_hello(server_name))
    return await sh(net, f"printf '{octal}' | timeout 10 nc tls.test {servers.sink_port}")


async def test_client_hello_naming_a_denied_domain_is_cut(net: NetVm, servers: Servers) -> None:
    servers.sink_received.clear()
    await _send_hello(net, servers, "evil.example")
    await asyncio.sleep(0.5)
    assert servers.sink_received == [], "a hello for a name the policy does not allow reached the server"
    denied = [e for e in net.events if e.protocol == "tcp" and e.action == "deny"]
    assert denied and denied[-1].domain == "evil.example"
    # The same address with an allowed SNI goes through: the cut was the name, not the address.
    await _send_hello(net, servers, "tls.test")
    for _ in range(50):
        if servers.sink_received:
            break
        await asyncio.sleep(0.1)
    assert servers.sink_received and servers.sink_received[0].head[:1] == b"\x16"


async def test_set_policy_changes_the_next_connection(net: NetVm, servers: Servers) -> None:
    url = f"http://api.example.test:{servers.http_port}/index.html"
    assert (await sh(net, f"timeout 30 wget -qO- {url}")).output == PAGE.decode()
    net.vm.set_policy(engine.NetworkPolicy.deny_all().allow_dns())
    blocked = await sh(net, f"timeout 30 wget -qO- {url}")
    assert blocked.exit_code != 0
    net.vm.set_policy(base_policy())
    assert (await sh(net, f"timeout 30 wget -qO- {url}")).output == PAGE.decode()


async def test_loopback_and_gateway_services_stay_closed_without_a_naming_rule(net: NetVm, servers: Servers) -> None:
    net.vm.set_policy(engine.NetworkPolicy.allow_all())
    # A static host on loopback needs a domain rule naming it, even under allow-all.
    result = await sh(net, f"timeout 30 wget -qO- http://api.example.test:{servers.http_port}/index.html")
    assert result.exit_code != 0
    assert any(e.action == "deny" and "loopback" in e.detail for e in net.events), net.events
    # The gateway's own address relays nothing to the host's services.
    refused = await sh(net, f"timeout 10 nc 10.0.2.2 {servers.http_port} </dev/null")
    assert refused.exit_code != 0 and "refused" in refused.output
    # Another address of the guest's subnet (another VM) is not routed at all.
    assert (await sh(net, "ping -c 1 -W 1 10.0.2.99")).exit_code != 0


async def test_a_host_port_already_forwarded_fails_the_second_vm_clearly(
    boot: engine.LinuxDirectBoot, servers: Servers, netvm: NetVm
) -> None:
    net = engine.NetworkMode.user_nat().forward_tcp(servers.forward_port, 80).build()
    with pytest.raises(engine.ConfigError, match=f"cannot listen on 127.0.0.1:{servers.forward_port}.*host_port 0"):
        await engine.vm(boot).network(net).console_enabled().build()


async def _ask_over_tcp(net: NetVm, name: str) -> dns.message.Message:
    wire = dns.message.make_query(name, "A").to_wire()
    octal = "".join(f"\\{byte:03o}" for byte in len(wire).to_bytes(2, "big") + wire)
    result = await sh(net, f"printf '{octal}' | timeout 10 nc 10.0.2.3 53 | od -An -v -tx1")
    answer = bytes.fromhex("".join(result.output.split()))
    assert len(answer) >= 2 and int.from_bytes(answer[:2], "big") == len(answer) - 2, result.output
    return dns.message.from_wire(answer[2:])


async def test_dns_over_tcp_at_the_gateway(net: NetVm) -> None:
    static = await _ask_over_tcp(net, "api.example.test")
    assert [r.address for r in static.answer[0]] == ["198.18.0.1"]
    denied = await _ask_over_tcp(net, "denied.test")
    assert denied.rcode() == dns.rcode.NXDOMAIN
    forwarded = await _ask_over_tcp(net, "upstream.test")  # relayed to the upstream over TCP
    assert [r.address for r in forwarded.answer[0]] == ["203.0.113.7"]


async def test_a_networked_profile_gives_each_pooled_vm_its_gateway(boot: engine.LinuxDirectBoot) -> None:
    profile = engine.find_profile("web")
    async with await profile.pool_builder().memory_mb(192).build(1) as pool:
        async with await pool.reserve(timeout=60) as vm:
            events, collector = collect(vm.network_events())
            console = await vm.console()
            assert "inet 10.0.2.15/24" in await console.exec("ip -4 addr show eth0")
            refused = await console.run("timeout 10 nc 203.0.113.5 80 </dev/null")
            assert refused.exit_code != 0
            await asyncio.sleep(0.1)
            collector.cancel()
            assert any(e.action == "deny" and e.dst == "203.0.113.5" and e.rule == "default deny" for e in events)


async def test_pool_set_policy_reaches_running_and_future_vms(boot: engine.LinuxDirectBoot, servers: Servers) -> None:
    net = (
        engine.NetworkMode.user_nat().host("api.example.test", "127.0.0.1")
        .dns_upstream(f"127.0.0.1:{servers.dns_port}")
        .policy(engine.NetworkPolicy.deny_all().allow_domain("api.example.test"))
        .build()
    )
    async with await engine.vm_pool(boot).memory_mb(192).network(net).console_enabled().max_size(2).build(1) as pool:
        vm = await pool.reserve(timeout=60)
        console = await vm.console()
        url = f"http://api.example.test:{servers.http_port}/index.html"
        assert await console.exec(f"timeout 30 wget -qO- {url}") == PAGE.decode()
        flows = vm.network_flows()
        assert [(f["protocol"], f["remote"], f["bytes_up"] > 0, f["bytes_down"]) for f in flows] == [
            ("tcp", f"127.0.0.1:{servers.http_port}", True, flows[0]["bytes_down"])
        ] and flows[0]["bytes_down"] >= len(PAGE)
        pool.set_policy(engine.NetworkPolicy.deny_all())
        assert "NXDOMAIN" in (await console.run("nslookup api.example.test")).output
        await vm.release()
        async with await pool.reserve(timeout=60) as fresh:
            out = (await (await fresh.console()).run("nslookup api.example.test")).output
            assert "NXDOMAIN" in out, "a VM booted after set_policy must get the new policy"


async def test_a_custom_dhcp_range_gives_the_guest_its_address(boot: engine.LinuxDirectBoot) -> None:
    net = engine.NetworkMode.user_nat().dhcp_range("10.0.2.100", "10.0.2.100").build()
    vm = await engine.vm(boot).memory_mb(192).network(net).console_enabled().build()
    try:
        await vm.wait_ready(60)
        console = await vm.console()
        assert "inet 10.0.2.100/24" in await console.exec("ip -4 addr show eth0")
    finally:
        await vm.kill()
