"""Errors of the pool service (``capsa-tui serve``) and its clients."""
from __future__ import annotations

from engine.errors import EngineError


class ServiceError(EngineError):
    """The pool service failed a request or the connection to it broke.

    ``kind`` names the error on the server's side (``PoolTimeout``, ``BadRequest``...) when
    the server reported one.
    """

    def __init__(self, message: str, kind: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind


class ServiceUnavailable(ServiceError):
    """No ``capsa-tui serve`` listens on the socket."""


class ServiceVersionError(ServiceError):
    """Client and server speak different protocol versions (the message names both)."""


class ProtocolError(ServiceError):
    """A peer sent something that is not a valid frame or message (the connection is dropped)."""


class BadRequest(ServiceError):
    """A well-formed message whose fields are missing or of the wrong type (only that request fails)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, kind="BadRequest")
