"""The app on a real terminal: start-up, key-to-echo latency (idle and flooded), CPU.

Run: ``.venv/bin/python -m bench.tui [--runs N] [--samples N] [--cpu-seconds S]`` from the
repository root. Everything goes through a private tmux server (``tmux -L``, no config, a 120x40 window): the app is started
with ``capsa-tui app`` exactly as a user would, keys are typed with ``send-keys`` and the screen
is read with ``capture-pane``. Prints one table:

1. start-up to first frame: ``new-window`` running the app until ``capture-pane`` shows the
   dashboard's title and pool table (polled every 10 ms), median of ``--runs``, beside a minimal
   Textual app (a Header and a Static) started the same way with the same Python;
2. key to echo in the console view of a reserved VM: one printable key by ``send-keys`` until it
   shows after the prompt (polled every 3 ms), then Backspace until it is gone (not timed);
   ``--samples`` each with the guest idle and while the guest floods the same serial console
   (see ``FLOOD_SETUP``); p50 / p95, beside the same keys typed into ``capsa-tui vm console``
   (the raw relay of the same serial console to tmux, no Textual, no pyte) in the same tmux,
   idle and flooded: what is the app's and what is the guest's UART and QEMU's;
3. the app's CPU use (``utime + stime`` of its own process from /proc, not its QEMU children)
   over ``--cpu-seconds`` while 3 pools of 1 VM each idle, beside the minimal app idle as long,
   and while its console floods, beside ``vm console`` relaying the same flood.

The tmux server is killed in ``finally`` (the app then gets SIGHUP; its QEMU processes die with
it through PR_SET_PDEATHSIG), and any QEMU process this bench started that is still there is
killed too.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console as RichConsole
from rich.table import Table

import engine
from bench.benchlib import exit_on_sigterm, percentile
from capsatui.widgets.terminal.view import FEED_BUDGET_S, TICK_S

CAPSA_TUI = Path(sys.executable).with_name("capsa-tui")
POOLS = ["bench-a", "bench-b", "bench-c"]  # sorted first in the table: bench-a is row 0
PROFILE = """\
name: {name}
boot: default
cpus: 1
memory_mb: {memory}
console: true
pool:
  size: 1
  max_size: 1
"""
BASELINE_APP = """\
from textual.app import App
from textual.widgets import Header, Static


class Minimal(App):
    TITLE = "baseline"

    def compose(self):
        yield Header()
        yield Static("baseline-ready")


Minimal().run()
"""
# The flood: a 256-byte unit that saves the cursor, writes on the top rows, and restores the
# cursor (DECSC/DECRC), repeated to 256 KiB and written to the console in a loop by a background
# job. Every write the guest makes (cat's 4 KiB, the tty's 2 KiB chunks) holds whole units, so the
# shell's echo of a typed key, a write of its own, lands at the prompt, not on the top row, and
# the screen never scrolls. The LF keeps the app's flood bound (it drops the oldest pending output
# and restarts after a newline) from cutting a unit in half.
FLOOD_UNIT_TEXT = "flood-" + "0123456789" * 23 + "abcdefghi"  # 245 characters: 256-byte units
FLOOD_SETUP = (
    "e=$(printf '\\033'); printf '%s7%s[1;1H%s\\n%s8' \"$e\" \"$e\" " + FLOOD_UNIT_TEXT + " \"$e\" > /tmp/u; "
    "for i in 1 2 3 4 5 6 7 8 9 10; do cat /tmp/u /tmp/u > /tmp/v; mv /tmp/v /tmp/u; done; "
    "(while :; do cat /tmp/u; done > $(tty) 2>/dev/null &)"
)
KEY = "Z"
ECHO_TIMEOUT_S = 3.0


class Tmux:
    """A private tmux server; windows are addressed as ``bench:NAME``."""

    def __init__(self, env: dict[str, str]) -> None:
        self.socket = f"capsa-bench-{os.getpid()}"
        self.env = env
        self.run("new-session", "-d", "-s", "bench", "-n", "idle", "-x", "120", "-y", "40", "sleep 100000")
        self.socket_path = self.run("display-message", "-p", "#{socket_path}").strip()

    def run(self, *args: str, check: bool = True) -> str:
        result = subprocess.run(["tmux", "-L", self.socket, "-f", "/dev/null", *args],
                                capture_output=True, text=True, check=check, timeout=10)  # fmt: skip
        return result.stdout

    def window(self, name: str, command: str) -> None:
        env_args = [arg for key, value in self.env.items() for arg in ("-e", f"{key}={value}")]
        self.run("new-window", "-d", "-t", "bench", "-n", name, *env_args, f"exec {command}")

    def close(self, name: str) -> None:
        self.run("kill-window", "-t", f"bench:{name}", check=False)

    def alive(self, name: str) -> bool:
        return name in self.run("list-windows", "-t", "bench", "-F", "#{window_name}", check=False).split()

    def screen(self, name: str) -> str:
        return self.run("capture-pane", "-p", "-t", f"bench:{name}", check=False)

    def keys(self, name: str, *keys: str, literal: bool = False) -> None:
        self.run("send-keys", "-t", f"bench:{name}", *(["-l"] if literal else []), *keys)

    def pid(self, name: str) -> int:
        return int(self.run("display-message", "-p", "-t", f"bench:{name}", "#{pane_pid}").strip())

    def kill(self) -> None:
        self.run("kill-server", check=False)
        Path(self.socket_path).unlink(missing_ok=True)  # tmux leaves its socket file behind


def wait(check: Callable[[], bool], timeout: float, what: str, tmux: Tmux, name: str, poll: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}; the screen:\n{tmux.screen(name)}")
        time.sleep(poll)


def pool_cells(screen: str, name: str, columns: tuple[str, ...]) -> list[str]:
    """The cells under ``columns`` (header names) of pool ``name``'s row in the dashboard's table."""
    header: list[str] = []
    for line in screen.splitlines():
        words = line.split()
        if words[:1] == ["Profile"]:
            header = words
        elif words[:1] == [name] and header:
            return [words[header.index(c)] for c in columns if c in header and header.index(c) < len(words)]
    return []


def cpu_seconds(pid: int) -> float:
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def cpu_percent(pid: int, seconds: float) -> float:
    before, started = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return 100 * (cpu_seconds(pid) - before) / (time.monotonic() - started)


def qemu_pids(marker: str) -> set[int]:
    """QEMU processes whose command line holds ``marker`` (the app's private TMPDIR, where its VMs'
    sockets are): ours only, even once reparented, never another program's VMs on the host."""
    pids = set()
    for entry in Path("/proc").iterdir():
        try:
            if (entry.name.isdigit() and (entry / "comm").read_text().startswith("qemu-system")
                    and marker.encode() in (entry / "cmdline").read_bytes()):
                pids.add(int(entry.name))
        except OSError:
            pass
    return pids


def first_frame(tmux: Tmux, name: str, command: str, marks: list[str]) -> float:
    """Seconds from new-window until every one of ``marks`` is on the screen."""
    started = time.perf_counter()
    tmux.window(name, command)
    deadline = started + 30
    while True:
        screen = tmux.screen(name)
        if all(mark in screen for mark in marks):
            elapsed = time.perf_counter() - started
            break
        if time.perf_counter() > deadline:
            raise TimeoutError(f"no first frame of {command!r}:\n{screen}")
        time.sleep(0.01)
    tmux.close(name)
    wait(lambda: not tmux.alive(name), 10, f"{name} to close", tmux, "idle")
    return elapsed


def echo_latencies(tmux: Tmux, name: str, samples: int, lost: list[int] | None = None) -> list[float]:
    """Key → its echo after the prompt, ``samples`` times (Backspace between, not timed).

    An echo not drawn within ECHO_TIMEOUT_S counts in ``lost`` (when given) instead of failing:
    under a flood the app draws only the newest output, and may drop the echo with the flood."""

    def echoed() -> bool:
        return any(line.rstrip().endswith(f"# {KEY}") for line in tmux.screen(name).splitlines())

    out = []
    for i in range(samples + 3):  # 3 warm-ups, not counted
        started = time.perf_counter()
        tmux.keys(name, KEY, literal=True)
        try:
            wait(echoed, ECHO_TIMEOUT_S, "the echo", tmux, name, poll=0.003)
        except TimeoutError:
            if lost is None:
                raise
            if i >= 3:
                lost.append(i)
        else:
            if i >= 3:
                out.append(time.perf_counter() - started)
        tmux.keys(name, "BSpace")
        wait(lambda: not echoed(), 10, "the erase", tmux, name, poll=0.003)
        time.sleep(0.05)
    return out


@dataclass
class ConsoleRun:
    """Key-to-echo samples in one console, idle and flooded, and its process's CPU while flooded."""

    idle: list[float]
    flood: list[float]
    lost: int  # flooded keys whose echo was not drawn within ECHO_TIMEOUT_S
    flood_cpu: float  # percent of one core


def console_echo(tmux: Tmux, name: str, samples: int, cpu_window: float) -> ConsoleRun:
    """In the console at a prompt in window ``name``: echo times idle, then start the flood, the
    process's CPU over ``cpu_window`` seconds of it, and echo times flooded."""
    tmux.keys(name, "clear", "Enter")
    time.sleep(0.5)
    idle = echo_latencies(tmux, name, samples)
    tmux.keys(name, FLOOD_SETUP, literal=True)
    tmux.keys(name, *["Enter"] * 8)  # the prompt well below the rows the flood writes
    wait(lambda: "flood-0123" in tmux.screen(name), 60, "the flood", tmux, name)
    time.sleep(1)
    flood_cpu = cpu_percent(tmux.pid(name), cpu_window)
    lost: list[int] = []
    flood = echo_latencies(tmux, name, samples, lost)
    print(f"{name} echo: idle {idle}\nflood {flood}\nflood CPU {flood_cpu:.1f} %", file=sys.stderr)
    return ConsoleRun(idle, flood, len(lost), flood_cpu)


def echo_rows(table: Table, condition: str, ours: list[float], base: list[float], baseline_is: str) -> None:
    """The p50 and p95 rows of one key-to-echo comparison."""
    for label, q in (("p50", 0.5), ("p95", 0.95)):
        o, b = percentile(ours, q), percentile(base, q)
        table.add_row(f"key → echo, {label}: {condition}", _ms(o), _ms(b), _ratio(o, b), baseline_is)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f} ms"


def _ratio(ours: float | None, base: float | None) -> str:
    return f"{ours / base:.2f}×" if ours is not None and base else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="start-ups of each app (median)")
    parser.add_argument("--samples", type=int, default=30, help="keys timed per console condition")
    parser.add_argument("--cpu-seconds", type=float, default=10.0, help="CPU sampling window")
    parser.add_argument("--memory-mb", type=int, default=160, help="memory of each pool's VMs")
    args = parser.parse_args()
    exit_on_sigterm()  # so the finally below still kills tmux and removes ``work`` on SIGTERM
    accel = engine.choose_accelerator()
    engine.default_image(build=False)  # fail early, with the fix, when there is no image
    print(f"capsa-tui app bench: {accel.describe()}", file=sys.stderr)

    work = Path(tempfile.mkdtemp(prefix="capsa-bench-tui-"))
    (work / "profiles").mkdir()
    for name in POOLS:
        (work / "profiles" / f"{name}.yaml").write_text(PROFILE.format(name=name, memory=args.memory_mb))
    baseline_py = work / "baseline_app.py"
    baseline_py.write_text(BASELINE_APP)
    baseline_cmd = f"{sys.executable} {baseline_py}"
    app_tmp = work / "tmp"  # short: a Unix socket's path must fit in 108 bytes
    app_tmp.mkdir()
    env = {"CAPSA_CONFIG_DIR": str(work), "TERM": "xterm-256color", "TMPDIR": str(app_tmp)}
    tmux = Tmux(env)
    try:
        # 1. Start-up to first frame, alternating, one warm-up each (page cache, .pyc).
        ours_start: list[float] = []
        base_start: list[float] = []
        app_cmd = f"{CAPSA_TUI} app --start ''"  # no pool: the first frame alone
        for i in range(args.runs + 1):
            pair = [(ours_start, app_cmd, ["capsa-tui", "Profile"]),
                    (base_start, baseline_cmd, ["baseline", "baseline-ready"])]  # fmt: skip
            for into, command, marks in pair if i % 2 == 0 else reversed(pair):
                elapsed = first_frame(tmux, f"start{i}", command, marks)
                if i:
                    into.append(elapsed)
        print(f"start-up: ours {ours_start}, baseline {base_start}", file=sys.stderr)

        # 3. Idle CPU: the app with 3 pools of 1 VM, all idle, beside the minimal app.
        tmux.window("app", f"{CAPSA_TUI} app --start {','.join(POOLS)}")
        wait(lambda: all(pool_cells(tmux.screen("app"), n, ("State", "Idle")) == ["running", "1"] for n in POOLS),
             120, "3 pools with 1 idle VM each", tmux, "app")  # fmt: skip
        time.sleep(2)  # the last redraws and boot bookkeeping settle
        ours_cpu = cpu_percent(tmux.pid("app"), args.cpu_seconds)
        tmux.window("base", baseline_cmd)
        wait(lambda: "baseline-ready" in tmux.screen("base"), 30, "the minimal app", tmux, "base")
        time.sleep(2)
        base_cpu = cpu_percent(tmux.pid("base"), args.cpu_seconds)
        tmux.close("base")
        print(f"idle CPU: ours {ours_cpu:.2f} %, baseline {base_cpu:.2f} %", file=sys.stderr)

        # 2. Key → echo in the console of a reserved bench-a VM (row 0 is selected at start).
        tmux.keys("app", "r")
        wait(lambda: any(line.rstrip().endswith("#") for line in tmux.screen("app").splitlines()),
             60, "the console's prompt", tmux, "app")  # fmt: skip
        ours = console_echo(tmux, "app", args.samples, args.cpu_seconds)
        # Leave as a user would: detach from the console, quit (stops every pool).
        tmux.keys("app", "C-]")
        time.sleep(0.3)
        tmux.keys("app", "d")
        time.sleep(0.5)
        tmux.keys("app", "q")
        try:
            wait(lambda: not tmux.alive("app"), 30, "the app to quit", tmux, "app")
        except TimeoutError as err:
            print(f"warning: {err}", file=sys.stderr)

        # The baseline: the same keys and flood through the raw relay of ``vm console``.
        tmux.window("raw", f"{CAPSA_TUI} vm console --memory {args.memory_mb}")
        wait(lambda: any(line.rstrip().endswith("#") for line in tmux.screen("raw").splitlines()),
             120, "the raw console's prompt", tmux, "raw")  # fmt: skip
        raw = console_echo(tmux, "raw", args.samples, args.cpu_seconds)
        tmux.keys("raw", "C-]")  # detaches and stops the VM
        try:
            wait(lambda: not tmux.alive("raw"), 30, "vm console to end", tmux, "raw")
        except TimeoutError as err:
            print(f"warning: {err}", file=sys.stderr)
    finally:
        for window in ("app", "raw"):
            if tmux.alive(window):  # an error above: stop it first (SIGTERM), so it stops its VMs
                try:
                    os.kill(tmux.pid(window), signal.SIGTERM)
                    wait(lambda: not tmux.alive(window), 15, f"{window} to end", tmux, window)
                except (OSError, ValueError, subprocess.SubprocessError, TimeoutError):
                    pass
        tmux.kill()
        time.sleep(0.5)
        for pid in qemu_pids(f"{app_tmp}/"):  # normally none: they die with the app
            try:
                os.kill(pid, signal.SIGKILL)
                print(f"warning: killed a QEMU process left behind: {pid}", file=sys.stderr)
            except OSError:
                pass
        shutil.rmtree(work, ignore_errors=True)

    table = Table(title=f"capsa-tui on a real terminal (tmux 120x40, {accel.name})")
    for column in ("measure", "ours", "baseline", "ratio", "baseline is"):
        table.add_column(column)
    o, b = statistics.median(ours_start), statistics.median(base_start)
    table.add_row(
        f"start-up → first frame, median (min–max) of {args.runs}",
        f"{_ms(o)} ({_ms(min(ours_start))}–{_ms(max(ours_start))})",
        f"{_ms(b)} ({_ms(min(base_start))}–{_ms(max(base_start))})",
        _ratio(o, b),
        "a minimal Textual app (Header + Static)",
    )
    echo_rows(table, "guest idle", ours.idle, raw.idle, "vm console (raw relay), guest idle")
    echo_rows(table, f"guest flooding (n={len(ours.flood)}, {ours.lost} not drawn)", ours.flood, ours.idle,
              "the same, guest idle")  # fmt: skip
    echo_rows(table, "guest flooding", ours.flood, raw.flood, f"vm console (raw relay), flooding ({raw.lost} lost)")
    table.add_row(
        f"app CPU, {len(POOLS)} pools × 1 idle VM, {args.cpu_seconds:.0f} s",
        f"{ours_cpu:.2f} %",
        f"{base_cpu:.2f} %",
        _ratio(ours_cpu, base_cpu) if base_cpu > 0 else "-",
        "the minimal app, idle as long",
    )
    table.add_row(
        f"app CPU while its console floods, {args.cpu_seconds:.0f} s (pyte ≤ {FEED_BUDGET_S * 1000:.0f} ms "
        f"of each {TICK_S * 1000:.0f} ms tick)",
        f"{ours.flood_cpu:.1f} %",
        f"{raw.flood_cpu:.1f} %",
        _ratio(ours.flood_cpu, raw.flood_cpu) if raw.flood_cpu > 0 else "-",
        "vm console relaying the same flood",
    )
    RichConsole(width=150).print(table)


if __name__ == "__main__":
    main()
