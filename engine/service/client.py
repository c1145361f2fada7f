"""ServiceClient: talk to a running ``capsa-tui serve``, on this host or over ssh.

    async with await engine.ServiceClient.connect() as client:            # this host's socket
        print(await client.status())
        result = await client.run("default", "uname -r")
        vm_id = await client.reserve("default", timeout=30)
        async with await client.attach(vm_id) as watch:
            async for chunk in watch: ...
    box = await engine.ServiceClient.connect(engine.ServiceAddress.parse("ssh://me@box"))

The link is a Unix socket or an ``ssh`` running ``capsa-tui serve --stdio`` on the other host
(:mod:`engine.service.transport`); everything above it is the same. One reader task receives
every frame: replies resolve the request waiting on their id, events go to the attachment of
their VM or to the pool and flow watches (:mod:`engine.service.watches`). See
:mod:`engine.service.protocol` for the wire format. :meth:`ServiceClient.close` says ``bye``
first, so the server releases this client's VMs at once; a link that drops instead leaves them
held for the server's grace period, and ``connect(..., resume=client.session)`` takes them back.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from engine.agent.results import ExecResult
from engine.broadcast import Broadcast
from engine.console.console import CommandResult
from engine.errors import ExecTimeout
from engine.netstack.policy.policy import NetworkPolicy
from engine.service import protocol
from engine.service.address import ServiceAddress
from engine.service.errors import BadRequest, ServiceError, ServiceVersionError
from engine.service.transport import Link, open_link
from engine.service.watches import FlowWatch, PoolWatch, flow_event

_BYE_TIMEOUT = 2.0  # a server that does not answer bye in time is left anyway

_READ_SIZE = 65536
_ATTACH_BACKLOG = 4096  # output chunks kept for a watcher that does not read; older ones drop


class Attachment:
    """A console watched through the service: iterate for output bytes, ``write`` to type.

    The iteration ends when the VM's console closes (``closed_reason`` says why), after
    :meth:`detach`, or when the connection to the server is lost.
    """

    def __init__(self, client: ServiceClient, vm_id: str) -> None:
        self._client = client
        self.vm_id = vm_id
        self._chunks: collections.deque[bytes] = collections.deque()
        self._changed = Broadcast()
        self._ended = False
        self.closed_reason: str | None = None
        self.dropped = 0  # bytes the server reported lost, plus chunks we dropped here

    def _push(self, data: bytes, server_dropped: int) -> None:
        if len(self._chunks) >= _ATTACH_BACKLOG:
            self.dropped += len(self._chunks.popleft())
        self.dropped = max(self.dropped, server_dropped)
        self._chunks.append(data)
        self._changed.notify()

    def _end(self, reason: str) -> None:
        if not self._ended:
            self._ended = True
            self.closed_reason = reason
            self._changed.notify()

    async def read(self, n: int = -1) -> bytes:
        """The next output chunk (whole: ``n`` is ignored, it is there for ``ByteSource``);
        ``b""`` once the attachment has ended."""
        while not self._chunks:
            if self._ended:
                return b""
            await self._changed.wait()
        return self._chunks.popleft()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        while chunk := await self.read():
            yield chunk

    async def write(self, data: bytes) -> None:
        await self._client.send_input(self.vm_id, data)

    async def detach(self) -> None:
        """Stop watching (idempotent; a closed connection counts as detached)."""
        if self._ended:
            return
        self._end("detached")
        with contextlib.suppress(ServiceError):
            await self._client.detach(self.vm_id)

    async def __aenter__(self) -> Attachment:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.detach()


class ServiceClient:
    """One connection to the pool service. Requests may run concurrently (pipelined).

    ``where`` names the server in every message (its socket, or ``ssh://user@host``); after the
    handshake ``host``, ``accel``, ``session`` and ``grace_s`` say what the server told us.
    """

    protocol_version = protocol.PROTOCOL_VERSION  # what hello announces (tests speak others)

    def __init__(self, link: Link, address: ServiceAddress) -> None:
        self.address = address
        self.where = link.where
        self.path = Path(link.where) if address.kind == "unix" else None
        self._link = link
        self._reader = link.reader
        self._writer = link.writer
        self._decoder = protocol.FrameDecoder()
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[protocol.Message]] = {}
        self._attachments: dict[str, Attachment] = {}
        self._write_lock = asyncio.Lock()
        self._lost: str | None = None
        self._pools: list[str] = []
        self._reader_task: asyncio.Task[None] | None = None
        self._pool_watch: PoolWatch | None = None
        self._flow_watch: FlowWatch | None = None
        self.host: str | None = None
        self.accel: str | None = None
        self.session: str | None = None
        self.grace_s = 0.0
        self.resumed: list[str] = []
        self._closed = False

    @classmethod
    async def connect(cls, target: ServiceAddress | Path | str | None = None, timeout: float = 10.0,
                      *, resume: str | None = None) -> ServiceClient:
        """Connect and shake hands; :class:`ServiceUnavailable` when no server listens.

        ``target`` is a :class:`ServiceAddress`, a socket path, or None (this host's default
        socket); ``resume`` is the ``session`` of an earlier connection whose VMs to take back.
        """
        address = _address(target)
        link = await open_link(address, timeout)
        client = cls(link, address)
        try:
            await asyncio.wait_for(client._handshake(resume), timeout)
        except BaseException as err:
            await link.close()
            why = link.diagnosis()
            if isinstance(err, TimeoutError):
                raise ServiceError(f"the server on {link.where} did not answer the handshake in {timeout}s"
                                   + (f": {why}" if why else "")) from None
            if isinstance(err, ServiceError) and why and not isinstance(err, (ServiceVersionError, BadRequest)):
                raise type(err)(f"{err}: {why}", err.kind) from None  # ssh's own words say why
            raise
        client._reader_task = asyncio.create_task(client._read_loop(), name="capsa-service-client")
        return client

    @property
    def pools(self) -> list[str]:
        """Names of the pools (and, with lazy pools, profiles) the server had when we connected."""
        return list(self._pools)

    @property
    def lost(self) -> str | None:
        """Why the connection ended (None while it is up)."""
        return self._lost

    async def _handshake(self, resume: str | None) -> None:
        await self._send(protocol.hello(self.protocol_version, resume))
        while True:
            data = await self._reader.read(_READ_SIZE)
            if not data:
                raise ServiceError(f"the server on {self.where} closed the connection during the handshake")
            messages = self._decoder.feed(data)
            if messages:
                break
        reply = messages[0]
        protocol.check_hello_reply(reply, self.protocol_version)
        self._pools = [str(name) for name in reply.get("pools", [])]
        self.host = _text(reply.get("host"))
        self.accel = _text(reply.get("accel"))
        self.session = _text(reply.get("session"))
        self.grace_s = float(reply.get("grace_s") or 0.0)
        self.resumed = [str(vm) for vm in reply.get("resumed", [])]

    # -- requests --------------------------------------------------------------------------------

    async def status(self) -> list[dict[str, Any]]:
        """Every pool's stats (PoolStats fields) with its ``members``."""
        reply = await self._request("status")
        return list(reply["pools"])

    async def reserve(self, pool: str, timeout: float | None = None) -> str:
        """Reserve an idle VM of ``pool`` for this connection; returns its id."""
        reply = await self._request("reserve", pool=pool, timeout=timeout)
        return str(reply["vm"])

    async def release(self, vm_id: str) -> None:
        await self._request("release", vm=vm_id)

    async def exec(self, vm_id: str, command: str, timeout: float | None = 30) -> CommandResult:
        """Run ``command`` on a VM this connection reserved."""
        return _result(await self._request("exec", vm=vm_id, command=command, timeout=timeout))

    async def run(
        self, pool: str, command: str, timeout: float | None = 30, reserve_timeout: float | None = None
    ) -> CommandResult:
        """Reserve a VM of ``pool``, run ``command``, release the VM: all on the server."""
        reply = await self._request(
            "run", pool=pool, command=command, timeout=timeout, reserve_timeout=reserve_timeout
        )
        return _result(reply)

    async def attach(self, vm_id: str, from_start: bool = False, write: bool = False) -> Attachment:
        """Watch a VM's console (any member of any pool); ``write`` asks to type too."""
        if vm_id in self._attachments:
            raise ServiceError(f"VM {vm_id} is already attached on this connection", kind="AlreadyAttached")
        attachment = Attachment(self, vm_id)
        # registered first: output events may arrive right behind the reply
        self._attachments[vm_id] = attachment
        try:
            await self._request("attach", vm=vm_id, from_start=from_start, write=write)
        except BaseException:
            self._attachments.pop(vm_id, None)
            raise
        return attachment

    async def detach(self, vm_id: str) -> None:
        attachment = self._attachments.pop(vm_id, None)
        if attachment is not None:
            attachment._end("detached")
        await self._request("detach", vm=vm_id)

    async def send_input(self, vm_id: str, data: bytes) -> None:
        """Type ``data`` on an attached VM's console (needs a writable attachment)."""
        await self._request("input", vm=vm_id, data=protocol.b64encode(data))

    # -- pools, profiles, policies (v2) ---------------------------------------------------------

    async def profiles(self) -> dict[str, Any]:
        """``{"profiles": [{name, path, source, text}], "broken": [issues]}`` of the server."""
        return dict(await self._request("profiles"))

    async def reload(self) -> dict[str, Any]:
        """Make the server read its profiles again; the same reply as :meth:`profiles`."""
        return dict(await self._request("reload"))

    async def start_pool(self, pool: str, size: int | None = None) -> None:
        """Start profile ``pool``'s pool on the server (returns while its VMs boot)."""
        await self._request("pool_start", pool=pool, size=size)

    async def stop_pool(self, pool: str) -> None:
        await self._request("pool_stop", pool=pool)

    async def resize_pool(self, pool: str, size: int) -> None:
        await self._request("pool_resize", pool=pool, size=size)

    async def set_policy(self, pool: str, policy: NetworkPolicy, *, apply: bool = True,
                         save: bool = False) -> dict[str, Any]:
        """Apply ``policy`` to the running pool and/or save it to the server's profile file;
        the reply says where it was saved (``saved_to``) and the saved ``profile``."""
        return dict(await self._request("set_policy", pool=pool, policy=policy.to_dict(), apply=apply, save=save))

    async def watch_pools(self) -> PoolWatch:
        """Every pool's state, pushed by the server after each change (one watch per client)."""
        if self._pool_watch is not None and self._pool_watch.ended is None:
            return self._pool_watch
        watch = self._pool_watch = PoolWatch()
        try:
            await self._request("watch_pools")
        except BaseException:
            self._pool_watch = None
            raise
        return watch

    async def watch_flows(self, pool: str | None = None, vm: str | None = None,
                          action: str | None = None) -> FlowWatch:
        """Flow events that match (None: any), pushed as they happen; ``backlog`` first."""
        if self._flow_watch is not None and self._flow_watch.ended is None:
            await self.unwatch("flows")
        watch = self._flow_watch = FlowWatch()
        try:
            reply = await self._request("watch_flows", pool=pool, vm=vm, action=action)
        except BaseException:
            self._flow_watch = None
            raise
        watch.backlog = [flow_event(item) for item in reply.get("backlog", [])]
        return watch

    async def unwatch(self, what: str) -> None:
        """Stop the ``"pools"`` or ``"flows"`` watch."""
        watch: PoolWatch | FlowWatch | None = self._pool_watch if what == "pools" else self._flow_watch
        if watch is not None:
            watch._end("unwatched")
        if what == "pools":
            self._pool_watch = None
        else:
            self._flow_watch = None
        await self._request("unwatch", what=what)

    # -- a VM's agent (v2) -----------------------------------------------------------------------

    async def agent_exec(self, vm_id: str, command: str | Sequence[str], *, stdin: bytes = b"",
                         timeout: float | None = None, env: Mapping[str, str] | None = None,
                         cwd: str | None = None) -> ExecResult:
        """Run ``command`` through a reserved sandbox's agent: stdout and stderr apart, as bytes.
        Past ``timeout`` this raises ExecTimeout with the output so far, as the agent does."""
        reply = await self._request(
            "agent_exec", vm=vm_id, command=command if isinstance(command, str) else list(command),
            stdin=protocol.b64encode(stdin), timeout=timeout, env=dict(env) if env is not None else None, cwd=cwd)
        stdout, stderr = protocol.b64decode(str(reply["stdout"])), protocol.b64decode(str(reply["stderr"]))
        if reply.get("timed_out"):
            raise ExecTimeout(f"{command!r} ran past its {timeout:g} s timeout; its process group was killed",
                              stdout, stderr)
        return ExecResult(reply.get("exit_code"), reply.get("signal"), stdout, stderr, bool(reply.get("truncated")),
                          float(reply.get("duration_s") or 0.0))

    async def set_console_size(self, vm_id: str, cols: int, rows: int) -> bool:
        """The reserved VM's serial console gets this window size through its agent; False when
        the VM runs no agent."""
        reply = await self._request("console_size", vm=vm_id, cols=cols, rows=rows)
        return bool(reply.get("done"))

    async def write_file(self, vm_id: str, path: str, data: bytes, mode: int = 0o644) -> None:
        await self._request("file_write", vm=vm_id, path=path, data=protocol.b64encode(data), mode=mode)

    async def read_file(self, vm_id: str, path: str) -> bytes:
        reply = await self._request("file_read", vm=vm_id, path=path)
        return protocol.b64decode(str(reply["data"]))

    async def _request(self, op: str, **fields: Any) -> protocol.Message:
        if self._lost is not None:
            raise ServiceError(f"the connection to {self.where} is closed: {self._lost}")
        request_id = next(self._ids)
        future: asyncio.Future[protocol.Message] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            await self._send(protocol.request(op, request_id, **fields))
            reply = await future
        finally:
            self._pending.pop(request_id, None)
        if reply.get("ok") is not True:
            raise ServiceError(str(reply.get("error", "request failed")), kind=str(reply.get("kind") or "Error"))
        return reply

    async def _send(self, message: protocol.Message) -> None:
        frame = protocol.encode(message)
        async with self._write_lock:
            try:
                self._writer.write(frame)
                await self._writer.drain()
            except (ConnectionError, OSError) as err:
                self._connection_lost(f"write failed: {err}")
                raise ServiceError(f"lost the connection to {self.where}: {err}") from None

    # -- receiving -------------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        reason = "the server closed the connection"
        try:
            while data := await self._reader.read(_READ_SIZE):
                for message in self._decoder.feed(data):
                    self._dispatch(message)
        except ServiceError as err:  # a broken frame or a field we cannot decode
            reason = f"the server sent garbage: {err}"
        except (ConnectionError, OSError) as err:
            reason = f"connection error: {err}"
        finally:
            self._connection_lost(reason)

    def _dispatch(self, message: protocol.Message) -> None:
        event = message.get("event")
        if event == "pools":
            if self._pool_watch is not None:
                self._pool_watch._push(list(message.get("pools", [])), int(message.get("version", 0)))
            return
        if event == "flows":
            if self._flow_watch is not None:
                self._flow_watch._push(list(message.get("flows", [])), int(message.get("dropped", 0)))
            return
        if event is not None:
            attachment = self._attachments.get(str(message.get("vm")))
            if attachment is None:
                return  # a late event for a console we already detached from
            if event == "output":
                data = protocol.b64decode(str(message.get("data", "")))
                attachment._push(data, int(message.get("dropped", 0)))
            elif event == "closed":
                self._attachments.pop(attachment.vm_id, None)
                attachment._end(str(message.get("reason", "closed")))
            return
        request = protocol.request_id(message)
        future = self._pending.get(request) if request is not None else None
        if future is not None and not future.done():
            future.set_result(message)

    def _connection_lost(self, reason: str) -> None:
        if self._lost is not None:
            return
        why = self._link.diagnosis() if not self._closed else None
        if why:
            reason = f"{reason} ({why})"
        self._lost = reason
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ServiceError(f"lost the connection to {self.where}: {reason}"))
        for watch in (self._pool_watch, self._flow_watch):
            if watch is not None:
                watch._end(f"lost the connection to the server: {reason}")
        for attachment in self._attachments.values():
            attachment._end(f"lost the connection to the server: {reason}")
        self._attachments.clear()

    # -- lifecycle -------------------------------------------------------------------------------

    async def close(self) -> None:
        """Say ``bye`` and close; the server releases every VM this connection reserved at once."""
        if self._lost is None and not self._closed:
            with contextlib.suppress(ServiceError, TimeoutError):
                async with asyncio.timeout(_BYE_TIMEOUT):
                    await self._request("bye")
        self._closed = True
        self._connection_lost("closed by the client")
        await self._link.close()
        if self._reader_task is not None:
            self._reader_task.cancel()
            await asyncio.wait([self._reader_task])

    async def __aenter__(self) -> ServiceClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _address(target: ServiceAddress | Path | str | None) -> ServiceAddress:
    if isinstance(target, ServiceAddress):
        return target
    if target is None:
        return ServiceAddress.local()
    text = str(target)
    if isinstance(target, str) and ("://" in text or text == "local"):
        return ServiceAddress.parse(text)
    return ServiceAddress(kind="unix", path=Path(target))


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _result(reply: protocol.Message) -> CommandResult:
    return CommandResult(
        exit_code=int(reply["exit_code"]), output=str(reply["output"]), dropped=int(reply.get("dropped", 0))
    )
