"""PoolBuilder: ``engine.vm_pool(boot)``, the VM shape of ``engine.vm()`` plus pool settings."""
from __future__ import annotations

import itertools
from dataclasses import dataclass

from engine.errors import ConfigError
from engine.pool.pool import VmPool
from engine.pool.size import check_pool_size, fit_max_size
from engine.pool.stats import PoolSettings
from engine.microvm.boot import LinuxDirectBoot
from engine.microvm.builder import ShapeBuilder
from engine.microvm.spec import VmSpec

_ids = itertools.count(1)


@dataclass
class PoolBuilder(ShapeBuilder):
    """``engine.vm_pool(boot)``: the VM shape methods of ``engine.vm`` plus pool settings."""

    _max_size: int | None = None
    _name: str | None = None
    _boot_timeout: float = PoolSettings.boot_timeout
    _health_interval: float = PoolSettings.health_interval
    _snapshot: bool = PoolSettings.snapshot
    _prestart: int = PoolSettings.prestart

    def max_size(self, n: int) -> PoolBuilder:
        """The most VMs alive at once (booting + idle + reserved); defaults to the pool size."""
        self._max_size = int(n)
        return self

    def name(self, name: str) -> PoolBuilder:
        self._name = name
        return self

    def boot_timeout(self, seconds: float) -> PoolBuilder:
        self._boot_timeout = float(seconds)
        return self

    def health_interval(self, seconds: float) -> PoolBuilder:
        """How stale an idle VM's last console answer may be before a hand-out probes it again."""
        self._health_interval = float(seconds)
        return self

    def snapshot(self, enabled: bool = True, *, prestart: int = PoolSettings.prestart) -> PoolBuilder:
        """Refill from copy-on-write clones of a template booted once (cold boots as fallback).

        ``prestart`` QEMU processes wait for their state at any moment, so a refill is only
        the restore. A shape that cannot be cloned (see ``stats().snapshot_error``) boots cold.
        """
        if prestart < 0:
            raise ConfigError(f"prestart must be 0 or more, got {prestart}")
        self._snapshot = bool(enabled)
        self._prestart = int(prestart)
        return self

    def settings(self, size: int) -> PoolSettings:
        max_size = self._max_size if self._max_size is not None else fit_max_size(size, 1)
        check_pool_size(size, max_size)
        if self._boot_timeout <= 0 or self._health_interval <= 0:
            raise ConfigError("boot_timeout and health_interval must be positive")
        return PoolSettings(
            name=self._name or f"pool{next(_ids)}",
            size=size,
            max_size=max_size,
            boot_timeout=self._boot_timeout,
            health_interval=self._health_interval,
            snapshot=self._snapshot,
            prestart=self._prestart,
        )

    async def build(self, size: int) -> VmPool:
        """Start the pool and return once ``size`` VMs are booted and idle."""
        return await VmPool.start(self.spec(), self.settings(size))

    def start(self, size: int) -> VmPool:
        """Start the pool and return at once, its VMs booting (``await pool.wait_filled()``)."""
        return VmPool.launch(self.spec(), self.settings(size))


def vm_pool(boot: LinuxDirectBoot) -> PoolBuilder:
    """Start describing a pool of identical VMs that boot ``boot``."""
    return PoolBuilder(VmSpec(boot=boot))

