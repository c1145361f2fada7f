"""What a warm pool buys: reserve latency, pool start-up and request churn, beside cold boots.

Run: ``.venv/bin/python -m bench.pool [--duration S] [--samples N]`` from the repository root.
Prints one table:

1. ``reserve()`` latency while an idle VM waits (the pool's promise: p99 under 5 ms), beside the
   cold alternative: ``build()`` of a fresh VM until it is ready;
2. time until a pool of 4 is ready (``build(4)``), beside one cold VM becoming ready;
3. per-request latency of ``reserve, exec("echo ok"), release`` with 4 workers on a pool of 4
   (max_size 4), beside ``build, wait_ready, exec("echo ok"), kill`` with 4 workers, each for
   ``--duration`` seconds; and the throughput of both in VMs per second.

Pool and cold phases alternate in one run, so the machine's state hits both alike. Everything is
killed in ``finally``/``async with`` blocks.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time

from rich.console import Console as RichConsole
from rich.table import Table

import engine
from bench.benchlib import Churn, churn, fmt_ms, fmt_ratio, fmt_s, percentile

CPUS = 1
MEMORY_MB = 256
WORKERS = 4
POOL_SIZE = 4
TARGET_RESERVE_P99_S = 0.005


def _pool_builder(boot: engine.LinuxDirectBoot, name: str) -> engine.PoolBuilder:
    return engine.vm_pool(boot).cpus(CPUS).memory_mb(MEMORY_MB).console_enabled().name(name)


async def cold_ready(boot: engine.LinuxDirectBoot) -> tuple[float, float]:
    """Seconds until a fresh VM is ready, and until a whole request on it is done."""
    started = time.perf_counter()
    async with await engine.vm(boot).cpus(CPUS).memory_mb(MEMORY_MB).console_enabled().build() as vm:
        await vm.wait_ready(60)
        ready = time.perf_counter() - started
        assert await (await vm.console()).exec("echo ok") == "ok\n"
    return ready, time.perf_counter() - started


async def reserve_latency(boot: engine.LinuxDirectBoot, samples: int) -> tuple[list[float], list[float]]:
    """Time reserve(), and a whole request, while an idle VM is there; refills are not timed."""
    reserves: list[float] = []
    requests: list[float] = []
    async with await _pool_builder(boot, "bench-reserve").max_size(POOL_SIZE + 1).build(POOL_SIZE) as pool:
        while len(reserves) < samples:
            while await pool.available_count() == 0:
                await asyncio.sleep(0.01)
            started = time.perf_counter()
            vm = await pool.reserve()
            reserves.append(time.perf_counter() - started)
            assert await (await vm.console()).exec("echo ok") == "ok\n"
            await vm.release()
            requests.append(time.perf_counter() - started)
    return reserves, requests


async def pool_ready(boot: engine.LinuxDirectBoot) -> float:
    started = time.perf_counter()
    async with await _pool_builder(boot, "bench-start").max_size(POOL_SIZE).build(POOL_SIZE):
        return time.perf_counter() - started


async def pool_churn(boot: engine.LinuxDirectBoot, duration: float) -> Churn:
    async with await _pool_builder(boot, "bench-churn").max_size(POOL_SIZE).build(POOL_SIZE) as pool:

        async def request() -> None:
            async with await pool.reserve(timeout=120) as vm:
                assert await (await vm.console()).exec("echo ok") == "ok\n"

        return await churn(request, duration, WORKERS)


async def cold_churn(boot: engine.LinuxDirectBoot, duration: float) -> Churn:
    async def request() -> None:
        async with await engine.vm(boot).cpus(CPUS).memory_mb(MEMORY_MB).console_enabled().build() as vm:
            await vm.wait_ready(120)
            assert await (await vm.console()).exec("echo ok") == "ok\n"

    return await churn(request, duration, WORKERS)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per churn phase (default 60)")
    parser.add_argument("--samples", type=int, default=40, help="reserve() samples (default 40)")
    args = parser.parse_args()
    boot = engine.default_boot()
    accel = engine.choose_accelerator()
    print(f"capsa-tui pool bench: {accel.describe()}; {CPUS} vCPU, {MEMORY_MB} MiB per VM", file=sys.stderr)

    await cold_ready(boot)  # warm the page cache; not counted
    colds = [await cold_ready(boot) for _ in range(3)]
    cold = [ready for ready, _ in colds]
    cold_request = statistics.median(total for _, total in colds)
    reserve, warm_requests = await reserve_latency(boot, args.samples)
    start4 = [await pool_ready(boot) for _ in range(2)]
    pooled = await pool_churn(boot, args.duration)
    coldc = await cold_churn(boot, args.duration)

    cold_med = statistics.median(cold)
    table = Table(title=f"VM pool vs cold boot ({accel.name}, {WORKERS} workers, pool of {POOL_SIZE})")
    for column in ("measure", "pool (ours)", "cold boot (baseline)", "ratio", "target"):
        table.add_column(column)
    p50, p99 = percentile(reserve, 0.5), percentile(reserve, 0.99)
    table.add_row(
        f"reserve() with an idle VM, p50 / p99 (n={len(reserve)})",
        f"{fmt_ms(p50, 1)} / {fmt_ms(p99, 1)}",
        f"{fmt_s(cold_med)} (build → ready, median of 3)",
        fmt_ratio(p99, cold_med),
        f"p99 < {TARGET_RESERVE_P99_S * 1000:.0f} ms: {'met' if p99 and p99 < TARGET_RESERVE_P99_S else 'MISSED'}",
    )
    warm = percentile(warm_requests, 0.5)
    table.add_row(
        "one request (reserve/build, exec echo ok, release/kill), p50",
        fmt_ms(warm, 1),
        fmt_ms(cold_request, 1),
        fmt_ratio(warm, cold_request),
        "",
    )
    table.add_row(
        f"ready: pool of {POOL_SIZE} vs 1 cold VM (median)",
        fmt_s(statistics.median(start4)),
        fmt_s(cold_med),
        f"{statistics.median(start4) / cold_med:.2f}× one boot",
        "",
    )
    table.add_row(
        f"churn, {WORKERS} workers: request p50",
        fmt_ms(percentile(pooled.latencies, 0.5), 1),
        fmt_ms(percentile(coldc.latencies, 0.5), 1),
        fmt_ratio(percentile(pooled.latencies, 0.5), percentile(coldc.latencies, 0.5)),
        "",
    )
    table.add_row(
        f"churn, {WORKERS} workers: request p95",
        fmt_ms(percentile(pooled.latencies, 0.95), 1),
        fmt_ms(percentile(coldc.latencies, 0.95), 1),
        fmt_ratio(percentile(pooled.latencies, 0.95), percentile(coldc.latencies, 0.95)),
        "",
    )
    table.add_row(
        f"churn throughput over {args.duration:.0f} s",
        f"{pooled.rate:.2f} VMs/s ({len(pooled.latencies)})",
        f"{coldc.rate:.2f} VMs/s ({len(coldc.latencies)})",
        f"{pooled.rate / coldc.rate:.2f}×" if coldc.rate else "-",
        "",
    )
    RichConsole(width=160).print(table)


if __name__ == "__main__":
    asyncio.run(main())
