"""A real guest tries to take the process's file descriptors; the budget holds (issue 13, hole 5).

The test process's soft fd limit is lowered to a small headroom above what it holds, and the
process budget is sized on that limit, so the attack is real: without the budget the guest's
connections would take every descriptor and the other gateway's sockets (and a new gateway's)
would fail with EMFILE. The hostile VM opens connections in a loop (busybox ``nc`` held open on a
fifo) to a loopback sink named by a static host; another gateway in the process, driven by
frames, still fetches a page, and a new gateway still starts and fetches. Every server is on
the loopback; nothing leaves the machine.
"""
from __future__ import annotations

import asyncio
import resource
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest

import engine
from engine.netstack.gateway.budget import FdBudget, install_process_budget
from tests.netstack.gateway_harness import Peers, make_config, running
from tests.netstack.test_budget_gateway import fetch_hello, loopback_policy, open_fds
from tests.procs import stop_child
from tests.netstack.guest_net import NetVm, running_net_vm
from tests.waiting import free_port, until

pytestmark = pytest.mark.guest

HEADROOM = 200  # descriptors the soft limit leaves above what the process holds at the start
HOSTILE_CONNECTIONS = 250  # more than the headroom: without a budget the process runs out
SINK_STAND_IN = "198.18.0.1"  # the guest's address of hosts[0], the sink on 127.0.0.1


# The sink runs in a process of its own: its ends of the guest's connections must not count
# against this process's lowered limit (they are the test's, not the gateway's).
_SINK = r"""
import selectors, socket, sys
server = socket.create_server(("127.0.0.1", 0), backlog=512)
print(server.getsockname()[1], flush=True)
sel = selectors.DefaultSelector()
sel.register(server, selectors.EVENT_READ)
sel.register(sys.stdin, selectors.EVENT_READ)
while True:
    for key, _ in sel.select():
        if key.fileobj is sys.stdin:
            sys.exit(0)  # the test closed our stdin: it is done
        if key.fileobj is server:
            conn, _ = server.accept()
            sel.register(conn, selectors.EVENT_READ)
            continue
        try:
            data = key.fileobj.recv(4096)
        except OSError:
            data = b""
        if not data:  # held until its client closes it
            sel.unregister(key.fileobj)
            key.fileobj.close()
"""


@dataclass
class Sink:
    """A loopback server (another process) holding every connection until its client closes it."""

    port: int


@pytest.fixture(scope="module")
def sink() -> Iterator[Sink]:
    proc = subprocess.Popen([sys.executable, "-c", _SINK], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        yield Sink(int(proc.stdout.readline()))
    finally:
        stop_child(proc)


@dataclass
class Hostile:
    net: NetVm
    budget: FdBudget


@pytest.fixture(scope="module")
async def hostile(boot: engine.LinuxDirectBoot, sink: Sink) -> AsyncIterator[Hostile]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    held = open_fds()
    limit = held + HEADROOM
    assert limit < soft, "the limit here is already lower than the test's"
    budget = FdBudget(limit, fixed_reserve=held + 40, per_vm_reserve=24)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    previous = install_process_budget(budget)
    try:
        net = (engine.NetworkMode.user_nat().host("sink.test", "127.0.0.1")
               .dns_upstream(f"127.0.0.1:{free_port()}")  # a dead loopback port: nothing leaves
               .policy(loopback_policy()).build())
        async with running_net_vm(engine.vm(boot).cpus(2).memory_mb(384).network(net)) as running_vm:
            yield Hostile(running_vm, budget)
    finally:
        install_process_budget(previous)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_a_guest_opening_connections_in_a_loop_starves_no_other_gateway(
        hostile: Hostile, sink: Sink, peers: Peers) -> None:
    vm, budget = hostile.net.vm, hostile.budget
    fds_before = open_fds()
    flood = (f"mkfifo /tmp/hold; sh -c 'exec 3<>/tmp/hold; i=0; while [ $i -lt {HOSTILE_CONNECTIONS} ]; do "
             f"nc {SINK_STAND_IN} {sink.port} <&3 >/dev/null 2>&1 & i=$((i+1)); done; wait' >/dev/null 2>&1 & "
             "echo $! > /tmp/flood.pid")
    assert (await hostile.net.console.run(flood, timeout=60)).exit_code == 0

    def refused() -> bool:
        return vm.network_stats()["counters"].get("tcp_budget_refused", 0) > 0

    await until(refused, 300, "the budget to refuse the hostile guest")
    stats = vm.network_stats()
    # The hostile VM holds at most what leaves the others' shares and a newcomer's share.
    assert 0 < stats["host_sockets"] <= budget.capacity - budget.share, (stats, budget.capacity, budget.share)
    denies = [e for e in hostile.net.events if e.action == "deny" and "over its share" in e.rule]
    assert denies and denies[0].detail == "host socket budget" and denies[0].port == sink.port

    # Another VM's gateway in this process still connects and fetches, and so does a new one.
    async with running(make_config(peers, loopback_policy()), name="victim") as (gw, guest, _events):
        assert b"hello" in await fetch_hello(gw, guest, peers, 40500)
        async with running(make_config(peers, loopback_policy()), name="newcomer") as (gw2, guest2, _e2):
            assert b"hello" in await fetch_hello(gw2, guest2, peers, 40600)
            assert gw.counters["tcp_budget_refused"] == gw2.counters["tcp_budget_refused"] == 0

    # The hostile guest stops: every host socket it held is given back and closed. The loop that
    # starts the nc processes may still be running on a slow machine: it stops first, then nc is
    # killed until none is left (an nc started after one killall would hold a socket for good).
    stop = "kill $(cat /tmp/flood.pid) 2>/dev/null; while killall nc 2>/dev/null; do sleep 1; done; true"
    assert (await hostile.net.console.run(stop, timeout=60)).exit_code == 0
    await until(lambda: vm.network_stats()["host_sockets"] == 0, 120, "the hostile flows to close")
    await asyncio.sleep(0.1)
    assert open_fds() == fds_before
    assert budget.held == 0
