"""The one place the benchmarks reach past ``engine``'s public API, and why each name is needed.

Every other bench module imports ``engine`` (its public names) and ``bench.benchlib`` only. What
is here measures or reproduces something the public API hides on purpose; when an engine
internal moves, this file is the only one to fix.

- ``find_qemu``, ``qemu_version`` (engine.kvm.host): ``bench.boot`` starts the very QEMU binary
  the engine uses by hand, for its plain-QEMU baseline; ``bench.boot`` and ``bench.net`` print
  its version in the table's header.
- ``MachineSpec``, ``MachineSockets``, ``qemu_argv`` (engine.kvm.cmdline) and ``kernel_cmdline``
  (engine.microvm.machine_spec): ``bench.boot`` derives the baseline's argv from the engine's own
  command line, so the baseline differs from ours only in how the console is connected.
- ``READY_MARKER`` (engine.console.match): that baseline reads the raw serial output and waits
  for the guest's ready marker, as the engine does.
- ``WaitingClone`` (engine.snapshot.clone), ``template_for`` (engine.snapshot.template): ``bench.snapshot`` times a
  restore (launch, load, identity fix-up) apart from any pool, and builds its template itself.
- ``timed_loads`` (wraps ``engine.snapshot.clone.load_state``): ``bench.snapshot``'s
  "loaded" mark, when the state is in and the guest resumed, inside ``WaitingClone.restore``.
- ``TEMPLATES_DIR_ENV``, ``RAM_DIR_ENV`` (engine.snapshot.store): ``bench.snapshot`` points the
  template store at a temporary folder; the engine's own names, not retyped, so a rename cannot
  silently leave the bench using (and pruning) the user's cached templates.
- ``percentile`` (engine.pool.stats): the benchmarks' p50/p95 follow the same nearest-rank rule
  as a pool's own stats (``bench.benchlib`` re-exports it).
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import engine.snapshot.clone as _clone_module
from engine.pool.stats import percentile
from engine.console.match import READY_MARKER
from engine.kvm.cmdline import MachineSockets, MachineSpec, qemu_argv
from engine.kvm.host import find_qemu, qemu_version
from engine.microvm.machine_spec import kernel_cmdline
from engine.snapshot.clone import WaitingClone
from engine.snapshot.template import template_for
from engine.snapshot.store import RAM_DIR_ENV, TEMPLATES_DIR_ENV

__all__ = [
    "RAM_DIR_ENV",
    "READY_MARKER",
    "TEMPLATES_DIR_ENV",
    "MachineSockets",
    "MachineSpec",
    "WaitingClone",
    "find_qemu",
    "percentile",
    "kernel_cmdline",
    "qemu_argv",
    "qemu_version",
    "template_for",
    "timed_loads",
]


@contextlib.contextmanager
def timed_loads() -> Iterator[list[float]]:
    """Record when each ``load_state`` inside ``WaitingClone.restore`` returns (for this block only).

    ``restore`` looks ``load_state`` up in its own module's globals at call time, so the wrapper
    goes there; it must follow ``WaitingClone`` if that moves to another module.
    """
    marks: list[float] = []
    original = _clone_module.load_state

    async def timed(*args: Any, **kwargs: Any) -> None:
        await original(*args, **kwargs)
        marks.append(time.perf_counter())

    _clone_module.load_state = timed
    try:
        yield marks
    finally:
        _clone_module.load_state = original
