"""CreatedVm: a VM described and checked but not started (capsa's ``VmStatus::Created``).

``await builder.create()`` returns one; ``await created.start()`` boots it and returns its
``VmHandle`` (a second call returns the same handle: capsa's "start if not running").
``builder.build()`` is ``create()`` then ``start()``. The split lets a caller check a shape (and
have a sandbox image built) ahead of the moment it needs the VM.
"""
from __future__ import annotations

import asyncio

from engine.kvm.accel import choose_accelerator
from engine.microvm.handle import VmHandle
from engine.microvm.resources import GuestOs, ResourceConfig
from engine.microvm.spec import VmSpec
from engine.microvm.status import Created, VmStatus


class CreatedVm:
    """A VM of ``spec`` that has not been started; ``start()`` boots it."""

    def __init__(self, spec: VmSpec) -> None:
        spec.check()  # the same "valid and bootable" check as every start path, now
        self.spec = spec
        self._handle: VmHandle | None = None
        self._lock = asyncio.Lock()

    def status(self) -> VmStatus:
        """``Created`` until started, then the started VM's status."""
        return self._handle.status() if self._handle is not None else Created()

    @property
    def handle(self) -> VmHandle | None:
        """The started VM, or None before ``start()``."""
        return self._handle

    def resources(self) -> ResourceConfig:
        accel = self._handle.accel if self._handle is not None else choose_accelerator(self.spec.accel)
        return ResourceConfig(self.spec.cpus, self.spec.memory_mb, accel.name)

    def guest_os(self) -> GuestOs:
        return GuestOs.LINUX

    async def start(self) -> VmHandle:
        """Boot the VM (once) and return its handle while the guest boots."""
        async with self._lock:
            if self._handle is None:
                self._handle = await VmHandle.start(self.spec)
            return self._handle
