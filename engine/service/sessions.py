"""Reservations held for a client whose connection dropped: the grace period of protocol v2.

An ssh link that drops mid-console must not cost the user the VM they were working in. When a
connection ends without the client's ``bye`` (the link broke, the client was killed), the VMs it
reserved are held under its session token for ``grace`` seconds instead of being released; a
client that reconnects in time with ``{"op": "hello", "resume": token}`` gets them back, and
after the grace period they are released as if the connection had closed. A connection that
says ``bye`` first, or a server with no grace period (the library default), releases at once.
The token is a 128-bit secret the server gave this client in its hello reply: the socket is the
user's own, and the token keeps one client of the user from picking up another's VMs by guessing.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass

from engine.logevent import log_event
from engine.pool.pooled import PooledVm

log = logging.getLogger(__name__)


def new_token() -> str:
    return secrets.token_urlsafe(16)


@dataclass(eq=False)
class _Held:
    vms: dict[str, PooledVm]
    timer: asyncio.TimerHandle | None = None


class HeldReservations:
    """Reserved VMs waiting for their client to come back, each session for ``grace`` seconds."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self._held: dict[str, _Held] = {}
        self._releases: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return sum(len(h.vms) for h in self._held.values())

    def hold(self, token: str, vms: dict[str, PooledVm]) -> None:
        """Keep ``vms`` for ``token``'s client until the grace period ends."""
        if not vms:
            return
        held = self._held.setdefault(token, _Held({}))
        held.vms.update(vms)
        if held.timer is not None:
            held.timer.cancel()
        held.timer = asyncio.get_running_loop().call_later(self.grace, self._expire, token)
        log_event(log, logging.INFO, "vms_held", vms=",".join(sorted(vms)), grace_s=self.grace)

    def take(self, token: str) -> dict[str, PooledVm]:
        """The VMs held for ``token`` (now the resuming connection's); {} when none or expired."""
        held = self._held.pop(token, None)
        if held is None:
            return {}
        if held.timer is not None:
            held.timer.cancel()
        return {vm_id: vm for vm_id, vm in held.vms.items() if not vm.released}

    def _expire(self, token: str) -> None:
        held = self._held.pop(token, None)
        if held is None:
            return
        log_event(log, logging.INFO, "grace_over", vms=",".join(sorted(held.vms)))
        task = asyncio.ensure_future(_release_all(list(held.vms.values())))
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def close(self) -> None:
        """Release every held VM now, and wait for releases already under way."""
        vms = [vm for held in self._held.values() for vm in held.vms.values()]
        for held in self._held.values():
            if held.timer is not None:
                held.timer.cancel()
        self._held.clear()
        await _release_all(vms)
        if self._releases:
            await asyncio.wait(list(self._releases))


async def _release_all(vms: list[PooledVm]) -> None:
    results = await asyncio.gather(*(vm.release() for vm in vms), return_exceptions=True)
    for vm, result in zip(vms, results):
        if isinstance(result, BaseException):
            log_event(log, logging.WARNING, "release_failed", vm=vm.id, error=repr(result))


__all__ = ["HeldReservations", "new_token"]
