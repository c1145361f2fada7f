"""Flow events as the pool service hands them out: a filter and a bounded subscription.

A client of ``capsa-tui serve`` asks for the flow events of one pool, one VM or one action
(``allow``, ``deny``, ``log``), or all of them. Each subscription has a bounded queue: a client
that reads slowly loses the oldest events (counted in :attr:`FlowSubscription.dropped`), and
never slows a guest or another client. Events are taken in batches, so a burst of flows is one
frame on the wire, not one frame per flow.
"""
from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass

from engine.broadcast import Broadcast
from engine.netstack.flowlog import FlowEvent

FLOW_QUEUE = 4096  # events kept for one subscription that does not keep up
FLOW_BATCH = 512  # events per batch at most
ACTIONS = frozenset({"allow", "deny", "log"})

Flow = tuple[str, str, FlowEvent]  # (pool, member id, event): where an event came from


@dataclass(frozen=True)
class FlowFilter:
    """Which flow events a subscriber wants (None: any); ``vm`` is a pool member's id (or the
    name the gateway gives the VM in its events, its host name)."""

    pool: str | None = None
    vm: str | None = None
    action: str | None = None

    def __post_init__(self) -> None:
        if self.action is not None and self.action not in ACTIONS:
            raise ValueError(f"a flow filter's action is one of {', '.join(sorted(ACTIONS))}, not {self.action!r}")

    def matches(self, pool: str, member: str, event: FlowEvent) -> bool:
        return ((self.pool is None or self.pool == pool)
                and (self.vm is None or self.vm in (member, event.vm))
                and (self.action is None or self.action == event.action))


class FlowSubscription:
    """Events that matched ``where``, queued until taken; ``unsubscribe`` is called at :meth:`end`."""

    def __init__(self, where: FlowFilter, unsubscribe: Callable[[FlowSubscription], None]) -> None:
        self.where = where
        self._unsubscribe = unsubscribe
        self._queue: collections.deque[Flow] = collections.deque(maxlen=FLOW_QUEUE)
        self._changed = Broadcast()
        self.dropped = 0
        self.ended = False

    def offer(self, flow: Flow) -> None:
        if self.ended or not self.where.matches(*flow):
            return
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1  # the deque drops the oldest itself
        self._queue.append(flow)
        self._changed.notify()

    async def batch(self) -> list[Flow]:
        """The events queued now (at most FLOW_BATCH), waiting for one; [] once ended."""
        while not self._queue:
            if self.ended:
                return []
            await self._changed.wait()
        count = min(len(self._queue), FLOW_BATCH)
        return [self._queue.popleft() for _ in range(count)]

    def end(self) -> None:
        """Stop: no more events are queued, a waiting :meth:`batch` returns what is left or []."""
        if self.ended:
            return
        self.ended = True
        self._changed.notify()
        try:
            self._unsubscribe(self)
        except ValueError:
            pass  # already gone from the registry's list


__all__ = ["ACTIONS", "FLOW_BATCH", "FLOW_QUEUE", "Flow", "FlowFilter", "FlowSubscription"]
