"""What a request in flight is on the host (its reply, output, send window), the channel a
process object drives it through, and how a failed reply becomes a typed engine error."""
from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

from engine.agent import protocol
from engine.errors import (
    AgentError,
    GuestFileError,
    GuestFileNotFound,
    GuestPathError,
    GuestPermissionError,
    TransferTooLarge,
)


@dataclass
class Call:
    """One request in flight: its reply, its output, its send window."""

    id: int
    reply: asyncio.Future[protocol.ReplyEvent]
    chunks: dict[str, list[bytes]] = field(default_factory=lambda: {"stdout": [], "stderr": [], "data": []})
    queue: asyncio.Queue[tuple[str, bytes] | None] | None = None
    sink: IO[bytes] | None = None
    window: asyncio.Event = field(default_factory=asyncio.Event)
    # The host's own bound on the bytes this call may receive: the guest is not trusted to
    # keep the caps it was asked to keep (None: bounded by its consumer, as a spawn's queue is).
    limit: int | None = None
    received: int = 0


class Channel(Protocol):
    """The part of the client a streaming process uses."""

    session: protocol.Session

    @property
    def failed(self) -> AgentError | None: ...

    def start(self, msg: dict[str, Any], *, stream: bool = False) -> Call: ...

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    async def wait(self, call: Call, timeout: float | None) -> protocol.ReplyEvent: ...


def reply_error(msg: Mapping[str, Any]) -> AgentError:
    """The engine error for a failed reply (naming the guest path where there is one)."""
    kind = msg.get("error")
    text = str(msg.get("message", "the agent refused the request"))
    path = str(msg.get("path", ""))
    try:
        err = int(msg.get("errno", 0) or 0)
    except (TypeError, ValueError):
        err = 0
    if kind == "not_found":
        return GuestFileNotFound(text, path, err)
    if kind == "permission":
        return GuestPermissionError(text, path, err)
    if kind == "path":
        return GuestPathError(text, path, err)
    if kind == "too_large":
        return TransferTooLarge(text)
    if kind == "file":
        return GuestFileError(text, path, err)
    return AgentError(f"agent: {text}")
