"""From a VmSpec to the machine that runs it: the kernel command line and the MachineSpec.

The VM layer's view (VmSpec: boot, login, hostname, network) becomes the machine layer's
(MachineSpec: kernel, initrd, append, devices); fresh VMs, snapshots and templates all start
their QEMU from here, so a saved shape and a restored one agree.
"""
from __future__ import annotations

from pathlib import Path

from engine.agent.bundle import PORT_NAME
from engine.kvm.accel import AccelChoice
from engine.kvm.cmdline import Drive, MachineSpec, ShareDevice, kernel_flags
from engine.kvm.host import host_tsc_khz
from engine.microvm.disk import DiskImage
from engine.microvm.spec import VmSpec
from engine.microvm.vm_files import VmFiles
from engine.netstack.config import UserNatConfig


def kernel_cmdline(spec: VmSpec) -> str:
    """The kernel command line for ``spec``: our fast-boot flags, capsa.* args, then the user's."""
    if spec.cmdline_override is not None:
        return spec.cmdline_override
    parts = kernel_flags(spec.machine, host_tsc_khz())
    if spec.boot.capsa_guest:
        parts.append(f"capsa.hostname={spec.hostname}")
        # The guest's init answers the ACPI power button (QMP system_powerdown) with a clean
        # poweroff, which is what makes stop() graceful and quick.
        parts.append("capsa.acpid=1")
        if isinstance(spec.network, UserNatConfig):
            parts.append("capsa.net=1")
        parts += sandbox_args(spec)
        if spec.login is not None:
            parts += ["capsa.login=1", f"capsa.user={spec.login.user}"]
            if spec.login.password:
                # Hex keeps any character of the password intact through the kernel's parser.
                parts.append(f"capsa.pass={spec.login.password.encode().hex()}")
    parts += list(spec.cmdline_flags)
    for key, value in spec.cmdline_args:
        parts.append(f'{key}="{value}"' if any(c.isspace() for c in value) else f"{key}={value}")
    return " ".join(parts)


# The guest's file system type of a root image, by the image file's extension.
ROOT_FS_TYPES = {".erofs": "erofs", ".ext4": "ext4", ".img": "ext4", ".squashfs": "squashfs"}


def sandbox_args(spec: VmSpec) -> list[str]:
    """The initramfs's device arguments: the root disk (vda) and where writes go, the agent
    port, and which drivers to load for shares (capsa.9p) and extra disks (capsa.disks)."""
    parts: list[str] = []
    disk = spec.boot.root_disk
    if disk is not None:
        fstype = ROOT_FS_TYPES.get(disk.path.suffix, "ext4")
        if spec.boot.has_agent:
            # A sandbox: its image read-only under an overlay on tmpfs or the scratch disk.
            parts += ["capsa.root=/dev/vda", f"capsa.rootfstype={fstype}"]
            scratch = f"/dev/{device_name(1 + len(spec.disks))}"
            parts.append(f"capsa.overlay={scratch}" if spec.scratch_disk_mb is not None else "capsa.overlay=tmpfs")
        else:
            # capsa's root=/dev/vda form: the initramfs mounts it (read-only disks read-only)
            # and switches into its /sbin/init (or init=...); the user's own args come later.
            parts += ["root=/dev/vda", f"rootfstype={fstype}", "ro" if disk.read_only else "rw"]
    if spec.disks:
        parts.append("capsa.disks=1")
    if spec.shares:
        parts.append("capsa.9p=1")
    if spec.boot.has_agent:
        parts.append("capsa.agent=1")
    return parts


def device_name(index: int) -> str:
    """The guest's name of the ``index``-th virtio disk: vda, vdb, ..., vdz, vdaa, ..."""
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(ord("a") + rest) + letters
    return f"vd{letters}"


# Where a copy-on-write disk's overlay would be in a machine built only for its shape.
SHAPE_OVERLAY = Path("/capsa-overlay-placeholder.qcow2")


def machine_spec_for(
    spec: VmSpec, accel: AccelChoice, files: VmFiles | None = None, *, shape_only: bool = False
) -> MachineSpec:
    """The machine that runs ``spec`` under ``accel`` (what QEMU is started with).

    Drives, in the guest's order: the root disk (vda), ``spec.disks``, then a sandbox's scratch
    disk (from ``files``); a ``copy_on_write`` disk, root disk included, is its overlay from
    ``files``. ``files`` are the per-VM files (:class:`VmFiles`: the caller makes and removes
    them); a spec that needs one and gets none is an error, unless ``shape_only``: a machine never
    launched, built to compare or record its shape (a snapshot's), whose overlays are placeholders.
    """
    nat = spec.network if isinstance(spec.network, UserNatConfig) else None
    drives: list[Drive] = []
    if spec.boot.root_disk is not None:
        root_overlay = files.root_overlay if files is not None else None
        drives.append(_drive(spec.boot.root_disk, root_overlay, shape_only))
    for index, disk in enumerate(spec.disks):
        drives.append(_drive(disk, files.overlays.get(index) if files is not None else None, shape_only))
    if spec.scratch_disk_mb is not None:
        if shape_only and (files is None or files.scratch is None):
            drives.append(Drive(SHAPE_OVERLAY.with_name("capsa-scratch-placeholder.img"), read_only=False, format="raw"))
        elif files is None or files.scratch is None:
            raise ValueError("a spec with scratch_disk_mb needs its scratch disk file")
        else:
            drives.append(Drive(files.scratch, read_only=False, format="raw"))
    return MachineSpec(
        kernel=spec.boot.kernel,
        initrd=spec.boot.initrd,
        append=kernel_cmdline(spec),
        cpus=spec.cpus,
        memory_mb=spec.memory_mb,
        accel=accel.name,
        machine=spec.machine,
        nic_mac=nat.guest_mac if nat else None,
        nic_mtu=nat.mtu if nat else 1500,
        extra_args=spec.extra_qemu_args,
        drives=tuple(drives),
        agent_port=PORT_NAME if spec.boot.has_agent else None,
        shares=tuple(ShareDevice(share.tag, share.host_path, share.read_only) for share in spec.shares),
    )


def _drive(disk: DiskImage, overlay: Path | None, shape_only: bool) -> Drive:
    """The drive of ``disk``: the file itself, or (``copy_on_write``) its per-VM ``overlay``."""
    if not disk.copy_on_write:
        return Drive(disk.path, read_only=disk.read_only, format=disk.format)
    if overlay is None and shape_only:
        overlay = SHAPE_OVERLAY
    if overlay is None:
        raise ValueError(f"the copy-on-write disk {disk.path} needs its overlay file")
    return Drive(overlay, read_only=False, format="qcow2", backing=disk.path.resolve(), backing_format=disk.format)
