"""The host's own IPv4 addresses, which a guest must not reach unless a rule names them.

A service bound to the host's LAN address (or to ``0.0.0.0``) is as much the host's as one on
loopback, and the built-in off-limits ranges miss a host whose address is public or in a
test block (this machine's ``eth0`` is ``192.0.2.2``). So the gateway protects every address
the kernel delivers locally, exactly the kernel's own list:

* :func:`parse_fib_trie` (sans-IO) reads ``/proc/net/fib_trie`` text and returns every
  ``host LOCAL`` entry (each interface address, and local routes such as ``127.0.0.0/8`` or an
  anycast block routed to ``lo``) and every ``BROADCAST`` entry (``192.0.2.255`` reaches every
  host service bound to ``0.0.0.0`` just the same), as networks.
* :class:`HostAddresses` is the one watcher of a process, shared by every gateway
  (:func:`acquire` / :meth:`HostAddresses.release`, reference counted: the last gateway to close
  closes its socket). It re-reads the table when the kernel says an address changed: a netlink
  socket subscribed to ``RTMGRP_IPV4_IFADDR`` is drained, without blocking, whenever a gateway
  asks (:meth:`HostAddresses.networks`), so it needs no event loop and works for gateways on any
  loop or thread. Where netlink is unavailable it re-reads at most every ``REREAD_S`` seconds.
  If the table cannot be read at all, the last known list stays (at start: empty, and the
  built-in ranges still protect loopback).
"""
from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

log = logging.getLogger(__name__)

FIB_TRIE = Path("/proc/net/fib_trie")
REREAD_S = 2.0
_RTMGRP_IPV4_IFADDR = 0x10
_LOCAL_TYPES = ("host LOCAL", "BROADCAST")


def parse_fib_trie(text: str) -> frozenset[IPv4Network]:
    """Every local and broadcast destination in ``/proc/net/fib_trie`` text, as networks.

    The file lists each leaf as ``|-- <address>`` followed by one line per route of that leaf,
    ``/<prefix> <scope> <type>``; the local table's ``host LOCAL`` and ``BROADCAST`` routes are
    the addresses the kernel delivers to the host itself. Lines that do not parse are skipped:
    the format is the kernel's, not ours to reject.
    """
    found: set[IPv4Network] = set()
    leaf: IPv4Address | None = None
    for line in text.splitlines():
        words = line.strip().split()
        if len(words) == 2 and words[0] == "|--":
            try:
                leaf = IPv4Address(words[1])
            except ValueError:
                leaf = None
            continue
        if leaf is None or not words or not words[0].startswith("/"):
            continue
        rest = " ".join(words[1:])
        if not any(rest.endswith(kind) for kind in _LOCAL_TYPES):
            continue
        try:
            found.add(IPv4Network(f"{leaf}/{words[0][1:]}", strict=False))
        except ValueError:
            continue
    return frozenset(found)


def _open_netlink() -> socket.socket | None:
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                             socket.NETLINK_ROUTE)
    except (OSError, AttributeError):
        return None
    try:
        sock.bind((0, _RTMGRP_IPV4_IFADDR))
    except OSError:
        sock.close()
        return None
    return sock


class HostAddresses:
    """The process's watcher of host addresses (see the module docstring); get it with :func:`acquire`."""

    def __init__(self, read: Callable[[], str] = FIB_TRIE.read_text,
                 clock: Callable[[], float] = time.monotonic,
                 netlink: Callable[[], socket.socket | None] = _open_netlink) -> None:
        self._read = read
        self._clock = clock
        self._lock = threading.Lock()
        self._sock = netlink()
        self._networks: frozenset[IPv4Network] = frozenset()
        self._read_at = 0.0
        self.users = 0
        self.rereads = 0
        self._reread()

    @property
    def watching(self) -> bool:
        """Whether a netlink socket tells us of changes (else: periodic re-reads)."""
        return self._sock is not None

    def networks(self) -> frozenset[IPv4Network]:
        """The host's local and broadcast destinations now (re-read if the kernel said so)."""
        with self._lock:
            if self._changed():
                self._reread()
            return self._networks

    def _changed(self) -> bool:
        if self._sock is None:
            return self._clock() - self._read_at >= REREAD_S
        changed = False
        while True:
            try:
                if not self._sock.recv(65536):
                    break
                changed = True
            except BlockingIOError:
                break
            except OSError:   # ENOBUFS: we missed messages, so something changed
                changed = True
                break
        return changed

    def _reread(self) -> None:
        self._read_at = self._clock()
        try:
            text = self._read()
        except OSError as err:
            log.warning("cannot read the host's addresses (%s); keeping the last known list", err)
            return
        self._networks = parse_fib_trie(text)
        self.rereads += 1

    def release(self) -> None:
        """One gateway is done with the watcher; the last one closes it."""
        global _shared
        with _registry_lock:
            self.users -= 1
            if self.users > 0:
                return
            if _shared is self:
                _shared = None
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                with contextlib.suppress(OSError):
                    self._sock.close()
                self._sock = None


_registry_lock = threading.Lock()
_shared: HostAddresses | None = None


def acquire() -> HostAddresses:
    """The process's shared watcher (made on first use); call ``release()`` once when done."""
    global _shared
    with _registry_lock:
        if _shared is None:
            _shared = HostAddresses()
        _shared.users += 1
        return _shared
