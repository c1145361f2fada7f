"""Which pool service a command talks to: ``--host``, ``$CAPSA_HOST``, the current context, or
this host's socket (``capsatui.contexts`` resolves the first three)."""
from __future__ import annotations

import argparse

import engine
from capsatui.contexts import resolve_host


def service_address(args: argparse.Namespace) -> engine.ServiceAddress:
    """The one service this command talks to (a command of one host takes the first named)."""
    contexts = resolve_host(getattr(args, "host", None))
    if not contexts or contexts[0].is_local:
        return engine.ServiceAddress.local()
    return contexts[0].address()


async def connect_service(args: argparse.Namespace, timeout: float = 10.0) -> engine.ServiceClient:
    """A client of that service; ServiceUnavailable when none runs there."""
    return await engine.ServiceClient.connect(service_address(args), timeout)


__all__ = ["connect_service", "service_address"]
