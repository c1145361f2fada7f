"""Full snapshots of a VM with disks, on real guests: a read-only and a copy-on-write disk are
recorded and a clone gets them back (the cow one through a fresh overlay); a disk written in
place refuses the snapshot before anything is saved."""
from __future__ import annotations

from pathlib import Path

import pytest

import engine
from tests.disks.images import overlay_dirs, raw_disk, sha256

pytestmark = pytest.mark.guest

MARK_RO, MARK_COW = b"CAPSA-SNAP-RO-0b7d", b"CAPSA-SNAP-COW-6e21"


async def test_a_snapshot_records_its_disks_and_a_clone_gets_them(boot: engine.LinuxDirectBoot, tmp_path: Path) -> None:
    ro, cow, shared = (raw_disk(tmp_path / f"{n}.img", m) for n, m in
                       (("ro", MARK_RO), ("cow", MARK_COW), ("shared", b"shared")))
    before = overlay_dirs()
    hashes = (sha256(ro), sha256(cow))
    async with await (engine.vm(boot).memory_mb(192).console_enabled()
                      .disk(engine.DiskImage(ro).as_read_only())
                      .disk(engine.DiskImage(cow).as_copy_on_write()).build()) as vm:
        await vm.wait_ready(60)
        path = await vm.snapshot(tmp_path / "snap")
    shape = engine.Snapshot.load(path).info.shape
    assert [(d.path, d.read_only, d.copy_on_write) for d in shape.drives] == [
        (str(ro), True, False), (str(cow), False, True)]
    async with await engine.vm_from_snapshot(path) as clone:
        con = await clone.console()
        out = await con.exec(f"head -c {len(MARK_RO)} /dev/vda; echo; head -c {len(MARK_COW)} /dev/vdb")
        assert out.split() == [MARK_RO.decode(), MARK_COW.decode()]
        assert (await con.run("printf CLONE | dd of=/dev/vdb conv=notrunc 2>/dev/null && sync")).exit_code == 0
        assert await con.exec("head -c 5 /dev/vdb") == "CLONE"
    assert (sha256(ro), sha256(cow)) == hashes and overlay_dirs() == before

    async with await engine.vm(boot).memory_mb(192).console_enabled().disk(shared).build() as vm:
        await vm.wait_ready(60)
        with pytest.raises(engine.SnapshotError, match=f"disk {shared} is writable in place.*as_copy_on_write"):
            await vm.snapshot(tmp_path / "refused")
        assert not (tmp_path / "refused").exists()
        assert (await (await vm.console()).exec("echo alive")) == "alive\n"
