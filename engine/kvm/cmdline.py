"""The QEMU command line for one machine, built from plain data (no I/O).

QEMU connects to sockets that the engine listens on (``server=off``): the connections exist
before the guest runs, so no console byte is lost and nothing polls for socket files.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import ConfigError

MACHINE_TYPES = ("microvm", "pc", "q35")
DRIVE_FORMATS = ("raw", "qcow2")


@dataclass(frozen=True)
class Drive:
    """A virtio block device backed by a host file (the guest's vda, vdb, ... in order)."""

    path: Path
    read_only: bool = False
    format: str = "raw"
    # A copy-on-write disk: ``path`` is the VM's own qcow2 overlay over this image (QEMU opens
    # it read-only through the overlay's header); snapshots record the image, not the overlay.
    backing: Path | None = None
    backing_format: str = "raw"


@dataclass(frozen=True)
class ShareDevice:
    """A host folder served to the guest by QEMU's own 9p server under the 9p tag ``tag``."""

    tag: str
    path: Path
    read_only: bool = False


@dataclass(frozen=True)
class MachineSpec:
    """Everything QEMU needs to run one guest."""

    kernel: Path
    initrd: Path | None
    append: str
    cpus: int = 1
    memory_mb: int = 256
    accel: str = "tcg"
    machine: str = "microvm"
    nic_mac: str | None = None  # a virtio-net card whose backend is the engine's socket
    nic_mtu: int = 1500
    extra_args: tuple[str, ...] = field(default_factory=tuple)
    # Guest RAM: None is QEMU's own anonymous memory; "ram" the same as a named backend;
    # "file" maps ``ram_file`` (snapshot templates and their clones): ``ram_shared`` maps it
    # MAP_SHARED (the template writes its RAM into the file), otherwise MAP_PRIVATE (a clone
    # reads the template's pages and copies only those it writes). A migration stream names the
    # RAM block, so a restore must use the same kind as the machine that was saved.
    ram_backend: str | None = None
    ram_file: Path | None = None
    ram_shared: bool = False
    # "defer": start without running the guest and wait for ``migrate-incoming`` over QMP.
    incoming: str | None = None
    # Block devices in guest order, and the name of the agent's virtio-serial port (None: none).
    drives: tuple[Drive, ...] = ()
    agent_port: str | None = None
    shares: tuple[ShareDevice, ...] = ()

    def validate(self) -> None:
        if self.machine not in MACHINE_TYPES:
            raise ConfigError(f"machine type {self.machine!r} is not supported: use one of {', '.join(MACHINE_TYPES)}")
        if not 1 <= self.cpus <= 64:
            raise ConfigError(f"cpus must be between 1 and 64, got {self.cpus}")
        if not 16 <= self.memory_mb <= 1 << 20:
            raise ConfigError(f"memory_mb must be between 16 and 1048576, got {self.memory_mb}")
        if self.accel not in ("kvm", "tcg"):
            raise ConfigError(f"accel must be 'kvm' or 'tcg', got {self.accel!r}")
        if self.ram_backend not in (None, "ram", "file") or (self.ram_backend == "file") != (self.ram_file is not None):
            raise ConfigError(f"ram_backend {self.ram_backend!r} with ram_file {self.ram_file} is not a valid memory setting")
        for drive in self.drives:
            if drive.format not in DRIVE_FORMATS:
                raise ConfigError(f"drive {drive.path}: format {drive.format!r} is not one of {', '.join(DRIVE_FORMATS)}")
        if self.agent_port is not None and not self.agent_port.replace(".", "").replace("-", "").isalnum():
            raise ConfigError(f"agent port name {self.agent_port!r} must be letters, digits, '.' and '-'")


@dataclass(frozen=True)
class MachineSockets:
    """Unix socket paths the engine listens on and QEMU connects to."""

    qmp: Path
    serial: Path
    net: Path | None = None
    agent: Path | None = None


def kernel_flags(machine: str, tsc_khz: int | None) -> list[str]:
    """Kernel command-line flags that make our guests boot fast and fail loudly.

    ``tsc_early_khz`` tells the kernel the TSC rate it would otherwise calibrate: under TCG
    about half the boots hang in that calibration (QEMU-FACTS.md). ``panic=-1`` turns a panic
    into an immediate reset, which ``-no-reboot`` turns into QEMU exiting, so a panicked guest
    is noticed at once instead of hanging.
    """
    flags = ["console=ttyS0", "quiet", "loglevel=3", "panic=-1", "8250.nr_uarts=1", "cryptomgr.notests"]
    if tsc_khz:
        flags.append(f"tsc_early_khz={tsc_khz}")
    if machine == "microvm":
        # microvm has no PCI bus; probing for one only costs time and prints an error.
        flags.append("pci=off")
    return flags


def qemu_argv(binary: str, spec: MachineSpec, sockets: MachineSockets) -> list[str]:
    """The full argv for ``spec``; QEMU connects to ``sockets`` at start-up."""
    spec.validate()
    machine = spec.machine
    if machine == "microvm":
        # ACPI stays on: this kernel finds virtio-mmio devices only through ACPI.
        machine = "microvm,x-option-roms=off,isa-serial=on,rtc=on"
    if spec.ram_backend is not None:
        machine += ",memory-backend=ram0"
    cpu = "host" if spec.accel == "kvm" else "max"
    argv = [
        binary,
        "-name", "capsa-vm",
        "-machine", machine,
        "-accel", spec.accel,
        "-cpu", cpu,
        "-smp", str(spec.cpus),
        "-m", f"{spec.memory_mb}M",
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        # The guest is untrusted: deny QEMU the syscalls it never needs.
        "-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        "-chardev", f"socket,id=qmp0,path={sockets.qmp},server=off",
        "-mon", "chardev=qmp0,mode=control",
        "-chardev", f"socket,id=con0,path={sockets.serial},server=off",
        "-serial", "chardev:con0",
        "-kernel", str(spec.kernel),
        "-append", spec.append,
    ]
    if spec.initrd is not None:
        argv += ["-initrd", str(spec.initrd)]
    if spec.nic_mac is not None and sockets.net is not None:
        argv += nic_args(spec, sockets.net)
    for index, drive in enumerate(spec.drives):
        argv += drive_args(spec.machine, index, drive)
    if spec.agent_port is not None and sockets.agent is not None:
        argv += agent_port_args(spec.machine, spec.agent_port, sockets.agent)
    for index, folder in enumerate(spec.shares):
        argv += share_args(spec.machine, index, folder)
    if spec.ram_backend == "file":
        share = "on" if spec.ram_shared else "off"
        argv += ["-object", f"memory-backend-file,id=ram0,size={spec.memory_mb}M,mem-path={spec.ram_file},share={share}"]
    elif spec.ram_backend == "ram":
        argv += ["-object", f"memory-backend-ram,id=ram0,size={spec.memory_mb}M"]
    if spec.incoming is not None:
        argv += ["-incoming", spec.incoming]
    argv += list(spec.extra_args)
    return argv


def nic_args(spec: MachineSpec, path: Path) -> list[str]:
    """A virtio-net card whose frames QEMU streams (length-prefixed) to our socket at ``path``."""
    device = "virtio-net-device" if spec.machine == "microvm" else "virtio-net-pci"
    options = f"{device},netdev=net0,mac={spec.nic_mac}"
    if spec.nic_mtu != 1500:
        # Advertised to the guest (VIRTIO_NET_F_MTU), so its driver accepts the larger MTU.
        options += f",host_mtu={spec.nic_mtu}"
    return [
        "-netdev", f"stream,id=net0,server=off,addr.type=unix,addr.path={path}",
        "-device", options,
    ]


AGENT_DEVICE_ID = "agent0"  # the id QMP's VSERPORT_CHANGE events carry for the agent port


def drive_args(machine: str, index: int, drive: Drive) -> list[str]:
    """A virtio-blk device for ``drive``; -blockdev takes JSON, so no path needs comma-escaping.

    The host page cache stays on (``cache.direct`` off): a read-only image shared by many VMs is
    read from the host's cache once for all of them, and a scratch disk is deleted with its VM,
    so nothing needs O_DIRECT's durability.
    """
    node = f"disk{index}"
    read_only = drive.read_only
    blockdev = {
        "driver": drive.format,
        "node-name": node,
        "read-only": read_only,
        "file": {"driver": "file", "filename": str(drive.path), "read-only": read_only, "aio": "threads"},
    }
    device = "virtio-blk-device" if machine == "microvm" else "virtio-blk-pci"
    return [
        "-blockdev", json.dumps(blockdev, separators=(",", ":")),
        "-device", f"{device},drive={node},id=vd{index}",
    ]


def share_args(machine: str, index: int, share: ShareDevice) -> list[str]:
    """A virtio-9p device serving ``share.path`` from QEMU's own 9p server.

    ``mapped-xattr``: what the guest creates is a plain file or directory owned by the user QEMU
    runs as, with mode 0600/0700 on the host; the guest's owner, mode, device numbers and symlink
    targets live in ``user.virtfs.*`` xattrs, so no setuid file, device node or symlink the guest
    makes exists on the host. ``readonly=on`` makes the server refuse every change, whatever the
    guest mounts it as. ``multidevs=remap`` keeps inode numbers unique across host file systems.
    -fsdev options are comma-separated, so a comma in the path is doubled.
    """
    path = str(share.path).replace(",", ",,")
    fsdev = f"local,id=fs{index},path={path},security_model=mapped-xattr,multidevs=remap"
    if share.read_only:
        fsdev += ",readonly=on"
    device = "virtio-9p-device" if machine == "microvm" else "virtio-9p-pci"
    return ["-fsdev", fsdev, "-device", f"{device},fsdev=fs{index},mount_tag={share.tag},id=share{index}"]


def agent_port_args(machine: str, name: str, path: Path) -> list[str]:
    """A virtio-serial bus with one port named ``name``; QEMU connects it to our socket at ``path``."""
    bus = "virtio-serial-device" if machine == "microvm" else "virtio-serial-pci"
    return [
        "-chardev", f"socket,id=agentchr,path={path},server=off",
        "-device", f"{bus},id=vser0,max_ports=2",
        "-device", f"virtserialport,bus=vser0.0,chardev=agentchr,name={name},id={AGENT_DEVICE_ID}",
    ]
