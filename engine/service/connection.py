"""One client connection of the pool service: its requests, reservations and attachments.

Each request runs in a task of its own, so a ``reserve`` that waits or a long ``run`` never
holds up the connection's other requests; at most ``max_requests`` run at once. Frames out go
into a bounded outbox (:mod:`engine.service.outbox`) that one writer task empties: a client that
does not read its replies is cut off when it fills, and nothing loops writing to a dead peer.
Everything a connection acquires (request tasks, the writer, reserved VMs, console watchers,
its claim on the shared request budget) is recorded here and given back in
:meth:`Connection.serve`'s cleanup, whichever way the connection ends, so a client that leaves
costs no CPU afterwards. The limits are those of :mod:`engine.service.limits`.

The requests about pools, profiles, policies and flows are served by
:class:`~engine.service.pool_ops.PoolOps` and those through a VM's agent by
:class:`~engine.service.agent_ops.AgentOps`; this module keeps the
handshake (with a session's resume), reservations, consoles and the connection's end: a client
that leaves without ``bye`` has its VMs held for the grace period (:mod:`engine.service.sessions`).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from engine.logevent import log_event
from engine.broadcast import Broadcast
from engine.console.console import ConsoleReader
from engine.errors import ConsoleError, EngineError
from engine.pool.pool import VmPool
from engine.pool.pooled import PooledVm
from engine.service import protocol
from engine.service.agent_ops import AgentOps
from engine.service.budget import RequestBudget
from engine.service.errors import BadRequest, ProtocolError, ServiceError, ServiceVersionError
from engine.service.limits import ServiceLimits
from engine.service.outbox import Outbox
from engine.service.pool_ops import PoolOps
from engine.service.registry import PoolRegistry
from engine.service.sessions import HeldReservations, new_token
from engine.microvm.handle import VmHandle

log = logging.getLogger(__name__)

_READ_SIZE = 65536
_OUTPUT_CHUNK = 65536  # console bytes per output event
_INPUT_BACKLOG = 1024  # input frames queued for a console that does not take them
_CLOSE_GRACE = 2.0  # seconds a closing connection may take to flush its last frames

Refusal = Callable[[str, str], None]  # (kind, message): log it once and count it

Handler = Callable[[protocol.Message, "int | None"], Awaitable["protocol.Message | None"]]


@dataclass(eq=False)
class _Attachment:
    """This connection watching one console: the output pump and the ordered input writer."""

    vm_id: str
    write: bool
    inputs: asyncio.Queue[bytes] = field(default_factory=lambda: asyncio.Queue(_INPUT_BACKLOG))
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class Connection:
    """Serves one client; ``registry`` is the server's live table of pools by name.

    Every frame to the client goes through a bounded :class:`Outbox` that one writer task
    empties; every task of the connection (requests, console pumps, the writer) is cancelled
    when it closes, so a client that leaves costs no CPU afterwards. ``limits`` and the shared
    ``budget`` bound it (:mod:`engine.service.limits`); ``refuse`` is told of each refusal once.
    ``held`` keeps the VMs of clients whose link dropped; ``facts`` go into the hello reply.
    """

    def __init__(
        self,
        registry: PoolRegistry,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        limits: ServiceLimits | None = None,
        budget: RequestBudget | None = None,
        refuse: Refusal | None = None,
        held: HeldReservations | None = None,
        facts: dict[str, Any] | None = None,
    ) -> None:
        self._registry = registry
        self._held = held
        self._facts = facts or {}
        self.session = new_token()
        self._said_bye = False
        self._reader = reader
        self._writer = writer
        self._limits = limits if limits is not None else ServiceLimits()
        budget = budget if budget is not None else RequestBudget(self._limits.max_request_bytes)
        self._decoder = protocol.FrameDecoder(self._limits.max_frame, self._limits.max_depth, budget)
        self._refuse = refuse if refuse is not None else _log_refusal
        self._outbox = Outbox(self._limits.max_reply_bytes)
        self._queued = Broadcast()  # a frame went into the outbox
        self._sent = Broadcast()  # the writer took a frame out
        self._writer_task: asyncio.Task[None] | None = None
        self._closing = False  # no more requests are read or run
        self._aborted = False  # the socket was cut: nothing more can be sent
        self._busy_logged = False
        self._requests: set[asyncio.Task[None]] = set()
        self._reserved: dict[str, PooledVm] = {}
        self._attachments: dict[str, _Attachment] = {}
        self._pool_ops = PoolOps(registry, self._send_event)
        self._handlers: dict[str, Handler] = {
            **self._pool_ops.handlers(),
            **AgentOps(self._reserved_vm).handlers(),
            "status": self._op_status,
            "reserve": self._op_reserve,
            "release": self._op_release,
            "exec": self._op_exec,
            "run": self._op_run,
            "attach": self._op_attach,
            "detach": self._op_detach,
            "input": self._op_input,
            "console_size": self._op_console_size,
            "bye": self._op_bye,
        }

    @property
    def reserved(self) -> list[str]:
        return list(self._reserved)

    @property
    def request_bytes_received(self) -> int:
        """Bytes of a partly received request frame held right now."""
        return self._decoder.pending

    @property
    def reply_bytes(self) -> int:
        """Bytes of frames queued for this client and not yet handed to the socket."""
        return self._outbox.queued_bytes

    @property
    def requests_running(self) -> int:
        return len(self._requests)

    async def serve(self) -> None:
        """Handshake, then read requests until the client goes; then give everything back."""
        self._writer_task = asyncio.create_task(self._write_frames(), name="service-writer")
        try:
            pipelined = await self._handshake_in_time()
            if pipelined is not None:
                await self._read_requests(pipelined)
        except ProtocolError as err:
            self._refuse_with_error(err.kind or "ProtocolError", str(err))
        except (ConnectionError, OSError):
            pass
        finally:
            await self._cleanup()

    async def _handshake_in_time(self) -> list[protocol.Message] | None:
        timeout = self._limits.hello_timeout
        try:
            async with asyncio.timeout(timeout):
                return await self._handshake()
        except TimeoutError:
            if self._aborted:  # the socket broke meanwhile: not a timeout of ours
                raise ConnectionResetError("the connection was cut") from None
            self._refuse_with_error("HelloTimeout", f"no hello within {timeout:g}s (hello_timeout); closing")
            return None

    async def _handshake(self) -> list[protocol.Message] | None:
        """The requests pipelined behind an accepted hello; None if the hello was refused."""
        while not (messages := self._decoder.feed(await self._read())):
            pass
        first = messages[0]
        try:
            protocol.check_hello(first)
        except ServiceVersionError as err:
            self._refuse("VersionMismatch", str(err))
            self._send(protocol.hello_refusal(str(err)))
            return None
        resumed: dict[str, PooledVm] = {}
        token = first.get("resume")
        if isinstance(token, str) and self._held is not None:
            resumed = self._held.take(token)
        if resumed:
            # the same session goes on (a later drop holds them again); a token that held
            # nothing is not adopted, so no client can choose the session another one has
            self.session = str(token)
        self._reserved.update(resumed)
        grace = self._held.grace if self._held is not None else 0.0
        self._send(protocol.hello_reply(self._registry.names(), session=self.session, grace_s=grace,
                                        resumed=sorted(resumed), **self._facts))
        return messages[1:]  # a client may pipeline requests behind its hello

    async def _read(self) -> bytes:
        data = await self._reader.read(_READ_SIZE)
        if not data:
            raise ConnectionResetError("the client closed the connection")
        return data

    async def _read_requests(self, messages: list[protocol.Message]) -> None:
        loop = asyncio.get_running_loop()
        frame, deadline = 0, None  # the unfinished frame, and when it must be complete
        while True:
            for message in messages:
                await self._dispatch(message)
            if not self._decoder.in_frame:
                deadline = None
            elif self._decoder.frames_started != frame:
                frame, deadline = self._decoder.frames_started, loop.time() + self._limits.frame_timeout
            try:
                async with asyncio.timeout_at(deadline):
                    data = await self._read()
            except TimeoutError:
                if self._aborted:
                    raise ConnectionResetError("the connection was cut") from None
                timeout = self._limits.frame_timeout
                why = f"a frame not complete {timeout:g}s after its header (frame_timeout); closing"
                self._refuse_with_error("FrameTimeout", why)
                return
            messages = self._decoder.feed(data)

    async def _dispatch(self, message: protocol.Message) -> None:
        if self._closing:  # the rest of a chunk read before a limit closed the connection
            raise ConnectionResetError("the connection is closing")
        if len(self._requests) >= self._limits.max_requests:
            # One chunk read can hold a thousand pipelined requests: the ones that finish at
            # once (status) get their turn before a request is called one too many.
            await asyncio.sleep(0)
        if len(self._requests) >= self._limits.max_requests:
            self._refuse_busy(message)
            return
        task = asyncio.create_task(self._handle(message), name=f"service-{message.get('op')}")
        self._requests.add(task)
        task.add_done_callback(self._requests.discard)

    async def _handle(self, message: protocol.Message) -> None:
        request_id = protocol.request_id(message)
        try:
            if request_id is None:
                raise BadRequest("every request needs an integer 'id'")
            op = message.get("op")
            handler = self._handlers.get(op) if isinstance(op, str) else None
            if handler is None:
                raise ServiceError(f"unknown op {op!r}; known: {', '.join(sorted(self._handlers))}", "UnknownOp")
            reply = await handler(message, request_id)
            if reply is not None:
                self._send(protocol.ok_reply(request_id, **reply))
        # engine errors first: ConsoleTimeout and PoolTimeout are TimeoutErrors, hence OSErrors
        except ServiceError as err:
            self._send_error(request_id, str(err), err.kind or type(err).__name__)
        except EngineError as err:
            self._send_error(request_id, str(err), type(err).__name__)
        except (ConnectionError, OSError):
            pass  # the client is gone; serve() sees the end of the stream and cleans up
        except Exception as err:  # a bug must cost one request, not the server
            log.exception("pool service: request %r failed", message.get("op"))
            self._send_error(request_id, f"internal error: {err!r}", "InternalError")
        finally:
            # now, not in the done callback one loop turn later: the slot is free for the reader
            self._requests.discard(asyncio.current_task())

    # -- sending ---------------------------------------------------------------------------------

    def _send(self, message: protocol.Message) -> None:
        """Queue a reply; a client whose outbox is full is not reading: cut it off."""
        if self._aborted:
            raise ConnectionResetError("the connection was cut")
        frame = protocol.encode(message)
        if not self._outbox.offer(frame):
            self._abort(
                "ReplyBacklog",
                f"the client does not read its replies: {self._outbox.queued_bytes} bytes queued, "
                f"another {len(frame)} do not fit in max_reply_bytes={self._limits.max_reply_bytes}; closing",
            )
            raise ConnectionResetError("the client does not read its replies")
        self._queued.notify()

    def _send_error(self, request_id: int | None, error: str, kind: str) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            self._send(protocol.error_reply(request_id, error, kind))

    async def _send_event(self, message: protocol.Message) -> None:
        """Queue an event once the outbox is empty: a slow watcher waits, it is not cut off."""
        while len(self._outbox) and not self._aborted:
            await self._sent.wait()
        self._send(message)

    async def _write_frames(self) -> None:
        # The only task that writes to the socket; it stops at the first error or once the
        # transport is closing, so nothing ever loops writing to a dead peer.
        transport = self._writer.transport
        try:
            while not transport.is_closing():
                frame = self._outbox.take()
                if frame is None:
                    await self._queued.wait()
                    continue
                self._writer.write(frame)
                self._sent.notify()
                await self._writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._outbox.clear()
            self._sent.notify()  # wake event senders and the flush in cleanup

    # -- refusals --------------------------------------------------------------------------------

    def _refuse_with_error(self, kind: str, message: str) -> None:
        """Log and count a refusal, tell the client why, and stop reading (serve() ends)."""
        self._closing = True
        self._refuse(kind, message)
        self._send_error(None, message, kind)

    def _refuse_busy(self, message: protocol.Message) -> None:
        limit = self._limits.max_requests
        text = f"{limit} requests of this connection are running (max_requests); wait for replies before sending more"
        if not self._busy_logged:  # once per connection, not once per request of a flood
            self._busy_logged = True
            self._refuse("Busy", text)
        # raises ConnectionResetError when even this does not fit: the reader then stops
        self._send(protocol.error_reply(protocol.request_id(message), text, "Busy"))

    def _abort(self, kind: str, message: str) -> None:
        """Cut the connection at once: discard what is queued, stop reading and writing."""
        if self._aborted:
            return
        self._closing = self._aborted = True
        self._refuse(kind, message)
        self._outbox.clear()
        self._writer.transport.abort()  # the reader sees the end of the stream; serve() cleans up
        self._sent.notify()

    # -- lookups ---------------------------------------------------------------------------------

    async def _pool(self, message: protocol.Message, name_field: str = "pool") -> VmPool:
        """The pool the request names; a profile's pool is started for it (lazy pools)."""
        return await self._registry.ensure(protocol.field(message, name_field, str))

    def _reserved_vm(self, message: protocol.Message) -> PooledVm:
        vm_id = protocol.field(message, "vm", str)
        vm = self._reserved.get(vm_id)
        if vm is None:
            raise ServiceError(f"VM {vm_id!r} is not reserved by this connection", "NotReserved")
        return vm

    def _member(self, vm_id: str) -> VmHandle:
        for pool in self._registry.pools.values():
            with contextlib.suppress(KeyError):
                return pool.handle(vm_id)
        raise ServiceError(f"no pool of this server has a running VM {vm_id!r}", "UnknownVm")

    # -- ops -------------------------------------------------------------------------------------

    async def _op_status(self, message: protocol.Message, request_id: int | None) -> protocol.Message:
        pools = []
        for pool in self._registry.pools.values():
            entry = pool.stats().to_dict()
            entry["members"] = [member.to_dict() for member in pool.members()]
            pools.append(entry)
        return {"pools": pools}

    async def _op_reserve(self, message: protocol.Message, request_id: int | None) -> protocol.Message:
        pool = await self._pool(message)
        vm = await pool.reserve(protocol.timeout_field(message))
        # recorded before any other await: a cancellation from here on finds it in cleanup
        self._reserved[vm.id] = vm
        return {"vm": vm.id}

    async def _op_release(self, message: protocol.Message, request_id: int | None) -> protocol.Message:
        vm = self._reserved_vm(message)
        del self._reserved[vm.id]
        await vm.release()
        return {}

    async def _op_exec(self, message: protocol.Message, request_id: int | None) -> protocol.Message:
        vm = self._reserved_vm(message)
        command = protocol.field(message, "command", str)
        return await _run_command(vm, command, protocol.timeout_field(message))

    async def _op_run(self, message: protocol.Message, request_id: int | None) -> protocol.Message:
        pool = await self._pool(message)
        command = protocol.field(message, "command", str)
        timeout = protocol.timeout_field(message)
        vm = await pool.reserve(protocol.timeout_field(message, "reserve_timeout"))
        self._reserved[vm.id] = vm
        try:
            return await _run_command(vm, command, timeout)
        finally:
            self._reserved.pop(vm.id, None)
            await vm.release()

    async def _op_attach(self, message: protocol.Message, request_id: int | None) -> None:
        vm_id = protocol.field(message, "vm", str)
        from_start = protocol.field(message, "from_start", bool, False)
        write = protocol.field(message, "write", bool, False)
        if vm_id in self._attachments:
            raise ServiceError(f"VM {vm_id!r} is already attached on this connection", "AlreadyAttached")
        console = await self._member(vm_id).console()
        reader = console.reader(from_start)
        attachment = _Attachment(vm_id, write)
        self._attachments[vm_id] = attachment
        # the reply goes out before the first output event
        self._send(protocol.ok_reply(request_id))
        attachment.tasks = [
            asyncio.create_task(self._pump_output(attachment, reader), name=f"service-watch-{vm_id}"),
            asyncio.create_task(self._pump_input(attachment, reader), name=f"service-type-{vm_id}"),
        ]
        return None

    async def _op_detach(self, message: protocol.Message, request_id: int | None) -> protocol.Message:
        vm_id = protocol.field(message, "vm", str)
        attachment = self._attachments.pop(vm_id, None)
        if attachment is None:
            raise ServiceError(f"VM {vm_id!r} is not attached on this connection", "NotAttached")
        await _stop(attachment)
        return {}

    async def _op_input(self, message: protocol.Message, request_id: int | None) -> protocol.Message:
        vm_id = protocol.field(message, "vm", str)
        data = protocol.b64decode(protocol.field(message, "data", str))
        attachment = self._attachments.get(vm_id)
        if attachment is None:
            raise ServiceError(f"attach to VM {vm_id!r} before sending it input", "NotAttached")
        if not (attachment.write or vm_id in self._reserved):
            raise ServiceError(
                f"VM {vm_id!r} is attached read-only: reserve it, or attach with write=true", "ReadOnly"
            )
        try:
            # no await before this point: request tasks start in arrival order, so keystrokes
            # sent as separate requests reach the queue, and the console, in that order
            attachment.inputs.put_nowait(data)
        except asyncio.QueueFull:
            raise ServiceError(f"VM {vm_id!r} is not taking input (backlog full)", "InputBacklog") from None
        return {}

    async def _op_console_size(self, message: protocol.Message, request_id: int | None) -> protocol.Message:
        # as for input: a VM this connection reserved, or one it attached to with write=true
        vm_id = protocol.field(message, "vm", str)
        cols, rows = protocol.field(message, "cols", int), protocol.field(message, "rows", int)
        if not (1 <= cols <= 9999 and 1 <= rows <= 9999):
            raise BadRequest(f"console_size: cols and rows are 1 to 9999, not {cols}x{rows}")
        reserved = self._reserved.get(vm_id)
        attachment = self._attachments.get(vm_id)
        if reserved is not None:
            handle = reserved.handle
        elif attachment is not None and attachment.write:
            handle = self._member(vm_id)
        else:
            raise ServiceError(f"VM {vm_id!r} is neither reserved nor attached for writing by this connection",
                               "NotReserved")
        return {"done": await handle.set_console_size(cols, rows)}

    async def _op_bye(self, message: protocol.Message, request_id: int | None) -> protocol.Message:
        self._said_bye = True  # leaving on purpose: release at once, hold nothing
        return {}

    # -- console pumps ---------------------------------------------------------------------------

    async def _pump_output(self, attachment: _Attachment, reader: ConsoleReader) -> None:
        # A slow client holds up only this pump (in drain): the console's ring drops what this
        # reader misses, counted in "dropped"; the guest and the other watchers never wait.
        vm_id = attachment.vm_id
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(_OUTPUT_CHUNK):
                await self._send_event(protocol.output_event(vm_id, data, reader.dropped))
            if self._attachments.get(vm_id) is attachment:
                del self._attachments[vm_id]
            reason = reader.stream.close_reason or "the console closed"
            await self._send_event(protocol.closed_event(vm_id, reason))
            for task in attachment.tasks:
                if task is not asyncio.current_task():
                    task.cancel()

    async def _pump_input(self, attachment: _Attachment, reader: ConsoleReader) -> None:
        # one writer per attachment keeps keystrokes in the order they were sent
        with contextlib.suppress(ConsoleError):
            while True:
                await reader.stream.write(await attachment.inputs.get())

    # -- cleanup ---------------------------------------------------------------------------------

    async def _cleanup(self) -> None:
        """Cancel requests, stop watchers, release reservations, flush, close the socket."""
        self._closing = True
        self._decoder.close()  # its claim on the shared request budget goes back at once
        requests = list(self._requests)
        for task in requests:
            task.cancel()
        if requests:
            await asyncio.wait(requests)
        attachments = list(self._attachments.values())
        self._attachments.clear()
        for attachment in attachments:
            await _stop(attachment)
        await self._pool_ops.stop()
        if self._held is not None and self._held.grace > 0 and not self._said_bye and self._reserved:
            self._held.hold(self.session, dict(self._reserved))  # the link may come back
            self._reserved.clear()
        reserved = list(self._reserved.values())
        self._reserved.clear()
        if reserved:
            results = await asyncio.gather(*(vm.release() for vm in reserved), return_exceptions=True)
            for vm, result in zip(reserved, results):
                if isinstance(result, BaseException):
                    log_event(log, logging.WARNING, "release_failed", vm=vm.id, error=repr(result))
        await self._close_socket()

    async def _close_socket(self) -> None:
        # The last frames (an error saying why, a version refusal) get a short grace to go out;
        # a peer that does not take them within it is cut off, so no socket outlives it.
        writer_task = self._writer_task
        if writer_task is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_CLOSE_GRACE):
                    while len(self._outbox) and not writer_task.done():
                        await self._sent.wait()
            writer_task.cancel()
            await asyncio.wait([writer_task])
        self._writer.close()
        try:
            async with asyncio.timeout(_CLOSE_GRACE):
                await self._writer.wait_closed()
        except (TimeoutError, ConnectionError, OSError):
            self._writer.transport.abort()


async def _run_command(vm: PooledVm, command: str, timeout: float | None) -> dict[str, Any]:
    console = await vm.shell()
    result = await console.run(command, timeout)
    return {"exit_code": result.exit_code, "output": result.output, "dropped": result.dropped}


def _log_refusal(kind: str, message: str) -> None:
    log_event(log, logging.WARNING, "client_refused", kind=kind, reason=message)


async def _stop(attachment: _Attachment) -> None:
    current = asyncio.current_task()
    tasks = [task for task in attachment.tasks if task is not current]
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks)
