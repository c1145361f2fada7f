"""VmHandle: one running VM, its lifecycle (VmStatus) and its console.

The handle turns what the machine layer reports (process exit, QMP events) and what the console
shows (ready marker, kernel panic) into the user's view of the VM: Starting, Running, Stopping,
Stopped(exit_code) or Failed(message).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import weakref
from collections.abc import AsyncIterator
from datetime import timedelta
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from engine.agent.client import Agent
from engine.broadcast import Broadcast
from engine.console.console import Console, ConsoleStream
from engine.console.match import PatternMatcher
from engine.errors import AgentUnavailable, BootTimeout, ConfigError, ConsoleError, EngineError, MachineError, VmNotRunning
from engine.kvm.accel import AccelChoice, choose_accelerator
from engine.kvm.machine import Machine, MachineExit
from engine.kvm.process import process_running
from engine.netstack.config import PortForward, UserNatConfig
from engine.netstack.flowlog import FlowEvent
from engine.netstack.gateway.gateway import Gateway
from engine.netstack.policy.policy import NetworkPolicy
from engine.kvm.cmdline import AGENT_DEVICE_ID
from engine.microvm.agent_port import AgentPort
from engine.microvm.machine_spec import machine_spec_for
from engine.microvm.mounts import MountError, mount_shares
from engine.microvm.workload import WorkloadError, start_workload
from engine.microvm.resources import GuestOs, ResourceConfig, seconds_of
from engine.microvm.vm_files import VmFiles
from engine.microvm.spec import VmSpec
from engine.microvm.status import Failed, Running, Starting, Stopped, Stopping, VmStatus
from engine.snapshot.save import save_snapshot

log = logging.getLogger(__name__)

PANIC_TEXT = b"Kernel panic - not syncing"
_TERMINATE_GRACE_S = 5.0
_PANIC_TAIL_LINES = 25

_live: weakref.WeakSet[VmHandle] = weakref.WeakSet()


def live_vms() -> list[VmHandle]:
    """VMs of this process whose machine has not exited (tests use it to prove no leaks)."""
    return [vm for vm in _live if not vm.status().is_terminal]


class _PanicWatcher:
    """Console watcher that notes the kernel's panic line, even when it straddles two chunks."""

    def __init__(self) -> None:
        self._matcher = PatternMatcher([PANIC_TEXT], window=4 * len(PANIC_TEXT))
        self.seen = False

    def __call__(self, chunk: bytes) -> None:
        if not self.seen and self._matcher.feed(chunk) is not None:
            self.seen = True


class VmHandle:
    """A started VM. Use ``async with`` to be sure it is killed when the block ends."""

    def __init__(
        self,
        spec: VmSpec,
        accel: AccelChoice,
        machine: Machine,
        stream: ConsoleStream,
        gateway: Gateway | None = None,
        *,
        running: bool = False,
        mount: bool = True,
    ) -> None:
        self.spec = spec
        self._gateway = gateway
        self.accel = accel
        self._machine = machine
        self._stream = stream
        self._console: Console | None = None
        self._logged_in = False
        self._exit: MachineExit | None = None
        self._fail_message: str | None = None
        streams = machine.agent_streams
        self._agent_port = AgentPort(*streams) if streams is not None else None
        self._agent: Agent | None = None
        self._agent_lock = asyncio.Lock()
        # A sandbox's shares are mounted once, by the first agent connection; a template
        # (mount=False) keeps them unmounted so it can be saved (9p blocks migration while mounted).
        self._mounts_pending = mount and any(s.guest_path is not None for s in spec.shares)
        self.shares_mounted = False  # the engine mounted them (a guest may unmount them later)
        # An OCI sandbox's image root is set up by the first agent connection, templates
        # included (its block devices migrate); a clone's re-sends the config.
        self._workload_pending = spec.workload is not None
        self.workload_root: str | None = None  # the image's root in the guest, once set up
        if self._agent_port is not None:
            self._agent_port.add_close_callback(self._agent_port_closed)
            if machine.ports_open.get(AGENT_DEVICE_ID):
                self._agent_port.set_open(True)  # opened (or replayed by a restore) before this handle
        # Without a marker the engine cannot tell more than "the machine runs"; a login guest
        # prints its marker only after someone logs in.
        watch_marker = spec.boot.ready_marker is not None and spec.login is None and not running
        self._status: VmStatus = Starting() if watch_marker else Running()
        self._status_changed = Broadcast()
        self._panic = _PanicWatcher()
        stream.add_watcher(self._panic)
        machine.on_event(self._on_machine_event)
        self._ready_task = asyncio.create_task(self._watch_ready(), name=f"vm-ready-{machine.pid}")
        self._exit_task = asyncio.create_task(self._watch_exit(), name=f"vm-exit-{machine.pid}")
        _live.add(self)

    @classmethod
    async def start(cls, spec: VmSpec) -> VmHandle:
        spec.check()
        accel = choose_accelerator(spec.accel)
        files = await VmFiles.make_async(spec)
        try:
            machine = await Machine.launch(machine_spec_for(spec, accel, files))
        finally:
            files.remove()  # QEMU holds them open now (or failed): see engine/microvm/vm_files.py
        return await cls.attach(spec, accel, machine)

    @classmethod
    async def attach(
        cls,
        spec: VmSpec,
        accel: AccelChoice,
        machine: Machine,
        *,
        lease: IPv4Address | None = None,
        running: bool = False,
        mount: bool = True,
    ) -> VmHandle:
        """Wrap a launched ``machine``: start its gateway (when ``spec`` has a network) and console.

        ``lease`` is the address a guest restored from a snapshot already holds: the gateway
        takes it as leased instead of waiting for a DHCP exchange that will not come.
        ``running``: the guest is past its boot (restored), so no ready marker is awaited.
        ``mount``: mount a sandbox's shares on the first agent connection (a template does not).
        The machine is killed if this fails.
        """
        nat = spec.network if isinstance(spec.network, UserNatConfig) else None
        gateway = None
        if nat is not None:
            try:
                gateway = Gateway(nat, name=f"vm-{machine.pid}", hostname=spec.hostname)
                sock = machine.take_net_socket()
                assert sock is not None
                await gateway.start(sock)
                if lease is not None:
                    gateway.adopt_lease(lease)  # a cluster member's is its own: see guest_ip
            except BaseException:
                if gateway is not None:
                    await gateway.close()  # leaves its cluster now, not when the link drops
                await machine.close()
                raise
        stream = ConsoleStream(
            machine.serial_reader,
            machine.serial_writer,
            scrollback=spec.scrollback_bytes,
            ready_marker=spec.boot.ready_marker,
        )
        if running and stream.ready_marker is not None:
            stream.ready_count = 1  # the guest printed its marker before it was saved
        return cls(spec, accel, machine, stream, gateway, running=running, mount=mount)

    # ----- state -----------------------------------------------------------------------------

    def status(self) -> VmStatus:
        return self._status

    @property
    def pid(self) -> int:
        """The machine process's pid."""
        return self._machine.pid

    @property
    def machine(self) -> Machine:
        """The machine layer's view of this VM (its QEMU process, QMP and serial line)."""
        return self._machine

    @property
    def console_stream(self) -> ConsoleStream:
        """The raw console stream (always connected, whether or not ``console()`` is enabled)."""
        return self._stream

    @property
    def guest_ip(self) -> IPv4Address | None:
        """The address the gateway leased the guest (None without a network or before DHCP)."""
        return self._gateway.guest_ip if self._gateway is not None else None

    def agent_port(self) -> AgentPort:
        """The host end of the guest agent's port; AgentUnavailable for a VM without an agent."""
        if self._agent_port is None:
            raise AgentUnavailable("this VM has no agent port: only a sandbox (a boot with has_agent) runs the agent")
        return self._agent_port

    async def agent(self, timeout: float | None = None) -> Agent:
        """The guest agent of this sandbox, connected on first use and again after it restarted.

        Waits up to ``timeout`` (default: the spec's ``timeout_s``, else 60 s) for the agent to
        hold its port open (it starts with the guest; after it died, busybox init respawns
        it). The first connection mounts the sandbox's shares before it is returned; a mount
        that fails fails the VM (MountError naming the share). Calls waiting when the agent dies or the VM stops raise AgentDied; a guest whose
        agent breaks the protocol is failed (status ``Failed``), never trusted further.
        """
        port = self.agent_port()
        current = self._agent
        if current is not None and current.failed is None:
            return current
        wait = timeout if timeout is not None else (self.spec.timeout_s or 60.0)
        async with self._agent_lock:
            current = self._agent
            if current is not None and current.failed is None:
                return current
            if self._status.is_terminal or port.ended:
                raise VmNotRunning(f"the VM has ended, so has its agent: {self._status}")
            await port.wait_open(wait)
            agent = await Agent.connect(
                port.reader, port.writer, timeout=wait, on_protocol_error=self._agent_broke, owns_stream=False
            )
            if self._workload_pending and self.spec.workload is not None:
                try:
                    self.workload_root = await start_workload(agent, self.spec.workload)
                except WorkloadError as err:
                    self.fail(str(err))
                    raise
                self._workload_pending = False
            if self._mounts_pending:
                try:
                    await mount_shares(agent, self.spec.shares, timeout=wait, root=self.workload_root)
                except MountError as err:
                    self.fail(str(err))
                    raise
                self._mounts_pending = False
                self.shares_mounted = True
            self._agent = agent
            return agent

    def _agent_port_closed(self) -> None:
        agent = self._agent
        if agent is None:
            return
        port = self._agent_port
        why = "the VM stopped" if port is not None and port.ended else "the agent closed its port in the guest (it died or restarted)"
        agent.fail(why)

    def _agent_broke(self, problem: str) -> None:
        self.fail(f"the guest agent broke the protocol: {problem}")

    def fail(self, message: str) -> None:
        """Kill the machine because its guest broke the engine's rules; the final status is
        ``Failed(message)`` (e.g. an agent that breaks the protocol)."""
        if self._fail_message is None and not self._status.is_terminal:
            self._fail_message = message
        if not self._machine.exited:
            self._set_status(Stopping())
            self._machine.kill()

    async def snapshot(self, dest_dir: str | Path) -> Path:
        """Save this VM (RAM and devices) into ``dest_dir``, which must be empty or absent;
        the VM runs on. Start clones of it with ``engine.vm_from_snapshot(path)``."""
        if self.spec.scratch_disk_mb is not None:
            raise ConfigError("a VM with a scratch disk cannot be snapshotted: the disk is its alone and ends with it")
        return await save_snapshot(self._machine, self.spec, self.guest_ip, dest_dir)

    def _set_status(self, status: VmStatus) -> None:
        if self._status.is_terminal:
            return
        self._status = status
        self._status_changed.notify()

    async def wait_ready(self, timeout: float | None = 60) -> None:
        """Wait until the guest is Running (and a sandbox's shares are mounted); VmNotRunning if
        it ends first, BootTimeout if slow, MountError if a share cannot be mounted."""
        try:
            async with asyncio.timeout(timeout):
                while not isinstance(self._status, Running):
                    if self._status.is_terminal:
                        raise VmNotRunning(f"the VM ended before it was ready: {self._status}")
                    await self._status_changed.wait()
                if self._mounts_pending or self._workload_pending:
                    await self.agent(timeout)
        except TimeoutError:
            raise BootTimeout(
                f"the guest was not ready after {timeout}s; last console lines:\n{self.console_tail()}"
            ) from None

    def machine_alive(self) -> bool:
        """Whether the machine process runs at this instant (asks the kernel, not the loop)."""
        return not self._machine.exited and process_running(self._machine.pid)

    async def probe_console(self, timeout: float = 2.0) -> bool:
        """Send a newline and wait for the guest to print anything back: its console answers.

        Works whether or not the VM was built with a console for its user (the serial line is
        always connected); a shell answers with a prompt, a getty with its login prompt.
        """
        stream = self._stream
        if stream.closed:
            return False
        offset = stream.end_offset
        try:
            async with asyncio.timeout(timeout):
                await stream.write(b"\n")
                _skipped, data = await stream.next_chunk(offset)
        except (TimeoutError, EngineError):
            return False
        return bool(data)

    # ----- console ---------------------------------------------------------------------------

    async def set_console_size(self, cols: int, rows: int) -> bool:
        """Give the serial console's tty the user's window size, through the agent (its shell
        and full-screen programs get SIGWINCH); False when the guest runs no agent."""
        if not self.spec.boot.has_agent:
            return False
        await (await self.agent()).set_console_size(cols, rows)
        return True

    async def console(self) -> Console:
        """The VM's serial console (one per VM; its reader starts at the first byte kept)."""
        if not self.spec.console:
            raise ConsoleError("this VM was built without a console: call console_enabled() on the builder")
        if self._console is None:
            self._console = Console(self._stream)
        return self._console

    async def shell(self, timeout: float = 30) -> Console:
        """The console with a shell at it: a VM with a getty is logged in as its login user first."""
        console = await self.console()
        if self.spec.login is not None and not self._logged_in:
            await console.login(self.spec.login.user, self.spec.login.password, timeout)
            self._logged_in = True
        return console

    def console_tail(self, lines: int = 20) -> str:
        """The last lines the guest printed on its console (for error reports)."""
        text = self._stream.tail(16384).decode(errors="replace").replace("\r", "")
        return "\n".join(text.splitlines()[-lines:])

    # ----- network ---------------------------------------------------------------------------

    def _require_gateway(self) -> Gateway:
        if self._gateway is None:
            raise ConfigError("this VM has no network: build it with .network(NetworkMode.user_nat()...build())")
        return self._gateway

    def network_events(self) -> AsyncIterator[FlowEvent]:
        """Every flow the gateway allows, denies or logs from now on (ends when the VM stops)."""
        return self._require_gateway().flow_log.subscribe()

    def set_policy(self, policy: NetworkPolicy) -> None:
        """Apply ``policy`` to this VM's new flows and DNS questions at once."""
        self._require_gateway().set_policy(policy)

    def forwarded_ports(self) -> list[tuple[PortForward, int]]:
        """Each port forward and the host port it listens on (the one picked, for host_port 0)."""
        return list(self._gateway.forwarded_ports) if self._gateway is not None else []

    def network_stats(self) -> dict[str, Any]:
        """Byte and flow counters of the gateway (empty without a network)."""
        return self._gateway.stats() if self._gateway is not None else {}

    def network_flows(self) -> list[dict[str, Any]]:
        """The open flows and their byte counts (empty without a network)."""
        return self._gateway.flows() if self._gateway is not None else []

    @property
    def has_network(self) -> bool:
        return self._gateway is not None

    # ----- lifecycle -------------------------------------------------------------------------

    @property
    def shutdown_reason(self) -> str | None:
        """Why QEMU says the machine stopped (e.g. "guest-shutdown"), once it has exited."""
        return self._exit.shutdown_reason if self._exit is not None else None

    async def stop(self, timeout: float = 30) -> VmStatus:
        """Ask the guest to power off; terminate, then kill, the machine if it does not."""
        if self._machine.exited:
            return await self.wait()
        booting = isinstance(self._status, Starting) and self.spec.boot.capsa_guest
        self._set_status(Stopping())
        if booting:
            # Our guest answers the power button only once its init runs: nothing to wait for.
            self._machine.terminate()
        else:
            with contextlib.suppress(MachineError):
                await self._machine.powerdown()
        if await self.wait_timeout(timeout) is None:
            self._machine.terminate()
            if await self.wait_timeout(_TERMINATE_GRACE_S) is None:
                self._machine.kill()
        return await self.wait()

    async def kill(self) -> VmStatus:
        """Kill the machine process at once and wait until everything is released."""
        if not self._machine.exited:
            self._set_status(Stopping())
            self._machine.kill()
        return await self.wait()

    async def wait(self) -> VmStatus:
        """Wait for the machine to exit; returns the final status."""
        await asyncio.shield(self._exit_task)
        return self._status

    async def wait_timeout(self, timeout: float) -> VmStatus | None:
        """Like wait(), but None if the machine still runs after ``timeout`` seconds."""
        try:
            return await asyncio.wait_for(self.wait(), timeout)
        except TimeoutError:
            return None

    # ----- capsa's remaining handle methods (the README's API table) --------------------------

    def resources(self) -> ResourceConfig:
        """The VM's vCPUs, memory and the accelerator it runs with."""
        return ResourceConfig(self.spec.cpus, self.spec.memory_mb, self.accel.name)

    def guest_os(self) -> GuestOs:
        return GuestOs.LINUX

    async def stop_with_timeout(self, timeout: float | timedelta) -> VmStatus:
        """``stop()`` with its own grace period (seconds or a timedelta) before terminating."""
        return await self.stop(seconds_of(timeout))

    async def __aenter__(self) -> VmHandle:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.kill()

    # ----- background ------------------------------------------------------------------------

    def _on_machine_event(self, name: str, data: dict[str, Any]) -> None:
        if name == "VSERPORT_CHANGE" and self._agent_port is not None and data.get("id") == AGENT_DEVICE_ID:
            self._agent_port.set_open(bool(data.get("open")))
        if name in ("SHUTDOWN", "POWERDOWN") and not self._status.is_terminal:
            self._set_status(Stopping())

    async def _watch_ready(self) -> None:
        if not isinstance(self._status, Starting):
            return
        with contextlib.suppress(EngineError):
            await self._stream.wait_ready(None)
            if isinstance(self._status, Starting):
                self._set_status(Running())

    async def _watch_exit(self) -> None:
        outcome = await self._machine.wait()
        self._exit = outcome
        # Give the console pump the last bytes (the panic text comes just before the exit).
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._drain_console(), 2)
        self._ready_task.cancel()
        if self._agent_port is not None:
            self._agent_port.end()
        if self._gateway is not None:
            await self._gateway.close()
        self._status = self._final_status(outcome)
        self._status_changed.notify()
        await self._stream.close()

    async def _drain_console(self) -> None:
        reader = self._stream.reader()
        while await reader.read():
            pass

    def _final_status(self, outcome: MachineExit) -> VmStatus:
        if self._fail_message is not None:
            return Failed(self._fail_message)
        if self._panic.seen or outcome.guest_panicked:
            return Failed(f"guest kernel panic; last console lines:\n{self.console_tail(_PANIC_TAIL_LINES)}")
        if outcome.requested:
            return Stopped(outcome.returncode)
        if outcome.killed_by_signal is not None:
            name = _signal_name(outcome.killed_by_signal)
            return Failed(f"machine process {self._machine.pid} was killed by {name} from outside the engine")
        if outcome.returncode != 0:
            return Failed(
                f"QEMU exited with status {outcome.returncode}: {self._machine.stderr_tail() or 'no message'}"
            )
        return Stopped(outcome.returncode)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
