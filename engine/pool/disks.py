"""Which disks a pool may give its VMs: none that every VM would write in place.

A pool's VMs run at once from one spec, so a disk written in place would be written by all of
them (each corrupting what the others cached); a read-only disk or a copy-on-write one (each
VM writes its own overlay) is shared safely. The root disk follows the same rule.
"""
from __future__ import annotations

from engine.errors import ConfigError
from engine.microvm.spec import VmSpec


def refuse_shared_write_disks(spec: VmSpec, pool: str) -> None:
    """ConfigError for a disk a pool's VMs would all write in place (each would corrupt what
    the others cached): a pool's disks, root disk included, are read-only or each VM's own
    copy-on-write overlay."""
    root = spec.boot.root_disk
    for disk in ([root] if root is not None else []) + list(spec.disks):
        if disk.shared_write:
            what = "root disk" if disk is root else "disk"
            raise ConfigError(
                f"pool {pool!r}: {what} {disk.path} is writable and would be shared by every VM of the pool; "
                "attach it with DiskImage(...).as_read_only() or .as_copy_on_write() (each VM then "
                "writes to its own overlay)")
