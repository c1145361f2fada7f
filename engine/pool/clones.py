"""CloneSource: where a snapshot pool's VMs come from — one template, many clones.

The first VM a pool asks for waits for the template (found in the cache, or booted once and
saved); every later one is a restore into a QEMU process started ahead of time with
``-incoming defer`` (``prestart`` of them wait at any moment), so a refill costs the restore
and the clone's identity fix-up, not a boot.

Whenever a clone cannot be had, :meth:`CloneSource.start` returns None and the pool boots that
VM cold (and counts a fallback); ``error`` says why. A template that cannot be built turns
snapshots off for the pool; a restore that fails drops the template and builds it once more
(a second failure turns snapshots off); the VM that met the failure boots cold. A waiting
process killed from outside is only replaced.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any, Literal

from engine.errors import EngineError
from engine.netstack.config import UserNatConfig
from engine.snapshot.clone import WaitingClone
from engine.snapshot.snapshot import Snapshot
from engine.snapshot.template import template_for
from engine.snapshot.store import remove_template
from engine.microvm.handle import VmHandle
from engine.microvm.spec import VmSpec

log = logging.getLogger(__name__)

SnapshotState = Literal["off", "preparing", "ready", "failed"]
_MAX_TEMPLATE_FAILURES = 2


class CloneSource:
    """A pool's template and its waiting clone processes; see the module docstring."""

    def __init__(
        self,
        spec: VmSpec,
        *,
        name: str,
        prestart: int,
        boot_timeout: float,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.name = name
        self._on_change = on_change  # the pool's stats listeners see state and waiting counts
        self.prestart = max(0, prestart)
        self.boot_timeout = boot_timeout
        self.state: SnapshotState = "preparing"
        self.error: str | None = None
        self.notes: list[str] = []  # what happened to templates (stale ones rebuilt, ...)
        self._spec = spec
        self._template: Snapshot | None = None
        self._prepare_task: asyncio.Task[Snapshot | None] | None = None
        self._waiting: deque[WaitingClone] = deque()
        self._launching = 0
        self._failures = 0
        self._closed = False
        self._tasks: set[asyncio.Task[object]] = set()

    # ----- the template ----------------------------------------------------------------------

    async def template(self) -> Snapshot | None:
        """The template, found or built on first use (None once snapshots are off)."""
        if self._template is not None or self.state == "failed" or self._closed:
            return self._template
        if self._prepare_task is None:
            self.state = "preparing"
            self._prepare_task = asyncio.create_task(self._prepare(), name=f"pool-{self.name}-template")
        return await asyncio.shield(self._prepare_task)

    async def _prepare(self) -> Snapshot | None:
        # The template's gateway must not hold the pool's fixed forward ports: clones open them.
        spec = self._spec
        if isinstance(spec.network, UserNatConfig):
            spec = replace(spec, network=replace(spec.network, forwards=()))
        try:
            found = await template_for(spec, boot_timeout=self.boot_timeout, notes=self.notes)
        except EngineError as err:
            self._turn_off(f"no template: {err}")
            return None
        finally:
            self._prepare_task = None
        self._template = found
        self.state = "ready"
        self._top_up()
        self._on_change()
        return found

    def _turn_off(self, reason: str) -> None:
        self.state = "failed"
        self.error = reason
        log.warning("pool %s: snapshots off, booting cold: %s", self.name, reason)
        self._on_change()

    # ----- clones ----------------------------------------------------------------------------

    async def start(self, spec: VmSpec, hostname: str) -> VmHandle | None:
        """A running, identity-fixed clone of ``spec``, or None: boot this one cold."""
        for _attempt in range(3):
            template = await self.template()
            if template is None:
                return None
            waiting = self._take_waiting(template)
            try:
                if waiting is None:
                    waiting = await WaitingClone.launch(template, spec)
                try:
                    return await waiting.restore(spec, hostname=hostname)
                finally:
                    # Only now: a QEMU starting beside the restore would slow it on a small host.
                    self._top_up()
            except asyncio.CancelledError:
                if waiting is not None:
                    await waiting.close()
                raise
            except EngineError as err:
                if waiting is not None and waiting.lost:
                    continue  # the process is gone, not the template: take another
                self._restore_failed(template, err)
                return None  # this VM boots cold; the next one waits for a rebuilt template
        return None

    def _take_waiting(self, template: Snapshot) -> WaitingClone | None:
        while self._waiting:
            waiting = self._waiting.popleft()
            self._on_change()
            if waiting.snapshot is template and waiting.alive():
                return waiting
            self._spawn(waiting.close(), "discard")
        return None

    def _restore_failed(self, template: Snapshot, err: EngineError) -> None:
        self._failures += 1
        self.error = f"a clone could not be restored: {err}"
        log.warning("pool %s: %s", self.name, self.error)
        if self._template is template:
            self._template = None
            self._drain_waiting()
            remove_template(template.directory)
        if self._failures >= _MAX_TEMPLATE_FAILURES:
            self._turn_off(f"restoring clones failed {self._failures} times; last: {err}")
        else:
            self.state = "preparing"  # the next start() builds the template anew
            self._on_change()

    def _top_up(self) -> None:
        template = self._template
        if template is None or self._closed:
            return
        while len(self._waiting) + self._launching < self.prestart:
            self._launching += 1
            self._spawn(self._prestart(template), "prestart")

    async def _prestart(self, template: Snapshot) -> None:
        try:
            waiting = await WaitingClone.launch(template, self._spec)
        except EngineError as err:
            log.warning("pool %s: a waiting clone failed to start: %s", self.name, err)
            return
        finally:
            self._launching -= 1
        if self._closed or self._template is not template:
            await waiting.close()
            return
        self._waiting.append(waiting)
        self._on_change()

    def update_spec(self, spec: VmSpec) -> None:
        """The pool's spec changed (a new policy): waiting clones take it at restore time."""
        self._spec = spec

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    # ----- closing ---------------------------------------------------------------------------

    def _drain_waiting(self) -> None:
        while self._waiting:
            self._spawn(self._waiting.popleft().close(), "discard")

    async def close(self) -> None:
        """Kill every waiting clone and stop building; the template stays cached on disk."""
        self._closed = True
        if self._prepare_task is not None:
            self._prepare_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._prepare_task
        self._drain_waiting()
        while self._tasks:
            await asyncio.wait(list(self._tasks))

    def _spawn(self, coro: Coroutine[Any, Any, object], what: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=f"pool-{self.name}-{what}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


__all__ = ["CloneSource", "SnapshotState"]
