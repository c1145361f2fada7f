"""PooledVm: a VM reserved from a pool; everything a VmHandle does, plus release()."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine.console.console import Console
from engine.microvm.status import VmStatus
from engine.microvm.handle import VmHandle

if TYPE_CHECKING:
    from engine.pool.pool import VmPool


class PooledVm:
    """A booted VM that belongs to the caller until ``release()`` (or the end of ``async with``).

    Release kills the VM (it is never handed to anyone else) and the pool boots a replacement.
    If the machine dies while reserved, ``lost`` says why and the console raises ConsoleClosed.
    Attributes not defined here come from the underlying :class:`VmHandle`.
    """

    def __init__(self, pool: VmPool, vm_id: str, handle: VmHandle) -> None:
        self.pool = pool
        self.id = vm_id
        self.handle = handle
        self.lost: str | None = None
        self._released = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.handle, name)

    def __repr__(self) -> str:
        return f"<PooledVm {self.id} pid={self.handle.pid} {self.handle.status()}>"

    @property
    def pid(self) -> int:
        return self.handle.pid

    @property
    def released(self) -> bool:
        return self._released

    def status(self) -> VmStatus:
        return self.handle.status()

    async def console(self) -> Console:
        return await self.handle.console()

    async def release(self) -> None:
        """Give the VM back: it is killed at once and a fresh one boots in its place."""
        self._released = True
        await self.pool.release(self.id)

    async def __aenter__(self) -> PooledVm:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.release()
