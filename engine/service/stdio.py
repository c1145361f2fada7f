"""``capsa-tui serve --stdio``: the remote end of an ssh link, a relay to this machine's service.

A client elsewhere runs ``ssh host capsa-tui serve --stdio`` (:mod:`engine.service.transport`);
sshd starts this with the ssh channel as stdin and stdout, and :func:`relay_stdio` copies bytes
both ways between them and the local ``capsa-tui serve`` socket, unchanged: the protocol is
spoken end to end by the client and the server, and the server checks the peer as it does for
any local client (this process runs as the ssh user, who must be the server's user).

The end of either side ends the relay: stdin's end (the client closed, or ssh died) is passed
on by shutting the socket's sending side, so the server sees the client leave and releases
what it held; the server closing the socket ends the relay, which closes stdout, so ssh exits.
A stdout that breaks (sshd gone) ends it too, so no relay outlives its ssh session.
"""
from __future__ import annotations

import asyncio
import contextlib
import io
import os
import socket
import stat
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from engine.service.paths import service_socket_path

_CHUNK = 65536
_NAME = "capsa-tui serve --stdio"
_FLUSH_TIMEOUT = 10.0  # for the last bytes to stdout, at the end


async def relay_stdio(socket_path: Path | None = None) -> int:
    """Relay stdin/stdout to the service socket (default :func:`service_socket_path`).

    Returns 0 when either side ended the stream; 1, after one line on stderr saying why, when
    no service answers on the socket or stdin/stdout cannot be relayed.
    """
    path = socket_path if socket_path is not None else service_socket_path()
    try:
        sock_reader, sock_writer = await asyncio.open_unix_connection(str(path), limit=_CHUNK)
    except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
        _say(
            f"no capsa-tui serve is running on {socket.gethostname()} (socket {path}); "
            "start it there (capsa-tui serve, or systemctl --user start capsa-tui)"
        )
        return 1
    except OSError as err:
        _say(f"cannot connect to the capsa-tui serve socket {path} on {socket.gethostname()}: {err}")
        return 1
    try:
        async with _std_streams() as (stdin, stdout):
            await _pump(stdin, stdout, sock_reader, sock_writer)
    except _NotAStream as err:
        _say(str(err))
        return 1
    finally:
        sock_writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await sock_writer.wait_closed()
    return 0


async def _pump(
    stdin: asyncio.StreamReader, stdout: _Stdout, sock_reader: asyncio.StreamReader, sock_writer: asyncio.StreamWriter
) -> None:
    """Copy both ways until the socket ends or stdout breaks."""

    async def upstream() -> None:  # stdin -> socket; its end half-closes the socket
        with contextlib.suppress(ConnectionError, OSError):
            while data := await stdin.read(_CHUNK):
                sock_writer.write(data)
                await sock_writer.drain()
            if sock_writer.can_write_eof():
                sock_writer.write_eof()  # shutdown(SHUT_WR): the server reads its end of input

    async def downstream() -> None:  # socket -> stdout
        with contextlib.suppress(ConnectionError, OSError):
            while data := await sock_reader.read(_CHUNK):
                await stdout.write(data)

    up = asyncio.create_task(upstream(), name="capsa-stdio-up")
    down = asyncio.create_task(downstream(), name="capsa-stdio-down")
    try:
        # Normally the server's end (after stdin's, passed on); a broken stdout ends it at once,
        # even while the server still holds the socket open.
        await asyncio.wait([down, stdout.lost], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (up, down):
            task.cancel()
        await asyncio.wait([up, down])


class _NotAStream(Exception):
    """stdin or stdout is closed, or something the event loop cannot wait on (a regular file)."""


class _Stdout:
    """Where the socket's bytes go: :meth:`write` waits while the reader is behind; ``lost``
    resolves when the reader has gone."""

    lost: asyncio.Future[None]

    async def write(self, data: bytes) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        """Send what is buffered (for a while), then close: the reader sees the end."""
        raise NotImplementedError


class _WriteProtocol(asyncio.Protocol):
    """Flow control of a write pipe: :meth:`drain` waits while the transport's buffer is full."""

    def __init__(self) -> None:
        self._resumed = asyncio.Event()
        self._resumed.set()
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def pause_writing(self) -> None:
        self._resumed.clear()

    def resume_writing(self) -> None:
        self._resumed.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self._resumed.set()
        if not self.lost.done():
            self.lost.set_result(None)

    async def drain(self) -> None:
        await self._resumed.wait()
        if self.lost.done():
            raise BrokenPipeError("stdout is closed")


class _PipeStdout(_Stdout):
    """A pipe or terminal, through the loop's write-pipe transport (which also notices a pipe
    whose reader closed, without a write)."""

    def __init__(self, transport: asyncio.WriteTransport, protocol: _WriteProtocol) -> None:
        self._transport = transport
        self._protocol = protocol
        self.lost = protocol.lost

    async def write(self, data: bytes) -> None:
        if self.lost.done():
            raise BrokenPipeError("stdout is closed")
        self._transport.write(data)
        await self._protocol.drain()

    async def close(self) -> None:
        if self.lost.done():
            return
        self._transport.close()  # after the buffered bytes are written
        try:
            await asyncio.wait_for(asyncio.shield(self.lost), _FLUSH_TIMEOUT)
        except TimeoutError:
            self._transport.abort()  # a reader that takes nothing more is not waited for


class _SocketStdout(_Stdout):
    """A socket (sshd may hand a socketpair as both stdin and stdout). Not the write-pipe
    transport: it takes a readable fd for a closed one, and stdin's bytes make this one
    readable. The socket's end shows as stdin's."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.lost = asyncio.get_running_loop().create_future()

    async def write(self, data: bytes) -> None:
        try:
            await asyncio.get_running_loop().sock_sendall(self._sock, data)
        except OSError:
            if not self.lost.done():
                self.lost.set_result(None)
            raise

    async def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_WR)
        self._sock.close()


@contextlib.asynccontextmanager
async def _std_streams() -> AsyncIterator[tuple[asyncio.StreamReader, _Stdout]]:
    """stdin and stdout for the event loop, on duplicates of fds 0 and 1.

    Only the duplicates are closed, never fds 0 and 1 themselves. O_NONBLOCK belongs to the
    open file that a duplicate shares with whoever else holds it (a terminal, when run by
    hand), so the original modes are put back at the end.
    """
    loop = asyncio.get_running_loop()
    blocking: dict[int, bool] = {}
    owned: list[io.FileIO | socket.socket] = []  # closed at the end, unless a transport took them
    transports: list[asyncio.BaseTransport] = []
    stdout: _Stdout | None = None
    try:
        try:
            for fd in (0, 1):
                blocking[fd] = os.get_blocking(fd)
            stdin = asyncio.StreamReader(limit=_CHUNK)
            stdin_file = io.FileIO(os.dup(0), "rb")
            owned.append(stdin_file)
            read_transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), stdin_file)
            transports.append(read_transport)
            owned.remove(stdin_file)
            if stat.S_ISSOCK(os.fstat(1).st_mode):
                sock = socket.socket(fileno=os.dup(1))
                owned.append(sock)
                sock.setblocking(False)
                stdout = _SocketStdout(sock)
            else:
                stdout_file = io.FileIO(os.dup(1), "wb")
                owned.append(stdout_file)
                write_transport, protocol = await loop.connect_write_pipe(_WriteProtocol, stdout_file)
                transports.append(write_transport)
                owned.remove(stdout_file)
                stdout = _PipeStdout(write_transport, protocol)
        except (ValueError, OSError) as err:  # closed, or a regular file (the loop cannot wait on one)
            why = f"cannot relay: stdin and stdout must be open pipes, sockets or terminals ({err})"
            raise _NotAStream(why) from None
        yield stdin, stdout
        await stdout.close()
    finally:
        for transport in transports:
            transport.close()
        for thing in owned:
            thing.close()
        for fd, was_blocking in blocking.items():
            with contextlib.suppress(OSError):
                os.set_blocking(fd, was_blocking)


def _say(message: str) -> None:
    """One line on stderr, which ssh carries back to the client (its diagnosis)."""
    with contextlib.suppress(OSError):
        sys.stderr.write(f"{_NAME}: {message}\n")
        sys.stderr.flush()
