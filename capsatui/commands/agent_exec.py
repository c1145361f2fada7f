"""Running one command through a sandbox's agent for the command line: bytes out, a shell's status.

``capsa-tui run``, ``vm run --sandbox`` and ``sandbox run`` share it: stdout goes to our stdout
and stderr to our stderr as raw bytes (never decoded), and the exit status follows the shell's
conventions so scripts can branch on it: the command's own code, 128+N after signal N, 124 after
a timeout (as coreutils' ``timeout`` does).
"""
from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO

import engine

TIMEOUT_STATUS = 124  # what coreutils' timeout(1) exits with


@dataclass(frozen=True)
class Outcome:
    """What the command line prints and exits with after one agent exec."""

    stdout: bytes
    stderr: bytes
    status: int
    note: str | None = None  # one line for our own stderr (a timeout, a signal death, a cap)


def shell_status(exit_code: int | None, signal: int | None) -> int:
    """A shell's ``$?``: the exit code, or 128+N for a command signal N killed."""
    if exit_code is not None:
        return exit_code
    if signal is not None:
        return 128 + signal
    return 255  # the agent said neither: not a status a command could have chosen


def outcome_of(result: engine.ExecResult) -> Outcome:
    note = None
    if result.exit_code is None and result.signal is not None:
        note = f"the command was killed by signal {result.signal}"
    elif result.truncated:
        note = "the command's output went past the cap; the rest was dropped in the guest"
    return Outcome(result.stdout, result.stderr, shell_status(result.exit_code, result.signal), note)


def timeout_outcome(err: engine.ExecTimeout, timeout: float) -> Outcome:
    return Outcome(err.stdout, err.stderr, TIMEOUT_STATUS,
                   f"the command ran past its {timeout:g} s timeout; its process group was killed (status 124)")


async def run_through_agent(agent: engine.Agent, command: str | Sequence[str], timeout: float,
                            stdin: bytes = b"") -> Outcome:
    """Run ``command`` (a shell line: the guest runs it through /bin/sh -c, as the console
    would; or an argv, run as it is) with ``stdin`` and say what to print and exit with."""
    try:
        result = await agent.exec(command, timeout=timeout, stdin=stdin)
    except engine.ExecTimeout as err:
        return timeout_outcome(err, timeout)
    return outcome_of(result)


def emit(outcome: Outcome, stdout: BinaryIO | None = None, stderr: BinaryIO | None = None) -> int:
    """Write the command's bytes to our stdout and stderr (and the note after them); its status."""
    out = stdout if stdout is not None else sys.stdout.buffer
    err = stderr if stderr is not None else sys.stderr.buffer
    out.write(outcome.stdout)
    out.flush()
    err.write(outcome.stderr)
    if outcome.note:
        err.write(f"capsa-tui: {outcome.note}\n".encode())
    err.flush()
    return outcome.status


__all__ = ["TIMEOUT_STATUS", "Outcome", "emit", "outcome_of", "run_through_agent", "shell_status", "timeout_outcome"]
