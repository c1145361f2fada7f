"""Disks on sandboxes and pools, with real guests: a sandbox's data disk is vdb (its image vda)
and its scratch disk comes after it; a snapshot pool's clones share a read-only disk and get
a fresh copy-on-write overlay each (prestarted clones included), leaving nothing behind."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import engine
from engine.microvm.boot import LinuxDirectBoot
from tests.template_store import private_template_store
from tests.disks.images import overlay_dirs, raw_disk, sha256
from tests.sandboxes import running_sandbox
from tests.waiting import pool_settled, until

pytestmark = pytest.mark.guest

MARK_RO, MARK_COW = b"CAPSA-POOL-RO-1e9a", b"CAPSA-POOL-COW-b27c"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """This module's templates folder (its RAM images beside it on /dev/shm)."""
    with private_template_store(tmp_path_factory.mktemp("templates"), "disks") as root:
        yield root


async def test_a_sandbox_sees_its_disk_at_vdb_and_its_scratch_disk_after_it(
        sandbox_boot_config: LinuxDirectBoot, tmp_path: Path) -> None:
    data = raw_disk(tmp_path / "data.img", MARK_RO)
    digest = sha256(data)
    async with running_sandbox(sandbox_boot_config, scratch_disk_mb=64,
                               disks=(engine.DiskImage(data).as_read_only(),)) as vm:
        con = await vm.console()
        assert (await con.exec(f"head -c {len(MARK_RO)} /dev/vdb")).encode() == MARK_RO
        assert (await con.exec("cat /sys/block/vda/ro /sys/block/vdb/ro /sys/block/vdc/ro")).split() == ["1", "1", "0"]
        # The sandbox's writes still go to its overlay on the scratch disk (vdc): writing 2 MiB
        # to / moves vdc's count of written sectors by at least that much.
        written = "awk '{print $7}' /sys/block/vdc/stat"
        before = int(await con.exec(written))
        assert (await con.run("dd if=/dev/zero of=/root/blob bs=1M count=2 2>/dev/null && sync")).exit_code == 0
        assert int(await con.exec(written)) - before >= 4096
    assert sha256(data) == digest


async def test_pool_clones_share_a_read_only_disk_and_get_fresh_overlays(
        store: Path, boot: engine.LinuxDirectBoot, tmp_path: Path) -> None:
    ro = raw_disk(tmp_path / "ro.img", MARK_RO)
    cow = raw_disk(tmp_path / "cow.img", MARK_COW)
    hashes = (sha256(ro), sha256(cow))
    before = overlay_dirs()
    pool_builder = (engine.vm_pool(boot).memory_mb(192).console_enabled().name("disks")
                    .disk(engine.DiskImage(ro).as_read_only()).disk(engine.DiskImage(cow).as_copy_on_write())
                    .snapshot(True, prestart=1))
    async with await pool_builder.build(1) as pool:
        for round_ in range(3):
            vm = await pool.reserve(timeout=90)
            con = await vm.console()
            # Each VM (the first one too, and refills restored from the template) starts from
            # the image: the last one's write went to an overlay that is gone.
            out = await con.exec(f"head -c {len(MARK_RO)} /dev/vda; echo; head -c {len(MARK_COW)} /dev/vdb")
            assert out.split() == [MARK_RO.decode(), MARK_COW.decode()], f"round {round_}"
            assert (await con.run("printf OVERWRITTEN | dd of=/dev/vdb conv=notrunc 2>/dev/null && sync")).exit_code == 0
            assert (await con.exec("head -c 11 /dev/vdb")) == "OVERWRITTEN"
            assert (await con.run("printf EVIL | dd of=/dev/vda conv=notrunc,fsync 2>/dev/null")).exit_code != 0
            await vm.release()
        await until(lambda: pool_settled(pool), what="the pool refilled")
        stats = pool.stats()
        assert (stats.snapshot, stats.fallbacks, stats.snapshot_error) == ("ready", 0, None)
        # No overlay folder outlives the start of the machine that holds it (a prestarted
        # clone may be starting right now: its folder goes once its QEMU has the overlay).
        await until(lambda: overlay_dirs() == before, timeout=30, what="overlay folders removed")
    assert (sha256(ro), sha256(cow)) == hashes
    assert overlay_dirs() == before
