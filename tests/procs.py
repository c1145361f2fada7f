"""Read the host's process table from /proc (tests use it to prove nothing is left running)."""
from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ProcStat:
    """The fields of /proc/PID/stat that the tests look at."""

    pid: int
    comm: str
    state: str
    ppid: int
    sid: int


def read_stat(pid: int) -> ProcStat | None:
    """The stat of ``pid``, or None when there is no such process."""
    try:
        text = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return None
    # comm may hold spaces and parentheses: it ends at the last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    return ProcStat(pid, text[text.index("(") + 1 : text.rindex(")")], fields[0], int(fields[1]), int(fields[3]))


def processes() -> Iterator[ProcStat]:
    """Every process alive now."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := read_stat(int(entry.name))) is not None:
            yield stat


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone)."""
    stat = read_stat(pid)
    return stat is not None and stat.state != "Z"


def qemu_children(parent: int) -> set[int]:
    """Pids of qemu processes whose parent is ``parent``."""
    return {p.pid for p in processes() if p.ppid == parent and p.comm.startswith("qemu-system")}


def stop_child(proc: subprocess.Popen[Any], timeout: float = 10) -> None:
    """End a helper child that exits when its stdin closes (a test's server): close its stdin,
    wait, kill it if it does not go, and close its stdout."""
    if proc.stdin is not None:
        proc.stdin.close()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()
