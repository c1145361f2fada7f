"""PoolServer: serve VM pools to other processes on a Unix socket (``capsa-tui serve``).

    async with await engine.vm_pool(boot).name("default").build(2) as pool:
        async with engine.PoolServer([pool]) as server:
            print("listening on", server.path)
            await stop_event.wait()

Only the user who runs the server can use it: the socket is created with mode 0600 in a folder
of mode 0700, and every connection's peer uid (SO_PEERCRED) must be ours. The server serves the
pools; it does not own them: whoever built a pool closes it, after closing the server (which
releases every VM its clients still held).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
import struct
from collections.abc import Iterable
from pathlib import Path

from engine.pool.pool import VmPool
from engine.service import protocol
from engine.service.connection import Connection
from engine.service.errors import ServiceError
from engine.service.paths import prepare_socket_folder, service_socket_path

log = logging.getLogger(__name__)

_PROBE_TIMEOUT = 2.0
_CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid


class PoolServer:
    """Serves ``pools`` (by name) on ``path`` (default: :func:`service_socket_path`)."""

    def __init__(self, pools: Iterable[VmPool] = (), path: Path | str | None = None) -> None:
        self.path = Path(path) if path is not None else service_socket_path()
        self._pools: dict[str, VmPool] = {}
        for pool in pools:
            self.add_pool(pool)
        self._server: asyncio.AbstractServer | None = None
        self._socket_id: tuple[int, int] | None = None
        self._connections: dict[asyncio.Task[None], Connection] = {}
        self._closed = False

    @property
    def pools(self) -> dict[str, VmPool]:
        return dict(self._pools)

    @property
    def connection_count(self) -> int:
        """Clients connected right now (tests use it to see a disconnect was noticed)."""
        return len(self._connections)

    def add_pool(self, pool: VmPool) -> None:
        """Serve ``pool`` too (a server may start listening before its pools have booted)."""
        if pool.name in self._pools:
            raise ServiceError(f"a pool named {pool.name!r} is already served")
        self._pools[pool.name] = pool

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
        log.info("pool service listening on %s", self.path)

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        uid = _peer_uid(writer)
        if uid != os.getuid() or self._closed:
            why = "the server is closing" if self._closed else f"uid {uid} may not use this server"
            with contextlib.suppress(ConnectionError, OSError):
                writer.write(protocol.encode(protocol.hello_refusal(why)))
                await writer.drain()
            writer.close()
            return
        connection = Connection(self._pools, reader, writer)
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
        """Stop listening, drop every client (releasing their VMs), remove the socket."""
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
