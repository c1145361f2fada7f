"""What the benchmark scripts share: the churn loop, percentiles, number formats, SIGTERM cleanup.

Public API only: a benchmark that needs an engine internal gets it from ``bench.internals``.
"""
from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import engine
from bench.internals import percentile as percentile  # re-exported for the scripts


@dataclass
class Churn:
    """Latencies of the requests a churn phase completed, how long it ran, the pool's stats."""

    latencies: list[float] = field(default_factory=list)
    elapsed: float = 0.0
    stats: engine.PoolStats | None = None

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.elapsed if self.elapsed else 0.0


async def churn(request: Callable[[], Awaitable[None]], duration: float, workers: int) -> Churn:
    """``workers`` loops each running ``request()`` back to back for ``duration`` seconds."""
    result = Churn()
    deadline = time.perf_counter() + duration

    async def worker() -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            await request()
            result.latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    result.elapsed = time.perf_counter() - started
    return result


def fmt_ms(seconds: float | None, decimals: int = 0) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.{decimals}f} ms"


def fmt_s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.2f} s"


def fmt_ratio(ours: float | None, base: float | None, *, unit: str = "faster") -> str:
    """How many times ``base`` is ``ours`` ("25× faster", "9.3× less"), or how many times worse."""
    if not ours or not base:
        return "-"
    if base >= ours:
        ratio = base / ours
        return f"{ratio:.0f}× {unit}" if ratio >= 10 else f"{ratio:.2f}× {unit}"
    return f"{ours / base:.2f}× {'slower' if unit == 'faster' else 'more'}"


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so every ``finally`` runs and kills what the bench started."""
    signal.signal(signal.SIGTERM, _raise_exit)


def _raise_exit(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)
