"""ServiceStats: what a running PoolServer holds for its clients right now (plain data)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ServiceStats:
    """A snapshot of :meth:`PoolServer.stats`.

    ``request_bytes`` is what the ``max_request_bytes`` bound counts: the announced sizes of
    the frames being received, across all clients; ``request_bytes_received`` is the part of
    them that has arrived and is buffered. ``reply_bytes`` are frames queued for clients.
    ``refused`` counts refusals by kind (``TooManyConnections``, ``BufferFull``, ``TooDeep``,
    ``HelloTimeout``, ``FrameTimeout``, ``ReplyBacklog``, ``Busy``, ``ProtocolError``...) since the
    server started; ``Busy`` counts connections that were answered Busy (and logs each once),
    not every request so answered.
    """

    connections: int
    request_bytes: int
    request_bytes_received: int
    max_request_bytes: int
    reply_bytes: int
    requests_running: int
    refused: Mapping[str, int] = field(default_factory=dict)
