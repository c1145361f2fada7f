"""Small helpers the integration tests share: polling for a condition, free ports, pool rest."""
from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import engine

T = TypeVar("T")


async def until(predicate: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    """Poll ``predicate`` every 50 ms; fail the test if it is still false after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not reached in {timeout}s"
        await asyncio.sleep(0.05)


def pool_settled(pool: engine.VmPool) -> bool:
    """Back to its size in idle VMs, nothing booting, reserved or stopping."""
    s = pool.stats()
    return (s.idle, s.booting, s.reserved, s.stopping) == (pool.size, 0, 0, 0)


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def collect(events: AsyncIterator[T]) -> tuple[list[T], asyncio.Task[None]]:
    """Append every item of ``events`` to a list, in the background (cancel the task when done)."""
    seen: list[T] = []

    async def pump() -> None:
        async for item in events:
            seen.append(item)

    return seen, asyncio.create_task(pump())
