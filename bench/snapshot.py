"""What snapshot clones buy: refills, restores, memory and churn of clones beside cold boots.

Run: ``.venv/bin/python -m bench.snapshot [--duration S] [--samples N] [--network]`` from the
repository root.
Defaults: 30 s per churn phase, 15 samples; about 2.5-3 min on 2 cores under TCG. Every guest
has 1 vCPU, 256 MiB and a console, and no network; ``--network`` gives every VM (template,
clones and cold boots alike) ``NetworkMode.user_nat().build()``. Prints one table:

1. refill: a pool of size 1 (max_size 2). The clock starts when ``reserve()`` returns (the
   pool starts the replacement at that moment) and stops when ``await pool.available_count()
   == 1`` again: the fresh VM is idle, its ready marker seen. The reserved VM is released after
   that, and the next sample waits until the pool has settled (nothing booting or stopping;
   for the snapshot pool, both waiting clones back). Median and p95 over ``--samples``, a
   ``.snapshot(True, prestart=2)`` pool beside the same pool with ``.snapshot(False)`` (cold
   boots). Targets: median <= 100 ms and >= 20x faster than cold.
2. restore: ``WaitingClone.launch`` + ``restore()`` into a fresh QEMU process (launch and load),
   and ``restore()`` into a QEMU process launched 1 s earlier and waiting (``-incoming defer``;
   load only). Three marks from the clock's start: "loaded" (``load_state`` returned: the state
   is in and the guest resumed; timed by ``bench.internals.timed_loads`` wrapping the engine's ``load_state`` for the run),
   "restored" (``restore()`` returned: identity fixed, ready marker seen) and "echo" (then
   ``exec("echo ok")`` answered). Medians over ``--samples`` of each kind, alternating.
   Baseline: a cold ``build()`` until ready and until ``exec("echo ok")`` answered, median of
   ``max(3, samples // 3)`` boots. No target. For reference, an earlier probe with plain QEMU
   (no engine) measured: fresh process 59-71 ms to loaded, 133-158 ms to echo; pre-started 11
   ms to loaded, 74-101 ms to echo.
3. memory: private memory (USS = Private_Clean + Private_Dirty of
   ``/proc/PID/smaps_rollup``) of an idle clone, with 4 clones of one template alive at once
   (the template's pages they all read are shared, not private), read 2 s after the last one
   became ready; the median of the 4, and their ``Anonymous``. Baseline: one cold-booted VM,
   read the same way 2 s after it became ready. Target <= 32 MiB.
4. churn: 4 workers repeat ``reserve -> exec("echo ok") -> release`` for ``--duration`` seconds
   on a pool of 4 (max_size 4), snapshot pool beside cold pool: VMs per second and the
   requests' p50/p95. Target >= 10x the cold rate.
5. template: ``template_for(spec)`` in an empty store (one boot until ready, save, stop) and
   the size of its state file (device state only: RAM is the image on the tmpfs), for
   information.

Snapshot and cold phases of each row run back to back in one run (snapshot first), so both see
the same machine; one untimed cold boot and one untimed restore warm the caches first. The
template store is a temporary folder (``CAPSA_TEMPLATES_DIR``; its RAM images in
``CAPSA_SNAPSHOT_RAM_DIR`` on /dev/shm), removed at the end. Every VM, waiting clone and pool
is closed in ``finally``/``async with`` blocks, and any QEMU child still alive at the end is
killed and reported.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console as RichConsole
from rich.table import Table

import engine
from bench.benchlib import Churn, fmt_ms, fmt_ratio, fmt_s, percentile
from bench.benchlib import churn as run_churn
from bench.internals import RAM_DIR_ENV, TEMPLATES_DIR_ENV, WaitingClone, template_for, timed_loads

CPUS = 1
MEMORY_MB = 256
PRESTART = 2
CHURN_WORKERS = 4
CHURN_POOL = 4
MEMORY_CLONES = 4
MEMORY_SETTLE_S = 2.0
PRESTART_SETTLE_S = 1.0
TIMEOUT_S = 120.0

TARGET_REFILL_MEDIAN_S = 0.100
TARGET_REFILL_RATIO = 20.0
TARGET_USS_MIB = 32.0
TARGET_CHURN_RATIO = 10.0


# ----- shapes ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    boot: engine.LinuxDirectBoot
    network: engine.UserNatConfig | None

    def vm(self) -> engine.VmBuilder:
        builder = engine.vm(self.boot).cpus(CPUS).memory_mb(MEMORY_MB).console_enabled()
        return builder.network(self.network) if self.network is not None else builder

    def spec(self) -> engine.VmSpec:
        return self.vm().spec()

    def pool(self, name: str, snapshot: bool) -> engine.PoolBuilder:
        builder = engine.vm_pool(self.boot).cpus(CPUS).memory_mb(MEMORY_MB).console_enabled().name(name)
        if self.network is not None:
            builder = builder.network(self.network)
        return builder.snapshot(snapshot, prestart=PRESTART)


async def _echo(vm: engine.VmHandle | engine.PooledVm) -> None:
    out = await (await vm.console()).exec("echo ok")
    assert out == "ok\n", f"echo answered {out!r}"


async def _wait_pool(pool: engine.VmPool, ready: Callable[[], Awaitable[bool]], timeout: float = TIMEOUT_S) -> None:
    """Wait until ``ready()``, checked after every change the pool announces (no polling lag)."""
    changed = asyncio.Event()

    def listener(_stats: engine.PoolStats) -> None:
        changed.set()

    pool.add_listener(listener)
    try:
        async with asyncio.timeout(timeout):
            while True:
                changed.clear()
                if await ready():
                    return
                await changed.wait()
    finally:
        pool.remove_listener(listener)


async def _settle(pool: engine.VmPool, waiting: int) -> None:
    """Back to one idle VM, nothing booting, reserved or stopping, ``waiting`` clones waiting."""
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        s = pool.stats()
        if (s.idle, s.booting, s.reserved, s.stopping) == (pool.size, 0, 0, 0) and s.waiting_clones >= waiting:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"pool {pool.name} did not settle: {s}")
        await asyncio.sleep(0.02)


# ----- 1. refill -------------------------------------------------------------------------------


@dataclass
class Refill:
    times: list[float] = field(default_factory=list)
    stats: engine.PoolStats | None = None


async def refill(shape: Shape, samples: int, snapshot: bool) -> Refill:
    result = Refill()
    name = "bench-refill-snap" if snapshot else "bench-refill-cold"
    async with await shape.pool(name, snapshot).max_size(2).build(1) as pool:

        async def one_idle() -> bool:
            return await pool.available_count() == 1

        for _ in range(samples):
            await _settle(pool, PRESTART if snapshot else 0)
            await asyncio.sleep(0.2)  # let the last kill's and launches' after-effects pass
            vm = await pool.reserve(timeout=TIMEOUT_S)
            started = time.perf_counter()
            try:
                await _wait_pool(pool, one_idle)
                result.times.append(time.perf_counter() - started)
            finally:
                await vm.release()
        result.stats = pool.stats()
    return result


# ----- 2. restore ------------------------------------------------------------------------------


@dataclass
class Restore:
    loaded: list[float] = field(default_factory=list)
    restored: list[float] = field(default_factory=list)
    echo: list[float] = field(default_factory=list)


_clone_seq = iter(range(1, 1 << 30))


async def restore_once(template: engine.Snapshot, spec: engine.VmSpec, prestarted: bool, marks: list[float], into: Restore | None) -> None:
    hostname = f"bench-clone-{next(_clone_seq)}"
    if prestarted:
        waiting = await WaitingClone.launch(template, spec)
        try:
            await asyncio.sleep(PRESTART_SETTLE_S)
            started = time.perf_counter()
            vm = await waiting.restore(hostname=hostname)
        except BaseException:
            await waiting.close()
            raise
    else:
        started = time.perf_counter()
        waiting = await WaitingClone.launch(template, spec)
        vm = await waiting.restore(hostname=hostname)  # kills the machine itself if it fails
    restored = time.perf_counter()
    async with vm:
        await _echo(vm)
        echoed = time.perf_counter()
    if into is not None:
        into.loaded.append(marks[-1] - started)
        into.restored.append(restored - started)
        into.echo.append(echoed - started)


async def cold_boot(shape: Shape) -> tuple[float, float]:
    """Seconds from ``build()`` until ready, and until ``exec("echo ok")`` answered."""
    started = time.perf_counter()
    async with await shape.vm().build() as vm:
        await vm.wait_ready(TIMEOUT_S)
        ready = time.perf_counter() - started
        await _echo(vm)
        return ready, time.perf_counter() - started


# ----- 3. memory -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Memory:
    uss_mib: float
    anon_mib: float
    rss_mib: float
    pss_mib: float


def read_memory(pid: int) -> Memory:
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                fields[parts[0].rstrip(":")] = int(parts[1])
    mib = 1024.0
    return Memory(
        uss_mib=(fields["Private_Clean"] + fields["Private_Dirty"]) / mib,
        anon_mib=fields["Anonymous"] / mib,
        rss_mib=fields["Rss"] / mib,
        pss_mib=fields["Pss"] / mib,
    )


async def clone_memory(template: engine.Snapshot, spec: engine.VmSpec) -> list[Memory]:
    waiting: list[WaitingClone] = []
    clones: list[engine.VmHandle] = []
    try:
        for _ in range(MEMORY_CLONES):
            waiting.append(await WaitingClone.launch(template, spec))
        for index, wait in enumerate(waiting):
            clones.append(await wait.restore(hostname=f"bench-mem-{index}"))
        await asyncio.sleep(MEMORY_SETTLE_S)
        assert all(vm.machine_alive() for vm in clones)
        return [read_memory(vm.pid) for vm in clones]
    finally:
        for wait in waiting[len(clones) :]:
            await wait.close()
        await asyncio.gather(*(vm.kill() for vm in clones))


async def cold_memory(shape: Shape) -> Memory:
    async with await shape.vm().build() as vm:
        await vm.wait_ready(TIMEOUT_S)
        await asyncio.sleep(MEMORY_SETTLE_S)
        return read_memory(vm.pid)


# ----- 4. churn --------------------------------------------------------------------------------


async def churn(shape: Shape, duration: float, snapshot: bool) -> Churn:
    name = "bench-churn-snap" if snapshot else "bench-churn-cold"
    async with await shape.pool(name, snapshot).max_size(CHURN_POOL).build(CHURN_POOL) as pool:

        async def request() -> None:
            async with await pool.reserve(timeout=TIMEOUT_S) as vm:
                await _echo(vm)

        result = await run_churn(request, duration, CHURN_WORKERS)
        result.stats = pool.stats()
    return result


# ----- processes -------------------------------------------------------------------------------


def qemu_children() -> set[int]:
    """Pids of QEMU processes this bench started that are still there (zombies excluded)."""
    mine = os.getpid()
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        comm = text[text.index("(") + 1 : text.rindex(")")]
        state, ppid = text[text.rindex(")") + 2 :].split()[:2]
        if comm.startswith("qemu-system") and int(ppid) == mine and state != "Z":
            found.add(int(entry.name))
    return found


# ----- table -----------------------------------------------------------------------------------


def _med(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def _pool_note(label: str, stats: engine.PoolStats | None) -> str:
    if stats is None:
        return f"{label}: -"
    boot = f"boot p50 {fmt_ms(stats.boot_p50_s)}, p95 {fmt_ms(stats.boot_p95_s)}"
    text = f"{label}: snapshot={stats.snapshot}, created {stats.created}, fallbacks {stats.fallbacks}, failed {stats.failed}, {boot}"
    if stats.snapshot_error:
        text += f"; snapshot error: {stats.snapshot_error}"
    return text


async def run(args: argparse.Namespace, store: Path) -> None:
    boot = engine.default_boot()
    accel = engine.choose_accelerator()
    network = engine.NetworkMode.user_nat().build() if args.network else None
    shape = Shape(boot, network)
    spec = shape.spec()
    net_label = "user_nat" if network is not None else "no network"
    print(f"capsa-tui snapshot bench: {accel.describe()}; {CPUS} vCPU, {MEMORY_MB} MiB, console, {net_label}", file=sys.stderr)
    begun = time.perf_counter()

    def phase(what: str) -> None:
        print(f"[{time.perf_counter() - begun:6.1f} s] {what}", file=sys.stderr)

    phase("warm-up cold boot (not counted)")
    await cold_boot(shape)

    phase("5. template build")
    started = time.perf_counter()
    wall_before = time.time()
    template = await template_for(spec)
    build_s = time.perf_counter() - started
    assert template.info.created_at >= wall_before, "template_for found a template in an empty store"
    ram_file = Path(template.info.ram_file or "")
    ram_resident = ram_file.stat().st_blocks * 512 if ram_file.is_file() else 0

    phase("2. restores (fresh and pre-started) and cold boots")
    colds = [await cold_boot(shape) for _ in range(max(3, args.samples // 3))]
    fresh, pre = Restore(), Restore()
    with timed_loads() as marks:
        await restore_once(template, spec, False, marks, None)  # warm-up, not counted
        for _ in range(args.samples):
            await restore_once(template, spec, False, marks, fresh)
            await restore_once(template, spec, True, marks, pre)

    phase(f"3. memory: {MEMORY_CLONES} clones, then one cold VM")
    clone_mem = await clone_memory(template, spec)
    cold_mem = await cold_memory(shape)

    phase("1. refill: snapshot pool")
    snap_refill = await refill(shape, args.samples, True)
    phase("1. refill: cold pool")
    cold_refill = await refill(shape, args.samples, False)

    phase(f"4. churn: snapshot pool, {args.duration:.0f} s")
    snap_churn = await churn(shape, args.duration, True)
    phase(f"4. churn: cold pool, {args.duration:.0f} s")
    cold_churn = await churn(shape, args.duration, False)
    phase("done")

    # ----- the table -----
    table = Table(title=f"Snapshot clones vs cold boots ({accel.name}, {CPUS} vCPU, {MEMORY_MB} MiB, {net_label})")
    for column in ("measure", "snapshot (ours)", "cold boot (baseline)", "ratio", "target"):
        table.add_column(column)

    s50, s95 = _med(snap_refill.times), percentile(snap_refill.times, 0.95)
    c50, c95 = _med(cold_refill.times), percentile(cold_refill.times, 0.95)
    ratio = (c50 / s50) if s50 and c50 else 0.0
    fallbacks = snap_refill.stats.fallbacks if snap_refill.stats else 0
    table.add_row(
        f"1. refill of a pool of 1 (max 2): hand-out → idle again, median / p95 (n={len(snap_refill.times)})",
        f"{fmt_ms(s50)} / {fmt_ms(s95)}" + (f" ({fallbacks} cold fallbacks!)" if fallbacks else ""),
        f"{fmt_ms(c50)} / {fmt_ms(c95)}",
        fmt_ratio(s50, c50),
        f"median ≤ {TARGET_REFILL_MEDIAN_S * 1000:.0f} ms: {_verdict(bool(s50 and s50 <= TARGET_REFILL_MEDIAN_S))}; "
        f"≥ {TARGET_REFILL_RATIO:.0f}×: {_verdict(ratio >= TARGET_REFILL_RATIO)}",
    )
    cold_ready = _med([r for r, _ in colds])
    cold_echo = _med([e for _, e in colds])
    for label, data in (("fresh QEMU (launch + load)", fresh), ("pre-started QEMU (load only)", pre)):
        table.add_row(
            f"2. restore into a {label}: loaded / restored / echo, median (n={len(data.echo)})",
            f"{fmt_ms(_med(data.loaded))} / {fmt_ms(_med(data.restored))} / {fmt_ms(_med(data.echo))}",
            f"build → ready {fmt_ms(cold_ready)} / echo {fmt_ms(cold_echo)} (n={len(colds)})",
            f"echo {fmt_ratio(_med(data.echo), cold_echo)}",
            "",
        )
    uss = statistics.median(m.uss_mib for m in clone_mem)
    anon = statistics.median(m.anon_mib for m in clone_mem)
    table.add_row(
        f"3. private memory (USS) of an idle clone, {MEMORY_CLONES} alive, median; Anonymous",
        f"{uss:.1f} MiB; anon {anon:.1f} MiB",
        f"{cold_mem.uss_mib:.1f} MiB; anon {cold_mem.anon_mib:.1f} MiB",
        fmt_ratio(uss, cold_mem.uss_mib, unit="less"),
        f"≤ {TARGET_USS_MIB:.0f} MiB: {_verdict(uss <= TARGET_USS_MIB)}",
    )
    churn_ratio = snap_churn.rate / cold_churn.rate if cold_churn.rate else 0.0
    churn_fallbacks = snap_churn.stats.fallbacks if snap_churn.stats else 0
    table.add_row(
        f"4. churn, {CHURN_WORKERS} workers, pool of {CHURN_POOL}, {args.duration:.0f} s: VMs per second",
        f"{snap_churn.rate:.2f} VMs/s ({len(snap_churn.latencies)})"
        + (f" ({churn_fallbacks} cold fallbacks!)" if churn_fallbacks else ""),
        f"{cold_churn.rate:.2f} VMs/s ({len(cold_churn.latencies)})",
        f"{churn_ratio:.1f}×" if churn_ratio else "-",
        f"≥ {TARGET_CHURN_RATIO:.0f}×: {_verdict(churn_ratio >= TARGET_CHURN_RATIO)}",
    )
    table.add_row(
        "4. churn: request p50 / p95",
        f"{fmt_ms(percentile(snap_churn.latencies, 0.5))} / {fmt_ms(percentile(snap_churn.latencies, 0.95))}",
        f"{fmt_ms(percentile(cold_churn.latencies, 0.5))} / {fmt_ms(percentile(cold_churn.latencies, 0.95))}",
        fmt_ratio(percentile(snap_churn.latencies, 0.5), percentile(cold_churn.latencies, 0.5)),
        "",
    )
    table.add_row(
        "5. template: build (boot + save); state file; RAM image on tmpfs",
        f"{fmt_s(build_s)}; {template.info.state_size / 1024:.0f} KiB; {ram_resident / (1 << 20):.0f} MiB",
        "-",
        "-",
        "information",
    )
    RichConsole(width=200).print(table)
    notes = [
        _pool_note("refill, snapshot pool", snap_refill.stats),
        _pool_note("refill, cold pool", cold_refill.stats),
        _pool_note("churn, snapshot pool", snap_churn.stats),
        _pool_note("churn, cold pool", cold_churn.stats),
        "clones' memory (each): "
        + ", ".join(f"USS {m.uss_mib:.1f} / Rss {m.rss_mib:.1f} / Pss {m.pss_mib:.1f} MiB" for m in clone_mem),
        f"cold VM's memory: USS {cold_mem.uss_mib:.1f} / Rss {cold_mem.rss_mib:.1f} / Pss {cold_mem.pss_mib:.1f} MiB",
        f"whole run: {time.perf_counter() - begun:.0f} s; template store {store} (removed)",
    ]
    for note in notes:
        print(note)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per churn phase (default 30)")
    parser.add_argument("--samples", type=int, default=15, help="refill and restore samples of each kind (default 15)")
    parser.add_argument("--network", action="store_true", help="give every VM NetworkMode.user_nat().build()")
    args = parser.parse_args()
    if args.samples < 1 or args.duration <= 0:
        parser.error("--samples must be at least 1 and --duration positive")

    store = Path(tempfile.mkdtemp(prefix="capsa-bench-templates-"))
    shm = Path("/dev/shm")
    ram = (shm if shm.is_dir() and os.access(shm, os.W_OK) else store) / f"capsa-bench-ram-{os.getpid()}"
    os.environ[TEMPLATES_DIR_ENV] = str(store)
    os.environ[RAM_DIR_ENV] = str(ram)
    try:
        await run(args, store)
    finally:
        left = qemu_children()
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if left:
            print(f"warning: killed {len(left)} QEMU processes left behind: {sorted(left)}", file=sys.stderr)
        shutil.rmtree(store, ignore_errors=True)
        shutil.rmtree(ram, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
