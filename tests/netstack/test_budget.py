"""The host-socket budget's accounting (sans-IO): shares, refusals near the limit, release once."""
from __future__ import annotations

import logging
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from engine.netstack.gateway import budget as budget_module
from engine.netstack.gateway.budget import FdBudget, FlowAccount, Lease, Refusal


def take(account: FlowAccount, count: int) -> list[Lease]:
    """``count`` leases, failing the test on a refusal."""
    leases: list[Lease] = []
    for _ in range(count):
        lease = account.acquire("tcp")
        assert isinstance(lease, Lease), lease
        leases.append(lease)
    return leases


def take_all(account: FlowAccount) -> tuple[list[Lease], Refusal]:
    """Leases until the first refusal."""
    leases: list[Lease] = []
    while True:
        lease = account.acquire("tcp")
        if isinstance(lease, Refusal):
            return leases, lease
        leases.append(lease)
        assert len(leases) < 10_000


def small() -> FdBudget:
    return FdBudget(limit=200, fixed_reserve=40, per_vm_reserve=10)


def test_capacity_leaves_the_reserves_and_shares_keep_room_for_one_more_vm() -> None:
    budget = small()
    assert budget.capacity == 160 and budget.share == 150  # the first VM's: 200 - 40 - 10
    a = budget.join("a")
    assert budget.capacity == 150 and budget.share == 70
    budget.join("b")
    assert budget.capacity == 140 and budget.share == 43  # shrinks as VMs are added
    a.close()
    assert budget.capacity == 150 and budget.share == 70


def test_default_reserve_is_an_eighth_of_the_limit_or_64() -> None:
    assert FdBudget(limit=20000).fixed_reserve == 2500
    assert FdBudget(limit=256).fixed_reserve == 64


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"limit": 0}, "limit"),
    ({"limit": 100, "fixed_reserve": -1}, "fixed_reserve"),
    ({"limit": 100, "per_vm_reserve": -5}, "per_vm_reserve"),
])
def test_bad_sizes_are_refused_naming_the_field(kwargs: dict[str, int], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        FdBudget(**kwargs)


def test_a_lone_vm_borrows_but_keeps_a_newcomers_share() -> None:
    budget = small()
    a = budget.join("a")
    leases, refusal = take_all(a)
    assert len(leases) == 150 - 70  # the capacity less the share a next VM would get
    assert "over its share" in refusal.reason and "holds 80" in refusal.reason
    assert a.refused == 1 and a.held == 80 and budget.held == 80


def test_near_the_limit_the_vm_with_most_flows_is_refused_and_a_new_vm_gets_its_share() -> None:
    budget = small()
    hog = budget.join("hog")
    hogged, _ = take_all(hog)
    newcomer = budget.join("new")
    assert hog.held == 80  # its flows are not killed when its share shrinks
    take(newcomer, budget.share)  # all of its share, at once
    refusal = hog.acquire("tcp")
    assert isinstance(refusal, Refusal) and "holds 80" in refusal.reason  # the one holding the most
    # A second newcomer in a row shares what is left; the hog stays refused, and what it gives
    # back goes to the VMs under their share first.
    third = budget.join("third")
    got, _ = take_all(third)
    assert got and third.held < budget.share
    assert isinstance(hog.acquire("tcp"), Refusal)
    for lease in hogged[:25]:
        lease.release()
    take(third, budget.share - third.held)
    assert isinstance(hog.acquire("tcp"), Refusal)  # 55 held, share 30: still over
    assert isinstance(newcomer.acquire("tcp"), Refusal)  # 43: over the share of three VMs too
    for lease in hogged[25 : 80 - budget.share + 1]:
        lease.release()
    assert isinstance(hog.acquire("tcp"), Lease)  # under its share again: served again


def test_a_vm_under_its_share_is_refused_only_when_the_process_is_out_of_capacity() -> None:
    budget = small()
    hog = budget.join("hog")
    take_all(hog)  # 80
    others = [budget.join(f"vm{i}") for i in range(7)]  # capacity 200 - 40 - 80 = 80: all held by hog
    assert budget.capacity == 80 and budget.held == 80
    refusal = others[0].acquire("udp")
    assert isinstance(refusal, Refusal) and "exhausted" in refusal.reason and "80 of 80" in refusal.reason


def test_two_busy_vms_each_get_their_share() -> None:
    budget = small()
    a, b = budget.join("a"), budget.join("b")
    a_leases, _ = take_all(a)
    b_leases, _ = take_all(b)
    assert len(a_leases) >= budget.share and len(b_leases) >= budget.share
    assert budget.held <= budget.capacity - budget.share  # still room for a third VM's share


def test_release_counts_once_whatever_calls_it() -> None:
    budget = small()
    a = budget.join("a")
    lease, other = take(a, 2)
    lease.release()
    lease.release()  # an error path and connection_lost both releasing
    assert a.held == 1 and budget.held == 1
    other.release()
    assert a.held == 0 and budget.held == 0


def test_a_closed_account_leaves_the_budget_and_late_releases_do_not_count_twice() -> None:
    budget = small()
    a, b = budget.join("a"), budget.join("b")
    leases = take(a, 10)
    take(b, 5)
    a.close()
    a.close()
    assert budget.held == 5 and budget.accounts == [b]
    for lease in leases:  # the sockets' connection_lost, a loop turn after the gateway closed
        lease.release()
    assert budget.held == 5 and a.held == 0
    refusal = a.acquire("tcp")
    assert isinstance(refusal, Refusal) and "closed" in refusal.reason


def test_raise_fd_limit_raises_the_soft_limit_to_the_hard_one() -> None:
    # In a child process: it may lower its own limits to known values (soft 256, hard 512), a
    # test of the real system calls that leaves this process's limits alone.
    script = (
        "import resource\n"
        "from engine.netstack.gateway import budget\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, 512))\n"
        "print(budget.raise_fd_limit(), *resource.getrlimit(resource.RLIMIT_NOFILE))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["512", "512", "512"]


def test_a_limit_that_stays_low_is_logged(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(budget_module.resource, "getrlimit", lambda which: (1024, 1024))
    with caplog.at_level(logging.WARNING, logger=budget_module.__name__):
        assert budget_module.raise_fd_limit() == 1024
    assert "stays at 1024" in caplog.text


def test_the_process_budget_is_made_once_and_can_be_replaced() -> None:
    previous = budget_module.install_process_budget(None)
    try:
        first = budget_module.process_budget()
        assert budget_module.process_budget() is first
        assert first.limit == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        mine = FdBudget(limit=100)
        assert budget_module.install_process_budget(mine) is first
        assert budget_module.process_budget() is mine
    finally:
        budget_module.install_process_budget(previous)
