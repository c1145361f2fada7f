"""Host sockets as a budget: the process's file descriptors, shared fairly by every gateway in it.

Each flow a guest opens costs the process one file descriptor (a TCP connect, a UDP socket, a
DNS-over-TCP question upstream). Without a shared bound one guest could take them all: the other
VMs' new connections fail and a new VM cannot start (``EMFILE``). So every gateway joins one
:class:`FdBudget` per process (:func:`process_budget`) and takes a :class:`Lease` before it
opens a host socket for a flow, and gives it back exactly once when that socket closes.

The choices, each the one a security-minded user expects:

- **The soft ``RLIMIT_NOFILE`` is raised to the hard limit** once, at first use; if it stays
  under ``LOW_LIMIT_WARNING`` a warning says so (the budget is then small, not wrong).
- **Headroom that flows never touch**: a fixed reserve (``limit // 8``, at least
  ``FIXED_RESERVE_MIN``) for the process itself (the service, consoles, logs, a new VM's start)
  plus ``PER_VM_RESERVE`` per live gateway (its QEMU stream socket, QMP, console, DNS socket,
  forward listeners). What is left is the flows' *capacity*.
- **Each VM's share** is what it is sure to get: the capacity divided as if one more VM were
  live (so a VM that starts next gets its share at once, with nothing to take back). It shrinks
  as VMs are added and grows as they leave; flows already open are never killed when it shrinks.
- **A VM under its share always gets a socket** while the process has any capacity left.
- **A VM at or over its share may borrow** idle capacity, but never what the others have not
  used of their shares, nor the share a newly started VM would get. So when the process nears
  its limit, the VMs over their share (the one holding the most flows first: it is always over
  its share when any VM is) are refused new flows, and no other VM, nor a new one, is hurt.
  The room kept is for one newcomer at a time: a second VM started before the over-share VMs
  gave sockets back gets what is left, and what they give back goes to the VMs under their
  share first (the over-share ones stay refused until they are under theirs).
- **A refusal is counted and explained** (:class:`Refusal`'s reason goes to the VM's flow log as
  a deny event); the relays answer it as they answer a failed connect.
- Sockets a host client opens (port-forward accepts) are not the guest's doing and are not
  counted; the per-VM reserve covers the listeners.

The accounting is sans-IO (plain counters, no sockets); only :func:`raise_fd_limit` and
:func:`process_budget` touch the process.
"""
from __future__ import annotations

import logging
import resource
from dataclasses import dataclass

log = logging.getLogger(__name__)

FIXED_RESERVE_MIN = 64
PER_VM_RESERVE = 16
LOW_LIMIT_WARNING = 4096


@dataclass(frozen=True)
class Refusal:
    """Why a VM may not open another host socket now."""

    reason: str


class Lease:
    """One host socket's place in the budget; :meth:`release` gives it back, once."""

    def __init__(self, account: FlowAccount, kind: str) -> None:
        self.account = account
        self.kind = kind
        self.released = False

    def release(self) -> None:
        """Give the place back. Safe to call again: only the first call counts, so every path
        that closes a socket (error, timeout, normal close, gateway close) may call it."""
        if self.released:
            return
        self.released = True
        self.account._released()


class FlowAccount:
    """One gateway's part of an :class:`FdBudget`: the sockets it holds and its refusals."""

    def __init__(self, budget: FdBudget, name: str) -> None:
        self.budget = budget
        self.name = name
        self.held = 0
        self.refused = 0
        self.closed = False

    def acquire(self, kind: str) -> Lease | Refusal:
        """A lease for one more host socket of ``kind`` ("tcp", "udp", "dns-tcp"), or why not."""
        if self.closed:
            return Refusal(f"{self.name}: the gateway is closed")
        refusal = self.budget._check(self)
        if refusal is not None:
            self.refused += 1
            return refusal
        self.held += 1
        self.budget.held += 1
        return Lease(self, kind)

    def close(self) -> None:
        """Leave the budget (the gateway closed): its sockets stop counting against the process
        now; leases released later change only this account's own count."""
        if not self.closed:
            self.closed = True
            self.budget._leave(self)

    def _released(self) -> None:
        self.held -= 1
        if not self.closed:
            self.budget.held -= 1


class FdBudget:
    """The process's file descriptors as flow capacity, shared by the gateways that joined it."""

    def __init__(self, limit: int, fixed_reserve: int | None = None, per_vm_reserve: int = PER_VM_RESERVE) -> None:
        if limit <= 0:
            raise ValueError(f"FdBudget: limit must be positive, got {limit}")
        if fixed_reserve is None:
            fixed_reserve = max(FIXED_RESERVE_MIN, limit // 8)
        if fixed_reserve < 0 or per_vm_reserve < 0:
            raise ValueError(f"FdBudget: fixed_reserve ({fixed_reserve}) and per_vm_reserve "
                             f"({per_vm_reserve}) must not be negative")
        self.limit = limit
        self.fixed_reserve = fixed_reserve
        self.per_vm_reserve = per_vm_reserve
        self.held = 0
        self.accounts: list[FlowAccount] = []

    def join(self, name: str) -> FlowAccount:
        """A new gateway's account; the other VMs' shares shrink from now on."""
        account = FlowAccount(self, name)
        self.accounts.append(account)
        return account

    def _leave(self, account: FlowAccount) -> None:
        self.accounts.remove(account)
        self.held -= account.held

    def capacity_for(self, vms: int) -> int:
        """Sockets flows may hold in all when ``vms`` gateways are live."""
        return max(0, self.limit - self.fixed_reserve - self.per_vm_reserve * vms)

    @property
    def capacity(self) -> int:
        return self.capacity_for(len(self.accounts))

    @property
    def share(self) -> int:
        """What each live VM is sure to get, with the same kept for one VM more."""
        vms = len(self.accounts) + 1
        return self.capacity_for(vms) // vms

    def kept_for_others(self, account: FlowAccount) -> int:
        """What ``account`` may not borrow: the others' unused shares and a newcomer's share."""
        share = self.share
        unused = sum(max(0, share - other.held) for other in self.accounts if other is not account)
        return unused + share

    def _check(self, account: FlowAccount) -> Refusal | None:
        capacity = self.capacity
        if self.held >= capacity:
            return Refusal(f"process fd budget exhausted ({self.held} of {capacity} host sockets in use)")
        if account.held < self.share:
            return None
        if capacity - self.held - 1 < self.kept_for_others(account):
            return Refusal(f"over its share of host sockets while the process nears its fd limit "
                           f"(holds {account.held}, share {self.share} of {capacity})")
        return None


def raise_fd_limit() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; the soft limit in force after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as err:
            log.warning("could not raise the file descriptor limit from %d to %d: %s", soft, hard, err)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20  # Linux caps descriptors at fs.nr_open anyway; a number keeps the sums finite
    if soft < LOW_LIMIT_WARNING:
        log.warning("the file descriptor limit stays at %d (hard limit %s): the VMs of this process "
                    "share few host sockets; raise it with 'ulimit -Hn'", soft, hard)
    return soft


_process_budget: FdBudget | None = None


def process_budget() -> FdBudget:
    """The budget every gateway of this process joins (made, and the limit raised, on first use)."""
    global _process_budget
    if _process_budget is None:
        _process_budget = FdBudget(raise_fd_limit())
    return _process_budget


def install_process_budget(budget: FdBudget | None) -> FdBudget | None:
    """Replace the process's budget (a smaller one for a test, or None to make it anew on next
    use); returns the one it replaced. Gateways already started keep the budget they joined."""
    global _process_budget
    previous, _process_budget = _process_budget, budget
    return previous
