"""TCP throughput, connection setup and ping through our gateway, beside QEMU's user-mode network.

Run: ``.venv/bin/python -m bench.net [--size-mb N] [--runs N] [--rounds N] [--connections N]`` from
the repository root.
Prints one table, our gateway (``NetworkMode.user_nat()``) beside QEMU's own slirp
(``-netdev user``) with the same guest, kernel, machine and emulation:

1. TCP throughput guest -> host: the guest sends a ``--size-mb`` MiB file of random bytes with
   ``nc`` to a sink on the host's loopback; timed on the host (first to last byte received) and
   by the guest (``time nc``);
2. TCP throughput host -> guest: the guest fetches as many bytes with ``wget -O /dev/null``
   from a loopback server; timed on the host (request read to the guest's close) and by the
   guest (``time wget``);
3. connection setup rate: ``--connections`` sequential ``nc`` connections to a host server that
   accepts and closes at once, timed by the guest (``time sh -c 'while ...'``);
4. ping round trip to the gateway (10.0.2.2), 20 echoes 0.2 s apart.

The host servers run in a child process (this module with ``--serve``), so they take no share
of the GIL from our gateway, which runs in this process's event loop as it does in real use,
and cost the same for both sides. VMs run one at a time (the host has 2 cores), ours and slirp
alternating, mirrored every other round. Every QEMU and the server process are killed in a
``finally``.

``--only ours`` with ``--rounds 1 --runs 1 --connections 0`` is the small run to profile the
gateway with: ``python -m cProfile -o /tmp/net.prof -m bench.net --only ours ...``.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console as RichConsole
from rich.table import Table

import engine
from bench.benchlib import exit_on_sigterm
from bench.internals import find_qemu, qemu_version

# The server child runs ``-m bench.net`` from here, wherever the bench itself was started.
REPO_ROOT = Path(__file__).resolve().parent.parent

CPUS = 1
MEMORY_MB = 384  # the guest's /tmp (tmpfs) holds the file it sends
BOOT_TIMEOUT_S = 60.0
HOST_NAME = "bench.test"  # our gateway shows it to the guest at a stand-in address
GATEWAY = "10.0.2.2"  # both networks' gateway; slirp also maps it to the host's loopback
PINGS = 20
MIB = 1 << 20

# busybox `time`: "real\t0m 1.23s" on stderr (exec() returns both streams).
REAL_TIME = re.compile(r"real\s+(\d+)m\s*([\d.]+)s")
PING_SUMMARY = re.compile(r"min/avg/max = ([\d.]+)/([\d.]+)/([\d.]+) ms")


# ----- host servers (child process) ------------------------------------------------------------


def serve(size: int) -> None:
    """The host side: a sink, an HTTP source of ``size`` bytes and an accept-and-close server.

    Prints one JSON line with the three ports, then one per finished connection, with
    ``time.perf_counter()`` stamps (CLOCK_MONOTONIC: comparable across processes). Exits when
    its stdin closes, so it cannot outlive the bench.
    """
    lock = threading.Lock()
    blob = os.urandom(size)
    header = f"HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {size}\r\n\r\n".encode()

    def emit(**record: object) -> None:
        with lock:
            sys.stdout.write(json.dumps(record) + "\n")
            sys.stdout.flush()

    def sink(conn: socket.socket, accepted: float) -> None:
        buf = bytearray(256 * 1024)
        total, first, last = 0, None, accepted
        with conn:
            while n := conn.recv_into(buf):
                last = time.perf_counter()
                first = first or last
                total += n
        emit(kind="sink", bytes=total, accepted=accepted, first=first or last, last=last)

    def source(conn: socket.socket, accepted: float) -> None:
        with conn:
            request = b""
            while b"\r\n\r\n" not in request and b"\n\n" not in request:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                request += chunk
            start = time.perf_counter()
            conn.sendall(header)
            conn.sendall(blob)
            sent = time.perf_counter()
            # The guest's wget closes once it has read Content-Length bytes: that close is when
            # the last byte has arrived (sendall returning only means it is in a buffer).
            conn.settimeout(300)
            while conn.recv(65536):
                pass
            end = time.perf_counter()
        emit(kind="source", bytes=size, accepted=accepted, first=start, sent=sent, last=end)

    def accept_loop(server: socket.socket, handler: Callable[[socket.socket, float], None] | None) -> None:
        while True:
            conn, _ = server.accept()
            accepted = time.perf_counter()
            if handler is None:  # accept-and-close
                conn.close()
                emit(kind="accept", t=accepted)
            else:
                threading.Thread(target=handler, args=(conn, accepted), daemon=True).start()

    servers = {name: socket.create_server(("127.0.0.1", 0), backlog=256) for name in ("sink", "source", "accept")}
    for name, handler in (("sink", sink), ("source", source), ("accept", None)):
        threading.Thread(target=accept_loop, args=(servers[name], handler), daemon=True).start()
    emit(kind="ports", **{name: s.getsockname()[1] for name, s in servers.items()})
    sys.stdin.read()  # until the bench closes our stdin (or dies)


class HostServers:
    """The server child process, seen from the bench: its ports and its records, by kind."""

    def __init__(self, proc: asyncio.subprocess.Process, ports: dict[str, int]) -> None:
        self.proc = proc
        self.ports = ports
        self.queues: dict[str, asyncio.Queue[dict[str, float]]] = {
            kind: asyncio.Queue() for kind in ("sink", "source", "accept")
        }
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, size: int) -> HostServers:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.net", "--serve", str(size),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=REPO_ROOT,
        )
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            ports = json.loads(line)
            del ports["kind"]
        except BaseException:
            proc.kill()
            await proc.wait()
            raise
        return cls(proc, ports)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            record = json.loads(line)
            self.queues[record.pop("kind")].put_nowait(record)

    async def next(self, kind: str, timeout: float = 30) -> dict[str, float]:
        return await asyncio.wait_for(self.queues[kind].get(), timeout)

    def drain(self, kind: str) -> list[dict[str, float]]:
        out = []
        while not self.queues[kind].empty():
            out.append(self.queues[kind].get_nowait())
        return out

    async def close(self) -> None:
        self._reader.cancel()
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()


# ----- one side's measurements -----------------------------------------------------------------


@dataclass
class Side:
    """What one network measured, over all rounds."""

    name: str
    mtu: int = 1500  # ours only
    g2h_host: list[float] = field(default_factory=list)  # MiB/s
    g2h_guest: list[float] = field(default_factory=list)
    h2g_host: list[float] = field(default_factory=list)
    h2g_guest: list[float] = field(default_factory=list)
    conn_rate: list[float] = field(default_factory=list)  # connections/s
    ping: list[tuple[float, float, float]] = field(default_factory=list)  # min/avg/max ms
    stats: list[dict[str, object]] = field(default_factory=list)


def builder(boot: engine.LinuxDirectBoot) -> engine.VmBuilder:
    return engine.vm(boot).cpus(CPUS).memory_mb(MEMORY_MB).console_enabled()


def ours_builder(boot: engine.LinuxDirectBoot, mtu: int) -> engine.VmBuilder:
    # Loopback stays closed unless a rule names it: a domain rule on a static host does. No DNS
    # leaves the gateway (the upstream is the discard port; only bench.test is ever asked).
    policy = engine.NetworkPolicy.deny_all().allow_dns().allow_domain(HOST_NAME)
    net = (
        engine.NetworkMode.user_nat()
        .host(HOST_NAME, "127.0.0.1")
        .policy(policy)
        .dns_upstream("127.0.0.1:9")
        .mtu(mtu)
        .build()
    )
    return builder(boot).network(net)


def slirp_builder(boot: engine.LinuxDirectBoot) -> engine.VmBuilder:
    # capsa.net=1 makes the guest's init load virtio-net and run udhcpc, as with ours.
    return (
        builder(boot)
        .cmdline_arg("capsa.net", "1")
        .qemu_args("-netdev", "user,id=n1", "-device", "virtio-net-device,netdev=n1")
    )


async def run_ok(console: engine.Console, command: str, timeout: float = 120) -> str:
    result = await console.run(command, timeout=timeout)
    if result.exit_code != 0:
        raise RuntimeError(f"guest command {command!r} failed ({result.exit_code}): {result.output[-500:]}")
    return result.output


def guest_seconds(output: str) -> float:
    found = REAL_TIME.search(output)
    if found is None:
        raise RuntimeError(f"no `time` line in {output[-300:]!r}")
    return int(found.group(1)) * 60 + float(found.group(2))


async def measure(side: Side, vm: engine.VmHandle, servers: HostServers, host: str,
                  size: int, runs: int, connections: int) -> None:
    """All measurements on one booted VM; ``host`` is how the guest names the host's loopback."""
    console = await vm.console()
    ports = servers.ports
    await run_ok(console, f"dd if=/dev/urandom of=/tmp/blob bs={MIB} count={size // MIB} 2>/dev/null")
    # Warm-ups (untimed): ARP, the first nc/wget exec, and (ours) the DNS answer for bench.test.
    await run_ok(console, f"ping -c 1 -W 2 {GATEWAY} >/dev/null")
    await run_ok(console, f"nc {host} {ports['accept']} </dev/null >/dev/null")
    await servers.next("accept")

    for _ in range(runs):
        out = await run_ok(console, f"time nc {host} {ports['sink']} </tmp/blob")
        record = await servers.next("sink")
        if record["bytes"] != size:
            raise RuntimeError(f"the sink got {record['bytes']} bytes of {size}")
        side.g2h_host.append(size / MIB / (record["last"] - record["first"]))
        side.g2h_guest.append(size / MIB / guest_seconds(out))

        out = await run_ok(console, f"time wget -q -O /dev/null http://{host}:{ports['source']}/blob")
        record = await servers.next("source")
        side.h2g_host.append(size / MIB / (record["last"] - record["first"]))
        side.h2g_guest.append(size / MIB / guest_seconds(out))

    if connections:
        # By address: a name would add one DNS round trip per connection on our side only (the
        # slirp guest uses 10.0.2.2). Our gateway still needs the name behind the address, from
        # its DNS answer of the warm-up just before (kept for 60 s).
        target = host
        if host == HOST_NAME:
            lookup = await run_ok(console, f"nslookup {HOST_NAME} | grep '^Address' | tail -1")
            target = lookup.split()[-1]
            await run_ok(console, f"nc {HOST_NAME} {ports['accept']} </dev/null >/dev/null")
            await servers.next("accept")
        loop = (f"i=0; while [ $i -lt {connections} ]; do nc {target} {ports['accept']} </dev/null >/dev/null; "
                "i=$((i+1)); done")
        out = await run_ok(console, f"time sh -c '{loop}'", timeout=300)
        await asyncio.sleep(0.2)  # the last accept's record
        accepted = len(servers.drain("accept"))
        if accepted != connections:
            raise RuntimeError(f"the host accepted {accepted} connections of {connections}")
        side.conn_rate.append(connections / guest_seconds(out))

    out = await run_ok(console, f"ping -c {PINGS} -i 0.2 -W 2 {GATEWAY}", timeout=60)
    found = PING_SUMMARY.search(out)
    if found is None:
        raise RuntimeError(f"no ping summary in {out[-300:]!r}")
    side.ping.append((float(found.group(1)), float(found.group(2)), float(found.group(3))))
    stats = vm.network_stats()  # empty for slirp: QEMU keeps its own
    if stats:
        side.stats.append(stats)


async def one_side(side: Side, boot: engine.LinuxDirectBoot, servers: HostServers,
                   size: int, runs: int, connections: int) -> None:
    ours = side.name != "slirp"
    vm: engine.VmHandle | None = None
    try:
        vm = await (ours_builder(boot, side.mtu) if ours else slirp_builder(boot)).build()
        await vm.wait_ready(BOOT_TIMEOUT_S)
        await measure(side, vm, servers, HOST_NAME if ours else GATEWAY, size, runs, connections)
    finally:
        if vm is not None:
            await vm.kill()


# ----- report ----------------------------------------------------------------------------------


def spread(values: list[float], fmt: str) -> str:
    if not values:
        return "—"
    med = format(statistics.median(values), fmt)
    if len(values) == 1:
        return med
    return f"{med} ({format(min(values), fmt)}–{format(max(values), fmt)})"


def ratio(ours: list[float], slirp: list[float]) -> str:
    if not ours or not slirp:
        return "—"
    return f"{statistics.median(ours) / statistics.median(slirp):.2f}×"


def verdict(ours: list[float], slirp: list[float]) -> str:
    if not ours or not slirp:
        return "—"
    ok = statistics.median(ours) >= statistics.median(slirp)
    return "[green]PASS[/green]" if ok else "[red]FAIL[/red]"


def print_report(header: str, ours: Side, jumbo: Side, slirp: Side, runs: int, connections: int) -> None:
    out = RichConsole(width=170, highlight=False)
    out.print(header, soft_wrap=True)
    table = Table()
    table.add_column("measurement")
    table.add_column("ours (MTU 1500)", justify="right")
    table.add_column("slirp (-netdev user)", justify="right")
    table.add_column("ratio (ours/slirp)", justify="right")
    table.add_column("target")
    table.add_column("verdict")
    table.add_column(f"ours (MTU {jumbo.mtu})", justify="right")
    table.add_column("ratio (jumbo/slirp)", justify="right")
    n = max(len(ours.g2h_host), len(slirp.g2h_host))
    for label, a, b, c in (
        (f"guest → host, MiB/s, host-timed (n={n})", ours.g2h_host, slirp.g2h_host, jumbo.g2h_host),
        ("guest → host, MiB/s, `time nc` in guest", ours.g2h_guest, slirp.g2h_guest, jumbo.g2h_guest),
        (f"host → guest, MiB/s, host-timed (n={n})", ours.h2g_host, slirp.h2g_host, jumbo.h2g_host),
        ("host → guest, MiB/s, `time wget` in guest", ours.h2g_guest, slirp.h2g_guest, jumbo.h2g_guest),
    ):
        if a or b or c:
            table.add_row(label, spread(a, ".1f"), spread(b, ".1f"), ratio(a, b), "≥ slirp", verdict(a, b),
                          spread(c, ".1f"), ratio(c, b))
    if connections:
        table.add_row(f"connection setup, conn/s ({connections} sequential nc)",
                      spread(ours.conn_rate, ".1f"), spread(slirp.conn_rate, ".1f"),
                      ratio(ours.conn_rate, slirp.conn_rate), "—", "info",
                      spread(jumbo.conn_rate, ".1f"), ratio(jumbo.conn_rate, slirp.conn_rate))

    def ping_cell(side: Side) -> str:
        if not side.ping:
            return "—"
        return "/".join(f"{statistics.median(p[i] for p in side.ping):.2f}" for i in range(3))

    table.add_row(f"ping {GATEWAY}, min/avg/max ms ({PINGS} echoes)", ping_cell(ours), ping_cell(slirp),
                  ratio([p[1] for p in ours.ping], [p[1] for p in slirp.ping]), "—", "info",
                  ping_cell(jumbo), ratio([p[1] for p in jumbo.ping], [p[1] for p in slirp.ping]))
    out.print(table)
    for side in (ours, jumbo):
        for index, stats in enumerate(side.stats):
            out.print(f"[dim]{side.name} gateway, VM {index + 1}: {json.dumps(stats, sort_keys=True)}[/dim]",
                      soft_wrap=True)


async def run(args: argparse.Namespace) -> None:
    boot = engine.default_boot()  # resolves (and if needed builds) the image before any timing
    binary = find_qemu()
    accel = engine.choose_accelerator()
    size = args.size_mb * MIB
    ours, jumbo, slirp = Side("ours"), Side("ours-jumbo", mtu=args.jumbo_mtu), Side("slirp")
    candidates = (ours, jumbo, slirp) if args.jumbo_mtu else (ours, slirp)
    sides = [s for s in candidates if args.only in (None, s.name)]
    servers = await HostServers.start(size)
    try:
        for r in range(args.rounds):
            # Mirrored every other round, so neither side always runs first on a fresh host.
            for side in sides if r % 2 == 0 else sides[::-1]:
                print(f"round {r + 1}/{args.rounds}: {side.name}", file=sys.stderr)
                await one_side(side, boot, servers, size, args.runs, args.connections)
    finally:
        await servers.close()

    kernel = engine.default_image(build=False).kernel_version
    qemu = qemu_version(binary).removeprefix("QEMU emulator version ").split(" ")[0]
    header = (
        f"accelerator: {accel.name} ({'hardware' if accel.is_hardware else 'software emulation'}) · "
        f"QEMU {qemu} · guest kernel {kernel} · {CPUS} vCPU, {MEMORY_MB} MiB · virtio-net (mmio) · "
        f"{args.size_mb} MiB per transfer, {args.runs} per direction per VM, {args.rounds} round(s) · "
        f"{os.cpu_count()} host cores"
    )
    print_report(header, ours, jumbo, slirp, args.runs, args.connections)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size-mb", type=int, default=32, help="MiB per transfer (default 32; ≤ 64: /tmp is RAM)")
    parser.add_argument("--runs", type=int, default=3, help="transfers per direction per VM (default 3)")
    parser.add_argument("--rounds", type=int, default=2, help="boots of each side, alternating (default 2)")
    parser.add_argument("--connections", type=int, default=200, help="connections in the setup-rate loop (default 200; 0: skip)")
    parser.add_argument("--only", choices=("ours", "ours-jumbo", "slirp"), help="measure one side only (e.g. to profile ours)")
    parser.add_argument("--jumbo-mtu", type=int, default=65520,
                        help="also measure ours with this link MTU (default 65520; 0: skip)")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # the host-server child
    args = parser.parse_args(argv)
    if args.serve is not None:
        serve(args.serve)
        return
    if not 1 <= args.size_mb <= 64:
        parser.error("--size-mb must be between 1 and 64")
    if args.runs < 1 or args.rounds < 1 or args.connections < 0:
        parser.error("--runs and --rounds must be at least 1, --connections at least 0")
    exit_on_sigterm()
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
