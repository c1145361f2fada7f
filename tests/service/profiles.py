"""Profiles the service tests serve: a busybox pool behind a deny-all gateway, and a plain one.

``BLOCKED`` is a TEST-NET-3 address: the gateway decides about it, and no packet to it ever
leaves the host, allowed or not.
"""
from __future__ import annotations

BLOCKED = "203.0.113.7"


def guarded(name: str, comment: str) -> str:
    """A VM pool (size 1, max 2, no clones) whose gateway allows DNS only; ``comment`` heads the file."""
    return f"""\
# {comment}
name: {name}
boot: default
cpus: 1
memory_mb: 192
pool: {{size: 1, max_size: 2, snapshot: false}}
network:
  mode: user_nat
  dns_upstream: 127.0.0.1:9   # nothing answers: DNS flows are decided, never resolved
  policy:
    default: deny
    rules:
      - {{action: allow, protocol: udp, port: 53}}
"""


def plain(name: str) -> str:
    """A VM pool (size 1, max 2, no clones) without a network."""
    return f"name: {name}\nboot: default\ncpus: 1\nmemory_mb: 160\npool: {{size: 1, max_size: 2, snapshot: false}}\n"


__all__ = ["BLOCKED", "guarded", "plain"]
