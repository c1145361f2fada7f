"""A snapshot folder that passed its checks (:class:`Snapshot`), and which VMs can be cloned.

A Snapshot knows the VmSpec and the MachineSpec that rebuild the saved machine; saving is in
:mod:`engine.snapshot.save`, restoring in :mod:`engine.snapshot.clone`, templates in
:mod:`engine.snapshot.template`.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from engine.errors import SnapshotError
from engine.kvm.accel import AccelChoice
from engine.kvm.cmdline import MachineSpec
from engine.microvm.boot import LinuxDirectBoot
from engine.microvm.disk import DiskImage
from engine.microvm.machine_spec import machine_spec_for
from engine.microvm.workload import OciWorkload
from engine.microvm.share import MountMode, Share
from engine.microvm.spec import VmSpec
from engine.microvm.vm_files import VmFiles
from engine.netstack.config import NetworkConfig, NetworkMode, NoNetwork, UserNatConfig
from engine.snapshot.meta import STATE_FILE, MachineShape, SnapshotInfo, file_stamp, read_info


def snapshot_unsupported(spec: VmSpec) -> str | None:
    """Why VMs of ``spec`` cannot be cloned from a snapshot, or None when they can."""
    if not spec.boot.capsa_guest or spec.boot.ready_marker is None:
        return "only the default guest can be cloned: a clone's identity is fixed up by its helper script"
    if spec.login is not None:
        return "a login profile has no shell on its console for the clone's identity fix-up"
    if spec.cmdline_override is not None:
        return "a replaced kernel command line may drop what the guest's init needs to be cloned"
    if spec.scratch_disk_mb is not None:
        # The scratch disk is the overlay's upper layer: a clone would need the template's disk
        # as it was when saved, which templates do not keep (choose tmpfs writes to pool sandboxes).
        return "a sandbox with a scratch disk cannot be cloned: its writable disk is not saved with the template"
    disk = spec.boot.root_disk
    if disk is not None and not disk.read_only:
        return "only a read-only root image can be shared by clones"
    for data in spec.disks:
        if data.shared_write:
            return (f"disk {data.path} is writable in place: clones cannot share it "
                    "(attach it with as_read_only() or as_copy_on_write())")
    return None


class Snapshot:
    """A snapshot folder that passed :func:`~engine.snapshot.meta.read_info`'s checks."""

    def __init__(self, directory: Path, info: SnapshotInfo) -> None:
        self.directory = directory
        self.info = info
        self._stamp = self._files_stamp()

    def _files_stamp(self) -> tuple[str, ...]:
        files = [self.directory / STATE_FILE]
        if self.info.ram_file is not None:
            files.append(Path(self.info.ram_file))
        try:
            return tuple(file_stamp(path) for path in files)
        except SnapshotError:
            return ()

    def check_unchanged(self) -> None:
        """SnapshotError if the state or RAM file changed or went away since it was checked."""
        if self._files_stamp() != self._stamp or not self._stamp:
            raise SnapshotError(f"the snapshot in {self.directory} changed on disk since it was loaded")

    @classmethod
    def load(cls, directory: str | Path) -> Snapshot:
        directory = Path(directory).expanduser()
        return cls(directory, read_info(directory))

    @property
    def state_file(self) -> Path:
        return self.directory / STATE_FILE

    @property
    def is_template(self) -> bool:
        return self.info.kind == "template"

    def stale_because(self, shape: MachineShape) -> str | None:
        """Why this snapshot cannot stand in for a machine of ``shape`` (None: it can)."""
        differences = self.info.shape.differences(shape)
        return "; ".join(differences) if differences else None

    def boot(self) -> LinuxDirectBoot:
        guest, shape = self.info.guest, self.info.shape
        return LinuxDirectBoot(
            shape.kernel,
            shape.initrd,
            ready_marker=bytes.fromhex(guest.ready_marker) if guest.ready_marker else None,
            capsa_guest=guest.capsa_guest,
            root_disk=(
                DiskImage(guest.root_disk, read_only=guest.root_disk_read_only, format=guest.root_disk_format)
                if guest.root_disk is not None else None
            ),
            has_agent=guest.has_agent,
        )

    def vm_spec(self, network: NetworkConfig | None = None) -> VmSpec:
        """A VmSpec that rebuilds the saved machine (the recorded command line, verbatim)."""
        shape, guest = self.info.shape, self.info.guest
        if network is None:
            network = NetworkMode.user_nat().mtu(shape.nic_mtu).build() if shape.nic else NoNetwork()
        if shape.nic != isinstance(network, UserNatConfig):
            has = "has" if shape.nic else "has no"
            raise SnapshotError(f"the snapshot in {self.directory} {has} a network card: its network must match")
        return VmSpec(
            boot=self.boot(),
            cpus=shape.cpus,
            memory_mb=shape.memory_mb,
            console=guest.console,
            cmdline_override=shape.append,
            hostname=guest.hostname,
            machine=shape.machine,
            accel=shape.accel,
            scrollback_bytes=guest.scrollback_bytes,
            extra_qemu_args=shape.extra_args,
            network=network,
            disks=tuple(DiskImage(path, format=kind, read_only=ro, copy_on_write=cow)
                        for path, kind, ro, cow in guest.disks),
            shares=self.shares(),
            workload=OciWorkload.from_json(guest.workload) if guest.workload else None,
        )

    def shares(self) -> tuple[Share, ...]:
        """The saved VM's shared folders (a clone has the same 9p devices and mounts them)."""
        return tuple(Share(Path(host), tag, MountMode(mode), guest_path=guest)
                     for tag, host, mode, guest in self.info.guest.shares)

    def machine_spec(self, spec: VmSpec, accel: AccelChoice, files: VmFiles | None = None) -> MachineSpec:
        """The machine a clone starts as: the saved shape, waiting for its state. ``files`` are
        the clone's own (fresh overlays of its copy-on-write disks); without them the machine
        only serves to compare shapes (its overlays are placeholders)."""
        base = machine_spec_for(spec, accel, files, shape_only=files is None)
        base = replace(base, append=self.info.shape.append, incoming="defer")
        if self.is_template:
            assert self.info.ram_file is not None
            return replace(base, ram_backend="file", ram_file=Path(self.info.ram_file), ram_shared=False)
        return replace(base, ram_backend="ram" if self.info.shape.ram_block == "ram0" else None)


__all__ = ["Snapshot", "snapshot_unsupported"]
