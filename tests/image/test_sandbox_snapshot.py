"""A sandbox survives snapshot and clone: the clone is launched with the same root disk and an
agent port on a socket of its own, and the agent's port is open in the clone."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import engine
from engine.microvm.boot import LinuxDirectBoot
from tests.sandboxes import FIND_AGENT, running_sandbox
from tests.waiting import until

pytestmark = pytest.mark.guest


async def test_a_sandbox_clone_has_its_disk_and_agent_port(sandbox_boot_config: LinuxDirectBoot, tmp_path: Path) -> None:
    async with running_sandbox(sandbox_boot_config) as vm:
        await vm.agent_port().wait_open(120)
        con = await vm.console()
        assert (await con.run("echo saved > /usr/capsa-saved", timeout=60)).exit_code == 0
        path = await vm.snapshot(tmp_path / "snap")
    clone = await engine.vm_from_snapshot(path)
    async with clone:
        await clone.wait_ready(120)
        port = clone.agent_port()
        await until(lambda: port.is_open, 60, "the clone's agent port open")
        con = await clone.console()
        assert await con.exec("cat /usr/capsa-saved", timeout=60) == "saved\n"
        assert await con.exec("python3 -c 'print(2 + 2)'", timeout=120) == "4\n"
        # Bytes from the clone's port reach the clone's own socket. The port opens once at a time,
        # so the agent is killed first and the write retried while init respawns it.
        pid = (await con.exec(FIND_AGENT, timeout=60)).strip()
        write = (f"kill -9 {pid}; n=0; until printf clone 2>/dev/null > $(echo /dev/vport*p1); "
                 "do n=$((n+1)); [ $n -lt 100 ] || exit 1; done")
        assert (await con.run(write, timeout=60)).exit_code == 0
        got = bytearray()
        while len(got) < 5:
            got += await asyncio.wait_for(port.reader.read(64), 60)
        assert bytes(got) == b"clone"


async def test_a_scratch_disk_sandbox_refuses_a_snapshot(sandbox_boot_config: LinuxDirectBoot, tmp_path: Path) -> None:
    async with running_sandbox(sandbox_boot_config, scratch_disk_mb=64) as vm:
        with pytest.raises(engine.ConfigError, match="scratch disk cannot be snapshotted"):
            await vm.snapshot(tmp_path / "snap")
