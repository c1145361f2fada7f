"""PoolServer: serve VM pools to other processes on a Unix socket (``capsa-tui serve``).

    async with await engine.vm_pool(boot).name("default").build(2) as pool:
        async with engine.PoolServer([pool]) as server:
            print("listening on", server.path)
            await stop_event.wait()

What it serves is a :class:`~engine.service.registry.PoolRegistry`: the pools given here, and,
when the registry loads profiles, every profile's pool that a client starts (or reserves from,
with lazy pools). Closing the server closes the pools the registry started; pools handed in
stay their builder's to close.

Only the user who runs the server can use it: the socket is created with mode 0600 in a folder
of mode 0700, and every connection's peer uid (SO_PEERCRED) must be ours. The server serves the
pools; it does not own them: whoever built a pool closes it, after closing the server (which
releases every VM its clients still held).

Every client is bounded (:mod:`engine.service.limits`: connections, buffered request bytes
across all clients, frame size and JSON depth, running requests and queued replies per client,
the hello timeout); each bound is a keyword argument here, and :meth:`PoolServer.stats` shows
what the server holds and what it refused. ``grace`` is how long the VMs of a client whose link
dropped stay reserved for it to come back (:mod:`engine.service.sessions`; 0, the default,
releases them at once as protocol v1 did).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import stat
import struct
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from engine.logevent import log_event
from engine.errors import EngineError
from engine.kvm.accel import choose_accelerator
from engine.pool.pool import VmPool
from engine.service import limits as defaults
from engine.service import protocol
from engine.service.budget import RequestBudget
from engine.service.connection import Connection
from engine.service.errors import ServiceError
from engine.service.limits import ServiceLimits
from engine.service.paths import prepare_socket_folder, service_socket_path
from engine.service.registry import PoolRegistry
from engine.service.sessions import HeldReservations
from engine.service.stats import ServiceStats

log = logging.getLogger(__name__)

_PROBE_TIMEOUT = 2.0
_CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid


class PoolServer:
    """Serves ``pools`` (by name) on ``path`` (default: :func:`service_socket_path`).

    The keyword arguments are the limits of :mod:`engine.service.limits` (defaults there);
    a value that is not a positive number is a ``ValueError`` naming the argument.
    """

    def __init__(
        self,
        pools: Iterable[VmPool] = (),
        path: Path | str | None = None,
        *,
        registry: PoolRegistry | None = None,
        grace: float = 0.0,
        max_connections: int = defaults.MAX_CONNECTIONS,
        max_request_bytes: int = defaults.MAX_REQUEST_BYTES,
        max_frame: int = protocol.MAX_FRAME,
        max_depth: int = protocol.MAX_DEPTH,
        max_requests: int = defaults.MAX_REQUESTS,
        max_reply_bytes: int = defaults.MAX_REPLY_BYTES,
        hello_timeout: float = defaults.HELLO_TIMEOUT,
        frame_timeout: float = defaults.FRAME_TIMEOUT,
    ) -> None:
        self.limits = ServiceLimits(
            max_connections=max_connections,
            max_request_bytes=max_request_bytes,
            max_frame=max_frame,
            max_depth=max_depth,
            max_requests=max_requests,
            max_reply_bytes=max_reply_bytes,
            hello_timeout=hello_timeout,
            frame_timeout=frame_timeout,
        )
        self._budget = RequestBudget(max_request_bytes)
        self._refused: Counter[str] = Counter()
        self.path = Path(path) if path is not None else service_socket_path()
        if not (grace >= 0 and math.isfinite(grace)):
            raise ValueError(f"PoolServer: grace must be a finite number of seconds >= 0, not {grace!r}")
        self.registry = registry if registry is not None else PoolRegistry()
        self.held = HeldReservations(grace)
        self._facts = {"host": socket.gethostname(), "accel": _accel_text()}
        for pool in pools:
            self.add_pool(pool)
        self._server: asyncio.AbstractServer | None = None
        self._socket_id: tuple[int, int] | None = None
        self._connections: dict[asyncio.Task[None], Connection] = {}
        self._closed = False

    @property
    def pools(self) -> dict[str, VmPool]:
        """The pools running right now, by name."""
        return self.registry.pools

    @property
    def connection_count(self) -> int:
        """Clients connected right now (tests use it to see a disconnect was noticed)."""
        return len(self._connections)

    def stats(self) -> ServiceStats:
        """What the server holds for its clients right now, and what it refused so far."""
        connections = list(self._connections.values())
        return ServiceStats(
            connections=len(connections),
            request_bytes=self._budget.used,
            request_bytes_received=sum(c.request_bytes_received for c in connections),
            max_request_bytes=self._budget.limit,
            reply_bytes=sum(c.reply_bytes for c in connections),
            requests_running=sum(c.requests_running for c in connections),
            refused=dict(self._refused),
        )

    def _refuse(self, kind: str, message: str) -> None:
        self._refused[kind] += 1
        log_event(log, logging.WARNING, "client_refused", kind=kind, reason=message)

    def add_pool(self, pool: VmPool) -> None:
        """Serve ``pool`` too (a server may start listening before its pools have booted)."""
        self.registry.add_pool(pool)

    # -- starting --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen; :class:`ServiceError` if another server answers on the socket already."""
        if self._server is not None:
            return
        prepare_socket_folder(self.path)
        await _clear_stale_socket(self.path)
        sock = _bind_private(self.path)
        try:
            info = os.stat(self.path)
            self._socket_id = (info.st_dev, info.st_ino)
            self._server = await asyncio.start_unix_server(self._on_connect, sock=sock)
        except BaseException:
            sock.close()
            self._remove_socket()
            raise
        log_event(log, logging.DEBUG, "server_listening", socket=self.path)

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        uid = _peer_uid(writer)
        if uid != os.getuid() or self._closed:
            why = "the server is closing" if self._closed else f"uid {uid} may not use this server"
            await _turn_away(writer, protocol.hello_refusal(why))
            return
        if len(self._connections) >= self.limits.max_connections:
            limit = self.limits.max_connections
            why = f"the server has {limit} clients connected (max_connections); try again later"
            self._refuse("TooManyConnections", why)
            await _turn_away(writer, protocol.hello_refusal(why, "TooManyConnections"))
            return
        connection = Connection(self.registry, reader, writer, self.limits, self._budget, self._refuse,
                                self.held, self._facts)
        self._connections[task] = connection
        try:
            await connection.serve()
        except asyncio.CancelledError:
            # close() cancels us, after the cleanup in serve() ran. Python 3.11's stream server
            # logs a cancelled connection task as an error, so it ends normally instead.
            if not self._closed:
                raise
        finally:
            self._connections.pop(task, None)

    # -- stopping --------------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop listening, drop every client (releasing their VMs, held ones too), close the
        pools the registry started, remove the socket."""
        if self._closed:
            return
        self._closed = True
        if self._server is not None:
            self._server.close()
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
        await self.held.close()
        await self.registry.close()
        self._remove_socket()

    def _remove_socket(self) -> None:
        # Only our own socket: a newer server may have replaced it meanwhile.
        with contextlib.suppress(OSError):
            info = os.lstat(self.path)
            if (info.st_dev, info.st_ino) == self._socket_id:
                os.unlink(self.path)

    async def __aenter__(self) -> PoolServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def _turn_away(writer: asyncio.StreamWriter, refusal: protocol.Message) -> None:
    """Send one refusal and close; a peer that does not take it is cut off, not waited for."""
    with contextlib.suppress(ConnectionError, OSError):
        writer.write(protocol.encode(refusal))
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), _PROBE_TIMEOUT)
    except (TimeoutError, ConnectionError, OSError):
        writer.transport.abort()


async def _clear_stale_socket(path: Path) -> None:
    """Remove a socket file no server answers on; refuse when one does."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise ServiceError(f"{path} exists and is not a socket; remove it or set CAPSA_SOCKET")
    try:
        _, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), _PROBE_TIMEOUT)
    except (ConnectionRefusedError, FileNotFoundError):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # left by a server that died without cleaning up
        return
    except (OSError, TimeoutError) as err:
        raise ServiceError(f"cannot tell whether a server listens on {path}: {err or 'timed out'}") from None
    writer.close()
    with contextlib.suppress(ConnectionError, OSError):
        await writer.wait_closed()
    raise ServiceError(f"another capsa-tui serve is already listening on {path}")


def _bind_private(path: Path) -> socket.socket:
    """A listening-ready socket at ``path`` that only its owner can connect to."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # The umask makes the file 0600 from its first instant: no window for another user.
    old_umask = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError as err:
        sock.close()
        raise ServiceError(f"cannot listen on {path}: {err}") from None
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    return sock


def _accel_text() -> str:
    try:
        return choose_accelerator().describe()
    except EngineError as err:  # a bad CAPSA_ACCEL: every VM fails the same way, and says so
        return f"unusable: {err}"


def _peer_uid(writer: asyncio.StreamWriter) -> int | None:
    sock = writer.get_extra_info("socket")
    if sock is None or not hasattr(socket, "SO_PEERCRED"):
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDENTIALS.size)
    except OSError:
        return None
    _, uid, _ = _CREDENTIALS.unpack(raw)
    return int(uid)
