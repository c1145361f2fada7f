"""The requests of protocol v2 about pools, profiles, policies and flows, for one connection.

:class:`PoolOps` turns ``pool_start``, ``pool_stop``, ``pool_resize``, ``profiles``, ``reload``,
``set_policy``, ``watch_pools``, ``watch_flows`` and ``unwatch`` into calls of the server's
:class:`~engine.service.registry.PoolRegistry`; the connection (framing, limits, cleanup) stays
in :mod:`engine.service.connection`. A watch is one task of this connection that waits on the
registry and sends events through the connection's event path (which waits for a slow client
rather than cutting it off); :meth:`PoolOps.stop` ends them all.
"""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from engine.netstack.domains import PolicyError
from engine.netstack.flowlog import FlowEvent
from engine.netstack.policy.policy import NetworkPolicy
from engine.profile.parse import Profile
from engine.service import protocol
from engine.service.errors import BadRequest, ServiceError
from engine.service.flows import ACTIONS, FlowFilter
from engine.service.registry import PoolRegistry

SendEvent = Callable[[protocol.Message], Awaitable[None]]
Handler = Callable[[protocol.Message, "int | None"], Awaitable["protocol.Message | None"]]

COALESCE_S = 0.05  # changes closer together than this go out as one ``pools`` event


def flow_dict(pool: str, member: str, event: FlowEvent) -> protocol.Message:
    return {"pool": pool, "member": member, **event.to_dict()}


def profile_dict(registry: PoolRegistry, profile: Profile) -> protocol.Message:
    return {"name": profile.name, "path": str(profile.path) if profile.path else None,
            "source": profile.source, "text": registry.profile_text(profile.name)}


def profiles_reply(registry: PoolRegistry) -> protocol.Message:
    return {
        "profiles": [profile_dict(registry, p) for p in registry.profiles()],
        "broken": [{"file": i.file, "line": i.line, "field": i.field, "message": i.message} for i in registry.broken],
    }


class PoolOps:
    """One connection's pool, profile, policy and flow requests, and its watches."""

    def __init__(self, registry: PoolRegistry, send_event: SendEvent) -> None:
        self._registry = registry
        self._send_event = send_event
        self._watches: dict[str, asyncio.Task[None]] = {}

    def handlers(self) -> dict[str, Handler]:
        return {
            "profiles": self._op_profiles,
            "reload": self._op_reload,
            "pool_start": self._op_start,
            "pool_stop": self._op_stop,
            "pool_resize": self._op_resize,
            "set_policy": self._op_set_policy,
            "watch_pools": self._op_watch_pools,
            "watch_flows": self._op_watch_flows,
            "unwatch": self._op_unwatch,
        }

    # -- pools and profiles ----------------------------------------------------------------------

    async def _op_profiles(self, message: protocol.Message, request_id: int | None) -> protocol.Message:
        return profiles_reply(self._registry)

    async def _op_reload(self, message: protocol.Message, request_id: int | None) -> protocol.Message:
        await self._registry.reload()
        return profiles_reply(self._registry)

    async def _op_start(self, message: protocol.Message, request_id: int | None) -> protocol.Message:
        await self._registry.start(protocol.field(message, "pool", str), _size(message, required=False))
        return {}

    async def _op_stop(self, message: protocol.Message, request_id: int | None) -> protocol.Message:
        await self._registry.stop(protocol.field(message, "pool", str))
        return {}

    async def _op_resize(self, message: protocol.Message, request_id: int | None) -> protocol.Message:
        size = _size(message, required=True)
        assert size is not None
        await self._registry.resize(protocol.field(message, "pool", str), size)
        return {}

    async def _op_set_policy(self, message: protocol.Message, request_id: int | None) -> protocol.Message:
        name = protocol.field(message, "pool", str)
        raw = protocol.field(message, "policy", dict)
        apply = protocol.field(message, "apply", bool, True)
        save = protocol.field(message, "save", bool, False)
        try:
            policy = NetworkPolicy.from_dict(raw)
        except PolicyError as err:
            raise BadRequest(f"set_policy: field 'policy': {err}") from None
        if apply:
            self._registry.set_policy(name, policy)
        if not save:
            return {"saved_to": None, "profile": None}
        saved = await self._registry.save_policy(name, policy)
        return {"saved_to": str(saved.path), "profile": profile_dict(self._registry, saved)}

    # -- watches ---------------------------------------------------------------------------------

    async def _op_watch_pools(self, message: protocol.Message, request_id: int | None) -> None:
        self._start_watch("pools", self._pump_pools(request_id))
        return None

    async def _op_watch_flows(self, message: protocol.Message, request_id: int | None) -> None:
        action = protocol.field(message, "action", str, None)
        if action is not None and action not in ACTIONS:
            raise BadRequest(f"watch_flows: field 'action' must be one of {', '.join(sorted(ACTIONS))}, not {action!r}")
        where = FlowFilter(protocol.field(message, "pool", str, None), protocol.field(message, "vm", str, None), action)
        self._start_watch("flows", self._pump_flows(request_id, where))
        return None

    async def _op_unwatch(self, message: protocol.Message, request_id: int | None) -> protocol.Message:
        what = protocol.field(message, "what", str)
        if what not in ("pools", "flows"):
            raise BadRequest(f"unwatch: field 'what' must be 'pools' or 'flows', not {what!r}")
        task = self._watches.pop(what, None)
        if task is None:
            raise ServiceError(f"this connection does not watch the {what}", "NotWatching")
        task.cancel()
        await asyncio.wait([task])
        return {}

    def _start_watch(self, what: str, pump: Any) -> None:
        if what in self._watches:
            pump.close()
            raise ServiceError(f"this connection watches the {what} already (unwatch first)", "AlreadyWatching")
        self._watches[what] = asyncio.create_task(pump, name=f"service-watch-{what}")

    async def _pump_pools(self, request_id: int | None) -> None:
        registry = self._registry
        with contextlib.suppress(ConnectionError, OSError):
            await self._send_event(protocol.ok_reply(request_id))
            seen = -1
            while True:
                while registry.version == seen:
                    await registry.changed.wait()
                await asyncio.sleep(COALESCE_S)  # a burst of changes (a boot, a resize) is one event
                seen = registry.version
                await self._send_event(protocol.pools_event(registry.states(), seen))

    async def _pump_flows(self, request_id: int | None, where: FlowFilter) -> None:
        registry = self._registry
        # subscribed before the backlog is read: no event falls between the two
        subscription = registry.subscribe_flows(where)
        backlog = [flow_dict(*flow) for flow in registry.recent_flows(where)]
        try:
            with contextlib.suppress(ConnectionError, OSError):
                await self._send_event(protocol.ok_reply(request_id, backlog=backlog))
                while batch := await subscription.batch():
                    flows = [flow_dict(*flow) for flow in batch]
                    await self._send_event(protocol.flows_event(flows, subscription.dropped))
        finally:
            subscription.end()

    async def stop(self) -> None:
        """End every watch of this connection."""
        tasks = list(self._watches.values())
        self._watches.clear()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)


def _size(message: protocol.Message, required: bool) -> int | None:
    size: int | None = protocol.field(message, "size", int) if required else protocol.field(message, "size", int, None)
    if size is not None and size < 0:
        raise BadRequest(f"{message.get('op')}: field 'size' must be 0 or more, not {size}")
    return size


__all__ = ["COALESCE_S", "PoolOps", "flow_dict", "profile_dict", "profiles_reply"]
