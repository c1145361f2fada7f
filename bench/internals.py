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
- ``sandbox_boot`` (engine.microvm.boot): ``bench.sandbox`` boots sandboxes from their spec
  (``engine.sandbox()``, the public builder, is not on main yet).
- ``rebuild_sandbox_image`` (wraps engine.image.sandbox's ``_tree`` and ``_build_image``):
  ``bench.sandbox`` times the image step apart (our files laid into the cached Debian tree) and,
  for ``--full``, the tree too, into keys of its own that it deletes after, so the user's cached
  image and tree are neither used nor pruned.
- ``percentile`` (engine.pool.stats): the benchmarks' p50/p95 follow the same nearest-rank rule
  as a pool's own stats (``bench.benchlib`` re-exports it).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import engine.image.sandbox as _sandbox_image
import engine.snapshot.clone as _clone_module
from engine.pool.stats import percentile
from engine.console.match import READY_MARKER
from engine.kvm.cmdline import MachineSockets, MachineSpec, qemu_argv
from engine.kvm.host import find_qemu, qemu_version
from engine.image.build import resolve_packages
from engine.microvm.boot import sandbox_boot
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
    "rebuild_sandbox_image",
    "sandbox_boot",
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


def rebuild_sandbox_image(full: bool) -> float:
    """Seconds to build the python3-only sandbox image into a throw-away key: from the cached
    Debian tree (as when our files change), or with ``full`` from a fresh mmdebstrap tree too.

    Builds the user's image first if it is missing (untimed), so the cached tree exists.
    """
    sandbox_boot()
    names = _sandbox_image.check_packages(())
    archive = _sandbox_image.host_archive()
    _kernel, busybox = resolve_packages()
    root = _sandbox_image.sandbox_dir()
    tree = root / "trees" / f"{_sandbox_image.tree_key(archive, names)}.tar"
    # Under the builders' lock: another builder's sweep would take our scratch folders away.
    with _sandbox_image._lock():
        return _timed_build(archive, names, busybox, tree, full)


def _timed_build(archive: _sandbox_image.Archive, names: tuple[str, ...], busybox: Any, tree: Path, full: bool) -> float:
    root = _sandbox_image.sandbox_dir()
    key = f"bench-{os.getpid()}"
    target = root / f".bench-image-{os.getpid()}"
    fresh_tree: Path | None = None
    t0 = time.perf_counter()
    try:
        if full:
            fresh_tree = _sandbox_image._tree(archive, names, key, lambda stage, fraction: None)
            tree = fresh_tree
        _sandbox_image._build_image(tree, target, key, "debian", names, busybox, lambda stage, fraction: None)
        return time.perf_counter() - t0
    finally:
        shutil.rmtree(target, ignore_errors=True)
        if fresh_tree is not None:
            fresh_tree.unlink(missing_ok=True)
