"""Boot and console latency of our VMs, beside plain QEMU started by hand.

Run: ``.venv/bin/python -m bench.boot [--runs N]`` from the repository root. Prints one table:

1. boot to first command answered: ``build()`` -> first ``exec("true")`` returning (ours), beside
   plain QEMU (``-serial stdio``, same kernel, initrd, kernel command line and machine flags)
   timed from ``Popen`` to the reply of a command typed after the guest's ready marker;
2. the same plain QEMU with ``-M pc`` (QEMU's default PC machine) as a second baseline;
3. console round trips on one booted VM of ours: a typed line's echo, and ``exec("true")``.

Boot runs are interleaved (ours, plain microvm, plain pc, ours, ...) and run one at a time, so
drift (page cache, thermal, a noisy neighbour) hits every kind alike and no two guests compete
for the two cores. Every QEMU started here is killed in a ``finally``.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import re
import select
import statistics
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console as RichConsole
from rich.table import Table

import engine
from bench.benchlib import exit_on_sigterm
from bench.internals import (
    READY_MARKER,
    MachineSockets,
    MachineSpec,
    find_qemu,
    kernel_cmdline,
    qemu_argv,
    qemu_version,
)

CPUS = 1
MEMORY_MB = 256
BOOT_TIMEOUT_S = 60.0
ECHO_WARMUP = 10
ECHO_SAMPLES = 200
EXEC_WARMUP = 10
EXEC_SAMPLES = 200

TARGET_BOOT_S = 2.0
TARGET_OVERHEAD_PCT = 5.0
TARGET_ECHO_P50_S = 0.040

# What the plain baseline types once the shell is ready, and the reply it waits for. The
# arithmetic means the tty's echo of the typed line cannot be mistaken for the reply.
PLAIN_COMMAND = b"echo r$((1+1))\n"
PLAIN_REPLY = b"r2"
# The end of the guest shell's prompt ("capsa:~# "); the echo of "#rtN" never contains it.
PROMPT = re.compile(rb"[#$] ")


@dataclass
class Samples:
    """Durations in seconds of one measurement, in the order they were taken."""

    name: str
    values: list[float] = field(default_factory=list)

    def median(self) -> float:
        return statistics.median(self.values)

    def quantile(self, q: float) -> float:
        """Nearest-rank quantile (no interpolation: with 7 runs, p95 is simply the maximum)."""
        ordered = sorted(self.values)
        rank = max(1, min(len(ordered), round(q * len(ordered) + 0.5)))
        return ordered[rank - 1]


@dataclass(frozen=True)
class Row:
    """One line of the result table."""

    measurement: str
    ours: str
    baseline: str
    ratio: str
    target: str
    verdict: str


# ----- plain QEMU by hand ----------------------------------------------------------------------


def plain_argv(binary: str, machine: str, boot: engine.LinuxDirectBoot) -> list[str]:
    """Our exact QEMU argv for ``machine``, with the socket plumbing swapped for ``-serial stdio``.

    Deriving it from ``qemu_argv`` (rather than typing it out) guarantees the baseline differs
    from ours only in how the console is connected and that it has no QMP monitor.
    """
    spec = engine.vm(boot).cpus(CPUS).memory_mb(MEMORY_MB).machine_type(machine).console_enabled().spec()
    machine_spec = MachineSpec(
        kernel=boot.kernel,
        initrd=boot.initrd,
        append=kernel_cmdline(spec),
        cpus=CPUS,
        memory_mb=MEMORY_MB,
        accel="tcg",
        machine=machine,
    )
    full = qemu_argv(binary, machine_spec, MachineSockets(Path("/nonexistent/q"), Path("/nonexistent/s")))
    argv: list[str] = []
    skip_next = False
    for i, arg in enumerate(full):
        if skip_next:
            skip_next = False
            continue
        value = full[i + 1] if i + 1 < len(full) else ""
        if arg in ("-chardev", "-mon") or (arg == "-serial" and value.startswith("chardev:")):
            skip_next = True
            continue
        argv.append(arg)
    return argv + ["-serial", "stdio"]


def _read_until(fd: int, buf: bytearray, needle: bytes, start: int, deadline: float) -> int:
    """Read ``fd`` into ``buf`` until ``needle`` occurs at or after ``start``; its end offset."""
    while True:
        found = buf.find(needle, start)
        if found >= 0:
            return found + len(needle)
        left = deadline - time.perf_counter()
        if left <= 0:
            raise TimeoutError(f"no {needle!r} within {BOOT_TIMEOUT_S:.0f}s; last output: {bytes(buf[-300:])!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                raise EOFError(f"QEMU closed its stdout; last output: {bytes(buf[-300:])!r}")
            buf += chunk


def boot_plain(argv: Sequence[str]) -> float:
    """Popen -> the reply to a command typed after the ready marker, in seconds."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        fd = proc.stdout.fileno()
        buf = bytearray()
        deadline = t0 + BOOT_TIMEOUT_S
        after_marker = _read_until(fd, buf, READY_MARKER, 0, deadline)
        proc.stdin.write(PLAIN_COMMAND)
        proc.stdin.flush()
        _read_until(fd, buf, PLAIN_REPLY, after_marker, deadline)
        return time.perf_counter() - t0
    finally:
        proc.kill()
        proc.wait()


# ----- ours ------------------------------------------------------------------------------------


def builder(boot: engine.LinuxDirectBoot) -> engine.VmBuilder:
    return engine.vm(boot).cpus(CPUS).memory_mb(MEMORY_MB).console_enabled()


async def boot_ours(boot: engine.LinuxDirectBoot) -> float:
    """build() -> the first exec("true") returning, in seconds."""
    vm: engine.VmHandle | None = None
    t0 = time.perf_counter()
    try:
        vm = await builder(boot).build()
        console = await vm.console()
        await console.exec("true", timeout=BOOT_TIMEOUT_S)
        return time.perf_counter() - t0
    finally:
        if vm is not None:
            await vm.kill()


async def round_trips(boot: engine.LinuxDirectBoot) -> tuple[Samples, Samples]:
    """Echo of a typed line, and exec("true"), on one booted VM of ours."""
    echo = Samples("echo")
    execs = Samples("exec")
    vm = await builder(boot).build()
    try:
        console = await vm.console()
        await console.exec("true", timeout=BOOT_TIMEOUT_S)
        for i in range(ECHO_WARMUP + ECHO_SAMPLES):
            # A shell comment: the guest only echoes it and prints a fresh prompt. The reader is
            # created before the write so the echo cannot slip past it.
            reader = console.reader()
            tag = f"#rt{i}"
            t0 = time.perf_counter()
            await console.write_line(tag)
            await reader.wait_for(tag, timeout=10)
            dt = time.perf_counter() - t0
            # Wait (untimed) for the next prompt so each sample starts with an idle shell. (The
            # ready marker cannot serve: /etc/profile prints it once per shell, not per prompt.)
            await reader.wait_for(PROMPT, timeout=10)
            if i >= ECHO_WARMUP:
                echo.values.append(dt)
        # exec() frames its command with markers; let its reader start past our comment lines.
        console.read_available_bytes()
        for i in range(EXEC_WARMUP + EXEC_SAMPLES):
            t0 = time.perf_counter()
            await console.exec("true", timeout=10)
            dt = time.perf_counter() - t0
            if i >= EXEC_WARMUP:
                execs.values.append(dt)
    finally:
        await vm.kill()
    return echo, execs


# ----- report ----------------------------------------------------------------------------------


def fmt_s(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds >= 1 else f"{seconds * 1000:.1f} ms"


def boot_cell(s: Samples) -> str:
    return f"{fmt_s(s.median())} ({fmt_s(min(s.values))}–{fmt_s(max(s.values))})"


def latency_cell(s: Samples) -> str:
    return f"p50 {fmt_s(s.quantile(0.50))} / p99 {fmt_s(s.quantile(0.99))}"


def verdict(ok: bool) -> str:
    return "[green]PASS[/green]" if ok else "[red]FAIL[/red]"


def build_rows(ours: Samples, micro: Samples, pc: Samples, echo: Samples, execs: Samples) -> list[Row]:
    # Paired by round: ours and plain microvm of one round ran in slots of the same parity, so
    # the round's slow/fast state cancels out of their difference (see run()).
    paired = statistics.median(o - m for o, m in zip(ours.values, micro.values, strict=True))
    overhead = paired / micro.median() * 100
    return [
        Row(
            "Boot → 1st command (vs plain microvm)",
            boot_cell(ours),
            boot_cell(micro),
            f"{ours.median() / micro.median():.2f}×",
            f"median ≤ {TARGET_BOOT_S:.1f} s",
            verdict(ours.median() <= TARGET_BOOT_S),
        ),
        Row(
            "Our overhead over plain microvm",
            f"{paired * 1000:+.0f} ms (median of paired runs)",
            fmt_s(micro.median()),
            f"{overhead:+.1f} %",
            f"< {TARGET_OVERHEAD_PCT:.0f} %",
            verdict(overhead < TARGET_OVERHEAD_PCT),
        ),
        Row(
            "Boot → 1st command (vs plain -M pc)",
            boot_cell(ours),
            boot_cell(pc),
            f"{ours.median() / pc.median():.2f}×",
            "—",
            "info",
        ),
        Row(
            f"Console echo round trip (n={len(echo.values)})",
            latency_cell(echo),
            "",
            "",
            f"p50 < {TARGET_ECHO_P50_S * 1000:.0f} ms",
            verdict(echo.quantile(0.50) < TARGET_ECHO_P50_S),
        ),
        Row(
            f'exec("true") round trip (n={len(execs.values)})',
            latency_cell(execs),
            "",
            "",
            "—",
            "info",
        ),
    ]


def print_table(header: str, rows: list[Row]) -> None:
    out = RichConsole(width=150, highlight=False)
    out.print(header, soft_wrap=True)  # one header line, however narrow the terminal
    table = Table()
    table.add_column("measurement")
    table.add_column("ours", justify="right")
    table.add_column("baseline", justify="right")
    table.add_column("ratio (ours/baseline)", justify="right")
    table.add_column("target")
    table.add_column("verdict")
    for row in rows:
        table.add_row(row.measurement, row.ours, row.baseline, row.ratio, row.target, row.verdict)
    out.print(table)


async def run(runs: int) -> None:
    boot = engine.default_boot()  # resolves (and if needed builds) the image before any timing
    binary = find_qemu()
    accel = engine.choose_accelerator()
    if accel.name != "tcg":
        # The plain baselines are pinned to TCG (the brief's flags); comparing KVM with TCG
        # would make the overhead row meaningless.
        raise SystemExit(f"this benchmark compares against TCG, but ours would use {accel.name}: set CAPSA_ACCEL=tcg")
    micro_argv = plain_argv(binary, "microvm", boot)
    pc_argv = plain_argv(binary, "pc", boot)

    ours, micro, pc = Samples("ours"), Samples("plain microvm"), Samples("plain pc")
    async def once(kind: Samples | None, which: str) -> None:
        value = await boot_ours(boot) if which == "ours" else boot_plain(micro_argv if which == "micro" else pc_argv)
        if kind is not None:
            kind.values.append(value)

    # One untimed round first: it pulls the QEMU binary, kernel and initrd into the page cache,
    # and on this host the first QEMU a process starts is always ~0.3 s slower.
    for which in ("ours", "pc", "micro"):
        await once(None, which)
    # On this host consecutive boots alternate slow/fast (~0.1 s apart, whatever starts them),
    # so ours and plain microvm must always take slots of the same parity: slots 0 and 2 of a
    # round, mirrored every other round (ours, pc, micro / micro, pc, ours). A fixed order
    # ours, micro, pc with an odd run count hands one side 4 slow runs of 7 and the other 3,
    # which alone moves the medians apart by ~7 %. Plain pc (info only) takes the other parity.
    kinds = {"ours": ours, "micro": micro, "pc": pc}
    for r in range(runs):
        for which in ("ours", "pc", "micro") if r % 2 == 0 else ("micro", "pc", "ours"):
            await once(kinds[which], which)
    echo, execs = await round_trips(boot)

    kernel = engine.default_image(build=False).kernel_version
    qemu = qemu_version(binary).removeprefix("QEMU emulator version ").split(" ")[0]
    header = (
        f"accelerator: {accel.name} ({'hardware' if accel.is_hardware else 'software emulation'}) · "
        f"QEMU {qemu} · guest kernel {kernel} · {CPUS} vCPU, {MEMORY_MB} MiB · "
        f"{runs} boots of each (+1 warm-up round) · {os.cpu_count()} host cores"
    )
    print_table(header, build_rows(ours, micro, pc, echo, execs))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=7, help="timed boots of each kind (default 7)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    exit_on_sigterm()
    asyncio.run(run(args.runs))


if __name__ == "__main__":
    main()
