"""FlowFanout: a hub's flow events handed to every open flow log, and kept for one that opens late.

Both hubs get flow events from somewhere (the gateways of this process's VMs, or a serve's
``flows`` events) and give them to any number of flow logs. Each log has a bounded queue: a
slow reader loses its oldest events and never slows the VMs or the link; a recent backlog lets
a freshly opened log show what came before it.
"""
from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable

import engine

BACKLOG = 2000  # flow events kept for a freshly opened flow log
SUBSCRIBER_QUEUE = 1000


class FlowFanout:
    """Events in through :meth:`publish`, out through :meth:`subscribe` to each reader."""

    def __init__(self) -> None:
        self.backlog: deque[engine.FlowEvent] = deque(maxlen=BACKLOG)
        self._queues: list[asyncio.Queue[engine.FlowEvent | None]] = []

    @property
    def readers(self) -> int:
        return len(self._queues)

    def publish(self, event: engine.FlowEvent) -> None:
        self.backlog.append(event)
        for queue in self._queues:
            if queue.full():  # a slow reader loses its oldest events, never slows the source
                queue.get_nowait()
            queue.put_nowait(event)

    async def subscribe(self, on_first: Callable[[], object] | None = None) -> AsyncIterator[engine.FlowEvent]:
        """Events from now on until :meth:`close`; ``on_first`` runs (awaited if a coroutine)
        when this is the first reader, after its queue exists (so it sees what that starts)."""
        queue: asyncio.Queue[engine.FlowEvent | None] = asyncio.Queue(SUBSCRIBER_QUEUE)
        first = not self._queues
        self._queues.append(queue)
        try:
            if first and on_first is not None:
                started = on_first()
                if asyncio.iscoroutine(started):
                    await started
            while (event := await queue.get()) is not None:
                yield event
        finally:
            with contextlib.suppress(ValueError):
                self._queues.remove(queue)

    def close(self) -> None:
        """End every reader's stream (each sees the end after what is queued)."""
        for queue in self._queues:
            if queue.full():
                queue.get_nowait()  # room for the end marker: readers must see the end
            queue.put_nowait(None)


__all__ = ["BACKLOG", "SUBSCRIBER_QUEUE", "FlowFanout"]
