"""PoolRegistry: the pools a pool service holds, by profile name, and their life cycle.

What ``capsa-tui serve`` serves is a table of pools, one per profile, that its clients start,
stop and resize (protocol v2). The registry owns that table: a pool started here is built from
its profile, boots in the background (its members show as booting meanwhile) and is closed by
:meth:`stop` or :meth:`close`; a pool handed in by an embedder (:meth:`add_pool`) is served and
resized, never stopped or closed (its builder owns it).

Lazy pools (a3s box's registry): with ``lazy=True``, :meth:`ensure` of a profile that no pool
holds yet starts one at the profile's size, so the first ``reserve`` of a profile pays for the
boot and every later one finds it warm.

Change is pushed, not polled: every pool or profile change bumps :attr:`version` and notifies
:attr:`changed`, which connections watching the pools wait on. Flow events of every member's
gateway are fanned out to :class:`FlowSubscription`\\ s with their filters
(:mod:`engine.service.flows`); a recent backlog serves a flow log that opens late.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.logevent import log_event
from engine.broadcast import Broadcast
from engine.errors import EngineError, PoolClosed, PoolError
from engine.netstack.flowlog import FlowEvent
from engine.netstack.policy.policy import NetworkPolicy
from engine.pool.pool import VmPool
from engine.pool.size import check_pool_size, fit_max_size
from engine.profile.parse import Profile
from engine.profile.schema import ProfileError, ProfileIssue
from engine.profile.store import save_profile
from engine.service.errors import ServiceError
from engine.service.flows import Flow, FlowFilter, FlowSubscription
from engine.microvm.spec import UserNatConfig

log = logging.getLogger(__name__)

FLOW_BACKLOG = 2000  # flow events kept for a flow log that opens late

ProfileLoader = Callable[[], list[Profile]]


@dataclass(eq=False)
class ServedPool:
    """One row of the registry: a profile and, while it runs, its pool."""

    name: str
    profile: Profile | None
    pool: VmPool | None = None
    owned: bool = True  # started here (may be stopped); False: handed in by an embedder
    size: int | None = None  # the size asked for (None while stopped)
    starting: bool = False  # the pool's first VMs are booting
    error: str | None = None  # why it failed to start, or its pool's last error
    task: asyncio.Task[None] | None = None
    flow_tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)

    @property
    def running(self) -> bool:
        return self.pool is not None and not self.pool.closed


class PoolRegistry:
    """The served pools by name; see the module docstring.

    ``profiles`` loads the profiles a pool may be started from (None: none, only the pools
    handed in); ``lazy`` lets :meth:`ensure` start a profile's pool on first use.
    """

    def __init__(
        self, pools: Iterable[VmPool] = (), *, profiles: ProfileLoader | None = None, lazy: bool = False
    ) -> None:
        self._load = profiles
        self.lazy = lazy
        self._entries: dict[str, ServedPool] = {}
        self._profiles: dict[str, Profile] = {}
        self._profile_texts: dict[str, str] = {}
        self._broken: list[ProfileIssue] = []
        self.version = 0
        self.changed = Broadcast()
        self._subscriptions: list[FlowSubscription] = []
        self._backlog: deque[Flow] = deque(maxlen=FLOW_BACKLOG)
        self._closed = False
        for pool in pools:
            self.add_pool(pool)

    # -- reading ---------------------------------------------------------------------------------

    @property
    def pools(self) -> dict[str, VmPool]:
        """The pools that run right now, by name."""
        return {name: e.pool for name, e in self._entries.items() if e.pool is not None and not e.pool.closed}

    def names(self) -> list[str]:
        """Every name a client may ask for: running pools and loaded profiles."""
        return sorted(set(self._entries) | set(self._profiles))

    def profiles(self) -> list[Profile]:
        return [self._profiles[name] for name in sorted(self._profiles)]

    def profile_text(self, name: str) -> str | None:
        """The YAML the profile was loaded from (what a client parses to see the same profile)."""
        return self._profile_texts.get(name)

    @property
    def broken(self) -> list[ProfileIssue]:
        """The issues of profile files that failed to load at the last (re)load."""
        return list(self._broken)

    def entry(self, name: str) -> ServedPool | None:
        return self._entries.get(name)

    def states(self) -> list[dict[str, Any]]:
        """Each pool's and each profile's state, as the ``pools`` event carries it."""
        result = []
        for name in self.names():
            entry = self._entries.get(name)
            profile = entry.profile if entry is not None and entry.profile is not None else self._profiles.get(name)
            pool = entry.pool if entry is not None and entry.running else None
            stats = pool.stats() if pool is not None else None
            error = entry.error if entry is not None else None
            if error is None and stats is not None:
                error = stats.last_error
            network = pool.spec.network if pool is not None else profile.network if profile is not None else None
            result.append({
                "name": name,
                "kind": profile.kind if profile is not None else None,
                "running": pool is not None and not (entry is not None and entry.starting),
                "starting": entry is not None and entry.starting,
                "size": entry.size if entry is not None else None,
                "owned": entry.owned if entry is not None else True,
                "error": error,
                "has_agent": pool.spec.boot.has_agent if pool is not None else (
                    profile.kind == "sandbox" if profile is not None else None),
                "network": isinstance(network, UserNatConfig),
                "stats": stats.to_dict() if stats is not None else None,
                "members": [m.to_dict() for m in pool.members()] if pool is not None else [],
            })
        return result

    def policy(self, name: str) -> NetworkPolicy | None:
        entry = self._entries.get(name)
        if entry is not None and entry.running:
            assert entry.pool is not None
            network = entry.pool.spec.network
        elif name in self._profiles:
            network = self._profiles[name].network
        else:
            return None
        return network.policy if isinstance(network, UserNatConfig) else None

    # -- profiles --------------------------------------------------------------------------------

    async def reload(self) -> None:
        """Read the profiles again; running pools keep the settings they were started with."""
        if self._load is None:
            return
        load = self._load
        try:
            profiles, broken = await asyncio.to_thread(load), []
        except ProfileError as err:
            profiles, broken = err.profiles, err.errors
        texts = await asyncio.to_thread(_read_texts, profiles)
        self._profiles = {p.name: p for p in profiles}
        self._profile_texts = texts
        self._broken = broken
        self._notify()

    # -- pools -----------------------------------------------------------------------------------

    def add_pool(self, pool: VmPool) -> None:
        """Serve ``pool`` too; it stays its builder's (resized here, never stopped or closed)."""
        if pool.name in self._entries and self._entries[pool.name].running:
            raise ServiceError(f"a pool named {pool.name!r} is already served")
        entry = ServedPool(pool.name, self._profiles.get(pool.name), pool, owned=False, size=pool.size)
        self._entries[pool.name] = entry
        self._watch(entry)
        self._notify()

    async def start(self, name: str, size: int | None = None) -> ServedPool:
        """Start the pool of profile ``name`` (at ``size``, else the profile's); returns once its
        pool exists, while its first VMs boot. Starting a running pool changes nothing."""
        self._check_open()
        entry = self._entries.get(name)
        if entry is not None and (entry.running or entry.starting):
            return entry
        profile = self._profiles.get(name)
        if profile is None:
            raise ServiceError(self._unknown(name), "UnknownPool")
        size = profile.size if size is None else size
        check_pool_size(size)
        entry = ServedPool(name, profile, size=size, starting=True)
        self._entries[name] = entry
        self._notify()
        try:
            builder = await asyncio.to_thread(profile.pool_builder)
            builder = builder.max_size(fit_max_size(size, profile.max_size))
            entry.pool = builder.start(size)
        except Exception as err:  # a missing image, a bad share: shown on the row, and said
            entry.starting, entry.error = False, str(err) or type(err).__name__
            self._notify()
            raise
        log_event(log, logging.INFO, "pool_started", pool=name, size=size)
        self._watch(entry)
        entry.task = asyncio.create_task(self._fill(entry), name=f"registry-fill-{name}")
        self._notify()
        return entry

    async def _fill(self, entry: ServedPool) -> None:
        assert entry.pool is not None
        try:
            await entry.pool.wait_filled()
        except EngineError as err:  # boots keep failing: stop retrying, show why
            entry.error = str(err) or type(err).__name__
            log_event(log, logging.WARNING, "pool_failed", pool=entry.name, error=entry.error)
            await entry.pool.close()
        finally:
            entry.starting = False
            self._notify()

    async def ensure(self, name: str) -> VmPool:
        """The running pool ``name``; with ``lazy``, a profile's pool is started for it first
        (requests that come while it starts wait for the same pool)."""
        while True:
            entry = self._entries.get(name)
            if entry is not None and entry.pool is not None and not entry.pool.closed:
                return entry.pool
            if entry is not None and entry.starting:  # its pool object comes soon (built in a thread)
                await self.changed.wait()
                continue
            if self.lazy and name in self._profiles:
                await self.start(name)  # raises when it cannot start
                continue
            if entry is not None and entry.error:
                raise PoolError(f"pool {name!r} did not start: {entry.error}")
            raise ServiceError(self._unknown(name), "UnknownPool")

    async def stop(self, name: str) -> None:
        """Close the pool ``name`` (its VMs are killed, reserved ones too); a stopped one stays."""
        entry = self._entries.get(name)
        if entry is None:
            if name in self._profiles:
                return
            raise ServiceError(self._unknown(name), "UnknownPool")
        if not entry.owned:
            raise ServiceError(f"pool {name!r} was handed to the server by its embedder: only it may stop it",
                               "NotOwned")
        del self._entries[name]
        self._notify()
        await self._shutdown(entry)
        log_event(log, logging.INFO, "pool_stopped", pool=name)
        self._notify()

    async def resize(self, name: str, size: int) -> None:
        """Keep ``size`` VMs warm from now on; a stopped profile's pool starts at that size."""
        check_pool_size(size)
        entry = self._entries.get(name)
        if entry is None or entry.pool is None or entry.pool.closed:
            if entry is not None and entry.owned:
                await self.stop(name)
            await self.start(name, size)
            return
        entry.pool.resize(size, fit_max_size(size, entry.pool.max_size))
        entry.size = size
        log_event(log, logging.INFO, "pool_resized", pool=name, size=size)
        self._notify()

    def set_policy(self, name: str, policy: NetworkPolicy) -> None:
        """New flows of pool ``name``'s VMs follow ``policy`` at once (the profile is not touched)."""
        entry = self._entries.get(name)
        if entry is None or entry.pool is None or entry.pool.closed:
            raise ServiceError(f"pool {name!r} is not running: save the policy to its profile instead",
                               "NotRunning")
        entry.pool.set_policy(policy)  # ConfigError when it has no network
        log_event(log, logging.INFO, "policy_applied", pool=name, rules=len(policy.rules), default=policy.default.value)
        self._notify()

    async def save_policy(self, name: str, policy: NetworkPolicy) -> Profile:
        """Write ``policy`` into profile ``name``'s YAML (comments kept; a bundled profile
        becomes a user copy); the profiles are read again. Returns the saved profile."""
        profile = self._profiles.get(name)
        if profile is None:
            raise ServiceError(f"no profile named {name!r} to save to", "UnknownPool")
        updates: dict[str, object] = {"network.policy": policy.to_dict()}
        if not isinstance(profile.network, UserNatConfig):
            updates["network.mode"] = "user_nat"  # a policy needs a network to apply to
        saved = await asyncio.to_thread(save_profile, profile, updates)
        log_event(log, logging.INFO, "policy_saved", pool=name, file=saved.path)
        await self.reload()
        return self._profiles.get(name, saved)

    # -- flow events -----------------------------------------------------------------------------

    def subscribe_flows(self, where: FlowFilter) -> FlowSubscription:
        """Flow events that match ``where`` from now on (bounded: a slow reader loses the oldest)."""
        subscription = FlowSubscription(where, self._subscriptions.remove)
        self._subscriptions.append(subscription)
        return subscription

    def recent_flows(self, where: FlowFilter) -> list[Flow]:
        return [flow for flow in self._backlog if where.matches(*flow)]

    def _watch(self, entry: ServedPool) -> None:
        pool = entry.pool
        if pool is None:
            return
        pool.add_listener(lambda _stats: self._pool_changed(entry))
        self._pool_changed(entry)

    def _pool_changed(self, entry: ServedPool) -> None:
        pool = entry.pool
        if pool is None:
            return
        for member in pool.members():
            if member.id in entry.flow_tasks or member.state == "stopping":
                continue
            try:
                handle = pool.handle(member.id)
            except KeyError:
                continue  # still launching: the next change tries again
            if not handle.has_network:
                continue
            task = asyncio.create_task(self._pump_flows(entry.name, member.id, handle.network_events()),
                                       name=f"registry-flows-{member.id}")
            entry.flow_tasks[member.id] = task
            task.add_done_callback(functools.partial(_forget_task, entry.flow_tasks, member.id))
        self._notify()

    async def _pump_flows(self, pool: str, member: str, events: AsyncIterator[FlowEvent]) -> None:
        async for event in events:
            flow = (pool, member, event)
            self._backlog.append(flow)
            for subscription in self._subscriptions:
                subscription.offer(flow)

    # -- closing ---------------------------------------------------------------------------------

    async def close(self) -> None:
        """Close every pool started here (handed-in pools stay open) and end every subscription."""
        self._closed = True
        entries = list(self._entries.values())
        self._entries.clear()
        results = await asyncio.gather(*(self._shutdown(e) for e in entries), return_exceptions=True)
        for entry, result in zip(entries, results):
            if isinstance(result, BaseException):
                log_event(log, logging.WARNING, "pool_close_failed", pool=entry.name, error=repr(result))
        for subscription in list(self._subscriptions):
            subscription.end()
        self._notify()

    async def _shutdown(self, entry: ServedPool) -> None:
        if entry.task is not None and not entry.task.done():
            entry.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await entry.task
        if entry.owned and entry.pool is not None:
            await entry.pool.close()
        tasks = list(entry.flow_tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    # -- helpers ---------------------------------------------------------------------------------

    def _notify(self) -> None:
        self.version += 1
        self.changed.notify()

    def _check_open(self) -> None:
        if self._closed:
            raise PoolClosed("the pool service is closing")

    def _unknown(self, name: str) -> str:
        known = ", ".join(self.names()) or "none"
        if self.lazy or self._profiles:
            return f"this server holds no pool or profile {name!r} (known: {known})"
        return f"this server holds no pool {name!r} (pools: {known})"


def _forget_task(tasks: dict[str, asyncio.Task[None]], vm_id: str, _task: asyncio.Task[None]) -> None:
    tasks.pop(vm_id, None)


def _read_texts(profiles: list[Profile]) -> dict[str, str]:
    texts = {}
    for profile in profiles:
        if profile.path is not None:
            with contextlib.suppress(OSError, UnicodeDecodeError):
                texts[profile.name] = Path(profile.path).read_text(encoding="utf-8")
    return texts


__all__ = ["FLOW_BACKLOG", "PoolRegistry", "ServedPool"]
