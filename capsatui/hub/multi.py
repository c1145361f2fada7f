"""MultiHub: several hosts' pools in one dashboard, each pool under its host.

``capsa-tui --host box --host other`` (contexts or ``ssh://`` hosts) gives one hub per host; this
hub shows them side by side. A pool's name here is ``HOST/POOL``, and every action on it (start,
resize, console, policy, flow log) goes to that host's hub with the plain pool name, so a
remote pool works as a local one does. Flow events of every host are merged as they come.
"""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace

import engine
from capsatui.hub.base import Hub, PoolState

SEPARATOR = "/"


class MultiHub(Hub):
    """The hubs of several hosts by label (a context name or a host's address)."""

    def __init__(self, hubs: dict[str, Hub]) -> None:
        super().__init__()
        if not hubs:
            raise ValueError("MultiHub needs at least one hub")
        self.hubs = dict(hubs)
        self.mode = "multi"
        self.where = ", ".join(self.hubs)
        self.agent_gap = None
        for hub in self.hubs.values():
            hub.subscribe(self._changed)

    @property
    def accel(self) -> str:  # type: ignore[override]  # a property here, a plain attribute on one host's hub
        return "; ".join(f"{label}: {hub.accel}" for label, hub in self.hubs.items())

    def _route(self, name: str) -> tuple[Hub, str]:
        label, sep, inner = name.partition(SEPARATOR)
        hub = self.hubs.get(label) if sep else None
        if hub is None:
            raise engine.ConfigError(f"no host {label!r} for pool {name!r}; hosts: {self.where}")
        return hub, inner

    def _hub_of(self, vm: engine.ReservedVm) -> Hub | None:
        return next((hub for hub in self.hubs.values() if any(own is vm for own in hub.reserved())), None)

    # -- reading -----------------------------------------------------------------------------

    def states(self) -> list[PoolState]:
        return [replace(state, name=f"{label}{SEPARATOR}{state.name}")
                for label, hub in self.hubs.items() for state in hub.states()]

    def profile(self, name: str) -> engine.Profile | None:
        with contextlib.suppress(engine.ConfigError):
            hub, inner = self._route(name)
            return hub.profile(inner)
        return None

    def policy(self, name: str) -> engine.NetworkPolicy | None:
        with contextlib.suppress(engine.ConfigError):
            hub, inner = self._route(name)
            return hub.policy(inner)
        return None

    def reserved(self) -> list[engine.ReservedVm]:
        return [vm for hub in self.hubs.values() for vm in hub.reserved()]

    def recent_events(self) -> list[engine.FlowEvent]:
        events = [event for hub in self.hubs.values() for event in hub.recent_events()]
        return sorted(events, key=lambda event: event.time)

    # -- actions -----------------------------------------------------------------------------

    async def reload_profiles(self) -> None:
        await asyncio.gather(*(hub.reload_profiles() for hub in self.hubs.values()))

    async def start_pool(self, name: str, size: int | None = None) -> None:
        hub, inner = self._route(name)
        await hub.start_pool(inner, size)

    async def stop_pool(self, name: str) -> None:
        hub, inner = self._route(name)
        await hub.stop_pool(inner)

    async def resize(self, name: str, size: int) -> None:
        hub, inner = self._route(name)
        await hub.resize(inner, size)

    async def reserve(self, name: str, timeout: float = 120) -> engine.ReservedVm:
        hub, inner = self._route(name)
        return await hub.reserve(inner, timeout)

    async def release(self, vm: engine.ReservedVm) -> None:
        hub = self._hub_of(vm)
        if hub is not None:
            await hub.release(vm)

    async def reattach_console(self, vm: engine.ReservedVm) -> engine.ConsoleLike | None:
        hub = self._hub_of(vm)
        return await hub.reattach_console(vm) if hub is not None else None

    async def set_policy(self, name: str, policy: engine.NetworkPolicy) -> None:
        hub, inner = self._route(name)
        await hub.set_policy(inner, policy)

    async def save_policy(self, name: str, policy: engine.NetworkPolicy) -> engine.Profile:
        hub, inner = self._route(name)
        return await hub.save_policy(inner, policy)

    async def flow_events(self) -> AsyncIterator[engine.FlowEvent]:
        queue: asyncio.Queue[engine.FlowEvent | None] = asyncio.Queue()
        remaining = len(self.hubs)

        async def pump(hub: Hub) -> None:
            try:
                async for event in hub.flow_events():
                    await queue.put(event)
            finally:
                await queue.put(None)  # this host's stream ended

        tasks = [asyncio.create_task(pump(hub), name="multi-hub-flows") for hub in self.hubs.values()]
        try:
            while remaining:
                event = await queue.get()
                if event is None:
                    remaining -= 1
                    continue
                yield event
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)

    async def close(self) -> None:
        await asyncio.gather(*(hub.close() for hub in self.hubs.values()), return_exceptions=True)
        self._changed()


__all__ = ["SEPARATOR", "MultiHub"]
