"""Plain data of a VM pool: how it behaves (PoolSettings), its counters (PoolStats), its members."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

MemberState = Literal["booting", "idle", "reserved", "stopping"]


@dataclass(frozen=True)
class PoolStats:
    """A snapshot of one pool: how many VMs are in each state, and what happened so far.

    ``created`` counts VMs that finished booting, ``released`` VMs their holder gave back,
    ``evicted`` idle VMs the health check threw out, ``failed`` boots that failed plus reserved
    VMs whose machine died under their holder, ``misses`` reserve calls that found no idle VM.
    Snapshot pools: ``snapshot`` is "off" (cold boots), "preparing" (the template), "ready" or
    "failed"; ``fallbacks`` counts VMs booted cold because no clone could be had, and
    ``snapshot_error`` says why; ``waiting_clones`` are QEMU processes started ahead of a refill.
    """

    name: str
    size: int
    max_size: int
    idle: int
    booting: int
    reserved: int
    stopping: int
    created: int
    released: int
    evicted: int
    failed: int
    misses: int
    boot_p50_s: float | None
    boot_p95_s: float | None
    last_error: str | None
    fallbacks: int = 0
    snapshot: str = "off"
    snapshot_error: str | None = None
    waiting_clones: int = 0

    @property
    def alive(self) -> int:
        """VMs whose machine process exists: never more than ``max_size``."""
        return self.idle + self.booting + self.reserved + self.stopping

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PoolMember:
    """One VM of a pool as the pool sees it (for status listings and console attach)."""

    id: str
    state: MemberState
    pid: int | None
    age_s: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """The nearest-rank percentile of ``values`` (None when there are none)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1))
    return ordered[rank]


@dataclass(frozen=True)
class PoolSettings:
    """How a pool behaves, apart from the shape of its VMs."""

    name: str = "pool"
    size: int = 1
    max_size: int = 1
    boot_timeout: float = 120.0
    health_interval: float = 10.0
    probe_timeout: float = 2.0
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    max_boot_failures: int = 3  # in a row: then waiters get PoolBootError instead of hanging
    snapshot: bool = False  # refill from a template's copy-on-write clones (see engine.pool.clones)
    prestart: int = 2  # clone processes kept waiting for their state (snapshot pools)
