"""VmPool: pre-warmed VMs handed out the moment they are asked for, replaced after use.

    pool = await engine.vm_pool(boot).cpus(1).memory_mb(256).console_enabled().max_size(8).build(4)
    async with await pool.reserve() as vm:
        print(await (await vm.console()).exec("echo hi"))
    await pool.close()

The pool keeps ``size`` VMs booted and idle. ``reserve`` takes an idle VM at once, or queues
(first come, first served) while the pool boots more; a released VM is killed, never reused,
and a fresh one boots in its place. Every VM whose machine process exists counts against
``max_size``, including those still booting and those being killed, so no burst can start more.

Health: an idle VM is handed out only if its machine process runs at that instant (asked of the
kernel, not of the event loop, which learns of deaths late), and only if its console answered
within the last ``health_interval`` seconds; a background task probes idle consoles that often,
so the hand-out itself stays a few microseconds. A VM that fails either check is evicted and
replaced. Boot failures back off exponentially (one probe boot at a time) instead of spinning.

Snapshot pools (``settings.snapshot``) take their VMs from a :class:`~engine.pool.clones.CloneSource`:
copy-on-write clones of a template, restored in milliseconds; a VM no clone can be had for is
booted cold and counted in ``stats().fallbacks``. The clone processes kept waiting for their
state are not VMs yet and do not count against ``max_size``.
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import weakref
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from typing import Any

from engine.broadcast import Broadcast
from engine.errors import ConfigError, EngineError, PoolBootError, PoolClosed, PoolEmpty, PoolTimeout
from engine.netstack.config import UserNatConfig
from engine.netstack.policy.policy import NetworkPolicy
from engine.pool.clones import CloneSource
from engine.pool.disks import refuse_shared_write_disks
from engine.pool.size import pool_sizes_fit
from engine.pool.stats import MemberState, PoolMember, PoolSettings, PoolStats, percentile
from engine.pool.pooled import PooledVm
from engine.snapshot.clone import clone_hostname
from engine.snapshot.snapshot import snapshot_unsupported
from engine.microvm.status import Failed
from engine.microvm.handle import VmHandle
from engine.microvm.spec import VmSpec

log = logging.getLogger(__name__)

_BOOT_SAMPLES = 512
StatsListener = Callable[[PoolStats], None]


@dataclass(eq=False)
class _Member:
    """The pool's bookkeeping for one VM."""

    id: str
    state: MemberState
    started: float
    handle: VmHandle | None = None
    last_answer: float = 0.0
    probing: bool = False
    pooled: PooledVm | None = None
    release_requested: bool = False
    exited: asyncio.Event = field(default_factory=asyncio.Event)


class VmPool:
    """A set of identical pre-booted VMs; see the module docstring for the rules it keeps."""

    def __init__(self, spec: VmSpec, settings: PoolSettings) -> None:
        self.spec = spec
        self.settings = settings
        self._members: dict[str, _Member] = {}
        self._idle: deque[_Member] = deque()
        self._waiters: deque[asyncio.Future[_Member]] = deque()
        self._tasks: set[asyncio.Task[object]] = set()
        self._listeners: list[StatsListener] = []
        self._changed = Broadcast()
        self._boot_times: deque[float] = deque(maxlen=_BOOT_SAMPLES)
        self._counts = dict.fromkeys(("created", "released", "evicted", "failed", "misses", "fallbacks"), 0)
        self._clones: CloneSource | None = None
        self._snapshot_off: str | None = None  # why a snapshot pool boots cold from the start
        self._failures_in_row = 0
        self._retry_at = 0.0
        self._retry_timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._filled = False
        self._close_done = asyncio.Event()
        self._seq = itertools.count(1)
        self.last_error: str | None = None
        self._health_task: asyncio.Task[None] | None = None

    @classmethod
    def launch(cls, spec: VmSpec, settings: PoolSettings) -> VmPool:
        """Create the pool and start its first boots; returns at once (see :meth:`wait_filled`)."""
        spec.check()
        refuse_shared_write_disks(spec, settings.name)
        pool = cls(spec, settings)
        if settings.snapshot:
            pool._snapshot_off = snapshot_unsupported(spec)
            if pool._snapshot_off is None:
                pool._clones = CloneSource(
                    spec,
                    name=settings.name,
                    prestart=settings.prestart,
                    boot_timeout=settings.boot_timeout,
                    on_change=pool._clones_changed,
                )
        if spec.boot.ready_marker is not None:
            pool._health_task = asyncio.create_task(pool._health_loop(), name=f"pool-{settings.name}-health")
        pool._replenish()
        return pool

    @classmethod
    async def start(cls, spec: VmSpec, settings: PoolSettings) -> VmPool:
        """Create the pool and return once its first ``size`` VMs are idle (closed on failure)."""
        pool = cls.launch(spec, settings)
        try:
            await pool.wait_filled()
        except BaseException:
            await pool.close()
            raise
        return pool

    async def wait_filled(self) -> None:
        """Wait until the pool has had ``size`` idle VMs at once (PoolBootError if boots keep failing).

        VMs reserved while the pool filled count too once nothing boots any more: a pool whose
        ``max_size`` leaves no room for their replacements is as full as it can be.
        """
        await self._wait_until(lambda: self._filled or len(self._idle) >= self.size or self._full_with_reserved())
        self._filled = True

    def _full_with_reserved(self) -> bool:
        states = [m.state for m in self._members.values()]
        return "booting" not in states and len(self._idle) + states.count("reserved") >= self.size

    # ----- public state ----------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def size(self) -> int:
        return self.settings.size

    @property
    def max_size(self) -> int:
        return self.settings.max_size

    @property
    def closed(self) -> bool:
        return self._closed

    async def available_count(self) -> int:
        """How many VMs are idle and ready to hand out right now."""
        return len(self._idle)

    def stats(self) -> PoolStats:
        states = [m.state for m in self._members.values()]
        times = list(self._boot_times)
        return PoolStats(
            name=self.name,
            size=self.size,
            max_size=self.max_size,
            idle=len(self._idle),
            booting=states.count("booting"),
            reserved=states.count("reserved"),
            stopping=states.count("stopping"),
            boot_p50_s=percentile(times, 0.50),
            boot_p95_s=percentile(times, 0.95),
            last_error=self.last_error,
            snapshot=self._snapshot_state(),
            snapshot_error=self._clones.error if self._clones is not None else self._snapshot_off,
            waiting_clones=self._clones.waiting if self._clones is not None else 0,
            **self._counts,
        )

    def _clones_changed(self) -> None:
        if not self._closed:
            self._notify()

    def _snapshot_state(self) -> str:
        if self._clones is not None:
            return self._clones.state
        return "failed" if self._snapshot_off is not None else "off"

    def members(self) -> list[PoolMember]:
        now = time.monotonic()
        return [
            PoolMember(m.id, m.state, m.handle.pid if m.handle else None, round(now - m.started, 3))
            for m in self._members.values()
        ]

    def handle(self, vm_id: str) -> VmHandle:
        """The VM ``vm_id`` of this pool, to watch its console (KeyError if it has no machine)."""
        member = self._members.get(vm_id)
        if member is None or member.handle is None:
            raise KeyError(f"pool {self.name!r} has no running VM {vm_id!r}")
        return member.handle

    def resize(self, size: int, max_size: int | None = None) -> None:
        """Keep ``size`` VMs warm from now on (and allow ``max_size`` alive); reserved VMs stay.

        Growing boots the difference in the background; shrinking kills idle VMs beyond the new
        size at once. A ``max_size`` below what is alive only stops new boots until VMs go.
        """
        self._check_open()
        max_size = self.max_size if max_size is None else max_size
        if not pool_sizes_fit(size, max_size):
            raise ConfigError(f"pool {self.name!r}: size {size} and max_size {max_size} need 0 <= size <= max_size, max_size >= 1")
        self.settings = replace(self.settings, size=size, max_size=max_size)
        self._filled = False
        while len(self._idle) > size:
            self._evict_surplus(self._idle.pop())
        self._replenish()
        self._notify()

    def _evict_surplus(self, member: _Member) -> None:
        self._spawn(self._kill_member(member, released=False), f"pool-{member.id}-shrink")

    def set_policy(self, policy: NetworkPolicy) -> None:
        """Apply ``policy`` to every VM of the pool now (new flows) and to every VM booted later."""
        if not isinstance(self.spec.network, UserNatConfig):
            raise ConfigError(f"pool {self.name!r} has no network: its profile needs network mode user_nat")
        self.spec = replace(self.spec, network=replace(self.spec.network, policy=policy))
        if self._clones is not None:
            self._clones.update_spec(self.spec)
        for member in self._members.values():
            if member.handle is not None and member.handle.has_network:
                member.handle.set_policy(policy)

    def add_listener(self, listener: StatsListener) -> None:
        """Call ``listener(stats)`` after every change (from the event loop; keep it quick)."""
        self._listeners.append(listener)

    def remove_listener(self, listener: StatsListener) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    # ----- reserve ---------------------------------------------------------------------------

    def try_reserve(self) -> PooledVm:
        """An idle VM at once, or PoolEmpty."""
        self._check_open()
        member = self._take_idle()
        if member is None:
            self._counts["misses"] += 1
            self._notify()
            raise PoolEmpty(f"pool {self.name!r} has no idle VM ({self._describe_load()})")
        return self._hand_out(member)

    async def reserve(self, timeout: float | None = None) -> PooledVm:
        """An idle VM, waiting (in arrival order) up to ``timeout`` seconds for one."""
        self._check_open()
        if not self._waiters:  # never jump the queue
            while (member := self._take_idle()) is not None:
                if time.monotonic() - member.last_answer <= self.settings.health_interval:
                    return self._hand_out(member)
                if await self._probe(member):
                    return self._hand_out(member)
                self._evict(member, "its console did not answer")
        self._counts["misses"] += 1
        waiter: asyncio.Future[_Member] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._replenish()
        self._notify()
        try:
            async with asyncio.timeout(timeout):
                member = await waiter
        except BaseException as err:
            self._forget_waiter(waiter)
            if isinstance(err, TimeoutError):
                raise PoolTimeout(
                    f"no VM of pool {self.name!r} became free within {timeout}s ({self._describe_load()})"
                ) from None
            raise
        return self._hand_out(member)

    def _forget_waiter(self, waiter: asyncio.Future[_Member]) -> None:
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)
        # Cancelled (or timed out) after a VM was already assigned: give it to the next in line.
        if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
            member = waiter.result()
            if member.pooled is None and member.state == "reserved":
                member.state = "idle"
                self._offer(member)
        elif not waiter.done():
            waiter.cancel()

    def _take_idle(self) -> _Member | None:
        """Pop an idle VM whose machine runs (evicting dead ones); prefer ones not being probed."""
        while self._idle:
            member = next((m for m in self._idle if not m.probing), self._idle[0])
            self._idle.remove(member)
            assert member.handle is not None
            if member.handle.machine_alive():
                member.state = "reserved"
                return member
            self._evict(member, f"its machine process died ({member.handle.status()})", idle_popped=True)
        return None

    def _hand_out(self, member: _Member) -> PooledVm:
        member.state = "reserved"
        assert member.handle is not None  # only booted members are idle, so reservable
        pooled = PooledVm(member.id, member.handle, pool_name=self.name, release=self.release)
        member.pooled = pooled
        # A holder that drops the object without release() must not pin a slot forever.
        weakref.finalize(pooled, self._abandoned, member)
        self._replenish()
        self._notify()
        return pooled

    def _abandoned(self, member: _Member) -> None:
        if member.state == "reserved" and not member.release_requested:
            with contextlib.suppress(RuntimeError):  # the loop may be gone at interpreter exit
                self._spawn(self._kill_member(member, released=True), f"pool-{member.id}-abandoned")

    # ----- release ---------------------------------------------------------------------------

    async def release(self, vm_id: str) -> None:
        """Kill the reserved VM ``vm_id``; a replacement boots in the background."""
        member = self._members.get(vm_id)
        if member is None:
            return
        if member.state == "reserved" and not member.release_requested:
            await self._kill_member(member, released=True)
        await member.exited.wait()

    async def _kill_member(self, member: _Member, *, released: bool) -> None:
        member.release_requested = True
        member.state = "stopping"
        if released:
            self._counts["released"] += 1
        self._notify()
        if member.handle is not None:
            await member.handle.kill()
        await member.exited.wait()

    # ----- close -----------------------------------------------------------------------------

    async def close(self) -> None:
        """Kill every VM, fail every waiter with PoolClosed, and wait until all is released."""
        if self._closed:
            await self._close_done.wait()
            return
        self._closed = True
        if self._retry_timer is not None:
            self._retry_timer.cancel()
        if self._health_task is not None:
            self._health_task.cancel()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(PoolClosed(f"pool {self.name!r} was closed"))
        for member in list(self._members.values()):
            if member.pooled is not None and member.state == "reserved":
                member.pooled.lost = "the pool was closed"
            member.release_requested = True
            if member.handle is not None:
                self._spawn(member.handle.kill(), f"pool-{member.id}-close")
        for task in list(self._tasks):
            if task.get_name().endswith("-boot"):
                task.cancel()
        if self._clones is not None:
            await self._clones.close()  # first: boots waiting for the template give up at once
        while self._tasks:
            await asyncio.wait(list(self._tasks))
        if self._health_task is not None:
            await asyncio.wait([self._health_task])
        self._notify()
        self._close_done.set()

    async def __aenter__(self) -> VmPool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ----- booting ---------------------------------------------------------------------------

    def _replenish(self) -> None:
        """Start as many boots as the pool needs and its bound allows."""
        if self._closed:
            return
        now = time.monotonic()
        if now < self._retry_at:
            if self._retry_timer is None:
                loop = asyncio.get_running_loop()
                self._retry_timer = loop.call_at(loop.time() + self._retry_at - now, self._retry)
            return
        booting = sum(1 for m in self._members.values() if m.state == "booting")
        wanted = self.size + self._live_waiters() - len(self._idle) - booting
        room = self.max_size - len(self._members)
        count = min(wanted, room)
        if self._failures_in_row:
            # After a failure, one probe boot at a time: a broken kernel must not eat the host.
            count = min(count, 1 - booting)
        for _ in range(max(0, count)):
            member = _Member(f"{self.name}-{next(self._seq)}", "booting", time.monotonic())
            self._members[member.id] = member
            self._spawn(self._boot(member), f"pool-{member.id}-boot")

    def _retry(self) -> None:
        self._retry_timer = None
        self._replenish()

    def _live_waiters(self) -> int:
        return sum(1 for w in self._waiters if not w.done())

    async def _start_vm(self, member: _Member) -> VmHandle:
        """A clone when the pool has a template for it, else (and counted) a cold boot."""
        if self._clones is not None:
            clone = await self._clones.start(self.spec, clone_hostname(member.id))
            if clone is not None:
                return clone
            self._check_open()  # closed while waiting for the template: boot nothing
            self._counts["fallbacks"] += 1
        elif self._snapshot_off is not None:
            self._counts["fallbacks"] += 1
        if isinstance(self.spec.network, UserNatConfig) and self.spec.network.cluster is not None:
            # Cluster members find each other by host name: each needs its own, as clones get.
            return await VmHandle.start(replace(self.spec, hostname=clone_hostname(member.id)))
        return await VmHandle.start(self.spec)

    async def _boot(self, member: _Member) -> None:
        started = asyncio.ensure_future(self._start_vm(member))
        try:
            member.handle = await asyncio.shield(started)
        except asyncio.CancelledError:
            # Let the launch finish so the machine it spawned is killed, not orphaned.
            with contextlib.suppress(BaseException):
                await (await started).kill()
            self._forget(member)
            raise
        except EngineError as err:
            self._boot_failed(member, err)
            return
        if isinstance(self.spec.network, UserNatConfig) and member.handle.has_network:
            member.handle.set_policy(self.spec.network.policy)  # set_policy may have come mid-launch
        self._spawn(self._watch(member), f"pool-{member.id}-watch")
        try:
            await member.handle.wait_ready(self.settings.boot_timeout)
        except EngineError as err:
            await member.handle.kill()
            self._boot_failed(member, err)
            return
        if member.state != "booting":  # the pool closed meanwhile
            return
        self._boot_times.append(time.monotonic() - member.started)
        self._counts["created"] += 1
        self._failures_in_row = 0
        self._retry_at = 0.0
        member.last_answer = time.monotonic()  # it just printed its ready marker
        member.state = "idle"
        self._offer(member)

    def _boot_failed(self, member: _Member, err: EngineError) -> None:
        member.state = "stopping"
        self._counts["failed"] += 1
        self._failures_in_row += 1
        self.last_error = f"boot of {member.id} failed: {err}"
        log.warning("pool %s: %s", self.name, self.last_error)
        delay = min(self.settings.backoff_max, self.settings.backoff_base * 2 ** (self._failures_in_row - 1))
        self._retry_at = time.monotonic() + delay
        if self._failures_in_row >= self.settings.max_boot_failures:
            error = PoolBootError(
                f"pool {self.name!r}: {self._failures_in_row} boots failed in a row; last: {err}"
            )
            for waiter in self._waiters:
                if not waiter.done():
                    waiter.set_exception(error)
        if member.handle is None:
            self._forget(member)
        self._notify()

    def _offer(self, member: _Member) -> None:
        """Give a ready VM to the first live waiter, or put it with the idle ones."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                member.state = "reserved"
                waiter.set_result(member)
                self._notify()
                return
        self._idle.append(member)
        self._notify()

    # ----- watching and health ---------------------------------------------------------------

    async def _watch(self, member: _Member) -> None:
        """Wait for the member's machine to exit, then account for it and refill the pool."""
        assert member.handle is not None
        status = await member.handle.wait()
        if member in self._idle:
            self._idle.remove(member)
        if member.state == "idle":
            self._counts["evicted"] += 1
            self.last_error = f"idle VM {member.id} died: {status}"
        elif member.state == "reserved" and not member.release_requested:
            # Ended under its holder: stopped on request counts as a release, anything else failed.
            if isinstance(status, Failed):
                self._counts["failed"] += 1
                self.last_error = f"reserved VM {member.id} died: {status}"
                if member.pooled is not None:
                    member.pooled.lost = str(status)
            else:
                self._counts["released"] += 1
        self._forget(member)
        self._notify()

    def _forget(self, member: _Member) -> None:
        member.state = "stopping"
        self._members.pop(member.id, None)
        member.exited.set()
        self._replenish()

    def _evict(self, member: _Member, reason: str, *, idle_popped: bool = False) -> None:
        if not idle_popped and member in self._idle:
            self._idle.remove(member)
        self._counts["evicted"] += 1
        self.last_error = f"evicted idle VM {member.id}: {reason}"
        log.warning("pool %s: %s", self.name, self.last_error)
        self._spawn(self._kill_member(member, released=False), f"pool-{member.id}-evict")

    async def _probe(self, member: _Member) -> bool:
        assert member.handle is not None
        member.probing = True
        try:
            answered = await member.handle.probe_console(self.settings.probe_timeout)
        finally:
            member.probing = False
        if answered:
            member.last_answer = time.monotonic()
        return answered and member.handle.machine_alive()

    async def _health_loop(self) -> None:
        interval = self.settings.health_interval
        while True:
            await asyncio.sleep(interval / 2)
            stale = [m for m in self._idle if time.monotonic() - m.last_answer > interval / 2 and not m.probing]
            results = await asyncio.gather(*(self._probe(m) for m in stale))
            for member, healthy in zip(stale, results):
                if not healthy and member in self._idle:
                    self._evict(member, "its console did not answer a health probe")

    # ----- helpers ---------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, object], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[object]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("pool %s: task %s failed", self.name, task.get_name(), exc_info=task.exception())

    def _check_open(self) -> None:
        if self._closed:
            raise PoolClosed(f"pool {self.name!r} is closed")

    def _describe_load(self) -> str:
        s = self.stats()
        return f"{s.booting} booting, {s.reserved} reserved, {s.stopping} stopping, max_size {s.max_size}"

    async def _wait_until(self, ready: Callable[[], bool]) -> None:
        while not ready():
            self._check_open()
            if self._failures_in_row >= self.settings.max_boot_failures:
                raise PoolBootError(
                    f"pool {self.name!r} could not boot its VMs: {self._failures_in_row} boots failed "
                    f"in a row; last error: {self.last_error}"
                )
            await self._changed.wait()

    def _notify(self) -> None:
        self._changed.notify()
        if not self._listeners:
            return
        stats = self.stats()
        for listener in list(self._listeners):
            try:
                listener(stats)
            except Exception:
                log.exception("pool %s: stats listener failed", self.name)
