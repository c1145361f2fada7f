"""Data disks on a real raw VM: order (vda, vdb, ... with no root disk), read-only disks the
guest cannot change whatever it tries, copy-on-write disks whose writes stay in the VM's own
overlay, ext4 images made on the host, and QEMU's image lock turned into a clear error."""
from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import engine
from tests.disks.images import ext4_disk, overlay_dirs, raw_disk, sha256

pytestmark = pytest.mark.guest

MARK_A, MARK_B, MARK_C = b"CAPSA-DISK-A-7f3e", b"CAPSA-DISK-B-91c2", b"CAPSA-DISK-C-44d0"


@dataclass
class Disks:
    vm: engine.VmHandle
    console: engine.Console
    writable: Path  # vda: raw, written in place
    read_only: Path  # vdb: ext4, raw, read-only
    cow: Path  # vdc: ext4, qcow2, copy-on-write
    hashes: dict[Path, str]
    overlays_while_running: set[str]


@pytest.fixture(scope="module")
async def disks(boot: engine.LinuxDirectBoot, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Disks]:
    folder = tmp_path_factory.mktemp("disks")
    writable = raw_disk(folder / "a.img", MARK_A)
    read_only = ext4_disk(folder / "b.img", {"hello.txt": "from the host\n"}, marker=MARK_B)
    cow = ext4_disk(folder / "c.qcow2", {"data/base.txt": "base\n"})
    hashes = {path: sha256(path) for path in (read_only, cow)}
    before = overlay_dirs()
    vm = await (engine.vm(boot).memory_mb(256).console_enabled()
                .disk(writable)
                .disk(engine.DiskImage(read_only).as_read_only())
                .disk(engine.DiskImage(cow).as_copy_on_write())
                .build())
    try:
        await vm.wait_ready(60)
        console = await vm.console()
        yield Disks(vm, console, writable, read_only, cow, hashes, overlay_dirs() - before)
    finally:
        await vm.kill()
    assert overlay_dirs() - before == set(), "a copy-on-write overlay folder outlived its VM"
    for path, digest in hashes.items():
        assert sha256(path) == digest, f"{path} changed"


async def test_disks_appear_in_order_with_their_bytes(disks: Disks) -> None:
    out = await disks.console.exec("for d in vda vdb; do head -c 17 /dev/$d; echo; done; ls /sys/block | grep vd")
    assert out.split() == [MARK_A.decode(), MARK_B.decode(), "vda", "vdb", "vdc"]
    # The qcow2 one is seen as its contents (an ext4 superblock), not as its qcow2 header.
    assert "QFI" not in await disks.console.exec("head -c 4 /dev/vdc | od -c")
    assert (await disks.console.exec("cat /sys/block/vda/ro /sys/block/vdb/ro /sys/block/vdc/ro")).split() == ["0", "1", "0"]


async def test_a_writable_disk_is_written_in_place(disks: Disks) -> None:
    res = await disks.console.run("printf CHANGED | dd of=/dev/vda bs=512 seek=8 conv=notrunc 2>/dev/null && sync")
    assert res.exit_code == 0
    with open(disks.writable, "rb") as file:
        file.seek(8 * 512)
        assert file.read(7) == b"CHANGED"


async def test_an_ext4_image_made_on_the_host_mounts_and_reads(disks: Disks) -> None:
    out = await disks.console.exec("mkdir -p /mnt/b && mount -o ro /dev/vdb /mnt/b && cat /mnt/b/hello.txt; umount /mnt/b")
    assert out == "from the host\n"


async def test_the_guest_cannot_change_a_read_only_disk(disks: Disks) -> None:
    con = disks.console
    # Every way in: flip the block device writable, write the raw device, mount it read-write,
    # remount a read-only mount read-write, and write through whatever mounted.
    await con.run("blockdev --setrw /dev/vdb", timeout=30)
    dd = await con.run("printf EVIL | dd of=/dev/vdb bs=512 conv=notrunc,fsync 2>&1", timeout=30)
    assert dd.exit_code != 0, dd.output
    await con.run("mkdir -p /mnt/rw && mount -o rw /dev/vdb /mnt/rw", timeout=30)
    remount = await con.run("mount -o remount,rw /mnt/rw", timeout=30)
    # The kernel mounts it read-only whatever was asked, and will not make it read-write.
    assert remount.exit_code != 0
    assert (await con.exec("grep /mnt/rw /proc/mounts")).split()[3].split(",")[0] == "ro"
    await con.run("echo evil > /mnt/rw/hello.txt; echo evil > /mnt/rw/new; sync; umount /mnt/rw", timeout=30)
    await con.run("sync; echo 3 > /proc/sys/vm/drop_caches")
    assert (await con.exec("head -c 17 /dev/vdb")).encode() == MARK_B
    assert sha256(disks.read_only) == disks.hashes[disks.read_only]


async def test_copy_on_write_writes_stay_in_the_vms_overlay(disks: Disks) -> None:
    con = disks.console
    # The overlay's folder is gone as soon as QEMU opened it, long before the VM ends.
    assert disks.overlays_while_running == set()
    out = await con.exec(
        "mkdir -p /mnt/c && mount /dev/vdc /mnt/c && echo guest > /mnt/c/data/new.txt && "
        "cat /mnt/c/data/base.txt /mnt/c/data/new.txt && umount /mnt/c && "
        "printf SMASHED | dd of=/dev/vdc bs=512 seek=4 conv=notrunc 2>/dev/null && sync && echo ok")
    assert out == "base\nguest\nok\n"
    assert (await con.exec("dd if=/dev/vdc bs=512 skip=4 count=1 2>/dev/null | head -c 7")) == "SMASHED"
    assert sha256(disks.cow) == disks.hashes[disks.cow]


async def test_two_vms_share_a_copy_on_write_disk_at_once(disks: Disks, boot: engine.LinuxDirectBoot) -> None:
    async with await engine.vm(boot).memory_mb(192).console_enabled().disk(
            engine.DiskImage(disks.cow).as_copy_on_write()).build() as other:
        await other.wait_ready(60)
        con = await other.console()
        # The second VM starts from the image, not from the first one's writes.
        out = await con.exec("mkdir -p /mnt/c && mount /dev/vda /mnt/c && ls /mnt/c/data && "
                             "echo second > /mnt/c/data/mine && sync && cat /mnt/c/data/mine")
        assert out.split() == ["base.txt", "second"]
        assert "ok" in await disks.console.exec("head -c 1 /dev/vdc >/dev/null && echo ok")
    assert sha256(disks.cow) == disks.hashes[disks.cow]


async def test_a_disk_another_vm_writes_is_a_clear_error(disks: Disks, boot: engine.LinuxDirectBoot) -> None:
    with pytest.raises(engine.MachineError, match=f"disk image {disks.writable} is in use by another VM or process"):
        await engine.vm(boot).memory_mb(128).disk(disks.writable).build()
    # Read-only, it is refused too while the other VM writes it (its blocks could change
    # under this guest's cache).
    with pytest.raises(engine.MachineError, match=f"disk image {disks.writable} is in use"):
        await engine.vm(boot).memory_mb(128).disk(engine.DiskImage(disks.writable).as_read_only()).build()
