"""The host's own addresses: parsing /proc/net/fib_trie, re-reading on change, one shared watcher."""
from __future__ import annotations

import socket
from ipaddress import IPv4Network
from pathlib import Path

from engine.netstack import host_addresses
from engine.netstack.host_addresses import HostAddresses, parse_fib_trie

# Captured on a machine with eth0 at 192.0.2.2/24, a docker bridge and an anycast block on lo.
FIB_TRIE = """\
Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
     +-- 192.0.2.0/24 2 0 2
        +-- 192.0.2.0/30 2 0 2
           |-- 192.0.2.0
              /24 link UNICAST
           |-- 192.0.2.2
              /32 host LOCAL
        |-- 192.0.2.255
           /32 link BROADCAST
Local:
  +-- 0.0.0.0/0 3 0 5
     |-- 172.17.0.1
        /32 host LOCAL
     |-- 172.17.255.255
        /32 link BROADCAST
     |-- 203.0.113.0
        /24 host LOCAL
     |-- 198.51.100.7
        /32 link UNICAST
"""


def test_parse_fib_trie_finds_local_and_broadcast_destinations_only() -> None:
    assert parse_fib_trie(FIB_TRIE) == frozenset(IPv4Network(n) for n in (
        "127.0.0.0/8", "127.0.0.1/32", "127.255.255.255/32", "192.0.2.2/32", "192.0.2.255/32",
        "172.17.0.1/32", "172.17.255.255/32", "203.0.113.0/24"))


def test_parse_fib_trie_skips_what_it_cannot_read() -> None:
    assert parse_fib_trie("") == frozenset()
    assert parse_fib_trie("|-- not-an-address\n   /32 host LOCAL\n/32 host LOCAL\n|-- 10.0.0.1\n  /99 host LOCAL\n") == frozenset()


def test_this_hosts_table_holds_its_interface_addresses() -> None:
    text = Path("/proc/net/fib_trie").read_text()
    found = parse_fib_trie(text)
    assert IPv4Network("127.0.0.1/32") in found
    # every address `socket` can bind to on this host is in it (the interfaces' own addresses)
    for net in found:
        if net.prefixlen == 32 and not str(net.network_address).endswith(".255"):
            with socket.socket() as s:
                s.bind((str(net.network_address), 0))


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_without_netlink_it_rereads_at_most_every_few_seconds() -> None:
    tables = [FIB_TRIE, "|-- 192.0.2.9\n   /32 host LOCAL\n"]
    clock = _Clock()
    watcher = HostAddresses(read=lambda: tables[0], clock=clock, netlink=lambda: None)
    assert not watcher.watching and IPv4Network("192.0.2.2/32") in watcher.networks()
    tables[0] = tables[1]
    clock.now += host_addresses.REREAD_S / 2
    assert IPv4Network("192.0.2.2/32") in watcher.networks()        # not yet
    clock.now += host_addresses.REREAD_S
    assert watcher.networks() == frozenset({IPv4Network("192.0.2.9/32")})
    assert watcher.rereads == 2


def test_a_netlink_message_makes_it_reread_and_silence_does_not() -> None:
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ours.setblocking(False)
    tables = [FIB_TRIE]
    watcher = HostAddresses(read=lambda: tables[0], clock=_Clock(), netlink=lambda: ours)
    try:
        assert watcher.watching and watcher.rereads == 1
        tables[0] = "|-- 192.0.2.9\n   /32 host LOCAL\n"
        assert IPv4Network("192.0.2.2/32") in watcher.networks()        # nothing said: no re-read
        kernel.send(b"RTM_NEWADDR")
        kernel.send(b"RTM_NEWADDR")
        assert watcher.networks() == frozenset({IPv4Network("192.0.2.9/32")})
        assert watcher.rereads == 2                                    # two messages, one re-read
    finally:
        watcher.close()
        kernel.close()
    assert ours.fileno() == -1


def test_an_unreadable_table_keeps_the_last_list() -> None:
    def fail() -> str:
        raise OSError("no /proc")
    watcher = HostAddresses(read=fail, clock=_Clock(), netlink=lambda: None)
    assert watcher.networks() == frozenset()


def test_one_watcher_per_process_closed_with_its_last_user() -> None:
    first = host_addresses.acquire()
    second = host_addresses.acquire()
    assert first is second and first.users >= 2
    users = first.users
    second.release()
    assert first.users == users - 1
    if users == 2:  # nothing else holds it: the last release closes it and the next is new
        first.release()
        assert not first.watching
        third = host_addresses.acquire()
        assert third is not first
        third.release()
    else:
        first.release()


def test_the_real_watcher_sees_this_hosts_addresses() -> None:
    watcher = host_addresses.acquire()
    try:
        assert watcher.watching  # netlink works here; the fallback is tested above
        assert IPv4Network("127.0.0.1/32") in watcher.networks()
    finally:
        watcher.release()
