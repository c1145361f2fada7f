"""Flow events (allowed, denied, logged) and their fan-out to any number of bounded listeners.

The gateway reports every decision here; the TUI's flow log and ``vm.network_events()`` read
from it. A slow reader never slows the guest: each listener has a bounded queue that drops its
oldest events (and counts them) when full.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from typing import Any

_LISTENER_QUEUE = 1024


@dataclass(frozen=True)
class FlowEvent:
    """One decision of the gateway about one flow (or DNS question)."""

    time: float  # wall clock (time.time()), for display
    vm: str
    protocol: str  # "tcp", "udp", "dns", "icmp"
    src: str
    dst: str
    port: int
    domain: str | None
    rule: str  # the rule that decided, e.g. "allow domain *.github.com", or "default deny"
    action: str  # "allow", "deny", "log"
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        where = f"{self.dst}:{self.port}" + (f" ({self.domain})" if self.domain else "")
        return f"{self.action.upper():5} {self.protocol} {self.src} -> {where}: {self.rule}{' - ' + self.detail if self.detail else ''}"


class FlowLog:
    """Fans events out to listeners; ``subscribe()`` is an async iterator of FlowEvent."""

    def __init__(self, vm: str) -> None:
        self.vm = vm
        self._queues: list[asyncio.Queue[FlowEvent | None]] = []
        self.dropped = 0
        self.count = 0
        self._closed = False

    def emit(self, protocol: str, src: str, dst: str, port: int, domain: str | None,
             rule: str, action: str, detail: str = "") -> FlowEvent:
        event = FlowEvent(time.time(), self.vm, protocol, src, dst, port, domain, rule, action, detail)
        self.count += 1
        for queue in self._queues:
            if queue.full():
                queue.get_nowait()
                self.dropped += 1
            queue.put_nowait(event)
        return event

    async def subscribe(self) -> AsyncIterator[FlowEvent]:
        """Events from now on, until the gateway closes (at once if it has)."""
        if self._closed:
            return
        queue: asyncio.Queue[FlowEvent | None] = asyncio.Queue(_LISTENER_QUEUE)
        self._queues.append(queue)
        try:
            while (event := await queue.get()) is not None:
                yield event
        finally:
            self._queues.remove(queue)

    def close(self) -> None:
        self._closed = True
        for queue in self._queues:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(None)
