"""What a snapshot records of the machine it saved and of its guest (from the live specs)."""
from __future__ import annotations

from ipaddress import IPv4Address

from engine.kvm.cmdline import Drive, MachineSpec
from engine.kvm.host import find_qemu, qemu_version
from engine.errors import SnapshotError
from engine.microvm.spec import VmSpec
from engine.snapshot.meta import DriveShape, GuestFacts, MachineShape, file_stamp


def machine_shape(machine: MachineSpec) -> MachineShape:
    """The shape recorded for (and compared against) a machine launched from ``machine``.

    Every drive is recorded (:class:`DriveShape`). Read-only and copy-on-write drives can be:
    their images stay as they are, and each clone writes to a fresh overlay. A drive written
    in place cannot: its contents would have to be saved with the state, which snapshots do not
    do, and every clone would write the same file.
    """
    for drive in machine.drives:
        if not drive.read_only and drive.backing is None:
            raise SnapshotError(
                f"disk {drive.path} is writable in place, so the VM cannot be snapshotted or pooled "
                "from a snapshot: attach it with as_read_only() or as_copy_on_write()")
    # vda (the root disk, when there is one); a copy-on-write vda is recorded as its image.
    first = machine.drives[0] if machine.drives else None
    root = Drive(first.backing or first.path, first.read_only, first.backing_format if first.backing else first.format) \
        if first is not None else None
    return MachineShape(
        qemu=qemu_version(find_qemu()),
        kernel=str(machine.kernel),
        kernel_stamp=file_stamp(machine.kernel),
        initrd=str(machine.initrd) if machine.initrd else None,
        initrd_stamp=file_stamp(machine.initrd) if machine.initrd else None,
        append=machine.append,
        cpus=machine.cpus,
        memory_mb=machine.memory_mb,
        machine=machine.machine,
        accel=machine.accel,
        nic=machine.nic_mac is not None,
        nic_mtu=machine.nic_mtu,
        extra_args=tuple(machine.extra_args),
        ram_block="ram0" if machine.ram_backend is not None else "default",
        root_disk=str(root.path) if root else None,
        root_disk_stamp=file_stamp(root.path) if root else None,
        root_disk_format=root.format if root else "raw",
        agent_port=machine.agent_port,
        drives=tuple(_drive_shape(drive) for drive in machine.drives),
        shares=tuple((share.tag, str(share.path), share.read_only) for share in machine.shares),
    )


def _drive_shape(drive: Drive) -> DriveShape:
    if drive.backing is not None:
        return DriveShape(str(drive.backing), file_stamp(drive.backing), drive.backing_format,
                          read_only=False, copy_on_write=True)
    return DriveShape(str(drive.path), file_stamp(drive.path), drive.format, read_only=drive.read_only)


def guest_facts(spec: VmSpec, guest_ip: IPv4Address | None) -> GuestFacts:
    """What a snapshot records of the guest of ``spec``, which holds ``guest_ip`` (if any)."""
    marker = spec.boot.ready_marker
    return GuestFacts(
        ready_marker=marker.hex() if marker is not None else None,
        capsa_guest=spec.boot.capsa_guest,
        console=spec.console,
        hostname=spec.hostname,
        scrollback_bytes=spec.scrollback_bytes,
        guest_ip=str(guest_ip) if guest_ip is not None else None,
        root_disk=str(disk.path) if (disk := spec.boot.root_disk) is not None else None,
        root_disk_format=disk.format if disk is not None else "raw",
        root_disk_read_only=disk.read_only if disk is not None else True,
        has_agent=spec.boot.has_agent,
        disks=tuple((str(d.path), d.format, d.read_only, d.copy_on_write) for d in spec.disks),
        shares=tuple((s.tag, str(s.host_path), s.mode.value, s.guest_path) for s in spec.shares),
        workload=spec.workload.to_json() if spec.workload is not None else None,
    )
