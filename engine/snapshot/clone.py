"""Clones started from a snapshot: a waiting QEMU (WaitingClone), its restore and identity fix-up.

A clone is its template until told otherwise; right after the restore the engine types one
line on its console (:mod:`engine.snapshot.identity`) and hands the clone out only after that
has run.
"""
from __future__ import annotations

import asyncio
import os
import re
import secrets
import time
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path

from engine.errors import EngineError, IdentityError, SnapshotError
from engine.kvm.accel import AccelChoice, choose_accelerator
from engine.kvm.machine import Machine
from engine.kvm.migration import load_state
from engine.kvm.process import process_running
from engine.microvm.handle import VmHandle
from engine.microvm.spec import VmSpec
from engine.netstack.config import NetworkConfig, UserNatConfig
from engine.snapshot.identity import ERROR_PREFIX, FIXUP_TIMEOUT_S, fixup_line
from engine.microvm.vm_files import VmFiles
from engine.snapshot.record import machine_shape
from engine.snapshot.snapshot import Snapshot

_HOSTNAME_BAD = re.compile(r"[^a-zA-Z0-9-]+")


def _random_mac() -> str:
    # 52:54:00 is QEMU's prefix; the gateway's own MAC (52:55:...) can never be drawn.
    tail = os.urandom(3)
    return "52:54:00:" + ":".join(f"{b:02x}" for b in tail)


def clone_hostname(name: str) -> str:
    """``name`` made a valid hostname (pool VM ids such as ``web_a-3`` become ``web-a-3``)."""
    cleaned = _HOSTNAME_BAD.sub("-", name).strip("-")[:63].strip("-")
    return cleaned or "capsa"


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
        # Its own overlays of copy-on-write disks, like a fresh VM's (engine/microvm/vm_files.py).
        files = await VmFiles.make_async(spec)
        try:
            machine = await Machine.launch(snapshot.machine_spec(spec, accel, files))
        finally:
            files.remove()  # QEMU holds them open now (or failed)
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
        if hostname is not None:
            # The spec says who the VM is (its gateway names it to cluster members by it).
            spec = replace(spec, hostname=clone_hostname(hostname))
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
        by_agent = fix_identity and snapshot.info.guest.has_agent and spec.boot.has_agent
        fixing = fix_identity and not by_agent and spec.boot.capsa_guest and spec.boot.ready_marker is not None
        vm = await VmHandle.attach(
            spec, self.accel, self.machine, lease=IPv4Address(lease) if lease else None, running=not fixing
        )
        try:
            if by_agent:
                host = clone_hostname(hostname or spec.hostname)
                await _agent_identity(vm, host, mac if vm.has_network else None,
                                      address=_new_address(spec, lease, vm.guest_ip))
            elif fixing:
                awaiting = snapshot.info.extra.get("identity") == "awaiting"
                host = clone_hostname(hostname or spec.hostname)
                await _fix_identity(vm, host, mac if vm.has_network else None, awaiting=awaiting,
                                    address=_new_address(spec, lease, vm.guest_ip))
        except BaseException:
            await vm.kill()
            raise
        return vm


def _new_address(spec: VmSpec, saved: str | None, granted: IPv4Address | None) -> tuple[IPv4Interface, IPv4Address] | None:
    """The address and route the clone must take, when its gateway granted another than the
    saved one (a cluster member: the switch gives each its own), else None."""
    net = spec.network
    if not isinstance(net, UserNatConfig) or saved is None or granted is None or granted == IPv4Address(saved):
        return None
    return IPv4Interface(f"{granted}/{net.subnet.prefixlen}"), net.gateway


async def _agent_identity(vm: VmHandle, hostname: str, mac: str | None,
                          address: tuple[IPv4Interface, IPv4Address] | None) -> None:
    """A sandbox clone's identity through its agent: a new session (hello), then set_identity;
    SnapshotError naming the step that failed."""
    wait = vm.spec.timeout_s or FIXUP_TIMEOUT_S
    try:
        agent = await vm.agent(wait)
    except EngineError as err:
        raise SnapshotError(f"the clone's agent did not answer its hello: {err}") from err
    try:
        await agent.set_identity(os.urandom(32), time.time(), hostname, mac,
                                 address=str(address[0]) if address else None,
                                 router=str(address[1]) if address else None)
    except IdentityError as err:
        steps = ", ".join(sorted(err.failed)) or "identity"
        raise SnapshotError(f"the clone's identity fix-up failed at {steps}: {err}") from err
    except EngineError as err:
        raise SnapshotError(f"the clone's identity fix-up through its agent failed: {err}") from err


async def _fix_identity(vm: VmHandle, hostname: str, mac: str | None, *, awaiting: bool,
                        address: tuple[IPv4Interface, IPv4Address] | None = None) -> None:
    stream = vm.console_stream
    begin = stream.end_offset
    await stream.write(fixup_line(os.urandom(32), int(time.time()), hostname, mac, awaiting=awaiting,
                                  address=address))
    try:
        await vm.wait_ready(FIXUP_TIMEOUT_S)
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
    spec.check()
    accel = choose_accelerator(spec.accel)
    stale = snapshot.stale_because(machine_shape(snapshot.machine_spec(spec, accel)))
    if stale is not None:
        raise SnapshotError(f"the snapshot in {snapshot.directory} cannot be restored here: {stale}")
    waiting = await WaitingClone.launch(snapshot, spec)
    return await waiting.restore(spec, hostname=hostname, fix_identity=fix_identity)


__all__ = ["WaitingClone", "clone_hostname", "vm_from_snapshot"]
