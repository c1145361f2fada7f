"""Shared helpers for tests that boot sandboxes: the test sandbox image (python3 only), built
once per run, and a context manager that boots a sandbox VM and kills it after.

Use the session fixture ``sandbox_boot_config`` (registered in tests/conftest.py) or call
``sandbox_boot_for_tests()``; a sandbox image that cannot be built fails the test with the
builder's message (a guest test must never skip).
"""
from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

import engine
from engine.microvm.boot import LinuxDirectBoot, sandbox_boot
from engine.microvm.handle import VmHandle
from engine.microvm.spec import VmSpec

# A console command printing the agent's pid: minbase has no procps and Debian's busybox no
# pgrep; the bracket keeps grep from matching its own command line.
FIND_AGENT = 'for p in /proc/[0-9]*; do grep -qs "[c]apsa_agent.py" "$p/cmdline" && echo "${p#/proc/}"; done'


@functools.cache
def _built() -> LinuxDirectBoot:
    return sandbox_boot("debian", ())


def sandbox_boot_for_tests() -> LinuxDirectBoot:
    """The python3-only sandbox boot, built on first use in this test run."""
    try:
        return _built()
    except engine.EngineError as err:
        pytest.fail(f"the test sandbox image cannot be built: {err}; run ./scripts/install.sh first")


@pytest.fixture(scope="session")
def sandbox_boot_config() -> LinuxDirectBoot:
    """The python3-only sandbox boot (session-scoped: built or checked once per run)."""
    return sandbox_boot_for_tests()


@asynccontextmanager
async def running_sandbox(
    boot: LinuxDirectBoot | None = None, *, ready_timeout: float = 120, **fields: Any
) -> AsyncIterator[VmHandle]:
    """A booted sandbox VM (1 CPU, 512 MiB, console on; ``fields`` override VmSpec fields),
    Running when the block starts and killed when it ends."""
    settings: dict[str, Any] = {"cpus": 1, "memory_mb": 512, "console": True, **fields}
    spec = VmSpec(boot=boot or sandbox_boot_for_tests(), **settings)
    vm = await VmHandle.start(spec)
    try:
        await vm.wait_ready(ready_timeout)
        yield vm
    finally:
        await vm.kill()
