"""What the real-guest network tests share: a booted VM with its console and flow events.

Each test file builds its own VM (its own network, policy and loopback servers) and runs it
for the module through :func:`running_net_vm`; :meth:`NetVm.sh` runs a guest command.
"""
from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import engine
from tests.waiting import collect


@dataclass
class NetVm:
    """A running VM, its console and every flow event of its gateway since the last clear."""

    vm: engine.VmHandle
    console: engine.Console
    events: list[engine.FlowEvent]

    async def sh(self, command: str, timeout: float = 60) -> engine.CommandResult:
        return await self.console.run(command, timeout=timeout)


@contextlib.asynccontextmanager
async def running_net_vm(builder: engine.VmBuilder, ready_timeout: float = 90) -> AsyncIterator[NetVm]:
    """Build the VM, follow its flow events, wait for its shell; kill it on exit."""
    vm = await builder.console_enabled().build()
    events, collector = collect(vm.network_events())
    try:
        await vm.wait_ready(ready_timeout)
        yield NetVm(vm, await vm.console(), events)
    finally:
        collector.cancel()
        await vm.kill()
