"""A pool's template: one boot of its spec saved with the RAM in a shared file, found or built.

Every clone maps the template's RAM copy-on-write (``memory-backend-file``, ``x-ignore-shared``),
so a restore loads only device state; templates are cached by their machine shape's key.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

from engine.errors import EngineError, SnapshotError
from engine.kvm.accel import AccelChoice, choose_accelerator
from engine.kvm.cmdline import MachineSpec
from engine.kvm.machine import Machine
from engine.kvm.migration import save_state
from engine.microvm.handle import VmHandle
from engine.microvm.machine_spec import machine_spec_for
from engine.microvm.spec import VmSpec
from engine.microvm.vm_files import VmFiles
from engine.netstack.config import UserNatConfig
from engine.snapshot.identity import AWAIT_LINE, FIXUP_TIMEOUT_S
from engine.snapshot.meta import STATE_FILE, MachineShape, SnapshotInfo, sha256_file, write_info
from engine.snapshot.record import guest_facts, machine_shape
from engine.snapshot.snapshot import Snapshot, snapshot_unsupported
from engine.snapshot.store import prepare_ram_file, prune_stale_templates, remove_template, template_lock, templates_dir


def template_machine(spec: VmSpec, accel: AccelChoice, files: VmFiles | None = None) -> MachineSpec:
    """The machine a template of ``spec`` runs as (RAM in a file, not yet placed); without
    ``files`` (its overlays) only its shape is meant."""
    machine = machine_spec_for(spec, accel, files, shape_only=files is None)
    return replace(machine, ram_backend="file", ram_file=Path("/template-ram"), ram_shared=True)


def template_shape(spec: VmSpec, accel: AccelChoice) -> MachineShape:
    """The shape key of ``spec``'s template (everything that shapes the VM, QEMU's version too)."""
    return machine_shape(template_machine(spec, accel))


def find_template(spec: VmSpec) -> tuple[Snapshot | None, str | None]:
    """The usable template of ``spec`` (or None) and, if there is a stale or broken one, why."""
    accel = choose_accelerator(spec.accel)
    shape = template_shape(spec, accel)
    directory = templates_dir() / shape.key()
    if not directory.exists():
        return None, None
    try:
        snapshot = Snapshot.load(directory)
    except SnapshotError as err:
        return None, str(err)
    stale = snapshot.stale_because(shape)
    if stale is not None:
        return None, f"the template in {directory} is stale ({stale})"
    return snapshot, None


async def template_for(spec: VmSpec, *, boot_timeout: float = 60, notes: list[str] | None = None) -> Snapshot:
    """``spec``'s template: the cached one, or (none, or a stale or broken one) a new one.

    One process builds a template at a time; the others wait and then take it. ``notes`` gets
    a line saying why a cached template was not used.
    """
    found, why = await asyncio.to_thread(find_template, spec)
    if found is not None:
        return found
    key = template_shape(spec, choose_accelerator(spec.accel)).key()
    lock = template_lock(key)
    await asyncio.to_thread(lock.__enter__)
    try:
        found, _ = await asyncio.to_thread(find_template, spec)  # built while we waited?
        if found is not None:
            return found
        if why is not None and notes is not None:
            notes.append(f"rebuilt the template: {why}")
        return await build_template(spec, boot_timeout=boot_timeout)
    finally:
        lock.__exit__(None, None, None)


async def build_template(spec: VmSpec, *, boot_timeout: float = 60) -> Snapshot:
    """Boot ``spec`` once with its RAM in a shared file, wait for its shell, save it, stop it.

    Replaces a template of the same shape; see :func:`template_for` for the cached one.
    """
    reason = snapshot_unsupported(spec)
    if reason is not None:
        raise SnapshotError(reason)
    spec.check()
    if isinstance(spec.network, UserNatConfig) and spec.network.cluster is not None:
        # The template is no member: it would hold a cluster address while it boots and saves.
        # Its clones join (and are re-addressed) when they restore.
        spec = replace(spec, network=replace(spec.network, cluster=None))
    accel = choose_accelerator(spec.accel)
    shape = template_shape(spec, accel)
    key = shape.key()
    final = templates_dir() / key
    staging = templates_dir() / f".build-{key}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    ram = prepare_ram_file(key, spec.memory_mb)
    try:
        files = await VmFiles.make_async(spec)
        try:
            machine = await Machine.launch(replace(template_machine(spec, accel, files), ram_file=ram))
        finally:
            files.remove()  # QEMU holds the overlays open now (or failed)
        # mount=False: the template holds its 9p devices unmounted (a mounted one blocks the save).
        vm = await VmHandle.attach(spec, accel, machine, mount=False)
        try:
            await vm.wait_ready(boot_timeout)
            if spec.boot.has_agent:
                await _connect_agent(vm, boot_timeout)
            else:
                await _await_identity(vm)
            size = await save_state(machine, staging / STATE_FILE, ignore_shared=True)
            guest_ip = vm.guest_ip
        finally:
            await vm.kill()
        if isinstance(spec.network, UserNatConfig) and guest_ip is None:
            raise SnapshotError("the template's guest got no DHCP lease before it was saved")
        info = SnapshotInfo(
            kind="template",
            shape=shape,
            guest=guest_facts(spec, guest_ip),
            state_size=size,
            state_sha256=await asyncio.to_thread(sha256_file, staging / STATE_FILE),
            ram_file=str(ram),
            created_at=time.time(),
            extra={"identity": "agent" if spec.boot.has_agent else "awaiting"},
        )
        write_info(staging, info)
        if final.exists():
            remove_template(final)
        os.rename(staging, final)
        await asyncio.to_thread(prune_stale_templates)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        ram.unlink(missing_ok=True)
        raise
    return Snapshot(final, info)


async def _connect_agent(vm: VmHandle, timeout: float) -> None:
    """Save a sandbox with its agent holding the port and idle, and warm: a session ran one
    exec and one identity fix-up (the template's own hostname and MAC, so nothing changes), so
    every clone inherits an agent whose lazy imports (subprocess, socket: most of a second each
    under emulation) are done and whose code paths the guest has run; a clone's host only opens
    a new session on it."""
    nat = vm.spec.network if isinstance(vm.spec.network, UserNatConfig) else None
    try:
        agent = await vm.agent(timeout)
        await agent.ping()
        result = await agent.exec(["true"], timeout=timeout)
        if result.exit_code != 0:
            raise SnapshotError(f"`true` exited {result.exit_code} in the template: {result.stderr!r}")
        await agent.set_identity(os.urandom(32), time.time(), vm.spec.hostname, nat.guest_mac if nat else None)
        await agent.drain()
    except EngineError as err:
        raise SnapshotError(f"the template's agent did not answer before it was saved: {err}") from err


async def _await_identity(vm: VmHandle) -> None:
    """Leave the template's shell waiting in ``read`` for a clone's identity (AWAIT_LINE)."""
    stream = vm.console_stream
    begin = stream.end_offset
    await stream.write(AWAIT_LINE)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + FIXUP_TIMEOUT_S
    # The echo of the line's end means the shell has it; the pause lets it reach ``read``
    # (saved a moment early, a clone only finishes those steps itself).
    while b"\n" not in stream.read_from(begin):
        if loop.time() > deadline or stream.closed:
            raise SnapshotError(f"the template's shell did not take its last line: {stream.seen_since(begin)!r}")
        with contextlib.suppress(TimeoutError, EngineError):
            async with asyncio.timeout(1):
                await stream.next_chunk(stream.end_offset)
    await asyncio.sleep(0.2)


__all__ = ["build_template", "find_template", "template_for", "template_shape"]
