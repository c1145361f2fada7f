"""ReservedVm: a VM reserved for the caller, as the app sees it, local or served.

:class:`~engine.pool.pooled.PooledVm` (a VM of a pool in this process) fits it, and so does a
VM the app reserved from ``capsa-tui serve`` (its hub's own class). The app types its list of
reserved VMs with this protocol instead of faking one class's attributes for the other.
"""
from __future__ import annotations

from typing import Protocol

from engine.agent.like import AgentLike
from engine.console.like import ConsoleLike
from engine.microvm.status import VmStatus


class ReservedVm(Protocol):
    """A reserved VM: who it is, how it is doing, its console (and agent), and giving it back."""

    @property
    def id(self) -> str: ...

    @property
    def pool_name(self) -> str:
        """The pool it was reserved from."""
        ...

    @property
    def pid(self) -> int | None:
        """The machine's process id (None when the serve did not say)."""
        ...

    @property
    def lost(self) -> str | None:
        """Why the VM is gone while still reserved (its machine died, the serve went away)."""
        ...

    @property
    def released(self) -> bool: ...

    def status(self) -> VmStatus | str:
        """Its lifecycle state, shown with ``str()``."""
        ...

    async def console(self) -> ConsoleLike: ...

    @property
    def has_agent(self) -> bool:
        """Whether its guest runs an agent this side can reach (a sandbox, here or served)."""
        ...

    async def set_console_size(self, cols: int, rows: int) -> bool:
        """Give the guest's serial console the user's window size (rows and columns, out of band,
        through the agent); False when the VM has no agent (the console's shell must be told)."""
        ...

    async def agent(self) -> AgentLike:
        """The guest agent's session; AgentUnavailable when ``has_agent`` is False (says why)."""
        ...

    async def release(self) -> None:
        """Give it back to its pool (it is killed; the pool boots a fresh one)."""
        ...


__all__ = ["ReservedVm"]
