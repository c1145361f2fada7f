"""The Hub: the engine-facing model every screen of the app reads and drives.

Screens never touch pools directly: they ask the hub for ``states()`` (one :class:`PoolState`
per profile), subscribe to change callbacks, and call its coroutines to start, stop, resize,
reserve and release. Two hubs implement :class:`Hub`: :class:`~capsatui.hub.local.LocalHub`
runs the pools in this process, on the app's own event loop;
:class:`~capsatui.hub.service.ServiceHub` shows the pools of a running ``capsa-tui serve``.
Reserved VMs are ``engine.ReservedVm`` and their consoles ``engine.ConsoleLike`` either way.
"""
from __future__ import annotations

import contextlib
import logging
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import engine

log = logging.getLogger(__name__)

HISTORY = 60  # samples kept per sparkline


@dataclass
class PoolState:
    """What the dashboard shows for one profile (or one profile file that failed to load)."""

    name: str
    profile: engine.Profile | None
    error: str | None  # profile validation error or pool start/boot error (last_error)
    running: bool
    stats: engine.PoolStats | None
    members: list[engine.PoolMember]
    history_idle: list[int]
    history_boot_s: list[float]
    starting: bool = False  # the pool is booting its first VMs (running is False until done)
    size: int | None = None  # the size it was started with (None when stopped)
    has_agent: bool | None = None  # its VMs run the guest agent (None: not known until it runs)


class Hub(ABC):
    """The interface screens use; see the module docstring."""

    mode: str = "local"
    accel: str = ""
    where: str = "this host"  # where the pools run, for titles and messages
    agent_gap: str | None = None  # why this hub cannot reach a VM's agent, if it cannot

    def __init__(self) -> None:
        self._subscribers: list[Callable[[], None]] = []

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` after every change (from the loop; screens debounce)."""
        self._subscribers.append(callback)

    def unsubscribe(self, callback: Callable[[], None]) -> None:
        """Stop calling ``callback`` (a screen that goes away)."""
        with contextlib.suppress(ValueError):
            self._subscribers.remove(callback)

    def _changed(self) -> None:
        for callback in list(self._subscribers):
            try:
                callback()
            except Exception:  # a broken screen must not break the pools
                log.exception("hub subscriber failed")

    @abstractmethod
    def states(self) -> list[PoolState]: ...
    @abstractmethod
    async def reload_profiles(self) -> None: ...
    @abstractmethod
    async def start_pool(self, name: str, size: int | None = None) -> None: ...
    @abstractmethod
    async def stop_pool(self, name: str) -> None: ...
    @abstractmethod
    async def resize(self, name: str, size: int) -> None: ...
    @abstractmethod
    async def reserve(self, name: str, timeout: float = 120) -> engine.ReservedVm: ...
    @abstractmethod
    async def release(self, vm: engine.ReservedVm) -> None: ...
    @abstractmethod
    def reserved(self) -> list[engine.ReservedVm]: ...
    @abstractmethod
    def profile(self, name: str) -> engine.Profile | None: ...
    @abstractmethod
    def policy(self, name: str) -> engine.NetworkPolicy | None: ...
    @abstractmethod
    async def set_policy(self, name: str, policy: engine.NetworkPolicy) -> None:
        """Apply ``policy`` to pool ``name`` (new flows follow it; a stopped pool starts with it)."""
    @abstractmethod
    async def save_policy(self, name: str, policy: engine.NetworkPolicy) -> engine.Profile:
        """Write ``policy`` into profile ``name``'s YAML (comments kept; a bundled profile becomes
        a user copy; a profile without a network gets ``user_nat``); the saved profile."""
    @abstractmethod
    def flow_events(self) -> AsyncIterator[engine.FlowEvent]: ...
    @abstractmethod
    def recent_events(self) -> list[engine.FlowEvent]: ...
    @abstractmethod
    async def close(self) -> None: ...

    async def reattach_console(self, vm: engine.ReservedVm) -> engine.ConsoleLike | None:
        """``vm``'s console again after the link to its serve dropped, once it is back; None when
        the VM is no longer ours (a VM of this process has no link: its console ends with it)."""
        return None


__all__ = ["HISTORY", "Hub", "PoolState"]
