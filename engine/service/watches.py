"""What a client of the pool service watches: the pools' state and the flow events.

The server pushes both (protocol v2's ``pools`` and ``flows`` events); nothing polls. A
:class:`PoolWatch` keeps only the newest state (a client that looks late wants the present,
not the history), a :class:`FlowWatch` a bounded queue of flow events that drops the oldest
when its reader falls behind, counted in ``dropped`` with the server's own count.
"""
from __future__ import annotations

import collections
from collections.abc import AsyncIterator
from typing import Any

from engine.broadcast import Broadcast
from engine.netstack.flowlog import FlowEvent

FLOW_KEEP = 8192  # flow events kept for a reader that does not keep up
_FLOW_FIELDS = frozenset(FlowEvent.__dataclass_fields__)


def flow_event(data: dict[str, Any]) -> tuple[str, FlowEvent]:
    """A ``flows`` entry as (pool, event); unknown fields are ignored (a newer server's).

    The event's ``vm`` is the pool member's id (what ``reserve`` and ``status`` call it), not the
    gateway's own name for the VM (its host name), so a flow names the VM the client holds."""
    pool = str(data.get("pool", ""))
    fields = {k: v for k, v in data.items() if k in _FLOW_FIELDS}
    member = data.get("member")
    if isinstance(member, str) and member:
        fields["vm"] = member
    return pool, FlowEvent(**fields)


class _Watch:
    def __init__(self) -> None:
        self._changed = Broadcast()
        self.ended: str | None = None  # why it ended (None: it goes on)

    def _end(self, reason: str) -> None:
        if self.ended is None:
            self.ended = reason
            self._changed.notify()


class PoolWatch(_Watch):
    """The newest state of every pool and profile of the server (``states``, ``version``)."""

    def __init__(self) -> None:
        super().__init__()
        self.states: list[dict[str, Any]] = []
        self.version = -1

    def _push(self, states: list[dict[str, Any]], version: int) -> None:
        self.states, self.version = states, version
        self._changed.notify()

    async def next(self, after: int) -> list[dict[str, Any]] | None:
        """The states once their version is past ``after``; None once the watch has ended."""
        while self.version <= after:
            if self.ended is not None:
                return None
            await self._changed.wait()
        return self.states

    def __aiter__(self) -> AsyncIterator[list[dict[str, Any]]]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[list[dict[str, Any]]]:
        seen = -1
        while (states := await self.next(seen)) is not None:
            seen = self.version
            yield states


class FlowWatch(_Watch):
    """Flow events as (pool, FlowEvent): ``backlog`` (what came before), then iterate."""

    def __init__(self) -> None:
        super().__init__()
        self.backlog: list[tuple[str, FlowEvent]] = []
        self._queue: collections.deque[tuple[str, FlowEvent]] = collections.deque(maxlen=FLOW_KEEP)
        self.dropped = 0  # lost here and on the server
        self._server_dropped = 0
        self._local_dropped = 0

    def _push(self, flows: list[dict[str, Any]], server_dropped: int) -> None:
        for data in flows:
            if len(self._queue) == self._queue.maxlen:
                self._local_dropped += 1
            self._queue.append(flow_event(data))
        self._server_dropped = max(self._server_dropped, server_dropped)
        self.dropped = self._server_dropped + self._local_dropped
        self._changed.notify()

    async def get(self) -> tuple[str, FlowEvent] | None:
        """The next event; None once the watch has ended and its queue is empty."""
        while not self._queue:
            if self.ended is not None:
                return None
            await self._changed.wait()
        return self._queue.popleft()

    def __aiter__(self) -> AsyncIterator[tuple[str, FlowEvent]]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[tuple[str, FlowEvent]]:
        while (item := await self.get()) is not None:
            yield item


__all__ = ["FLOW_KEEP", "FlowWatch", "PoolWatch", "flow_event"]
