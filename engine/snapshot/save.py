"""Saving a running VM as a full snapshot (what ``VmHandle.snapshot()`` does).

It takes the machine, its spec and the guest's address rather than the VmHandle, so the VM
layer can call it without this module knowing the handle.
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from ipaddress import IPv4Address
from pathlib import Path

from engine.errors import MachineError, SnapshotError
from engine.kvm.machine import Machine
from engine.kvm.migration import save_state
from engine.microvm.mounts import describe
from engine.microvm.spec import VmSpec
from engine.snapshot.meta import STATE_FILE, SnapshotInfo, sha256_file, write_info
from engine.snapshot.record import guest_facts, machine_shape

VIRTFS_MOUNTED = "when VirtFS export path"


async def save_snapshot(machine: Machine, spec: VmSpec, guest_ip: IPv4Address | None, dest_dir: str | Path) -> Path:
    """Save the running ``machine`` (a VM of ``spec`` whose guest holds ``guest_ip``) as a full
    snapshot in ``dest_dir``; the VM runs on afterwards."""
    dest = Path(dest_dir).expanduser()
    if machine.spec is None or machine.exited:
        raise SnapshotError("the VM is not running: nothing to snapshot")
    if spec.login is not None:
        raise SnapshotError("a VM with a login on its console cannot be snapshotted: a clone's identity is fixed at a root shell")
    # First: a machine that cannot be recorded (a disk written in place) is refused before
    # anything is paused or written.
    shape = machine_shape(machine.spec)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SnapshotError(f"cannot create {dest}: {err.strerror}") from err
    if any(dest.iterdir()):
        raise SnapshotError(f"{dest} is not empty: a snapshot needs a folder of its own")
    try:
        size = await save_state(machine, dest / STATE_FILE, ignore_shared=False)
    except BaseException as err:
        (dest / STATE_FILE).unlink(missing_ok=True)  # a failed save leaves the folder as it found it
        if isinstance(err, MachineError) and VIRTFS_MOUNTED in str(err):
            # QEMU: "Migration is disabled when VirtFS export path '...' is mounted in the guest".
            raise SnapshotError(
                f"the VM has a shared folder mounted, and 9p cannot be saved while mounted: unmount the share "
                f"first ({describe(spec.shares)}); QEMU said: {err}") from err
        raise
    finally:
        # The VM keeps running whatever happened (QEMU leaves it paused after a migration).
        if not machine.exited:
            with contextlib.suppress(MachineError):
                await machine.execute("cont")
    info = SnapshotInfo(
        kind="full",
        shape=shape,
        guest=guest_facts(spec, guest_ip),
        state_size=size,
        state_sha256=await asyncio.to_thread(sha256_file, dest / STATE_FILE),
        created_at=time.time(),
    )
    write_info(dest, info)
    return dest
