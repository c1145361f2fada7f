"""ServiceHub: the app's hub over a running ``capsa-tui serve`` (``engine.ServiceClient``).

Start-up stays fast: :func:`capsatui.hub.make_hub` only probes the socket synchronously (a
Unix-socket connect answers at once: accepted, refused or missing) and builds a
:class:`ServiceHub` without talking to it. The real client connects on the app's own event loop
in :meth:`ServiceHub.reload_profiles`, which the dashboard calls when it mounts; from then on a
poll task asks the server for ``status`` every :data:`POLL_S` seconds and tells subscribers only
when something other than the members' ages changed.

A reserved VM's console is the engine's own ``Console`` over a service attachment
(``engine.remote_console``): ``login``, ``wait_for`` and ``run`` behave as on a local VM.

Gaps of protocol v1 (documented, not hidden):

* the pools belong to the serve: ``start_pool`` of a served pool is a no-op (it already runs),
  anything else, ``stop_pool`` and ``resize`` raise :class:`engine.ConfigError`;
* there are no flow events over the wire: ``flow_events`` ends at once, ``recent_events`` is empty;
* the policy is read-only (the local profile's of the same name); ``set_policy`` raises.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import engine
from capsatui.hub.base import HISTORY, Hub, PoolState

POLL_S = 0.5
NOT_HERE = "the pools belong to `capsa-tui serve`; start/stop them there"


@functools.cache
def _stats_fields() -> frozenset[str]:
    # On first use, not at import: the app's first frame comes before the engine loads.
    return frozenset(f.name for f in fields(engine.PoolStats))


def _member(m: dict[str, Any]) -> engine.PoolMember:
    return engine.PoolMember(m["id"], m["state"], m["pid"], float(m["age_s"]))


NO_AGENT_OVER_SERVE = ("no agent over 'capsa-tui serve' yet: its protocol reaches a served VM's console only "
                       "(issue 17), so commands run in the console's shell")


class ServiceVm:
    """A VM this app reserved from the serve (an ``engine.ReservedVm``)."""

    def __init__(self, hub: ServiceHub, vm_id: str, pool: str) -> None:
        self._hub = hub
        self.id = vm_id
        self.pool_name = pool
        self.lost: str | None = None
        self.released = False
        self.open_console: engine.Console | None = None  # the attachment's, once opened

    @property
    def pid(self) -> int | None:
        member = self._hub.member(self.pool_name, self.id)
        return member.pid if member is not None else None

    def status(self) -> str:
        member = self._hub.member(self.pool_name, self.id)
        return member.state if member is not None else "gone"

    async def console(self) -> engine.Console:
        """The VM's console (one writable attachment per VM, shared by every reopen)."""
        if self.open_console is None or self.open_console.closed:
            client = self._hub.require_client()
            self.open_console = await engine.remote_console(client, self.id, from_start=True, write=True)
        return self.open_console

    has_agent = False  # the service protocol carries consoles only (issue 17)

    async def agent(self) -> engine.Agent:
        raise engine.AgentUnavailable(NO_AGENT_OVER_SERVE)

    async def release(self) -> None:
        await self._hub.release(self)


class ServiceHub(Hub):
    """The pools of a running ``capsa-tui serve``; see the module docstring for what it cannot do."""

    def __init__(self, socket_path: Path | str) -> None:
        super().__init__()
        self.mode = "service"
        self.agent_gap = NO_AGENT_OVER_SERVE
        self.socket_path = Path(socket_path)
        self.accel = self.accel_name = "serve's"  # the serve chose it; protocol v1 does not say
        self._client: engine.ServiceClient | None = None
        self._error: str | None = None
        self._pools: dict[str, dict[str, Any]] = {}
        self._profiles: dict[str, engine.Profile] = {}
        self._hist_idle: dict[str, deque[int]] = {}
        self._hist_boot: dict[str, deque[float]] = {}
        self._created: dict[str, int] = {}
        self._reserved: dict[str, ServiceVm] = {}
        self._poller: asyncio.Task[None] | None = None
        self._last: list[tuple[dict[str, Any], list[tuple[Any, Any, Any]]]] | None = None
        self._closed = False

    async def connect(self) -> None:
        """Connect (once) and start polling; errors are shown as the hub's error row."""
        if self._client is not None or self._closed:
            return
        try:
            self._client = await engine.ServiceClient.connect(self.socket_path, timeout=2.0)
        except engine.ServiceError as err:
            self._error = str(err)
            self._changed()
            return
        self._error = None
        await self._poll_once()
        self._poller = asyncio.create_task(self._poll(), name="service-hub-poll")

    def require_client(self) -> engine.ServiceClient:
        if self._client is None:
            raise engine.ServiceUnavailable(self._error or f"not connected to the serve at {self.socket_path}")
        return self._client

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            try:
                await self._poll_once()
            except engine.ServiceError as err:  # the serve went away: say so and stop polling
                self._error = f"lost the serve at {self.socket_path}: {err}"
                self._pools.clear()
                for vm in self._reserved.values():
                    vm.lost = "the serve went away"
                self._changed()
                return

    async def _poll_once(self) -> None:
        pools = await self.require_client().status()
        # Ages change every poll: leave them out of the comparison so an idle serve costs nothing.
        key = [(p, [(m["id"], m["state"], m["pid"]) for m in p.get("members", [])]) for p in
               ({k: v for k, v in pool.items() if k != "members"} for pool in pools)]
        self._pools = {str(p["name"]): p for p in pools}
        if key == self._last:
            return
        self._last = key
        for name, raw in self._pools.items():
            idle = self._hist_idle.setdefault(name, deque(maxlen=HISTORY))
            if not idle or idle[-1] != raw["idle"]:
                idle.append(int(raw["idle"]))
            # No per-boot times over the wire: sample the median each time a boot finished.
            if raw["created"] != self._created.get(name) and raw.get("boot_p50_s") is not None:
                self._hist_boot.setdefault(name, deque(maxlen=HISTORY)).append(float(raw["boot_p50_s"]))
            self._created[name] = raw["created"]
        for vm in self._reserved.values():
            if self.member(vm.pool_name, vm.id) is None and not vm.released:
                vm.lost = vm.lost or "no longer in the serve's pool"
        self._changed()

    def member(self, pool: str, vm_id: str) -> engine.PoolMember | None:
        """The serve's member ``vm_id`` of ``pool`` at the last poll (None: gone)."""
        for m in self._pools.get(pool, {}).get("members", []):
            if m["id"] == vm_id:
                return _member(m)
        return None

    def states(self) -> list[PoolState]:
        result = []
        for name, raw in sorted(self._pools.items()):
            stats = engine.PoolStats(**{k: v for k, v in raw.items() if k in _stats_fields()})
            members = [_member(m) for m in raw.get("members", [])]
            profile = self._profiles.get(name)
            result.append(PoolState(name, profile, stats.last_error, True, stats, members,
                                    list(self._hist_idle.get(name, ())), list(self._hist_boot.get(name, ())),
                                    size=stats.size,
                                    has_agent=profile.kind == "sandbox" if profile is not None else None))
        if self._error is not None:
            result.append(PoolState(str(self.socket_path), None, self._error, False, None, [], [], []))
        return result

    def profile(self, name: str) -> engine.Profile | None:
        return self._profiles.get(name)

    def policy(self, name: str) -> engine.NetworkPolicy | None:
        profile = self._profiles.get(name)
        if profile is not None and isinstance(profile.network, engine.UserNatConfig):
            return profile.network.policy
        return None

    def reserved(self) -> list[engine.ReservedVm]:
        return list(self._reserved.values())

    async def reload_profiles(self) -> None:
        """Connect on first call, then read the local profiles (for names and read-only policies)."""
        await self.connect()
        try:
            profiles = await asyncio.to_thread(engine.load_profiles)
        except engine.ProfileError as err:
            profiles = err.profiles
        # Only the served pools: a profile the serve does not hold cannot be started from here.
        self._profiles = {p.name: p for p in profiles if p.name in self._pools}
        self._changed()

    async def start_pool(self, name: str, size: int | None = None) -> None:
        if name in self._pools and size is None:
            return  # already running in the serve, like LocalHub.start_pool of a running pool
        raise engine.ConfigError(NOT_HERE)

    async def stop_pool(self, name: str) -> None:
        raise engine.ConfigError(NOT_HERE)

    async def resize(self, name: str, size: int) -> None:
        raise engine.ConfigError(NOT_HERE)

    def set_policy(self, name: str, policy: engine.NetworkPolicy) -> None:
        raise engine.ConfigError("the pools belong to `capsa-tui serve`: their policy comes from its profiles")

    def recent_events(self) -> list[engine.FlowEvent]:
        return []  # protocol v1 carries no flow events

    async def flow_events(self) -> AsyncIterator[engine.FlowEvent]:
        return
        yield  # an async generator that ends at once

    async def reserve(self, name: str, timeout: float = 120) -> ServiceVm:
        vm_id = await self.require_client().reserve(name, timeout)  # ServiceError says why not
        vm = self._reserved[vm_id] = ServiceVm(self, vm_id, name)
        with contextlib.suppress(engine.ServiceError):
            await self._poll_once()  # pid and state right away, not half a second later
        self._changed()
        return vm

    async def release(self, vm: engine.ReservedVm) -> None:
        own = vm if isinstance(vm, ServiceVm) else self._reserved.get(vm.id)
        if own is None:
            return  # not one of ours (or already forgotten by close())
        try:
            if own.open_console is not None:
                await own.open_console.stream.close()  # detaches
            if not own.released and own.lost is None:
                await self.require_client().release(own.id)
        finally:
            own.released = True
            self._reserved.pop(own.id, None)
            if self._client is not None and not self._closed:
                with contextlib.suppress(engine.ServiceError):
                    await self._poll_once()
            self._changed()

    async def close(self) -> None:
        """Stop polling and disconnect; the serve releases every VM this app reserved. Idempotent."""
        self._closed = True
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.wait([self._poller])
            self._poller = None
        self._reserved.clear()  # closing the client ends every attachment, so every console pump
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()
        self._changed()


__all__ = ["NOT_HERE", "NO_AGENT_OVER_SERVE", "POLL_S", "ServiceHub", "ServiceVm"]
