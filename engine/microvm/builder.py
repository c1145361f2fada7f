"""The fluent builders users describe a VM with: ShapeBuilder (shared with pools), VmBuilder, vm()."""
from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from engine.microvm.boot import LinuxDirectBoot
from engine.microvm.disk import DiskImage
from engine.microvm.share import SANDBOX_TAG_PREFIX, MountMode, Share
from engine.microvm.oci_image import with_oci_image
from engine.microvm.resources import seconds_of
from engine.microvm.spec import LoginSpec, VmSpec
from engine.netstack.config import NetworkConfig

if TYPE_CHECKING:  # the machinery a build runs is imported by create(): describing a VM needs none of it
    from engine.microvm.created import CreatedVm
    from engine.microvm.handle import VmHandle


@dataclass
class ShapeBuilder:
    """The shape methods a VM builder and a pool builder share; each returns the builder."""

    _spec: VmSpec

    def _with(self, **changes: Any) -> Self:
        self._spec = replace(self._spec, **changes)
        return self

    def cpus(self, n: int) -> Self:
        return self._with(cpus=int(n))

    def memory_mb(self, mb: int) -> Self:
        return self._with(memory_mb=int(mb))

    def timeout(self, duration: float | timedelta) -> Self:
        """capsa's operation timeout: the default wait for readiness and agent calls."""
        return self._with(timeout_s=seconds_of(duration))

    def scratch_disk(self, mb: int) -> Self:
        """Send a sandbox's writes to a per-VM scratch disk of ``mb`` MiB instead of tmpfs."""
        return self._with(scratch_disk_mb=int(mb))

    def console_enabled(self, enabled: bool = True) -> Self:
        return self._with(console=enabled)

    def cmdline_arg(self, key: str, value: str) -> Self:
        return self._with(cmdline_args=self._spec.cmdline_args + ((key, str(value)),))

    def cmdline_flag(self, flag: str) -> Self:
        return self._with(cmdline_flags=self._spec.cmdline_flags + (flag,))

    def cmdline_override(self, cmdline: str) -> Self:
        """Replace the whole kernel command line (the engine adds nothing, not even console=)."""
        return self._with(cmdline_override=cmdline)

    def login_user(self, user: str, password: str | None = None) -> Self:
        """Put a getty/login on the console with ``user`` (and root, without password)."""
        return self._with(login=LoginSpec(user, password))

    def hostname(self, name: str) -> Self:
        return self._with(hostname=name)

    def machine_type(self, machine: str) -> Self:
        return self._with(machine=machine)

    def accel(self, accel: str) -> Self:
        return self._with(accel=accel)

    def scrollback_bytes(self, n: int) -> Self:
        return self._with(scrollback_bytes=int(n))

    def qemu_args(self, *args: str) -> Self:
        """Extra QEMU arguments, appended verbatim (an escape hatch, not validated)."""
        return self._with(extra_qemu_args=self._spec.extra_qemu_args + tuple(args))

    def network(self, mode: NetworkConfig) -> Self:
        """``NetworkMode.none()`` (the default) or ``NetworkMode.user_nat()...build()``."""
        return self._with(network=mode)

    def share(self, host_path: str | Path, target: str, mode: MountMode = MountMode.ReadWrite) -> Self:
        """Share the host folder ``host_path`` (resolved now, relative to the working directory).

        ``target`` is a 9p tag for a raw VM (the guest mounts it: ``Share.mount_line``), or an
        absolute guest path for a sandbox (the engine mounts it there, tagged ``capsa<N>``)."""
        host = Path(host_path).expanduser().resolve()
        if target.startswith("/"):
            tag = f"{SANDBOX_TAG_PREFIX}{sum(1 for s in self._spec.shares if s.guest_path is not None)}"
            share = Share(host, tag, mode, guest_path=target)
        else:
            share = Share(host, target, mode)
        return self._with(shares=self._spec.shares + (share,))

    def disk(self, disk: DiskImage | str | Path) -> Self:
        """Attach a disk (``vdb``, ``vdc``, ... after the root disk, in the order added)."""
        image = disk if isinstance(disk, DiskImage) else DiskImage(disk)
        return self._with(disks=self._spec.disks + (image,))

    def oci_image(self, image: str, args: Sequence[str] | None = None, *, tls_verify: bool | None = None) -> Self:
        """Run in the OCI ``image`` (a sandbox's shape: see ``SandboxBuilder.oci``); resolved
        now, so the image is pulled here if the cache lacks it (blocking: call it in a thread)."""
        resolved = with_oci_image(self._spec, image, args, tls_verify=tls_verify)
        return self._with(disks=resolved.disks, workload=resolved.workload)

    def spec(self) -> VmSpec:
        """The checked spec; with shared folders, on a kernel that has 9p (``for_shares``: may
        build that image the first time, so async callers run this in a thread)."""
        self._spec.validate()
        if self._spec.shares:
            self._spec = replace(self._spec, boot=self._spec.boot.for_shares())
        return self._spec


class VmBuilder(ShapeBuilder):
    """Fluent builder: ``await engine.vm(boot).cpus(2).memory_mb(256).console_enabled().build()``."""

    async def create(self) -> CreatedVm:
        """The VM, checked but not started (status ``Created``); ``await vm.start()`` boots it."""
        from engine.microvm.created import CreatedVm

        return CreatedVm(await asyncio.to_thread(self.spec))

    async def build(self) -> VmHandle:
        """Start the VM and return its handle while the guest boots (``create()`` + ``start()``)."""
        return await (await self.create()).start()


def vm(boot: LinuxDirectBoot) -> VmBuilder:
    """Start describing a VM that boots ``boot``."""
    return VmBuilder(VmSpec(boot=boot))
