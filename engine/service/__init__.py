"""The pool service: VM pools served to other processes on a private Unix socket.

:class:`PoolServer` (what ``capsa-tui serve`` runs) serves pools; :class:`ServiceClient`
reserves, runs commands and watches consoles through it. The wire format is in
:mod:`engine.service.protocol`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from engine.lazy import lazy_attributes

_EXPORTS = {
    "Attachment": "engine.service.client",
    "ServiceClient": "engine.service.client",
    "ProtocolError": "engine.service.errors",
    "ServiceError": "engine.service.errors",
    "ServiceUnavailable": "engine.service.errors",
    "ServiceVersionError": "engine.service.errors",
    "service_socket_path": "engine.service.paths",
    "PROTOCOL_VERSION": "engine.service.protocol",
    "PoolServer": "engine.service.server",
    "remote_console": "engine.service.remote",
}

if TYPE_CHECKING:
    from engine.service.client import Attachment, ServiceClient
    from engine.service.errors import ProtocolError, ServiceError, ServiceUnavailable, ServiceVersionError
    from engine.service.paths import service_socket_path
    from engine.service.protocol import PROTOCOL_VERSION
    from engine.service.remote import remote_console
    from engine.service.server import PoolServer

__getattr__, __dir__ = lazy_attributes(__name__, globals(), _EXPORTS)

__all__ = [
    "PROTOCOL_VERSION",
    "Attachment",
    "PoolServer",
    "ProtocolError",
    "ServiceClient",
    "ServiceError",
    "ServiceUnavailable",
    "ServiceVersionError",
    "remote_console",
    "service_socket_path",
]
