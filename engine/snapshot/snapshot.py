"""Snapshots of running VMs and the clones started from them.

    path = await vm.snapshot("/tmp/snap")                 # the VM keeps running
    async with await engine.vm_from_snapshot(path) as clone:
        print(await (await clone.console()).exec("hostname"))

Two kinds (see :mod:`engine.snapshot.meta`): ``vm.snapshot()`` writes a *full* snapshot (RAM
inside the state file: portable, ~100 MiB for a 256 MiB guest, 0.1-0.3 s to restore); a pool
builds a *template* once (:func:`build_template`): its RAM is a file on a tmpfs that every clone
maps copy-on-write (``memory-backend-file``, ``x-ignore-shared``), so a restore loads only
device state, tens of KiB, in milliseconds, and idle clones share the template's pages.

A clone is its template until told otherwise: same kernel random state, clock, hostname and
MAC. Right after the restore the engine types one line on its console (see
:mod:`engine.snapshot.identity`): host entropy plus an immediate reseed of the kernel's generator,
the host's time, a hostname and a fresh MAC (the clone's own gateway grants it the address the
template held). The clone is handed out only after that has run.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import shutil
import time
from dataclasses import replace
from pathlib import Path
from ipaddress import IPv4Address

from engine.microvm.boot import LinuxDirectBoot
from engine.snapshot.identity import AWAIT_LINE, ERROR_PREFIX, fixup_line
from engine.errors import ConsoleError, EngineError, MachineError, SnapshotError
from engine.kvm.accel import AccelChoice, choose_accelerator
from engine.kvm.cmdline import MachineSpec
from engine.kvm.host import find_qemu, qemu_version
from engine.kvm.machine import Machine
from engine.kvm.migration import load_state, save_state
from engine.kvm.process import process_running
from engine.netstack.config import NetworkConfig, NetworkMode, NoNetwork, UserNatConfig
from engine.snapshot.meta import (
    STATE_FILE,
    GuestFacts,
    MachineShape,
    SnapshotInfo,
    file_stamp,
    read_info,
    sha256_file,
    write_info,
)
from engine.snapshot.store import (
    prepare_ram_file,
    prune_stale_templates,
    remove_template,
    template_lock,
    templates_dir,
)
from engine.microvm.handle import VmHandle, machine_spec_for
from engine.microvm.spec import VmSpec

_FIXUP_TIMEOUT_S = 20.0
_HOSTNAME_BAD = re.compile(r"[^a-zA-Z0-9-]+")


def snapshot_unsupported(spec: VmSpec) -> str | None:
    """Why VMs of ``spec`` cannot be cloned from a snapshot, or None when they can."""
    if not spec.boot.capsa_guest or spec.boot.ready_marker is None:
        return "only the default guest can be cloned: a clone's identity is fixed up by its helper script"
    if spec.login is not None:
        return "a login profile has no shell on its console for the clone's identity fix-up"
    if spec.cmdline_override is not None:
        return "a replaced kernel command line may drop what the guest's init needs to be cloned"
    return None


def machine_shape(machine: MachineSpec) -> MachineShape:
    """The shape recorded for (and compared against) a machine launched from ``machine``."""
    return MachineShape(
        qemu=qemu_version(find_qemu()),
        kernel=str(machine.kernel),
        kernel_stamp=file_stamp(machine.kernel),
        initrd=str(machine.initrd) if machine.initrd else None,
        initrd_stamp=file_stamp(machine.initrd) if machine.initrd else None,
        append=machine.append,
        cpus=machine.cpus,
        memory_mb=machine.memory_mb,
        machine=machine.machine,
        accel=machine.accel,
        nic=machine.nic_mac is not None,
        nic_mtu=machine.nic_mtu,
        extra_args=tuple(machine.extra_args),
        ram_block="ram0" if machine.ram_backend is not None else "default",
    )


def _guest_facts(spec: VmSpec, guest_ip: IPv4Address | None) -> GuestFacts:
    marker = spec.boot.ready_marker
    return GuestFacts(
        ready_marker=marker.hex() if marker is not None else None,
        capsa_guest=spec.boot.capsa_guest,
        console=spec.console,
        hostname=spec.hostname,
        scrollback_bytes=spec.scrollback_bytes,
        guest_ip=str(guest_ip) if guest_ip is not None else None,
    )


def _random_mac() -> str:
    # 52:54:00 is QEMU's prefix; the gateway's own MAC (52:55:...) can never be drawn.
    tail = os.urandom(3)
    return "52:54:00:" + ":".join(f"{b:02x}" for b in tail)


def clone_hostname(name: str) -> str:
    """``name`` made a valid hostname (pool VM ids such as ``web_a-3`` become ``web-a-3``)."""
    cleaned = _HOSTNAME_BAD.sub("-", name).strip("-")[:63].strip("-")
    return cleaned or "capsa"


class Snapshot:
    """A snapshot folder that passed :func:`~engine.snapshot.meta.read_info`'s checks."""

    def __init__(self, directory: Path, info: SnapshotInfo) -> None:
        self.directory = directory
        self.info = info
        self._stamp = self._files_stamp()

    def _files_stamp(self) -> tuple[str, ...]:
        files = [self.directory / STATE_FILE]
        if self.info.ram_file is not None:
            files.append(Path(self.info.ram_file))
        try:
            return tuple(file_stamp(path) for path in files)
        except SnapshotError:
            return ()

    def check_unchanged(self) -> None:
        """SnapshotError if the state or RAM file changed or went away since it was checked."""
        if self._files_stamp() != self._stamp or not self._stamp:
            raise SnapshotError(f"the snapshot in {self.directory} changed on disk since it was loaded")

    @classmethod
    def load(cls, directory: str | Path) -> Snapshot:
        directory = Path(directory).expanduser()
        return cls(directory, read_info(directory))

    @property
    def state_file(self) -> Path:
        return self.directory / STATE_FILE

    @property
    def is_template(self) -> bool:
        return self.info.kind == "template"

    def stale_because(self, shape: MachineShape) -> str | None:
        """Why this snapshot cannot stand in for a machine of ``shape`` (None: it can)."""
        differences = self.info.shape.differences(shape)
        return "; ".join(differences) if differences else None

    def boot(self) -> LinuxDirectBoot:
        guest = self.info.guest
        return LinuxDirectBoot(
            self.info.shape.kernel,
            self.info.shape.initrd,
            ready_marker=bytes.fromhex(guest.ready_marker) if guest.ready_marker else None,
            capsa_guest=guest.capsa_guest,
        )

    def vm_spec(self, network: NetworkConfig | None = None) -> VmSpec:
        """A VmSpec that rebuilds the saved machine (the recorded command line, verbatim)."""
        shape, guest = self.info.shape, self.info.guest
        if network is None:
            network = NetworkMode.user_nat().mtu(shape.nic_mtu).build() if shape.nic else NoNetwork()
        if shape.nic != isinstance(network, UserNatConfig):
            has = "has" if shape.nic else "has no"
            raise SnapshotError(f"the snapshot in {self.directory} {has} a network card: its network must match")
        return VmSpec(
            boot=self.boot(),
            cpus=shape.cpus,
            memory_mb=shape.memory_mb,
            console=guest.console,
            cmdline_override=shape.append,
            hostname=guest.hostname,
            machine=shape.machine,
            accel=shape.accel,
            scrollback_bytes=guest.scrollback_bytes,
            extra_qemu_args=shape.extra_args,
            network=network,
        )

    def machine_spec(self, spec: VmSpec, accel: AccelChoice) -> MachineSpec:
        """The machine a clone starts as: the saved shape, waiting for its state."""
        base = machine_spec_for(spec, accel)
        if self.is_template:
            assert self.info.ram_file is not None
            memory = {"ram_backend": "file", "ram_file": Path(self.info.ram_file), "ram_shared": False}
        else:
            memory = {"ram_backend": "ram" if self.info.shape.ram_block == "ram0" else None}
        return replace(base, append=self.info.shape.append, incoming="defer", **memory)  # type: ignore[arg-type]


class WaitingClone:
    """A QEMU process started with ``-incoming defer``: a clone that needs only its state.

    Starting QEMU costs tens of milliseconds; a pool keeps a few of these ready so that a
    refill is only the restore itself.
    """

    def __init__(self, snapshot: Snapshot, spec: VmSpec, accel: AccelChoice, machine: Machine) -> None:
        self.snapshot = snapshot
        self.spec = spec
        self.accel = accel
        self.machine = machine
        self.lost = False  # its process was gone (killed from outside) when a restore failed

    @classmethod
    async def launch(cls, snapshot: Snapshot, spec: VmSpec) -> WaitingClone:
        accel = choose_accelerator(spec.accel)
        machine = await Machine.launch(snapshot.machine_spec(spec, accel))
        return cls(snapshot, spec, accel, machine)

    def alive(self) -> bool:
        return not self.machine.exited and process_running(self.machine.pid)

    async def close(self) -> None:
        await self.machine.close()

    async def restore(self, spec: VmSpec | None = None, *, hostname: str | None = None, fix_identity: bool = True) -> VmHandle:
        """Load the state, resume the guest and give it its own identity; the VM is Running.

        ``spec`` may change the network policy, forwards or hosts (not the machine's shape).
        The machine is killed if anything fails (MachineError, SnapshotError, ConsoleError).
        """
        spec = spec or self.spec
        snapshot = self.snapshot
        mac = _random_mac()
        if isinstance(spec.network, UserNatConfig):
            spec = replace(spec, network=replace(spec.network, guest_mac=mac))
        try:
            snapshot.check_unchanged()
            await load_state(self.machine, snapshot.state_file, ignore_shared=snapshot.is_template)
        except BaseException:
            # load_state waited for a failing QEMU to exit: a signal means someone killed it,
            # an exit status means QEMU refused the state.
            code = self.machine.process.returncode
            self.lost = code is not None and code < 0
            await self.machine.close()
            raise
        lease = snapshot.info.guest.guest_ip
        fixing = fix_identity and spec.boot.capsa_guest and spec.boot.ready_marker is not None
        vm = await VmHandle.attach(
            spec, self.accel, self.machine, lease=IPv4Address(lease) if lease else None, running=not fixing
        )
        try:
            if fixing:
                awaiting = snapshot.info.extra.get("identity") == "awaiting"
                host = clone_hostname(hostname or spec.hostname)
                await _fix_identity(vm, host, mac if vm.has_network else None, awaiting=awaiting)
        except BaseException:
            await vm.kill()
            raise
        return vm


async def _fix_identity(vm: VmHandle, hostname: str, mac: str | None, *, awaiting: bool) -> None:
    stream = vm.console_stream
    begin = stream.end_offset
    await stream.write(fixup_line(os.urandom(32), int(time.time()), hostname, mac, awaiting=awaiting))
    try:
        await vm.wait_ready(_FIXUP_TIMEOUT_S)
    except EngineError as err:
        raise SnapshotError(f"the clone did not finish its identity fix-up: {err}") from err
    marker = vm.spec.boot.ready_marker
    assert marker is not None
    seen = stream.read_from(begin)
    end = seen.find(marker)
    if ERROR_PREFIX in seen[: max(end, 0)]:
        problem = seen[seen.find(ERROR_PREFIX) :].split(b"\n", 1)[0].decode(errors="replace").strip()
        raise SnapshotError(f"the clone's identity fix-up failed: {problem}")
    if end >= 0:
        # The typed line and its echo are the engine's, not the user's: the console starts at
        # the clone's first prompt, as a fresh VM's starts at its boot.
        stream.forget_before(begin + end + len(marker))


# ----- saving ----------------------------------------------------------------------------------


async def save_snapshot(vm: VmHandle, dest_dir: str | Path) -> Path:
    """Save the running ``vm`` as a full snapshot in ``dest_dir``; the VM runs on afterwards."""
    dest = Path(dest_dir).expanduser()
    machine = vm.machine
    if machine.spec is None or machine.exited:
        raise SnapshotError("the VM is not running: nothing to snapshot")
    if vm.spec.login is not None:
        raise SnapshotError("a VM with a login on its console cannot be snapshotted: a clone's identity is fixed at a root shell")
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SnapshotError(f"cannot create {dest}: {err.strerror}") from err
    if any(dest.iterdir()):
        raise SnapshotError(f"{dest} is not empty: a snapshot needs a folder of its own")
    try:
        size = await save_state(machine, dest / STATE_FILE, ignore_shared=False)
    finally:
        # The VM keeps running whatever happened (QEMU leaves it paused after a migration).
        if not machine.exited:
            with contextlib.suppress(MachineError):
                await machine.execute("cont")
    info = SnapshotInfo(
        kind="full",
        shape=machine_shape(machine.spec),
        guest=_guest_facts(vm.spec, vm.guest_ip),
        state_size=size,
        state_sha256=await asyncio.to_thread(sha256_file, dest / STATE_FILE),
        created_at=time.time(),
    )
    write_info(dest, info)
    return dest


# ----- templates -------------------------------------------------------------------------------


def template_machine(spec: VmSpec, accel: AccelChoice) -> MachineSpec:
    """The machine a template of ``spec`` runs as (RAM in a file, not yet placed)."""
    return replace(machine_spec_for(spec, accel), ram_backend="file", ram_file=Path("/template-ram"), ram_shared=True)


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
    spec.validate()
    spec.boot.check()
    accel = choose_accelerator(spec.accel)
    shape = template_shape(spec, accel)
    key = shape.key()
    final = templates_dir() / key
    staging = templates_dir() / f".build-{key}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    ram = prepare_ram_file(key, spec.memory_mb)
    machine_spec = replace(template_machine(spec, accel), ram_file=ram)
    try:
        machine = await Machine.launch(machine_spec)
        vm = await VmHandle.attach(spec, accel, machine)
        try:
            await vm.wait_ready(boot_timeout)
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
            guest=_guest_facts(spec, guest_ip),
            state_size=size,
            state_sha256=await asyncio.to_thread(sha256_file, staging / STATE_FILE),
            ram_file=str(ram),
            created_at=time.time(),
            extra={"identity": "awaiting"},
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


async def _await_identity(vm: VmHandle) -> None:
    """Leave the template's shell waiting in ``read`` for a clone's identity (AWAIT_LINE)."""
    stream = vm.console_stream
    begin = stream.end_offset
    await stream.write(AWAIT_LINE)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _FIXUP_TIMEOUT_S
    # The echo of the line's end means the shell has it; the pause lets it reach ``read``
    # (saved a moment early, a clone only finishes those steps itself).
    while b"\n" not in stream.read_from(begin):
        if loop.time() > deadline or stream.closed:
            raise SnapshotError(f"the template's shell did not take its last line: {stream.seen_since(begin)!r}")
        with contextlib.suppress(TimeoutError, EngineError):
            async with asyncio.timeout(1):
                await stream.next_chunk(stream.end_offset)
    await asyncio.sleep(0.2)


async def vm_from_snapshot(
    path: str | Path,
    *,
    network: NetworkConfig | None = None,
    hostname: str | None = None,
    fix_identity: bool = True,
) -> VmHandle:
    """Start a clone of the snapshot (or template) in ``path``; returns it Running.

    ``network`` replaces the network settings (policy, forwards, hosts) the clone runs with;
    by default a snapshot with a network card gets ``NetworkMode.user_nat()``'s defaults.
    ``fix_identity`` (our guest only, which must be at its shell prompt, as after boot) gives
    the clone fresh random state, the host's time, ``hostname`` (by default the saved one with
    a random suffix) and a new MAC; without it the clone resumes exactly as saved.
    """
    snapshot = await asyncio.to_thread(Snapshot.load, path)
    spec = snapshot.vm_spec(network)
    hostname = clone_hostname(hostname or f"{snapshot.info.guest.hostname}-{secrets.token_hex(3)}")
    spec = replace(spec, hostname=hostname)
    spec.validate()
    spec.boot.check()
    accel = choose_accelerator(spec.accel)
    stale = snapshot.stale_because(machine_shape(snapshot.machine_spec(spec, accel)))
    if stale is not None:
        raise SnapshotError(f"the snapshot in {snapshot.directory} cannot be restored here: {stale}")
    waiting = await WaitingClone.launch(snapshot, spec)
    return await waiting.restore(spec, hostname=hostname, fix_identity=fix_identity)


__all__ = [
    "Snapshot",
    "WaitingClone",
    "build_template",
    "template_for",
    "clone_hostname",
    "find_template",
    "save_snapshot",
    "snapshot_unsupported",
    "template_shape",
    "vm_from_snapshot",
]
