"""DiskImage's checks, the drive order and kernel arguments of disks, VmFiles' overlays, the
snapshot shape of drives, a pool's refusal of shared writable disks, and QEMU's lock message
(pure logic and host files: no guest)."""
from __future__ import annotations

import json
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

import engine
from engine.errors import ConfigError, SnapshotError
from engine.kvm.accel import AccelChoice
from engine.kvm.machine import locked_image
from engine.microvm.machine_spec import device_name, kernel_cmdline, machine_spec_for
from engine.microvm.vm_files import VmFiles
from engine.pool.disks import refuse_shared_write_disks
from engine.snapshot.meta import SnapshotInfo
from engine.snapshot.record import guest_facts, machine_shape
from engine.snapshot.snapshot import snapshot_unsupported
from tests.disks.images import overlay_dirs, raw_disk

TCG = AccelChoice("tcg", "test")


def _qcow2(path: Path, *, backing: Path | None = None) -> Path:
    args = ["qemu-img", "create", "-q", "-f", "qcow2"]
    if backing is not None:
        args += ["-F", "raw", "-b", str(backing)]
    subprocess.run([*args, str(path), "1M"], check=True)
    return path


# ----- DiskImage.check: every bad disk is named -------------------------------------------------


def test_the_format_comes_from_the_extension_unless_named(tmp_path: Path) -> None:
    assert engine.DiskImage(tmp_path / "a.img").image_format is engine.ImageFormat.Raw
    assert engine.DiskImage(tmp_path / "a.QCOW2").image_format is engine.ImageFormat.Qcow2
    named = engine.DiskImage.with_format(tmp_path / "a.img", engine.ImageFormat.Qcow2)
    assert named.format == "qcow2"
    assert engine.DiskImage(tmp_path / "a", format="QCOW2").format == "qcow2"


def test_an_unknown_format_string_is_refused() -> None:
    with pytest.raises(ConfigError, match="disk format 'vmdk' is not one of raw, qcow2"):
        engine.DiskImage("x.vmdk", format="vmdk")


def test_a_missing_disk_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"disk image not found: {tmp_path / 'gone.img'}$"):
        engine.DiskImage(tmp_path / "gone.img").check()


def test_a_directory_is_not_a_disk(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"disk image is not a file: {tmp_path}$"):
        engine.DiskImage(tmp_path).check()


@pytest.mark.parametrize("size", [0, 511, 513, 1000])
def test_a_raw_disk_must_be_a_non_zero_multiple_of_512(tmp_path: Path, size: int) -> None:
    path = tmp_path / "odd.img"
    path.write_bytes(b"\1" * size)
    with pytest.raises(ConfigError, match=f"disk image {path} is {size} bytes: a raw disk must be a non-zero multiple of 512"):
        engine.DiskImage(path).check()


def test_a_qcow2_declared_raw_is_refused(tmp_path: Path) -> None:
    path = _qcow2(tmp_path / "real.img")
    with pytest.raises(ConfigError, match=f"disk image {path} is a qcow2 image but is declared raw"):
        engine.DiskImage(path).check()


def test_a_raw_disk_declared_qcow2_is_refused(tmp_path: Path) -> None:
    path = raw_disk(tmp_path / "plain.qcow2", b"not qcow")
    with pytest.raises(ConfigError, match=f"disk image {path} is declared qcow2 but is not a qcow2 image"):
        engine.DiskImage(path).check()


def test_a_qcow2_with_a_backing_file_is_refused(tmp_path: Path) -> None:
    base = raw_disk(tmp_path / "base.img", b"")
    path = _qcow2(tmp_path / "child.qcow2", backing=base)
    with pytest.raises(ConfigError, match=f"disk image {path} has a backing file \\({base}\\)"):
        engine.DiskImage(path).check()


def test_a_truncated_qcow2_header_is_named(tmp_path: Path) -> None:
    path = tmp_path / "cut.qcow2"
    path.write_bytes(b"QFI\xfb\0\0\0\3")
    with pytest.raises(ConfigError, match=f"disk image {path} has a truncated qcow2 header"):
        engine.DiskImage(path).check()


def test_good_disks_pass_and_report_their_size(tmp_path: Path) -> None:
    raw = raw_disk(tmp_path / "ok.img", b"x", size=4096)
    qcow = _qcow2(tmp_path / "ok.qcow2")
    engine.DiskImage(raw).check()
    engine.DiskImage(qcow).check()
    assert (engine.DiskImage(raw).virtual_size(), engine.DiskImage(qcow).virtual_size()) == (4096, 1 << 20)


def test_a_vm_spec_checks_its_disks(fake_guest: engine.LinuxDirectBoot, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=str(tmp_path / "nope.img")):
        engine.VmSpec(boot=fake_guest, disks=(engine.DiskImage(tmp_path / "nope.img"),)).check()


def test_read_only_and_copy_on_write_exclude_each_other(tmp_path: Path) -> None:
    disk = engine.DiskImage(tmp_path / "d.img")
    assert disk.shared_write
    assert disk.as_read_only().read_only and not disk.as_read_only().copy_on_write
    cow = disk.as_read_only().as_copy_on_write()
    assert (cow.read_only, cow.copy_on_write, cow.shared_write) == (False, True, False)


# ----- drive order, kernel arguments, overlays ---------------------------------------------------


def test_disks_follow_the_root_disk_and_the_scratch_disk_comes_last(fake_guest: engine.LinuxDirectBoot, tmp_path: Path) -> None:
    root, data, cow = (raw_disk(tmp_path / n, b"") for n in ("root.img", "data.img", "cow.img"))
    boot = replace(fake_guest, root_disk=engine.DiskImage(root, read_only=True), has_agent=True)
    spec = engine.VmSpec(boot=boot, scratch_disk_mb=16,
                         disks=(engine.DiskImage(data).as_read_only(), engine.DiskImage(cow).as_copy_on_write()))
    files = VmFiles.make(spec)
    try:
        machine = machine_spec_for(spec, TCG, files)
        assert [d.path for d in machine.drives] == [root, data, files.overlays[1], files.scratch]
        assert [d.read_only for d in machine.drives] == [True, True, False, False]
        assert machine.drives[2].backing == cow and machine.drives[2].format == "qcow2"
        # The sandbox's overlay is told the scratch disk's name: vdd, after the two data disks.
        assert "capsa.overlay=/dev/vdd" in machine.append and "capsa.disks=1" in machine.append
        info = subprocess.run(["qemu-img", "info", "--output=json", str(files.overlays[1])],
                              capture_output=True, text=True, check=True)
        assert json.loads(info.stdout)["backing-filename"] == str(cow)
    finally:
        files.remove()
    assert not files.overlays[1].parent.exists() and not files.scratch.exists()


def test_a_cow_disk_without_its_overlay_is_refused(fake_guest: engine.LinuxDirectBoot, tmp_path: Path) -> None:
    spec = engine.VmSpec(boot=fake_guest, disks=(engine.DiskImage(raw_disk(tmp_path / "c.img", b"")).as_copy_on_write(),))
    with pytest.raises(ValueError, match="needs its overlay file"):
        machine_spec_for(spec, TCG)


def test_a_failed_overlay_leaves_nothing(fake_guest: engine.LinuxDirectBoot, tmp_path: Path) -> None:
    before = overlay_dirs()
    good = raw_disk(tmp_path / "g.img", b"")
    missing = engine.DiskImage(tmp_path / "missing.img").as_copy_on_write()
    spec = engine.VmSpec(boot=fake_guest, disks=(engine.DiskImage(good).as_copy_on_write(), missing))
    with pytest.raises(engine.EngineError, match="missing.img"):
        VmFiles.make(spec)
    assert overlay_dirs() == before


def test_root_disk_arguments(fake_guest: engine.LinuxDirectBoot, tmp_path: Path) -> None:
    rw = engine.VmSpec(boot=fake_guest.with_root_disk(tmp_path / "root.ext4"))
    assert "root=/dev/vda rootfstype=ext4 rw" in kernel_cmdline(rw)
    ro = engine.VmSpec(boot=fake_guest.with_root_disk(engine.DiskImage(tmp_path / "root.img").as_read_only()))
    assert "root=/dev/vda rootfstype=ext4 ro" in kernel_cmdline(ro)
    assert [device_name(i) for i in (0, 1, 25, 26)] == ["vda", "vdb", "vdz", "vdaa"]


def test_a_copy_on_write_root_disk_is_its_own_overlay(fake_guest: engine.LinuxDirectBoot, tmp_path: Path) -> None:
    image = raw_disk(tmp_path / "root.img", b"")
    spec = engine.VmSpec(boot=fake_guest.with_root_disk(engine.DiskImage(image).as_copy_on_write()))
    before = overlay_dirs()
    files = VmFiles.make(spec)
    try:
        assert files.root_overlay is not None and files.root_overlay.exists()
        root = machine_spec_for(spec, TCG, files).drives[0]
        # vda is the overlay over the image, never the image opened writable.
        assert (root.path, root.read_only, root.format) == (files.root_overlay, False, "qcow2")
        assert (root.backing, root.backing_format) == (image.resolve(), "raw")
        assert "root=/dev/vda rootfstype=ext4 rw" in kernel_cmdline(spec)
    finally:
        files.remove()
    assert overlay_dirs() == before
    with pytest.raises(ValueError, match=f"copy-on-write disk {image} needs its overlay"):
        machine_spec_for(spec, TCG)


# ----- snapshots and pools ----------------------------------------------------------------------


def test_the_snapshot_shape_records_every_drive(fake_guest: engine.LinuxDirectBoot, tmp_path: Path) -> None:
    ro, cow = raw_disk(tmp_path / "ro.img", b""), raw_disk(tmp_path / "cow.img", b"")
    spec = engine.VmSpec(boot=fake_guest, disks=(engine.DiskImage(ro).as_read_only(), engine.DiskImage(cow).as_copy_on_write()))
    first, second = VmFiles.make(spec), VmFiles.make(spec)
    try:
        shapes = [machine_shape(machine_spec_for(spec, TCG, files)) for files in (first, second)]
    finally:
        first.remove()
        second.remove()
    # Two VMs' overlays differ; their shapes do not (each clone gets a fresh overlay).
    assert shapes[0] == shapes[1] == machine_shape(machine_spec_for(spec, TCG, shape_only=True))
    drives = shapes[0].drives
    assert [(d.path, d.format, d.read_only, d.copy_on_write) for d in drives] == [
        (str(ro), "raw", True, False), (str(cow), "raw", False, True)]
    assert all(d.stamp for d in drives)
    # The shape and the guest facts survive snapshot.json.
    info = SnapshotInfo("full", shapes[0], guest_facts(spec, None), 1, "0")
    back = SnapshotInfo.from_json(info.to_json(), tmp_path / "snapshot.json")
    assert back == info and back.guest.disks == ((str(ro), "raw", True, False), (str(cow), "raw", False, True))


def test_a_disk_written_in_place_refuses_snapshots_and_pools(fake_guest: engine.LinuxDirectBoot, tmp_path: Path) -> None:
    disk = raw_disk(tmp_path / "shared.img", b"")
    spec = engine.VmSpec(boot=fake_guest, disks=(engine.DiskImage(disk),))
    with pytest.raises(SnapshotError, match=f"disk {disk} is writable in place.*as_read_only\\(\\) or as_copy_on_write\\(\\)"):
        machine_shape(machine_spec_for(spec, TCG))
    marked = replace(spec, boot=replace(fake_guest, ready_marker=b"ready"))
    assert f"disk {disk} is writable in place" in (snapshot_unsupported(marked) or "")
    with pytest.raises(ConfigError, match=f"pool 'p': disk {disk} is writable.*as_read_only\\(\\) or .as_copy_on_write\\(\\)"):
        refuse_shared_write_disks(spec, "p")
    refuse_shared_write_disks(replace(spec, disks=(engine.DiskImage(disk).as_read_only(),
                                                   engine.DiskImage(disk).as_copy_on_write())), "p")


def test_a_pool_refuses_a_root_disk_written_in_place(fake_guest: engine.LinuxDirectBoot, tmp_path: Path) -> None:
    image = raw_disk(tmp_path / "root.img", b"")
    spec = engine.VmSpec(boot=fake_guest.with_root_disk(image))
    with pytest.raises(ConfigError, match=f"pool 'p': root disk {image} is writable and would be shared"):
        refuse_shared_write_disks(spec, "p")
    for fine in (engine.DiskImage(image).as_read_only(), engine.DiskImage(image).as_copy_on_write()):
        refuse_shared_write_disks(replace(spec, boot=fake_guest.with_root_disk(fine)), "p")


async def test_a_pool_builder_refuses_a_shared_writable_disk(fake_guest: engine.LinuxDirectBoot, tmp_path: Path) -> None:
    disk = raw_disk(tmp_path / "shared.img", b"")
    with pytest.raises(ConfigError, match=f"disk {disk} is writable and would be shared by every VM"):
        engine.vm_pool(fake_guest).disk(disk).start(1)


def test_qemus_lock_message_names_the_image() -> None:
    stderr = ('qemu-system-x86_64: -blockdev {"driver":"raw"}: Failed to get "write" lock\n'
              "Is another process using the image [/home/u/data disk.img]?\n")
    assert locked_image(stderr) == "/home/u/data disk.img"
    assert locked_image("qemu-system-x86_64: could not load kernel") is None


async def test_overlays_made_for_a_cancelled_start_are_removed(
        fake_guest: engine.LinuxDirectBoot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio
    import threading
    import time

    import engine.microvm.vm_files as vm_files

    started, real = threading.Event(), vm_files.create_overlay

    def slow_overlay(disk: engine.DiskImage, path: Path) -> None:
        started.set()
        time.sleep(0.5)
        real(disk, path)

    monkeypatch.setattr(vm_files, "create_overlay", slow_overlay)
    before = overlay_dirs()
    spec = engine.VmSpec(boot=fake_guest, disks=(engine.DiskImage(raw_disk(tmp_path / "c.img", b"")).as_copy_on_write(),))
    task = asyncio.create_task(VmFiles.make_async(spec))
    await asyncio.to_thread(started.wait, 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await until_gone(before)


async def until_gone(before: set[str]) -> None:
    from tests.waiting import until

    await until(lambda: overlay_dirs() == before, timeout=10, what="the cancelled start's overlay folder removed")
