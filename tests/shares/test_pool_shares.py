"""A sandbox pool with a share and snapshots on: the template is saved with the 9p device
unmounted, and every VM handed out is a clone (no fallback cold boot) that mounted the share
after its restore and shows the host's files."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import engine
from engine.microvm.boot import LinuxDirectBoot
from engine.microvm.share import MountMode
from tests.template_store import private_template_store
from tests.waiting import pool_settled, until

pytestmark = pytest.mark.guest

_READY_S = 120.0


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Path]:
    with private_template_store(tmp_path / "templates", "shares") as root:
        yield root


async def test_a_snapshot_pool_hands_out_clones_with_their_share_mounted(
    store: Path, sandbox_boot_config: LinuxDirectBoot, tmp_path: Path
) -> None:
    host = tmp_path / "src"
    host.mkdir()
    (host / "hello.txt").write_text("from the host\n")
    builder = engine.vm_pool(sandbox_boot_config).memory_mb(512).console_enabled()
    builder.share(host, "/mnt/src", MountMode.ReadOnly)
    async with await builder.name("sharepool").snapshot(True).build(2) as pool:
        for _ in range(3):
            vm = await pool.reserve(timeout=_READY_S)
            agent = await vm.agent(timeout=10)
            (host / "late.txt").write_text(vm.id + "\n")  # written after the template was saved
            r = await agent.exec("cat /mnt/src/hello.txt /mnt/src/late.txt; hostname; "
                                 "grep ' /mnt/src ' /proc/mounts", timeout=60)
            assert r.exit_code == 0, r
            lines = r.stdout.decode().splitlines()
            assert lines[:3] == ["from the host", vm.id, vm.id], lines
            assert lines[3].startswith("capsa0 /mnt/src 9p ro,"), lines
            await vm.release()
        await until(lambda: pool_settled(pool), timeout=_READY_S * 2, what="the pool refilled")
        stats = pool.stats()
        # Every VM came from the template: no fallback cold boot, no snapshot error.
        assert (stats.snapshot, stats.fallbacks, stats.snapshot_error) == ("ready", 0, None), stats
        assert stats.created >= 5, stats
    templates = [p for p in store.iterdir() if not p.name.startswith(".")]
    assert len(templates) == 1
    from engine.snapshot.snapshot import Snapshot
    info = Snapshot.load(templates[0]).info
    assert info.shape.shares == (("capsa0", str(host), True),)
    assert info.guest.shares == (("capsa0", str(host), "ro", "/mnt/src"),)
