"""Save a machine's state to a file and load it into a fresh machine, over QMP.

QEMU's ``exec:`` migration would run a shell command, which our ``-sandbox spawn=deny`` forbids
(and QEMU 7.2 has no ``file:`` transport), so the file is opened here and its descriptor handed
to QEMU over the QMP socket (``getfd`` with SCM_RIGHTS); ``fd:NAME`` migrates through it.

With ``ignore_shared`` (the ``x-ignore-shared`` capability) RAM that lives in a file mapped
``share=on`` is not written: the file itself is the RAM image, and the state shrinks from the
guest's whole memory to the device state (tens of KiB). A machine started with
``-incoming defer`` loads such a state with its RAM file mapped ``share=off`` (copy-on-write).
"""
from __future__ import annotations

import asyncio
import os
from pathlib import Path

from engine.errors import MachineError
from engine.kvm.machine import Machine

_POLL_S = 0.001
_FD_NAME = "capsa-migration"


async def _set_ignore_shared(machine: Machine, enabled: bool) -> None:
    await machine.execute(
        "migrate-set-capabilities",
        {"capabilities": [{"capability": "x-ignore-shared", "state": enabled}]},
    )


async def _pass_fd(machine: Machine, path: Path, flags: int) -> None:
    fd = os.open(path, flags | os.O_CLOEXEC, 0o600)
    try:
        machine.qmp.send_fd_scm(fd)
    except OSError as err:
        raise MachineError(f"could not pass {path} to QEMU: {err}") from err
    finally:
        os.close(fd)  # QEMU holds its own copy now
    await machine.execute("getfd", {"fdname": _FD_NAME})


async def save_state(machine: Machine, path: Path, *, ignore_shared: bool, timeout: float = 120) -> int:
    """Pause the guest and write its state to ``path``; returns its size in bytes.

    The guest stays paused afterwards (QEMU's ``postmigrate``): ``cont`` resumes it.
    """
    await machine.execute("stop")
    await _set_ignore_shared(machine, ignore_shared)
    await _pass_fd(machine, path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    await machine.execute("migrate", {"uri": f"fd:{_FD_NAME}"})
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        info = await machine.execute("query-migrate")
        status = info.get("status")
        if status == "completed":
            return path.stat().st_size
        if status in ("failed", "cancelled"):
            raise MachineError(f"saving the machine state failed: {info.get('error-desc', status)}")
        if loop.time() > deadline:
            await machine.execute("migrate_cancel")
            raise MachineError(f"saving the machine state took more than {timeout:.0f}s")
        await asyncio.sleep(_POLL_S)


async def load_state(machine: Machine, path: Path, *, ignore_shared: bool, timeout: float = 60) -> None:
    """Load ``path`` into ``machine`` (started with ``-incoming defer``) and resume the guest.

    A state QEMU cannot load (truncated, corrupt, from another QEMU or another device set)
    makes QEMU exit: that becomes a MachineError quoting what QEMU printed.
    """
    try:
        await _set_ignore_shared(machine, ignore_shared)
        await _pass_fd(machine, path, os.O_RDONLY)
        await machine.execute("migrate-incoming", {"uri": f"fd:{_FD_NAME}"})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (status := (await machine.execute("query-status"))["status"]) == "inmigrate":
            if loop.time() > deadline:
                raise MachineError(f"loading the machine state took more than {timeout:.0f}s")
            await asyncio.sleep(_POLL_S)
        if status not in ("paused", "postmigrate", "prelaunch", "running"):
            raise MachineError(f"the machine is {status!r} after loading its state, not paused")
        if status != "running":
            await machine.execute("cont")
    except MachineError as err:
        if not machine.exited:
            # QEMU exits on a failed load; give it the moment it needs to say why.
            await asyncio.wait({asyncio.ensure_future(machine.wait())}, timeout=1)
        detail = machine.stderr_tail()
        raise MachineError(f"restoring {path} failed: {err}", detail) from err
