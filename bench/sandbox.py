"""Sandbox speed: the guest agent beside the console it replaces, on real sandbox guests.

Run: ``.venv/bin/python -m bench.sandbox [--runs N] [--full]`` from the repository root. Prints one
table, ours (the agent) beside the baseline (the busybox root shell on the serial console, which
is what a user without the agent would drive), with ratios and the issue's targets:

1. cold boot to the first agent ``exec(["true"])`` answered, and to the agent's hello (its
   Python is running), beside cold boot to the console's first ``exec("true")`` (median of N
   boots each, interleaved one at a time);
2. ``exec(["true"])`` round trip p50/p99 on one sandbox beside the console's ``exec("true")``
   on the same sandbox, and the agent's ``ping`` (the protocol alone);
3. ``write_file`` / ``read_file`` MiB/s of 64 MiB (digest checked in the guest and back) beside
   the same kind of bytes through the console as base64 (``printf %s B64 | base64 -d >> f``
   in line-sized chunks in, ``base64 f`` out), on a smaller size since the console is slow;
4. the sandbox image rebuilt from its cached Debian tree (our files changed), and with
   ``--full`` the tree from scratch too (mmdebstrap from the host's archive);
5. clone refill to the first agent exec, when ``bench.sandbox_clone`` (the CLONES part) exists.

Every VM started here is killed in a ``finally``; the image rebuilds go to folders removed after.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import hashlib
import importlib
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from dataclasses import dataclass, field

from rich.console import Console as RichConsole
from rich.table import Table

import engine
from bench.benchlib import exit_on_sigterm, percentile
from bench.internals import qemu_version, find_qemu, rebuild_sandbox_image, sandbox_boot

BUSYBOX = "/usr/lib/capsa/busybox"  # static: no dynamic loader to run, unlike coreutils' true
CPUS = 1
MEMORY_MB = 512
READY_TIMEOUT_S = 120.0
RTT_WARMUP = 10
RTT_SAMPLES = 200
FILE_BYTES = 64 << 20
CONSOLE_FILE_BYTES = 192 << 10  # through base64 on a serial line: a larger size only takes longer
CONSOLE_CHUNK = 2400  # raw bytes per command: 3200 base64 characters, under the tty's 4095-byte line

TARGET_CLONE_S = 0.150
TARGET_BOOT_S = 3.0
TARGET_MIB_S = 100.0


@dataclass
class Samples:
    """Durations in seconds of one measurement, in the order they were taken."""

    name: str
    values: list[float] = field(default_factory=list)

    def median(self) -> float:
        return statistics.median(self.values)

    def q(self, fraction: float) -> float:
        value = percentile(self.values, fraction)
        assert value is not None
        return value


@dataclass(frozen=True)
class Row:
    """One line of the result table."""

    measurement: str
    ours: str
    baseline: str
    ratio: str
    target: str
    verdict: str


# ----- sandboxes -------------------------------------------------------------------------------


def spec(boot: engine.LinuxDirectBoot) -> engine.VmSpec:
    return engine.VmSpec(boot=boot, cpus=CPUS, memory_mb=MEMORY_MB, console=True)


async def with_sandbox(boot: engine.LinuxDirectBoot, body: Callable[[engine.VmHandle], Awaitable[None]]) -> None:
    vm = await engine.VmHandle.start(spec(boot))
    try:
        await body(vm)
    finally:
        await vm.kill()


async def boot_agent(boot: engine.LinuxDirectBoot) -> tuple[float, float]:
    """Start -> the agent's hello, and start -> the first exec(["true"]) answered, in seconds."""
    t0 = time.perf_counter()
    vm = await engine.VmHandle.start(spec(boot))
    try:
        agent = await vm.agent(timeout=READY_TIMEOUT_S)
        hello = time.perf_counter() - t0
        r = await agent.exec(["true"], timeout=READY_TIMEOUT_S)
        done = time.perf_counter() - t0
        assert r.exit_code == 0
        return hello, done
    finally:
        await vm.kill()


async def boot_console(boot: engine.LinuxDirectBoot) -> float:
    """Start -> the console's first exec("true") answered (it waits for the ready marker)."""
    t0 = time.perf_counter()
    vm = await engine.VmHandle.start(spec(boot))
    try:
        console = await vm.console()
        await console.exec("true", timeout=READY_TIMEOUT_S)
        return time.perf_counter() - t0
    finally:
        await vm.kill()


async def timed(samples: Samples, n: int, warmup: int, step: Callable[[], Awaitable[object]]) -> None:
    for i in range(warmup + n):
        t0 = time.perf_counter()
        await step()
        if i >= warmup:
            samples.values.append(time.perf_counter() - t0)


@dataclass
class OneSandbox:
    """Everything measured on one booted sandbox."""

    ping: Samples = field(default_factory=lambda: Samples("ping"))
    agent_exec: Samples = field(default_factory=lambda: Samples("agent exec"))
    console_exec: Samples = field(default_factory=lambda: Samples("console exec"))
    console_bin_true: Samples = field(default_factory=lambda: Samples("console /bin/true"))
    agent_busybox: Samples = field(default_factory=lambda: Samples("agent busybox true"))
    guest_part: list[float] = field(default_factory=list)  # the agent's own duration_s of each exec
    write_s: float = 0.0
    read_s: float = 0.0
    console_write_s: float = 0.0
    console_read_s: float = 0.0


async def on_one_sandbox(boot: engine.LinuxDirectBoot, rtt_samples: int) -> OneSandbox:
    out = OneSandbox()

    async def body(vm: engine.VmHandle) -> None:
        agent = await vm.agent(timeout=READY_TIMEOUT_S)
        console = await vm.console()
        await console.exec("true", timeout=READY_TIMEOUT_S)
        await timed(out.ping, rtt_samples, RTT_WARMUP, agent.ping)
        async def agent_true() -> None:
            out.guest_part.append((await agent.exec(["true"], timeout=60)).duration_s)

        await timed(out.agent_exec, rtt_samples, RTT_WARMUP, agent_true)
        del out.guest_part[:RTT_WARMUP]
        await timed(out.console_exec, rtt_samples, RTT_WARMUP, lambda: console.exec("true", timeout=60))
        # The shell's "true" is a builtin (no process); these two both start one.
        await timed(out.console_bin_true, rtt_samples, RTT_WARMUP, lambda: console.exec("/bin/true", timeout=60))
        await timed(out.agent_busybox, rtt_samples, RTT_WARMUP,
                    lambda: agent.exec([BUSYBOX, "true"], timeout=60))

        data = os.urandom(FILE_BYTES)
        digest = hashlib.sha256(data).hexdigest()
        await agent.write_file("/tmp/warm.bin", data[: 1 << 20])  # the first call's code paths, untimed
        await agent.read_file("/tmp/warm.bin")
        t0 = time.perf_counter()
        await agent.write_file("/tmp/bench.bin", data)
        out.write_s = time.perf_counter() - t0
        r = await agent.exec(["sha256sum", "/tmp/bench.bin"], timeout=300)
        if r.stdout.split()[0].decode() != digest:
            raise SystemExit("write_file: the guest's copy has another digest")
        t0 = time.perf_counter()
        back = await agent.read_file("/tmp/bench.bin", max_bytes=FILE_BYTES)
        out.read_s = time.perf_counter() - t0
        if hashlib.sha256(back).hexdigest() != digest:
            raise SystemExit("read_file: the bytes read back have another digest")
        await agent.exec(["rm", "-f", "/tmp/bench.bin", "/tmp/warm.bin"], timeout=60)

        small = data[:CONSOLE_FILE_BYTES]
        t0 = time.perf_counter()
        await console.exec(": > /tmp/c.bin", timeout=60)
        for offset in range(0, len(small), CONSOLE_CHUNK):
            text = base64.b64encode(small[offset:offset + CONSOLE_CHUNK]).decode()
            await console.exec(f"printf %s '{text}' | base64 -d >> /tmp/c.bin", timeout=60)
        out.console_write_s = time.perf_counter() - t0
        if (await agent.read_file("/tmp/c.bin")) != small:
            raise SystemExit("console write: the guest's copy differs")
        t0 = time.perf_counter()
        result = await console.run("base64 /tmp/c.bin", timeout=300)
        out.console_read_s = time.perf_counter() - t0
        if result.dropped or base64.b64decode(result.output) != small:
            raise SystemExit("console read: the bytes read back differ")

    await with_sandbox(boot, body)
    return out


# ----- report ----------------------------------------------------------------------------------


def fmt_s(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds >= 1 else f"{seconds * 1000:.1f} ms"


def spread(s: Samples) -> str:
    return f"{fmt_s(s.median())} ({fmt_s(min(s.values))}–{fmt_s(max(s.values))})"


def latency(s: Samples) -> str:
    return f"p50 {fmt_s(s.q(0.50))} / p99 {fmt_s(s.q(0.99))}"


def verdict(ok: bool | None) -> str:
    return "info" if ok is None else ("[green]PASS[/green]" if ok else "[red]FAIL[/red]")


def rate(nbytes: int, seconds: float) -> float:
    return nbytes / (1 << 20) / seconds


def print_table(header: str, rows: list[Row]) -> None:
    out = RichConsole(width=160, highlight=False)
    out.print(header, soft_wrap=True)
    table = Table()
    for name, justify in (("measurement", "left"), ("ours (agent)", "right"), ("baseline (console)", "right"),
                          ("ratio (ours/baseline)", "right"), ("target", "left"), ("verdict", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]  # rich's Literal of justify names
    for row in rows:
        table.add_row(row.measurement, row.ours, row.baseline, row.ratio, row.target, row.verdict)
    out.print(table)


def clone_function() -> Callable[[engine.LinuxDirectBoot, int], Awaitable[list[float]]] | None:
    """``bench.sandbox_clone.clone_to_first_exec`` (the CLONES part), if it is here."""
    try:
        module = importlib.import_module("bench.sandbox_clone")
    except ModuleNotFoundError:
        return None
    found = getattr(module, "clone_to_first_exec", None)
    return found if callable(found) else None


def pinned(boot: engine.LinuxDirectBoot, folder: Path) -> engine.LinuxDirectBoot:
    """``boot`` with its kernel, initramfs and root image hard-linked into ``folder`` (same file
    system, no copy): another builder on this machine may prune the cached image mid-run."""
    def link(path: Path) -> Path:
        dest = folder / path.name
        os.link(path, dest)
        return dest

    assert boot.root_disk is not None and boot.initrd is not None
    return dataclasses.replace(boot, kernel=link(boot.kernel), initrd=link(boot.initrd),
                               root_disk=dataclasses.replace(boot.root_disk, path=link(boot.root_disk.path)))


async def run(runs: int, full: bool, rtt_samples: int) -> None:
    t0 = time.perf_counter()
    cached = await asyncio.to_thread(sandbox_boot)  # built or checked before any timing
    ready_s = time.perf_counter() - t0
    folder = Path(tempfile.mkdtemp(prefix=".bench-boot-", dir=cached.root_disk.path.parent.parent if cached.root_disk else None))
    try:
        await measure(pinned(cached, folder), runs, full, rtt_samples, ready_s)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def measure(boot: engine.LinuxDirectBoot, runs: int, full: bool, rtt_samples: int, ready_s: float) -> None:
    accel = engine.choose_accelerator()

    hellos, agent_boots, console_boots = Samples("hello"), Samples("agent"), Samples("console")
    await boot_agent(boot)  # untimed: page cache, the first QEMU of a process
    for r in range(runs):
        # Interleaved, mirrored every other round, so drift hits both kinds alike.
        for which in ("agent", "console") if r % 2 == 0 else ("console", "agent"):
            if which == "agent":
                hello, done = await boot_agent(boot)
                hellos.values.append(hello)
                agent_boots.values.append(done)
            else:
                console_boots.values.append(await boot_console(boot))
    one = await on_one_sandbox(boot, rtt_samples)

    rebuild_s = await asyncio.to_thread(rebuild_sandbox_image, False)
    full_s = await asyncio.to_thread(rebuild_sandbox_image, True) if full else None

    clone_rows: list[Row] = []
    clone = clone_function()
    if clone is not None:
        values = Samples("clone", await clone(boot, max(runs, 7)))
        clone_rows.append(Row(f"Clone refill → 1st agent exec (n={len(values.values)})", spread(values), "", "",
                              f"median ≤ {TARGET_CLONE_S * 1000:.0f} ms", verdict(values.median() <= TARGET_CLONE_S)))
    else:
        clone_rows.append(Row("Clone refill → 1st agent exec", "not measured: bench.sandbox_clone is not here",
                              "", "", f"median ≤ {TARGET_CLONE_S * 1000:.0f} ms", "—"))

    w_mib, r_mib = rate(FILE_BYTES, one.write_s), rate(FILE_BYTES, one.read_s)
    cw_mib, cr_mib = rate(CONSOLE_FILE_BYTES, one.console_write_s), rate(CONSOLE_FILE_BYTES, one.console_read_s)
    size, csize = f"{FILE_BYTES >> 20} MiB", f"{CONSOLE_FILE_BYTES >> 10} KiB"
    rows = [
        Row(f"Cold boot → agent hello (Python up, n={runs})", spread(hellos), "", "",
            f"median ≤ {TARGET_BOOT_S:.0f} s", verdict(hellos.median() <= TARGET_BOOT_S)),
        Row(f"Cold boot → 1st exec answered (n={runs})", spread(agent_boots), spread(console_boots),
            f"{agent_boots.median() / console_boots.median():.2f}×", f"median ≤ {TARGET_BOOT_S:.0f} s",
            verdict(agent_boots.median() <= TARGET_BOOT_S)),
        Row(f'exec(["true"]) round trip (n={rtt_samples})', latency(one.agent_exec), latency(one.console_exec),
            f"{one.agent_exec.q(0.5) / one.console_exec.q(0.5):.2f}× (p50)", "p50 ≤ console's",
            verdict(one.agent_exec.q(0.5) <= one.console_exec.q(0.5))),
        Row("  of which the guest: spawn to exit, as the agent times it", latency(Samples("g", one.guest_part)), "",
            "", "—", "info"),
        Row(f'exec(["/bin/true"]) / console exec("/bin/true") (n={rtt_samples})', latency(one.agent_exec),
            latency(one.console_bin_true), f"{one.agent_exec.q(0.5) / one.console_bin_true.q(0.5):.2f}× (p50)", "—",
            "info"),
        Row(f"exec of busybox's true (a static binary, n={rtt_samples})", latency(one.agent_busybox), "", "", "—",
            "info"),
        Row(f"agent ping round trip (n={rtt_samples})", latency(one.ping), latency(one.console_exec),
            f"{one.ping.q(0.5) / one.console_exec.q(0.5):.2f}× (p50)", "—", "info"),
        Row(f"write_file {size} (console: {csize} base64)", f"{w_mib:.1f} MiB/s", f"{cw_mib * 1024:.1f} KiB/s",
            f"{w_mib / cw_mib:.0f}×", f"≥ {TARGET_MIB_S:.0f} MiB/s", verdict(w_mib >= TARGET_MIB_S)),
        Row(f"read_file {size} (console: {csize} base64)", f"{r_mib:.1f} MiB/s", f"{cr_mib * 1024:.1f} KiB/s",
            f"{r_mib / cr_mib:.0f}×", f"≥ {TARGET_MIB_S:.0f} MiB/s", verdict(r_mib >= TARGET_MIB_S)),
        *clone_rows,
        Row("Image rebuild from the cached tree (our files changed)", fmt_s(rebuild_s), "", "", "—", "info"),
        Row("Image build from scratch (mmdebstrap + image)", fmt_s(full_s) if full_s is not None else "run with --full",
            "", "", "—", "info"),
    ]
    qemu = qemu_version(find_qemu()).removeprefix("QEMU emulator version ").split(" ")[0]
    header = (f"accelerator: {accel.name} · QEMU {qemu} · sandbox debian + python3, {CPUS} vCPU, {MEMORY_MB} MiB · "
              f"{runs} boots of each (+1 warm-up) · image ready in {fmt_s(ready_s)} · {os.cpu_count()} host cores "
              f"(load {os.getloadavg()[0]:.2f})")
    print_table(header, rows)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=7, help="cold boots of each kind (default 7)")
    parser.add_argument("--samples", type=int, default=RTT_SAMPLES, help="round trips of each kind (default 200)")
    parser.add_argument("--full", action="store_true", help="also build the Debian tree from scratch (minutes)")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.samples < 1:
        parser.error("--runs and --samples must be at least 1")
    exit_on_sigterm()
    asyncio.run(run(args.runs, args.full, args.samples))


if __name__ == "__main__":
    main()
