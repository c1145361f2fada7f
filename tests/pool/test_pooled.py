"""PooledVm says what it offers: the VmHandle API by name, less what only a VM's owner may do."""
from __future__ import annotations

from engine.microvm.handle import VmHandle
from engine.pool.pooled import PooledVm

# start/attach make a VmHandle; the QEMU machine stays the pool's (a holder kills or stops
# the VM through the methods, so the pool sees it end).
OWNER_ONLY = {"start", "attach", "machine"}


def public(cls: type) -> set[str]:
    return {name for name in dir(cls) if not name.startswith("_")}


def test_a_pooled_vm_forwards_every_public_name_of_a_vm_handle() -> None:
    assert public(VmHandle) - OWNER_ONLY <= public(PooledVm)
    assert not hasattr(PooledVm, "__getattr__")
    assert {"release", "released"} <= public(PooledVm)
