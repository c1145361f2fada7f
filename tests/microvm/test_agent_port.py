"""The agent port end to end on the default (busybox) guest: bytes both ways, open/close from
QMP's VSERPORT_CHANGE, and VmHandle.fail(). The guest side here is plain ``head``/``printf`` on
the port's device, so these tests need no agent program."""
from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

import engine
from engine.microvm.handle import VmHandle
from tests.waiting import until

pytestmark = pytest.mark.guest


async def test_agent_port_carries_bytes_both_ways_and_reports_open_close(boot: engine.LinuxDirectBoot) -> None:
    vm = await engine.vm(replace(boot, has_agent=True)).memory_mb(256).console_enabled().build()
    async with vm:
        assert isinstance(vm, VmHandle)
        await vm.wait_ready(120)
        port = vm.agent_port()
        closes: list[bool] = []
        port.add_close_callback(lambda: closes.append(True))
        con = await vm.console()
        assert await con.exec("cat /sys/class/virtio-ports/vport*/name", timeout=60) == "capsa.agent\n"
        assert not port.is_open

        # Host -> guest: the guest opens the port (VSERPORT_CHANGE open), reads 5 bytes, exits.
        reading = asyncio.create_task(con.exec("head -c 5 /dev/vport*p1; echo", timeout=120))
        await port.wait_open(120)
        assert port.is_open
        port.writer.write(b"hello")
        await port.writer.drain()
        assert await reading == "hello\n"
        await until(lambda: not port.is_open, 60, "the guest closing the agent port")
        assert closes == [True]

        # Guest -> host (a redirection's target is not globbed by a POSIX shell: name the device).
        assert (await con.run("printf 'from guest' > $(echo /dev/vport*p1)", timeout=60)).exit_code == 0
        got = bytearray()
        while len(got) < len(b"from guest"):
            got += await asyncio.wait_for(port.reader.read(64), 60)
        assert bytes(got) == b"from guest"

        vm.fail("the agent broke the protocol")
        status = await vm.wait()
        assert status == engine.Failed("the agent broke the protocol")
        assert port.ended and closes == [True, True]
        with pytest.raises(engine.AgentUnavailable, match="VM ended"):
            await port.wait_open(5)

