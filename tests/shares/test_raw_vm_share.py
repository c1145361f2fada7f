"""A raw VM's share: the guest mounts it with Share.mount_line() on its console; the host folder
removed while mounted gives the guest errors, not hangs, and the VM still stops cleanly."""
from __future__ import annotations

from pathlib import Path

import pytest

import engine
from engine.microvm.share import MountMode

pytestmark = pytest.mark.guest


async def test_a_raw_vm_mounts_its_share_with_the_documented_line(boot: engine.LinuxDirectBoot, tmp_path: Path) -> None:
    host = tmp_path / "src"
    host.mkdir()
    (host / "hello.txt").write_text("from the host\n")
    vm = await engine.vm(boot).share(host, "src", MountMode.ReadWrite).console_enabled().build()
    try:
        await vm.wait_ready(120)
        con = await vm.console()
        line = vm.spec.shares[0].mount_line()
        assert (await con.run(line, timeout=60)).exit_code == 0
        r = await con.run("cat /mnt/src/hello.txt && echo back > /mnt/src/back.txt", timeout=30)
        assert (r.exit_code, r.output.strip()) == (0, "from the host")
        assert (host / "back.txt").read_text() == "back\n"
        (host / "hello.txt").unlink()
        (host / "back.txt").unlink()
        host.rmdir()
        r = await con.run("echo y > /mnt/src/new; echo rc=$?", timeout=30)
        assert "rc=0" not in r.output, r
        assert (await con.run("echo alive", timeout=30)).output.strip() == "alive"
        status = await vm.stop(30)
        assert isinstance(status, engine.Stopped), status
    finally:
        await vm.kill()
