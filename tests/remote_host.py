"""A "public" host for network tests: a network namespace behind a veth pair, with servers in it.

Some attacks need a destination that is neither the host itself nor an off-limits range: an
address a public name resolves to, shared with other names (a CDN). Loopback cannot play that
part (it is off-limits, and its answers are withheld as rebinding), so this module makes one: a
namespace ``capsa-t-<pid>-<n>`` whose end of a veth pair holds ``198.51.100.2`` (TEST-NET-2,
never routed), the host's end ``198.51.100.1``. Inside it run, in one Python child process:

* an HTTP/1.1 server with virtual hosts on port 8080 that answers ``vhost <Host>`` and records
  each Host it saw (printed on its stdout, one per line, read by :class:`RemoteHost`);
* a server that speaks first on port 2222 (``BANNER from the remote host``), like SSH.

Nothing leaves the machine: the namespace has no other link. Everything (the child, the
namespace and with it both veth ends) is removed on exit. Needs root and iproute2.
"""
from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from tests.procs import stop_child

REMOTE_IP = "198.51.100.2"
HOST_SIDE_IP = "198.51.100.1"
HTTP_PORT = 8080
BANNER_PORT = 2222
_counter = itertools.count(1)

_SERVER = r'''
import http.server, socket, socketserver, sys, threading

class Vhosts(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args):
        pass
    def do_GET(self):
        host = (self.headers.get("Host") or "").split(":")[0]
        print("host", host, flush=True)
        body = ("vhost %s\n" % host).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

def banner(server):
    while True:
        conn, _ = server.accept()
        with conn:
            try:
                conn.sendall(b"BANNER from the remote host\n")
                conn.recv(1024)
            except OSError:
                pass

socketserver.ThreadingTCPServer.allow_reuse_address = True
httpd = socketserver.ThreadingTCPServer(("0.0.0.0", HTTP_PORT), Vhosts)
httpd.daemon_threads = True
threading.Thread(target=httpd.serve_forever, daemon=True).start()
b = socket.create_server(("0.0.0.0", BANNER_PORT))
threading.Thread(target=banner, args=(b,), daemon=True).start()
print("ready", flush=True)
sys.stdin.read()  # until the test closes our stdin
'''


@dataclass
class RemoteHost:
    """The namespace's servers and what its HTTP server saw."""

    namespace: str
    ip: str = REMOTE_IP
    http_port: int = HTTP_PORT
    banner_port: int = BANNER_PORT
    hosts_seen: list[str] = field(default_factory=list)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@contextmanager
def remote_host() -> Iterator[RemoteHost]:
    """Make the namespace and start its servers; remove both on exit."""
    if os.geteuid() != 0:
        raise RuntimeError("tests/remote_host.py needs root (ip netns add)")
    n = next(_counter)
    ns, veth = f"capsa-t-{os.getpid()}-{n}", f"capsa{os.getpid() % 100000}h{n}"
    peer = veth[:-2] + f"n{n}"
    _ip("netns", "add", ns)
    child: subprocess.Popen[str] | None = None
    try:
        _ip("link", "add", veth, "type", "veth", "peer", "name", peer)
        _ip("link", "set", peer, "netns", ns)
        _ip("addr", "add", f"{HOST_SIDE_IP}/24", "dev", veth)
        _ip("link", "set", veth, "up")
        _ip("netns", "exec", ns, "ip", "addr", "add", f"{REMOTE_IP}/24", "dev", peer)
        _ip("netns", "exec", ns, "ip", "link", "set", peer, "up")
        _ip("netns", "exec", ns, "ip", "link", "set", "lo", "up")
        child = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", f"HTTP_PORT, BANNER_PORT = {HTTP_PORT}, {BANNER_PORT}\n" + _SERVER],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None
        if child.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the server in namespace {ns} did not start")
        found = RemoteHost(ns)
        stdout = child.stdout

        def read_hosts() -> None:
            for line in stdout:
                if line.startswith("host "):
                    found.hosts_seen.append(line[5:].strip())

        threading.Thread(target=read_hosts, daemon=True).start()
        yield found
    finally:
        if child is not None:
            stop_child(child)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", veth], capture_output=True)  # gone with the ns, normally
