"""LocalHub: the app's hub over pools that run in this process, on the app's own event loop.

Profiles come from ``engine.load_profiles()``; each started pool is an ``engine.VmPool`` built
from its profile. See :mod:`capsatui.hub.base` for the interface the screens use.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import engine
from capsatui.hub.base import HISTORY, Hub, PoolState
from capsatui.hub.flows import BACKLOG, FlowFanout

log = logging.getLogger(__name__)



@dataclass
class _Running:
    """The hub's bookkeeping for one started pool."""

    size: int
    task: asyncio.Task[None] | None = None
    pool: engine.VmPool | None = None
    ready: bool = False  # VmPool.start returned: the first ``size`` VMs booted
    error: str | None = None
    seen_booted: set[str] = field(default_factory=set)


def _has_agent(pool: engine.VmPool | None, profile: engine.Profile | None) -> bool | None:
    """The running pool's fact, else what its profile promises (None: no profile to ask)."""
    if pool is not None:
        return pool.spec.boot.has_agent
    return profile.kind == "sandbox" if profile is not None else None


class LocalHub(Hub):
    """Pools of this process: profiles from ``engine.load_profiles()``, pools built from them."""

    def __init__(self) -> None:
        super().__init__()
        self.mode = "local"
        try:
            choice = engine.choose_accelerator()
            self.accel, self.accel_name = choice.describe(), choice.name
        except engine.EngineError as err:  # a bad CAPSA_ACCEL: say so, VMs will fail the same way
            self.accel, self.accel_name = f"unusable: {err}", "?"
        self._profiles: dict[str, engine.Profile] = {}
        self._broken: dict[str, str] = {}  # file name -> every issue in it
        self._pools: dict[str, _Running] = {}
        self._errors: dict[str, str] = {}  # last start error of a stopped pool
        self._policies: dict[str, engine.NetworkPolicy] = {}  # set while stopped: used at start
        self._hist_idle: dict[str, deque[int]] = {}
        self._hist_boot: dict[str, deque[float]] = {}
        self._reserved: dict[str, tuple[str, engine.ReservedVm]] = {}
        self._flows = FlowFanout()
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._closed = False

    # ----- reading ---------------------------------------------------------------------------

    def states(self) -> list[PoolState]:
        names = sorted(set(self._profiles) | set(self._pools))
        result = [self._state(name) for name in names]
        result += [
            PoolState(file, None, message, False, None, [], [], [])
            for file, message in sorted(self._broken.items())
        ]
        return result

    def _state(self, name: str) -> PoolState:
        run = self._pools.get(name)
        pool = run.pool if run else None
        stats = pool.stats() if pool is not None else None
        error = self._errors.get(name)
        if run is not None:
            error = run.error or (stats.last_error if stats else None)
        return PoolState(
            name=name,
            profile=self._profiles.get(name),
            error=error,
            running=run is not None and run.ready,
            stats=stats,
            members=pool.members() if pool is not None else [],
            history_idle=list(self._hist_idle.get(name, ())),
            history_boot_s=list(self._hist_boot.get(name, ())),
            starting=run is not None and not run.ready,
            size=run.size if run else None,
            has_agent=_has_agent(pool, self._profiles.get(name)),
        )

    def profile(self, name: str) -> engine.Profile | None:
        return self._profiles.get(name)

    def reserved(self) -> list[engine.ReservedVm]:
        for vm_id, (name, vm) in list(self._reserved.items()):
            run = self._pools.get(name)
            if vm.released or run is None or run.pool is None or run.pool.closed:
                del self._reserved[vm_id]
        return [vm for _, vm in self._reserved.values()]

    def policy(self, name: str) -> engine.NetworkPolicy | None:
        run = self._pools.get(name)
        if run is not None and run.pool is not None:
            network = run.pool.spec.network
            return network.policy if isinstance(network, engine.UserNatConfig) else None
        if name in self._policies:
            return self._policies[name]
        profile = self._profiles.get(name)
        if profile is not None and isinstance(profile.network, engine.UserNatConfig):
            return profile.network.policy
        return None

    # ----- profiles --------------------------------------------------------------------------

    async def reload_profiles(self) -> None:
        """Read every profile again; running pools keep the settings they were started with."""
        try:
            profiles, broken = await asyncio.to_thread(engine.load_profiles), []
        except engine.ProfileError as err:
            profiles, broken = err.profiles, err.errors
        self._profiles = {p.name: p for p in profiles}
        grouped: dict[str, list[str]] = {}
        paths: dict[str, str] = {}
        for issue in broken:
            # Keyed by file name: it cannot clash with a profile name (names have no '.').
            file = Path(issue.file).name
            paths[file] = issue.file
            short = engine.ProfileIssue(file, issue.line, issue.field, issue.message)
            grouped.setdefault(file, []).append(str(short))
        # The issues first (the table shows the first line), then where the file is.
        self._broken = {file: "\n".join([*lines, f"(file: {paths[file]})"]) for file, lines in grouped.items()}
        self._changed()

    # ----- pools -----------------------------------------------------------------------------

    async def start_pool(self, name: str, size: int | None = None) -> None:
        if self._closed:
            raise engine.PoolClosed("the app is closing")
        profile = self._profiles.get(name)
        if profile is None:
            raise engine.ConfigError(f"no valid profile named {name!r}")
        if name in self._pools:
            return
        size = profile.size if size is None else size
        engine.check_pool_size(size)
        run = _Running(size)
        self._pools[name] = run
        self._errors.pop(name, None)
        self._hist_idle.setdefault(name, deque(maxlen=HISTORY))
        self._hist_boot.setdefault(name, deque(maxlen=HISTORY))
        run.task = asyncio.create_task(self._boot_pool(name, profile, run), name=f"hub-start-{name}")
        self._changed()

    async def _boot_pool(self, name: str, profile: engine.Profile, run: _Running) -> None:
        try:
            if profile.boot.kind == "default":
                # Never build the image here (minutes of work): say how instead.
                await asyncio.to_thread(engine.default_image, build=False)
            builder = await asyncio.to_thread(profile.pool_builder)
            builder = builder.max_size(engine.fit_max_size(run.size, profile.max_size))
            # start() returns while the first VMs boot, so the dashboard watches those boots
            # instead of a blank "starting".
            pool = run.pool = builder.start(run.size)
            if name in self._policies and isinstance(pool.spec.network, engine.UserNatConfig):
                pool.set_policy(self._policies[name])
            pool.add_listener(lambda stats: self._on_stats(name, run))
            self._changed()  # its first boots show as "booting" before any of them is done
            await pool.wait_filled()
        except Exception as err:  # EngineError mostly; anything else is shown in place too
            if run.pool is not None:
                await run.pool.close()  # boots keep failing: stop retrying, show why
            run.error = str(err) or type(err).__name__
            self._errors[name] = str(err)
            if self._pools.get(name) is run:
                del self._pools[name]  # shown as stopped, with the error in place
            self._changed()
            return
        run.ready = True
        self._changed()

    def _on_stats(self, name: str, run: _Running) -> None:
        """A pool changed (called synchronously by the pool: keep it quick)."""
        pool = run.pool
        if pool is None:
            return
        stats = pool.stats()
        idle = self._hist_idle.setdefault(name, deque(maxlen=HISTORY))
        if not idle or idle[-1] != stats.idle:
            idle.append(stats.idle)
        members = pool.members()
        ids = {m.id for m in members}
        for member in members:
            # The pool notifies at the instant a boot finishes, so the member's age is its boot time.
            if member.state in ("idle", "reserved") and member.id not in run.seen_booted:
                run.seen_booted.add(member.id)
                self._hist_boot.setdefault(name, deque(maxlen=HISTORY)).append(member.age_s)
            if member.id not in self._watchers and member.state != "stopping":
                self._watch_network(pool, member.id)
        run.seen_booted &= ids
        self._changed()

    async def stop_pool(self, name: str) -> None:
        run = self._pools.pop(name, None)
        if run is None:
            return
        self._changed()
        await self._shutdown(run)
        self._changed()

    async def _shutdown(self, run: _Running) -> None:
        if run.task is not None and not run.task.done():
            run.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await run.task
        if run.pool is not None:
            await run.pool.close()

    async def resize(self, name: str, size: int) -> None:
        """Keep ``size`` VMs warm from now on; reserved VMs are left alone (a stopped pool starts)."""
        engine.check_pool_size(size)
        run = self._pools.get(name)
        if run is None or run.pool is None:
            await self.stop_pool(name)
            await self.start_pool(name, size)
            return
        run.pool.resize(size, engine.fit_max_size(size, run.pool.max_size))
        run.size = size
        self._changed()

    async def reserve(self, name: str, timeout: float = 120) -> engine.PooledVm:
        run = self._pools.get(name)
        if run is None:
            raise engine.ConfigError(f"pool {name!r} is not running: start it first")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while run.pool is None:  # still looking up the image: the pool object comes soon
            if run.task is None or run.task.done() or loop.time() > deadline:
                raise engine.PoolError(run.error or f"pool {name!r} did not start")
            await asyncio.sleep(0.05)
        vm = await run.pool.reserve(max(0.0, deadline - loop.time()))
        self._reserved[vm.id] = (name, vm)
        self._changed()
        return vm

    async def release(self, vm: engine.ReservedVm) -> None:
        try:
            await vm.release()
        finally:
            self._reserved.pop(vm.id, None)
            self._changed()

    async def set_policy(self, name: str, policy: engine.NetworkPolicy) -> None:
        run = self._pools.get(name)
        if run is not None and run.pool is not None:
            run.pool.set_policy(policy)
        else:
            profile = self._profiles.get(name)
            if profile is None or not isinstance(profile.network, engine.UserNatConfig):
                raise engine.ConfigError(f"profile {name!r} has no network: its profile needs network mode user_nat")
            self._policies[name] = policy  # applied when the pool starts
        self._changed()

    async def save_policy(self, name: str, policy: engine.NetworkPolicy) -> engine.Profile:
        profile = self._profiles.get(name)
        if profile is None:
            raise engine.ConfigError(f"no profile named {name!r} to save to")
        updates: dict[str, object] = {"network.policy": policy.to_dict()}
        if not isinstance(profile.network, engine.UserNatConfig):
            updates["network.mode"] = "user_nat"  # a policy needs a network to apply to
        saved = await asyncio.to_thread(engine.save_profile, profile, updates)
        await self.reload_profiles()
        return self._profiles.get(name, saved)

    # ----- flow events -----------------------------------------------------------------------

    def _watch_network(self, pool: engine.VmPool, vm_id: str) -> None:
        try:
            handle = pool.handle(vm_id)
        except KeyError:
            return  # still launching: the next change notification tries again
        if not handle.has_network:
            return
        task = asyncio.create_task(self._pump(handle.network_events()), name=f"hub-flows-{vm_id}")
        self._watchers[vm_id] = task
        task.add_done_callback(lambda _t: self._watchers.pop(vm_id, None))

    async def _pump(self, events: AsyncIterator[engine.FlowEvent]) -> None:
        async for event in events:
            self._flows.publish(event)

    def recent_events(self) -> list[engine.FlowEvent]:
        return list(self._flows.backlog)

    def flow_events(self) -> AsyncIterator[engine.FlowEvent]:
        return self._flows.subscribe()

    # ----- closing ---------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop every pool (killing every VM) and end every flow stream; idempotent."""
        self._closed = True
        runs = list(self._pools.values())
        self._pools.clear()
        self._reserved.clear()
        results = await asyncio.gather(*(self._shutdown(run) for run in runs), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                log.warning("closing a pool failed: %s", result)
        for task in list(self._watchers.values()):
            task.cancel()
        if self._watchers:
            await asyncio.wait(list(self._watchers.values()))
        self._flows.close()
        self._changed()


__all__ = ["BACKLOG", "LocalHub"]
