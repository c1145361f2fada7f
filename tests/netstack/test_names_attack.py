"""Real-guest attacks on domain allows: a name must hold for the whole connection.

Policy ``deny_all().allow_dns().allow_domain("ok.test").allow_domain("cdn-a.test")``. ``ok.test``
and ``other.test`` are static hosts on the same loopback address (one HTTP server with virtual
hosts, and one server that speaks first). ``cdn-a.test`` and ``cdn-b.test`` are public names that
the test's stub resolver (on loopback) answers with one shared address, a "CDN" in a network
namespace (tests/remote_host.py) running the same two servers. From the guest, busybox
``printf | nc`` sends what an attacker would. Nothing leaves the machine.
"""
from __future__ import annotations

import asyncio
import http.server
import socket
import ssl
import struct
import socketserver
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import pytest

import engine
from engine.netstack.sniff import HELLO_RETRY_RANDOM
from tests.remote_host import RemoteHost, remote_host
from tests.netstack.guest_net import NetVm, running_net_vm, serve_stub_resolver

pytestmark = pytest.mark.guest


@dataclass
class Servers:
    http_port: int = 0
    banner_port: int = 0
    retry_port: int = 0
    dns_port: int = 0
    hosts_seen: list[str] = field(default_factory=list)
    retry_received: list[bytes] = field(default_factory=list)
    remote: RemoteHost | None = None


class _Vhosts(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    seen: list[str] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        host = (self.headers.get("Host") or "").split(":")[0]
        self.seen.append(host)
        body = f"vhost {host}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _serve_banner(server: socket.socket) -> None:
    while True:
        try:
            conn, _ = server.accept()
        except OSError:
            return
        with conn:
            try:
                conn.sendall(b"BANNER from the host\n")
                conn.recv(1024)
            except OSError:
                pass


def _record(kind: int, payload: bytes) -> bytes:
    return struct.pack("!BHH", kind, 0x0303, len(payload)) + payload


def _hello_retry() -> bytes:
    """A TLS 1.3 HelloRetryRequest (a ServerHello with the special random) and a ChangeCipherSpec."""
    body = b"\x03\x03" + HELLO_RETRY_RANDOM + b"\x00\x13\x01\x00\x00\x06\x00\x2b\x00\x02\x03\x04"
    return _record(22, b"\x02" + len(body).to_bytes(3, "big") + body) + _record(20, b"\x01")


def _serve_retry(server: socket.socket, received: list[bytes]) -> None:
    """A fake TLS server: answers every connection's first bytes with a HelloRetryRequest and
    keeps what the client sends."""
    while True:
        try:
            conn, _ = server.accept()
        except OSError:
            return
        with conn:
            data = b""
            try:
                while chunk := conn.recv(65536):
                    if not data:
                        conn.sendall(_hello_retry())
                    data += chunk
            except OSError:
                pass
            received.append(data)


CDN_NAMES = ("cdn-a.test", "cdn-b.test")  # the stub upstream's names, both at the CDN's address


def client_hello(name: str) -> bytes:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    tls = context.wrap_bio(ssl.MemoryBIO(), outgoing := ssl.MemoryBIO(), server_hostname=name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def octal(data: bytes) -> str:
    return "".join(f"\\{byte:03o}" for byte in data)


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    found = Servers()
    handler = type("Handler", (_Vhosts,), {"seen": found.hosts_seen})
    httpd = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    found.http_port = httpd.server_address[1]
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    banner = socket.create_server(("127.0.0.1", 0))
    found.banner_port = banner.getsockname()[1]
    threading.Thread(target=_serve_banner, args=(banner,), daemon=True).start()
    retry = socket.create_server(("127.0.0.1", 0))
    found.retry_port = retry.getsockname()[1]
    threading.Thread(target=_serve_retry, args=(retry, found.retry_received), daemon=True).start()
    resolver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    resolver.bind(("127.0.0.1", 0))
    found.dns_port = resolver.getsockname()[1]
    with remote_host() as remote:
        found.remote = remote
        serve_stub_resolver(resolver, lambda name: remote.ip if name in CDN_NAMES else None)
        try:
            yield found
        finally:
            httpd.shutdown()
            httpd.server_close()
            for sock in (banner, retry, resolver):
                sock.close()


def policy(require_names: bool = True) -> engine.NetworkPolicy:
    return (engine.NetworkPolicy.deny_all().allow_dns().allow_domain("ok.test").allow_domain("cdn-a.test")
            .with_require_names(require_names))


@pytest.fixture(scope="module")
async def netvm(boot: engine.LinuxDirectBoot, servers: Servers) -> AsyncIterator[NetVm]:
    nat = (engine.NetworkMode.user_nat().host("ok.test", "127.0.0.1").host("other.test", "127.0.0.1")
           .dns_upstream(f"127.0.0.1:{servers.dns_port}"))
    async with running_net_vm(engine.vm(boot).cpus(1).memory_mb(256).network(nat.policy(policy()).build())) as running:
        yield running


@pytest.fixture
async def net(netvm: NetVm, servers: Servers) -> NetVm:
    netvm.vm.set_policy(policy())
    netvm.events.clear()
    servers.hosts_seen.clear()
    servers.retry_received.clear()
    assert servers.remote is not None
    servers.remote.hosts_seen.clear()
    return netvm


async def sh(net: NetVm, command: str, timeout: float = 90) -> engine.CommandResult:
    return await net.sh(command, timeout)


def tcp_denies(net: NetVm) -> list[engine.FlowEvent]:
    return [e for e in net.events if e.protocol == "tcp" and e.action == "deny"]


async def test_wget_of_the_allowed_name_still_works(net: NetVm, servers: Servers) -> None:
    result = await sh(net, f"timeout 30 wget -qO- http://ok.test:{servers.http_port}/")
    assert result.exit_code == 0, result.output
    assert result.output == "vhost ok.test\n"


async def keep_alive_for_another_name(net: NetVm, allowed: str, other: str, port: int, seen: list[str]) -> None:
    """Two requests on one connection to ``allowed``'s address, the second for ``other``: the
    first is served, the second is cut before the server (whose Hosts are ``seen``) reads it."""
    first = rf"GET / HTTP/1.1\r\nHost: {allowed}\r\n\r\n"
    second = rf"GET / HTTP/1.1\r\nHost: {other}\r\n\r\n"
    result = await sh(net, f"(printf '{first}'; sleep 3; printf '{second}'; sleep 2) | timeout 20 nc {allowed} {port}")
    assert f"vhost {allowed}" in result.output, result.output  # the first request was served
    assert f"vhost {other}" not in result.output
    assert seen == [allowed], "the second request reached the server"
    denied = tcp_denies(net)
    assert denied and denied[-1].domain == other, net.events


async def test_second_keep_alive_request_for_another_host_is_cut(net: NetVm, servers: Servers) -> None:
    await keep_alive_for_another_name(net, "ok.test", "other.test", servers.http_port, servers.hosts_seen)


async def test_malformed_request_line_is_refused(net: NetVm, servers: Servers) -> None:
    result = await sh(net, rf"printf 'GET  / HTTP/1.1\r\nHost: other.test\r\n\r\n' | timeout 20 nc ok.test {servers.http_port}")
    assert "vhost" not in result.output, result.output
    assert servers.hosts_seen == []
    assert tcp_denies(net), net.events


def remote(servers: Servers) -> RemoteHost:
    assert servers.remote is not None
    return servers.remote


async def test_a_second_request_for_another_name_of_a_shared_address_is_cut(net: NetVm, servers: Servers) -> None:
    """The CDN case: cdn-b.test shares cdn-a.test's address; a keep-alive request for it is cut."""
    cdn = remote(servers)
    await keep_alive_for_another_name(net, "cdn-a.test", "cdn-b.test", cdn.http_port, cdn.hosts_seen)


async def test_a_connection_that_sends_nothing_is_refused(net: NetVm, servers: Servers) -> None:
    """Server speaks first (like SSH) to an address allowed only through cdn-a.test's DNS answer."""
    result = await sh(net, f"sleep 4 | timeout 20 nc cdn-a.test {remote(servers).banner_port}")
    assert "BANNER" not in result.output, result.output
    denied = tcp_denies(net)
    assert denied and "by name only" in denied[-1].rule, denied


async def test_a_connection_that_sends_nothing_is_allowed_without_require_names(net: NetVm, servers: Servers) -> None:
    net.vm.set_policy(policy(require_names=False))
    result = await sh(net, f"sleep 4 | timeout 20 nc cdn-a.test {remote(servers).banner_port}")
    assert "BANNER from the remote host" in result.output, result.output
    assert not tcp_denies(net), net.events


async def test_a_nameless_connection_to_a_static_host_is_allowed(net: NetVm, servers: Servers) -> None:
    """A static host's stand-in address stands for that entry alone: DNS evidence is exact there."""
    result = await sh(net, f"sleep 4 | timeout 20 nc ok.test {servers.banner_port}")
    assert "BANNER from the host" in result.output, result.output
    assert not tcp_denies(net), net.events


async def test_second_client_hello_after_a_retry_naming_another_host_is_cut(net: NetVm, servers: Servers) -> None:
    first = octal(client_hello("ok.test"))
    second = octal(_record(20, b"\x01") + client_hello("other.test"))
    await sh(net, f"(printf '{first}'; sleep 3; printf '{second}'; sleep 2) | "
                  f"timeout 20 nc ok.test {servers.retry_port} >/dev/null")
    for _ in range(50):
        if servers.retry_received:
            break
        await asyncio.sleep(0.1)
    assert len(servers.retry_received) == 1
    assert b"ok.test" in servers.retry_received[0]  # the first hello went through
    assert b"other.test" not in servers.retry_received[0], "the retried hello reached the server"
    denied = tcp_denies(net)
    assert denied and denied[-1].domain == "other.test", net.events
