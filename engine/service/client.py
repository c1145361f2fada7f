"""ServiceClient: talk to a running ``capsa-tui serve`` over its Unix socket.

    async with await engine.ServiceClient.connect() as client:
        print(await client.status())
        result = await client.run("default", "uname -r")
        vm_id = await client.reserve("default", timeout=30)
        async with await client.attach(vm_id) as watch:
            async for chunk in watch: ...

One reader task receives every frame: replies resolve the request waiting on their id, events
go to the attachment of their VM. See :mod:`engine.service.protocol` for the wire format.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from engine.broadcast import Broadcast
from engine.console.console import CommandResult
from engine.service import protocol
from engine.service.errors import ServiceError, ServiceUnavailable
from engine.service.paths import service_socket_path

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
    """One connection to the pool service. Requests may run concurrently (pipelined)."""

    protocol_version = protocol.PROTOCOL_VERSION  # what hello announces (tests speak others)

    def __init__(self, path: Path, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.path = path
        self._reader = reader
        self._writer = writer
        self._decoder = protocol.FrameDecoder()
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[protocol.Message]] = {}
        self._attachments: dict[str, Attachment] = {}
        self._write_lock = asyncio.Lock()
        self._lost: str | None = None
        self._pools: list[str] = []
        self._reader_task: asyncio.Task[None] | None = None

    @classmethod
    async def connect(cls, path: Path | str | None = None, timeout: float = 10.0) -> ServiceClient:
        """Connect and shake hands; :class:`ServiceUnavailable` when no server listens."""
        where = Path(path) if path is not None else service_socket_path()
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(where)), timeout)
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
            raise ServiceUnavailable(f"no capsa-tui serve is running (socket {where})") from None
        except PermissionError:
            raise ServiceError(f"cannot connect to {where}: permission denied (another user's socket?)") from None
        except (OSError, TimeoutError) as err:
            raise ServiceError(f"cannot connect to {where}: {err or 'timed out'}") from None
        client = cls(where, reader, writer)
        try:
            await asyncio.wait_for(client._handshake(), timeout)
        except BaseException as err:
            await client.close()
            if isinstance(err, TimeoutError):
                raise ServiceError(f"the server on {where} did not answer the handshake in {timeout}s") from None
            raise
        client._reader_task = asyncio.create_task(client._read_loop(), name="capsa-service-client")
        return client

    @property
    def pools(self) -> list[str]:
        """Names of the pools the server held when we connected."""
        return list(self._pools)

    async def _handshake(self) -> None:
        await self._send(protocol.hello(self.protocol_version))
        while True:
            data = await self._reader.read(_READ_SIZE)
            if not data:
                raise ServiceError(f"the server on {self.path} closed the connection during the handshake")
            messages = self._decoder.feed(data)
            if messages:
                break
        reply = messages[0]
        protocol.check_hello_reply(reply, self.protocol_version)
        self._pools = [str(name) for name in reply.get("pools", [])]

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

    async def _request(self, op: str, **fields: Any) -> protocol.Message:
        if self._lost is not None:
            raise ServiceError(f"the connection to {self.path} is closed: {self._lost}")
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
                raise ServiceError(f"lost the connection to {self.path}: {err}") from None

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
        self._lost = reason
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ServiceError(f"lost the connection to {self.path}: {reason}"))
        for attachment in self._attachments.values():
            attachment._end(f"lost the connection to the server: {reason}")
        self._attachments.clear()

    # -- lifecycle -------------------------------------------------------------------------------

    async def close(self) -> None:
        """Close the connection; the server releases every VM this connection reserved."""
        self._connection_lost("closed by the client")
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()
        if self._reader_task is not None:
            self._reader_task.cancel()
            await asyncio.wait([self._reader_task])

    async def __aenter__(self) -> ServiceClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _result(reply: protocol.Message) -> CommandResult:
    return CommandResult(
        exit_code=int(reply["exit_code"]), output=str(reply["output"]), dropped=int(reply.get("dropped", 0))
    )
