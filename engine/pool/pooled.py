"""PooledVm: a VM reserved from a pool; what a VmHandle does for its holder, plus release().

It knows nothing of :class:`~engine.pool.pool.VmPool`: the pool hands it a ``release``
callback (``Release``), so the pool depends on this module and never the other way round.
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from engine.agent.client import Agent
from engine.console.console import Console
from engine.console.stream import ConsoleStream
from engine.kvm.accel import AccelChoice
from engine.microvm.agent_port import AgentPort
from engine.microvm.handle import VmHandle
from engine.microvm.resources import GuestOs, ResourceConfig
from engine.microvm.spec import VmSpec
from engine.microvm.status import VmStatus
from engine.netstack.config import PortForward
from engine.netstack.flowlog import FlowEvent
from engine.netstack.policy.policy import NetworkPolicy

Release = Callable[[str], Awaitable[None]]
"""Gives the VM of this id back to its pool (kills it; the pool boots a replacement)."""


class PooledVm:
    """A booted VM that belongs to the caller until ``release()`` (or the end of ``async with``).

    Release kills the VM (it is never handed to anyone else) and the pool boots a replacement.
    If the machine dies while reserved, ``lost`` says why and the console raises ConsoleClosed.
    The rest is the underlying :class:`VmHandle`'s, forwarded one name at a time (``handle``
    is there for anything else).
    """

    def __init__(self, vm_id: str, handle: VmHandle, *, pool_name: str, release: Release) -> None:
        self.id = vm_id
        self.handle = handle
        self.pool_name = pool_name
        self.lost: str | None = None
        self._release = release
        self._released = False

    def __repr__(self) -> str:
        return f"<PooledVm {self.id} pid={self.handle.pid} {self.handle.status()}>"

    # -- state --------------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        return self.handle.pid

    @property
    def released(self) -> bool:
        return self._released

    @property
    def spec(self) -> VmSpec:
        return self.handle.spec

    @property
    def accel(self) -> AccelChoice:
        return self.handle.accel

    @property
    def shutdown_reason(self) -> str | None:
        return self.handle.shutdown_reason

    def status(self) -> VmStatus:
        return self.handle.status()

    def machine_alive(self) -> bool:
        return self.handle.machine_alive()

    def resources(self) -> ResourceConfig:
        return self.handle.resources()

    def guest_os(self) -> GuestOs:
        return self.handle.guest_os()

    async def wait_ready(self, timeout: float | None = 60) -> None:
        await self.handle.wait_ready(timeout)

    async def wait(self) -> VmStatus:
        return await self.handle.wait()

    async def wait_timeout(self, timeout: float) -> VmStatus | None:
        return await self.handle.wait_timeout(timeout)

    async def stop(self, timeout: float = 30) -> VmStatus:
        """Power the guest off (the pool sees it end: ``lost`` says so); ``release()`` is the
        usual way to give a VM back."""
        return await self.handle.stop(timeout)

    async def stop_with_timeout(self, timeout: float | timedelta) -> VmStatus:
        return await self.handle.stop_with_timeout(timeout)

    async def probe_console(self, timeout: float = 2.0) -> bool:
        return await self.handle.probe_console(timeout)

    async def kill(self) -> VmStatus:
        """Kill the machine at once (the pool sees it die: ``lost`` says so)."""
        return await self.handle.kill()

    async def snapshot(self, dest_dir: str | Path) -> Path:
        return await self.handle.snapshot(dest_dir)

    async def agent(self, timeout: float | None = None) -> Agent:
        """The sandbox's guest agent (a clone's is connected already: its identity went through it)."""
        return await self.handle.agent(timeout)

    def agent_port(self) -> AgentPort:
        return self.handle.agent_port()

    @property
    def has_agent(self) -> bool:
        return self.handle.spec.boot.has_agent

    async def set_console_size(self, cols: int, rows: int) -> bool:
        return await self.handle.set_console_size(cols, rows)

    def fail(self, message: str) -> None:
        self.handle.fail(message)

    # -- console ------------------------------------------------------------------------------

    async def console(self) -> Console:
        return await self.handle.console()

    async def shell(self, timeout: float = 30) -> Console:
        return await self.handle.shell(timeout)

    @property
    def console_stream(self) -> ConsoleStream:
        return self.handle.console_stream

    def console_tail(self, lines: int = 20) -> str:
        return self.handle.console_tail(lines)

    # -- network ------------------------------------------------------------------------------

    @property
    def has_network(self) -> bool:
        return self.handle.has_network

    @property
    def guest_ip(self) -> IPv4Address | None:
        return self.handle.guest_ip

    def network_events(self) -> AsyncIterator[FlowEvent]:
        return self.handle.network_events()

    def set_policy(self, policy: NetworkPolicy) -> None:
        self.handle.set_policy(policy)

    def forwarded_ports(self) -> list[tuple[PortForward, int]]:
        return self.handle.forwarded_ports()

    def network_stats(self) -> dict[str, Any]:
        return self.handle.network_stats()

    def network_flows(self) -> list[dict[str, Any]]:
        return self.handle.network_flows()

    # -- release ------------------------------------------------------------------------------

    async def release(self) -> None:
        """Give the VM back: it is killed at once and a fresh one boots in its place."""
        self._released = True
        await self._release(self.id)

    async def __aenter__(self) -> PooledVm:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.release()
