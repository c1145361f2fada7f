"""VmFiles: the files one VM needs beside its images, made before QEMU starts and gone after.

A sandbox's scratch disk and the qcow2 overlays of its ``copy_on_write`` disks (root disk
included) live in one private folder; :meth:`VmFiles.remove` (idempotent) deletes it as soon as
QEMU has opened them (its descriptors keep the blocks alive for the VM's life), so no VM, however
it ends, leaves one behind. Fresh VMs, templates and prestarted clones all launch through here.
"""
from __future__ import annotations

import asyncio
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from engine.microvm.disk import DiskImage
from engine.microvm.overlay import create_overlay
from engine.microvm.scratch import ScratchDisk
from engine.microvm.spec import VmSpec


@dataclass
class VmFiles:
    """Per-VM files of a spec: ``scratch`` (a sandbox's scratch disk), ``overlays`` (the
    overlay of each ``copy_on_write`` disk, by its index in ``spec.disks``) and ``root_overlay``
    (a ``copy_on_write`` root disk's)."""

    scratch: Path | None = None
    overlays: dict[int, Path] = field(default_factory=dict)
    root_overlay: Path | None = None
    _scratch_disk: ScratchDisk | None = None
    _dir: Path | None = None

    @classmethod
    def make(cls, spec: VmSpec) -> VmFiles:
        """Create them (blocking: call it in a thread); nothing is left behind if one fails."""
        files = cls()
        try:
            if spec.scratch_disk_mb is not None:
                files._scratch_disk = ScratchDisk(spec.scratch_disk_mb)
                files.scratch = files._scratch_disk.path
            root = spec.boot.root_disk
            if root is not None and root.copy_on_write:
                files.root_overlay = files._overlay(root, "root.qcow2")
            for index, disk in enumerate(spec.disks):
                if disk.copy_on_write:
                    files.overlays[index] = files._overlay(disk, f"disk{index}.qcow2")
        except BaseException:
            files.remove()
            raise
        return files

    def _overlay(self, disk: DiskImage, name: str) -> Path:
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="capsa-overlay-"))
        overlay = self._dir / name
        create_overlay(disk, overlay)
        return overlay

    @classmethod
    async def make_async(cls, spec: VmSpec) -> VmFiles:
        """:meth:`make` in a thread. A caller cancelled meanwhile (a pool closing while a clone
        launches) cannot stop the thread: what it makes is removed when it finishes."""
        task = asyncio.ensure_future(asyncio.to_thread(cls.make, spec))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(_remove_made)
            raise

    def remove(self) -> None:
        """Delete every file (QEMU keeps what it has open); safe to call twice."""
        if self._scratch_disk is not None:
            self._scratch_disk.remove()
            self._scratch_disk = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def _remove_made(task: asyncio.Future[VmFiles]) -> None:
    if not task.cancelled() and task.exception() is None:
        task.result().remove()
