"""Fixtures of the netstack tests: the gateway harness's loopback peers."""
from __future__ import annotations

from tests.netstack.gateway_harness import peers

__all__ = ["peers"]
