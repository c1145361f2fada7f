"""The pool service: VM pools served to other processes on a private Unix socket.

:class:`PoolServer` (what ``capsa-tui serve`` runs) serves pools; :class:`ServiceClient`
reserves, runs commands and watches consoles through it. The wire format is in
:mod:`engine.service.protocol`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from engine.lazy import lazy_package

if TYPE_CHECKING:
    from engine.service.address import ServiceAddress, address_from_env
    from engine.service.budget import RequestBudget
    from engine.service.client import Attachment, ServiceClient
    from engine.service.errors import ProtocolError, ServiceError, ServiceUnavailable, ServiceVersionError
    from engine.service.flows import FlowFilter
    from engine.service.registry import PoolRegistry
    from engine.service.watches import FlowWatch, PoolWatch
    from engine.service.limits import ServiceLimits
    from engine.service.paths import service_socket_path
    from engine.service.protocol import PROTOCOL_VERSION
    from engine.service.remote import remote_console
    from engine.service.server import PoolServer
    from engine.service.stats import ServiceStats
    from engine.service.stdio import relay_stdio
    from engine.service.transport import Link, open_link
else:
    # Hidden from type checkers: a module __getattr__ would make every misspelt name type-check.
    __getattr__, __dir__, __all__ = lazy_package(globals())
