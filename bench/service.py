"""The pool service: what a request, a keystroke and a flow event cost through ``capsa-tui serve``.

Run: ``.venv/bin/python -m bench.service [--runs N]`` from the repository root (about 2 minutes
on 2 cores). One pool of the default guest (size 2) runs in this process and is served by an
in-process ``PoolServer`` on a temporary socket; the ssh rows go through a real OpenSSH server
on loopback (``tests/service/sshd.py``, the tests' own) that runs ``capsa-tui serve --stdio``
against that socket, exactly as ``--host ssh://...`` does. Every row is timed beside the same
thing done in-process, on the same pool, in the same run.

| row | ours | baseline |
| --- | --- | --- |
| reserve + exec + release | ``ServiceClient.reserve`` + ``exec("true")`` + ``release`` through the socket (and through ssh) | ``VmPool.reserve`` + ``shell().run("true")`` + ``release`` in-process |
| key to echo, attached | one key written through an attachment (``remote_console``) until its echo comes back | the same on the VM's own console in-process |
| flow events per second | events fanned out by the registry, received by ``watch_flows`` of a client | the registry's own subscription in-process |

Each reserve sample starts with the pool settled (every VM idle), so no sample waits for a boot.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console as RichConsole
from rich.table import Table

import engine
from bench.benchlib import exit_on_sigterm, fmt_ratio
from tests.service.sshd import running_sshd

FLOW_EVENTS = 20000


@dataclass
class Row:
    measurement: str
    ours: float
    baseline: float
    unit: str  # "ms" or "/s"
    note: str = ""


async def _settled(pool: engine.VmPool) -> None:
    while True:
        members = pool.members()
        if len(members) == pool.size and all(m.state == "idle" for m in members):
            return
        await asyncio.sleep(0.1)


async def _timed(work: Callable[[], Awaitable[None]], pool: engine.VmPool, runs: int) -> float:
    samples = []
    for _ in range(runs):
        await _settled(pool)
        start = time.perf_counter()
        await work()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


async def _reserve_rows(pool: engine.VmPool, clients: dict[str, engine.ServiceClient], runs: int) -> list[Row]:
    async def local() -> None:
        vm = await pool.reserve(60)
        result = await (await vm.shell()).run("true", 30)
        assert result.exit_code == 0
        await vm.release()

    def served(client: engine.ServiceClient) -> Callable[[], Awaitable[None]]:
        async def work() -> None:
            vm = await client.reserve(pool.name, 60)
            result = await client.exec(vm, "true", 30)
            assert result.exit_code == 0
            await client.release(vm)
        return work

    baseline = await _timed(local, pool, runs)
    return [Row(f"reserve + exec + release, through {name} (vs in-process)", await _timed(served(c), pool, runs) * 1e3,
                baseline * 1e3, "ms", f"{runs} samples each, medians") for name, c in clients.items()]


async def _echo_p50(console: engine.ConsoleLike, samples: int) -> float:
    chunks = aiter(console.reader())
    times = []
    for n in range(samples + 5):
        key = b"%c" % (ord("a") + n % 26)
        start = time.perf_counter()
        await console.write(key)
        seen = b""
        while key not in seen:
            seen += await anext(chunks)
        if n >= 5:  # warm-ups
            times.append(time.perf_counter() - start)
    await console.write(b"\x15")  # ^U: the line typed so far is dropped, the shell stays idle
    return statistics.median(times)


async def _echo_rows(pool: engine.VmPool, clients: dict[str, engine.ServiceClient], samples: int) -> list[Row]:
    await _settled(pool)
    vm_id = pool.members()[0].id
    own = await pool.handle(vm_id).console()
    baseline = await _echo_p50(own, samples)
    rows = []
    for name, client in clients.items():
        console = await engine.remote_console(client, vm_id, from_start=False, write=True)
        try:
            ours = await _echo_p50(console, samples)
        finally:
            await console.stream.close()
        rows.append(Row(f"key to echo, attached through {name} (vs in-process console)", ours * 1e3,
                        baseline * 1e3, "ms", f"p50 of {samples} keys"))
    return rows


async def _burst(count: int) -> AsyncIterator[engine.FlowEvent]:
    now = time.time()
    for n in range(count):
        yield engine.FlowEvent(now, "bench-vm", "tcp", "10.0.2.15", "203.0.113.7", 1 + n % 65535, None,
                               "default deny", "deny")
        if n % 256 == 0:
            await asyncio.sleep(0)  # a gateway yields to the loop between frames, so do we


Receiver = Callable[[int], Awaitable[int]]  # waits for that many events (received or dropped); returns drops


async def _flow_rate(registry: engine.PoolRegistry, subscribe: Callable[[], Awaitable[Receiver]]) -> tuple[float, int]:
    """Events per second from the registry's fan-out to a subscriber, and how many it dropped."""
    receive = await subscribe()  # subscribed before the first event: none is missed
    start = time.perf_counter()
    feeder = asyncio.ensure_future(registry._pump_flows("bench", "bench-vm", _burst(FLOW_EVENTS)))
    dropped = await receive(FLOW_EVENTS)
    await feeder
    return FLOW_EVENTS / (time.perf_counter() - start), dropped


async def _flow_rows(registry: engine.PoolRegistry, clients: dict[str, engine.ServiceClient]) -> list[Row]:
    async def in_process() -> Receiver:
        subscription = registry.subscribe_flows(engine.FlowFilter(pool="bench"))

        async def receive(count: int) -> int:
            got = 0
            try:
                while got + subscription.dropped < count:
                    got += len(await subscription.batch())
            finally:
                subscription.end()
            return subscription.dropped
        return receive

    def attached(client: engine.ServiceClient) -> Callable[[], Awaitable[Receiver]]:
        async def subscribe() -> Receiver:
            watch = await client.watch_flows(pool="bench")

            async def receive(count: int) -> int:
                got = 0
                while got + watch.dropped < count:
                    await watch.get()
                    got += 1
                await client.unwatch("flows")
                return watch.dropped
            return receive
        return subscribe

    baseline, base_dropped = await _flow_rate(registry, in_process)
    rows = []
    for name, client in clients.items():
        ours, dropped = await _flow_rate(registry, attached(client))
        rows.append(Row(f"flow events delivered per second, through {name} (vs in-process)", ours, baseline, "/s",
                        f"{FLOW_EVENTS} events; dropped {dropped} (in-process {base_dropped})"))
    return rows


async def run(runs: int) -> list[Row]:
    work = Path(tempfile.mkdtemp(prefix="capsa-bench-svc-", dir="/tmp"))
    boot = engine.default_boot()
    pool = await engine.vm_pool(boot).cpus(1).memory_mb(192).console_enabled().name("bench").max_size(3).build(2)
    clients: dict[str, engine.ServiceClient] = {}
    try:
        async with engine.PoolServer([pool], work / "pool.sock") as server:
            with running_sshd() as sshd:
                os.environ.update(sshd.env)
                clients["the socket"] = await engine.ServiceClient.connect(server.path)
                clients["ssh on loopback"] = await engine.ServiceClient.connect(sshd.address(server.path), 30)
                rows = await _reserve_rows(pool, clients, runs)
                rows += await _echo_rows(pool, clients, max(20, runs * 5))
                rows += await _flow_rows(server.registry, clients)
                for client in clients.values():
                    await client.close()
        return rows
    finally:
        for client in clients.values():
            with contextlib.suppress(engine.ServiceError):
                await client.close()
        await pool.close()
        shutil.rmtree(work, ignore_errors=True)


def print_table(rows: list[Row]) -> None:
    out = RichConsole(width=170, highlight=False)
    out.print(f"The pool service under {engine.choose_accelerator().describe()}", soft_wrap=True)
    table = Table()
    for name in ("measurement", "ours", "baseline", "ratio (ours/baseline)", "note"):
        table.add_column(name)
    for row in rows:
        if row.unit == "/s":
            ratio = f"{row.ours / row.baseline:.2f}× the in-process rate"
            ours, base = f"{row.ours:,.0f}/s", f"{row.baseline:,.0f}/s"
        else:
            ratio = fmt_ratio(row.ours, row.baseline)
            ours, base = f"{row.ours:.1f} ms", f"{row.baseline:.1f} ms"
        table.add_row(row.measurement, ours, base, ratio, row.note)
    out.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="samples of each reserve row (default 7)")
    args = parser.parse_args()
    exit_on_sigterm()
    print_table(asyncio.run(run(args.runs)))


if __name__ == "__main__":
    main()
