"""One running machine: a QEMU process, its QMP session and its serial connection.

The engine listens on Unix sockets (QMP, serial, and the network card's and the agent port's when
it has them) in a private temporary folder and QEMU connects to them
while it starts, before the guest runs a single instruction. Once both are connected the folder
is removed, so a running machine leaves nothing on disk. Lifecycle comes from two sources: QMP
events (why the guest stopped) and the process exit status (that it stopped).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shutil
import signal
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from qemu.qmp import QMPClient
from qemu.qmp.error import QMPError

from engine.errors import MachineError
from engine.kvm.cmdline import MachineSockets, MachineSpec, qemu_argv
from engine.kvm.host import find_qemu
from engine.kvm.process import StderrTail, spawn_tied

log = logging.getLogger(__name__)
# qemu.qmp logs every failed handshake at ERROR; a QEMU that dies at start-up already becomes
# one MachineError carrying its stderr, so its log lines would only repeat that, louder.
logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)

EventCallback = Callable[[str, dict[str, Any]], None]
_SUN_PATH_MAX = 107  # sockaddr_un.sun_path holds 108 bytes, the last one a NUL


@dataclass
class MachineExit:
    """How a machine process ended."""

    returncode: int
    shutdown_reason: str | None = None  # from QMP SHUTDOWN, e.g. "guest-shutdown", "guest-reset"
    guest_panicked: bool = False
    requested: bool = False  # the engine asked for it (stop, kill)

    @property
    def killed_by_signal(self) -> int | None:
        return -self.returncode if self.returncode < 0 else None


@dataclass
class _Connections:
    serial: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]]
    net: asyncio.Future[tuple[socket.socket, Any]] | None = None
    net_listener: socket.socket | None = None
    server: asyncio.AbstractServer | None = None
    agent: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]] | None = None
    agent_server: asyncio.AbstractServer | None = None
    extra: list[asyncio.Task[Any]] = field(default_factory=list)


class Machine:
    """A QEMU process running one guest; owns the process, QMP client and serial stream."""

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        qmp: QMPClient,
        serial: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        stderr: StderrTail,
        stderr_task: asyncio.Task[None],
        net_socket: socket.socket | None = None,
        agent: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None,
    ) -> None:
        self.process = process
        # The agent port's stream: QEMU keeps it connected for the machine's whole life, whether
        # or not the guest has the port open (VSERPORT_CHANGE says that).
        self.agent_streams = agent
        # The last VSERPORT_CHANGE of each port, kept here because a restored guest replays its
        # open ports as soon as it runs, which can be before anyone listens for events.
        self.ports_open: dict[str, bool] = {}
        self.spec: MachineSpec | None = None  # what it was launched with (set by launch)
        self._net_socket = net_socket
        self.qmp = qmp
        self.serial_reader, self.serial_writer = serial
        self._stderr = stderr
        self._stderr_task = stderr_task
        self._callbacks: list[EventCallback] = []
        self._shutdown_reason: str | None = None
        self._panicked = False
        self._requested = False
        self._events_task = asyncio.create_task(self._watch_events(), name=f"qmp-events-{process.pid}")
        self._exit_task = asyncio.create_task(self._wait_exit(), name=f"machine-exit-{process.pid}")

    # ----- start -----------------------------------------------------------------------------

    @classmethod
    async def launch(cls, spec: MachineSpec, *, binary: str | None = None, timeout: float = 15.0) -> Machine:
        """Start QEMU for ``spec`` and return once QMP and the serial port are connected."""
        binary = binary or find_qemu()
        try:
            workdir = Path(tempfile.mkdtemp(prefix="capsa-vm-"))
        except OSError as err:
            raise MachineError(f"cannot create the machine's socket folder in {tempfile.gettempdir()}: {err.strerror}") from err
        if len(str(workdir / "serial.sock").encode()) > _SUN_PATH_MAX:
            shutil.rmtree(workdir, ignore_errors=True)
            raise MachineError(
                f"the temporary folder {tempfile.gettempdir()} is too deep for Unix socket paths "
                f"(at most {_SUN_PATH_MAX} bytes): set TMPDIR to a shorter folder"
            )
        sockets = MachineSockets(
            qmp=workdir / "qmp.sock",
            serial=workdir / "serial.sock",
            net=workdir / "net.sock" if spec.nic_mac else None,
            agent=workdir / "agent.sock" if spec.agent_port else None,
        )
        loop = asyncio.get_running_loop()
        conns = _Connections(serial=loop.create_future())
        qmp = QMPClient("capsa")
        process: asyncio.subprocess.Process | None = None
        stderr = StderrTail()
        try:
            conns.server = await asyncio.start_unix_server(
                lambda r, w: _take_first(conns.serial, r, w), path=str(sockets.serial)
            )
            await qmp.start_server(str(sockets.qmp))
            if sockets.agent is not None:
                agent_future: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = loop.create_future()
                conns.agent = agent_future
                conns.agent_server = await asyncio.start_unix_server(
                    lambda r, w: _take_first(agent_future, r, w), path=str(sockets.agent)
                )
            if sockets.net is not None:
                conns.net_listener = _listen_unix(sockets.net)
                conns.net = asyncio.ensure_future(loop.sock_accept(conns.net_listener))
            process = await spawn_tied(qemu_argv(binary, spec, sockets))
            assert process.stderr is not None
            stderr_task = asyncio.create_task(stderr.collect(process.stderr))
            serial = await _connect_or_fail(qmp, conns, process, stderr, stderr_task, timeout)
            net_socket = conns.net.result()[0] if conns.net is not None else None
            agent = conns.agent.result() if conns.agent is not None else None
            machine = cls(process, qmp, serial, stderr, stderr_task, net_socket, agent)
            machine.spec = spec
            return machine
        except BaseException as err:
            if process is not None and process.returncode is None:
                process.kill()
                await process.wait()
            await _abandon(qmp, conns)
            if isinstance(err, OSError):  # a socket or the process could not be made
                raise MachineError(f"starting QEMU failed: {err}", stderr.text()) from err
            raise
        finally:
            if conns.server is not None:
                conns.server.close()
            if conns.net_listener is not None:
                conns.net_listener.close()
            if conns.agent_server is not None:
                conns.agent_server.close()
            shutil.rmtree(workdir, ignore_errors=True)

    # ----- state -----------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def exited(self) -> bool:
        return self._exit_task.done()

    def stderr_tail(self) -> str:
        return self._stderr.text()

    def take_net_socket(self) -> socket.socket | None:
        """The connected socket of the machine's network card; the caller owns it from now on."""
        sock, self._net_socket = self._net_socket, None
        return sock

    def on_event(self, callback: EventCallback) -> None:
        """Call ``callback(name, data)`` for every QMP event (from the event loop)."""
        self._callbacks.append(callback)

    # ----- control ---------------------------------------------------------------------------

    async def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """Run a QMP command; MachineError when the machine is gone or refuses."""
        try:
            return await self.qmp.execute(command, arguments)
        except (QMPError, OSError, EOFError) as err:
            raise MachineError(f"QMP command {command!r} failed: {err}") from err

    async def powerdown(self) -> None:
        """Press the ACPI power button: a cooperative guest shuts itself down."""
        self._requested = True
        await self.execute("system_powerdown")

    def terminate(self) -> None:
        """SIGTERM: QEMU stops the guest and exits cleanly."""
        self._requested = True
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: the machine is gone at once."""
        self._requested = True
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)

    async def wait(self) -> MachineExit:
        """Wait until the process has exited and everything it held is released."""
        return await asyncio.shield(self._exit_task)

    async def close(self) -> MachineExit:
        """Kill the machine if it still runs, and release every resource it holds."""
        if not self.exited:
            self.kill()
        return await self.wait()

    # ----- background ------------------------------------------------------------------------

    async def _watch_events(self) -> None:
        with contextlib.suppress(asyncio.CancelledError, QMPError, EOFError, OSError):
            async for event in self.qmp.events:
                name = str(event["event"])
                raw = event.get("data", {})
                data: dict[str, Any] = dict(raw) if isinstance(raw, dict) else {}
                if name == "SHUTDOWN":
                    self._shutdown_reason = str(data.get("reason", ""))
                elif name == "GUEST_PANICKED":
                    self._panicked = True
                elif name == "VSERPORT_CHANGE":
                    self.ports_open[str(data.get("id"))] = bool(data.get("open"))
                for callback in list(self._callbacks):
                    try:
                        callback(name, data)
                    except Exception:  # a faulty observer must not stop lifecycle tracking
                        log.exception("machine event callback failed")

    async def _wait_exit(self) -> MachineExit:
        returncode = await self.process.wait()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._stderr_task), 2)
        # Let the event watcher pick up a SHUTDOWN that arrived just before the exit.
        await asyncio.sleep(0)
        self._events_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._events_task
        with contextlib.suppress(Exception):
            await self.qmp.disconnect()
        self.serial_writer.close()
        if self.agent_streams is not None:
            self.agent_streams[1].close()
        if self._net_socket is not None:  # nobody took it: still ours to close
            self._net_socket.close()
        return MachineExit(returncode, self._shutdown_reason, self._panicked, self._requested)


_LOCKED_IMAGE = re.compile(r"Is another process using the image \[(.+?)\]\?")


def locked_image(stderr: str) -> str | None:
    """The image QEMU's stderr says it could not lock (``Failed to get "write" lock`` / ``Is
    another process using the image [PATH]?``: another QEMU has it open writable), or None."""
    found = _LOCKED_IMAGE.search(stderr)
    return found.group(1) if found else None


def _take_first(
    future: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]],
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> None:
    if future.done():
        writer.close()  # only QEMU may connect, and only once
    else:
        future.set_result((reader, writer))


async def _connect_or_fail(
    qmp: QMPClient,
    conns: _Connections,
    process: asyncio.subprocess.Process,
    stderr: StderrTail,
    stderr_task: asyncio.Task[None],
    timeout: float,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    accept = asyncio.create_task(qmp.accept())
    exited = asyncio.create_task(process.wait())
    extra: list[asyncio.Future[Any]] = [f for f in (conns.net, conns.agent) if f is not None]
    ready: asyncio.Future[Any] = asyncio.gather(accept, conns.serial, *extra)
    waiters: set[asyncio.Future[Any]] = {ready, exited}
    done, _ = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    if ready in done and ready.exception() is None:
        exited.cancel()
        return conns.serial.result()
    ready.cancel()
    accept.cancel()
    exited.cancel()
    with contextlib.suppress(BaseException):
        await ready
    if ready in done:
        # A control connection that breaks at once usually means QEMU is exiting: say why.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(process.wait(), 1)
    if process.returncode is not None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stderr_task, 2)
        locked = locked_image(stderr.text())
        if locked is not None:
            raise MachineError(
                f"disk image {locked} is in use by another VM or process (QEMU could not lock it); "
                "stop that one, or attach the disk read-only or copy-on-write in both", stderr.text())
        raise MachineError(f"QEMU exited during start-up with status {process.returncode}", stderr.text())
    if ready in done:
        raise MachineError(f"QEMU's control connection failed: {ready.exception()}", stderr.text())
    raise MachineError(f"QEMU did not connect its control, serial and device sockets within {timeout:.0f}s", stderr.text())


async def _abandon(qmp: QMPClient, conns: _Connections) -> None:
    with contextlib.suppress(Exception):
        await qmp.disconnect()
    if conns.serial.done() and not conns.serial.cancelled() and conns.serial.exception() is None:
        conns.serial.result()[1].close()
    elif not conns.serial.done():
        conns.serial.cancel()
    if conns.agent is not None:
        if conns.agent.done() and not conns.agent.cancelled() and conns.agent.exception() is None:
            conns.agent.result()[1].close()
        elif not conns.agent.done():
            conns.agent.cancel()
    if conns.net is not None:
        if conns.net.done() and not conns.net.cancelled() and conns.net.exception() is None:
            conns.net.result()[0].close()
        elif not conns.net.done():
            conns.net.cancel()


def _listen_unix(path: Path) -> socket.socket:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        listener.bind(str(path))
        listener.listen(1)
        listener.setblocking(False)
    except OSError:
        listener.close()
        raise
    return listener
