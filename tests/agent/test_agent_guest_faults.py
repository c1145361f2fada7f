"""Faults of the agent in a real sandbox guest: the agent killed, the VM killed mid-transfer, a
guest that breaks the protocol, shutdown. Each test boots its own sandbox (it kills something).
"""
from __future__ import annotations

import asyncio
import os
import signal

import pytest

import engine
from engine.microvm.boot import LinuxDirectBoot
from tests.sandboxes import running_sandbox
from tests.waiting import until

pytestmark = pytest.mark.guest

AGENT_PROGRAM = "/usr/lib/capsa/agent/capsa_agent.py"

# Put in place of the agent's program (busybox init respawns whatever that file holds): it opens
# the port, answers the host's hello correctly, then, on the next request, sends a frame header
# that claims a 4 GiB body. A real guest's bytes over the real port, deterministic.
_BAD_AGENT = """\
import os, sys, time
sys.path.insert(0, "/usr/lib/capsa/agent")
import wire
root = "/sys/class/virtio-ports"
port = next(p for p in sorted(os.listdir(root)) if open(f"{root}/{p}/name").read().strip() == "capsa.agent")
fd = os.open(f"/dev/{port}", os.O_RDWR)
decoder = wire.Decoder(want_nonce=b"")
while not decoder.feed(os.read(fd, 1 << 16)):
    pass
os.write(fd, wire.encode_hello(decoder.nonce, {"t": "hello", "id": 0, "version": wire.VERSION, "pid": os.getpid()}))
while not decoder.feed(os.read(fd, 1 << 16)):
    pass
os.write(fd, wire.HEADER.pack(wire.MAGIC, wire.VERSION, 0, 2, 0xFFFFFFFF))
time.sleep(600)
"""


async def test_the_agent_killed_in_the_guest_is_reported_and_respawned(sandbox_boot_config: LinuxDirectBoot) -> None:
    async with running_sandbox(sandbox_boot_config) as vm:
        agent = await vm.agent(timeout=120)
        pid = int(agent.hello["pid"])
        pending = asyncio.ensure_future(agent.exec(["sleep", "300"], timeout=600))
        reading = asyncio.ensure_future(agent.read_file("/dev/zero", max_bytes=1 << 40))  # mid-transfer
        await agent.ping()  # both requests reached the agent
        con = await vm.console()
        assert (await con.run(f"kill -9 {pid}", timeout=60)).exit_code == 0
        for call in (pending, reading):
            with pytest.raises(engine.AgentDied):
                await asyncio.wait_for(call, 60)
        with pytest.raises(engine.AgentDied):
            await agent.ping()
        again = await vm.agent(timeout=120)  # waits for busybox init to respawn it
        assert again is not agent and int(again.hello["pid"]) != pid
        r = await again.exec(["echo", "back"], timeout=60)
        assert r.stdout == b"back\n"
        assert isinstance(vm.status(), engine.Running)


async def test_the_vm_killed_mid_transfer_fails_the_calls_quickly(sandbox_boot_config: LinuxDirectBoot) -> None:
    async with running_sandbox(sandbox_boot_config) as vm:
        agent = await vm.agent(timeout=120)
        writing = asyncio.ensure_future(agent.write_file("/tmp/big.bin", os.urandom(64 << 20)))
        reading = asyncio.ensure_future(agent.read_file("/dev/zero", max_bytes=1 << 40))
        await asyncio.sleep(0.5)
        assert not writing.done() and not reading.done()  # really mid-transfer
        os.kill(vm.pid, signal.SIGKILL)
        for call in (writing, reading):
            with pytest.raises((engine.AgentDied, engine.VmNotRunning)):
                await asyncio.wait_for(call, 30)  # quickly: never a hang
        with pytest.raises((engine.AgentDied, engine.VmNotRunning)):
            await agent.ping()
        await vm.wait()
        with pytest.raises(engine.VmNotRunning):
            await vm.agent(timeout=5)


async def test_a_malformed_frame_from_the_guest_fails_the_vm(sandbox_boot_config: LinuxDirectBoot) -> None:
    async with running_sandbox(sandbox_boot_config) as vm:
        agent = await vm.agent(timeout=120)
        pid = int(agent.hello["pid"])
        await agent.write_file(AGENT_PROGRAM, _BAD_AGENT.encode(), mode=0o755)
        con = await vm.console()
        assert (await con.run(f"kill -9 {pid}", timeout=60)).exit_code == 0
        await until(lambda: agent.failed is not None, 60, "the old session ending with its agent")
        bad = await vm.agent(timeout=120)  # the impostor answers the hello like an agent
        with pytest.raises(engine.AgentProtocolError, match="over the limits"):
            await asyncio.wait_for(bad.ping(), 60)
        status = await asyncio.wait_for(vm.wait(), 60)
        assert isinstance(status, engine.Failed), status
        assert "broke the protocol" in status.message and "over the limits" in status.message
        with pytest.raises(engine.AgentProtocolError):
            await bad.ping()


async def test_shutdown_ends_the_vm(sandbox_boot_config: LinuxDirectBoot) -> None:
    async with running_sandbox(sandbox_boot_config) as vm:
        agent = await vm.agent(timeout=120)
        await agent.write_file("/tmp/x", b"x")
        await agent.shutdown()
        status = await vm.wait_timeout(120)
        assert isinstance(status, engine.Stopped), status
        with pytest.raises(engine.AgentDied):
            await agent.ping()
