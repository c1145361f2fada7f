"""Start a machine process that cannot outlive the process that started it.

The child asks the kernel for SIGKILL when its parent dies (``PR_SET_PDEATHSIG``), so even a
``kill -9`` of the engine leaves no QEMU behind. It also gets a session of its own, so a Ctrl-C
typed at the user's terminal reaches the engine (which then stops its machines in order) rather
than every QEMU at once.
"""
from __future__ import annotations

import asyncio
import ctypes
import os
import signal
from collections import deque

_PR_SET_PDEATHSIG = 1
_STDERR_TAIL_LINES = 40


def _die_with_parent(parent_pid: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    # The parent may have died between fork and prctl: then nobody would ever signal us.
    if os.getppid() != parent_pid:
        os._exit(1)


class StderrTail:
    """Keeps the last lines a process wrote to stderr (error messages quote them)."""

    def __init__(self, limit: int = _STDERR_TAIL_LINES) -> None:
        self._lines: deque[str] = deque(maxlen=limit)

    async def collect(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            self._lines.append(line.decode(errors="replace").rstrip())

    def text(self) -> str:
        return "\n".join(self._lines)


async def spawn_tied(argv: list[str]) -> asyncio.subprocess.Process:
    """Start ``argv`` with stdin/stdout closed and stderr piped; it dies with us."""
    parent = os.getpid()
    return await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
        preexec_fn=lambda: _die_with_parent(parent),
    )


def process_running(pid: int) -> bool:
    """Whether ``pid`` runs right now (a zombie does not): read from /proc, not from our loop.

    The event loop learns of a child's death only when it next handles SIGCHLD; a pool handing
    out a VM must not trust that lag, so it asks the kernel directly (one small file read).
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    # The command name is parenthesised and may itself hold spaces or parentheses.
    state = stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3]
    return state not in (b"Z", b"X", b"x", b"")
