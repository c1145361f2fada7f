"""A real busybox ash on a pty, bridged to a unix socket exactly like a guest's serial chardev.

Test helper: ``await HostShell.start()`` spawns ``busybox sh -i`` as a session leader with the
pty as its controlling terminal (so Ctrl-C reaches the foreground job), an 80-column window (so
line wrapping is real), ``PS1='capsa:/# '`` and an ``$ENV`` script that prints the READY MARKER.
A small relay copies between the pty master and one end of a socketpair; the other end is what
:class:`engine.console.console.ConsoleStream` talks to. ``close()`` kills every process of the shell's
session and closes every fd it opened.
"""
from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import termios
from collections.abc import Sequence
from pathlib import Path

from engine.console.console import ConsoleStream
from engine.console.match import READY_MARKER
from tests.procs import processes

BUSYBOX = "/usr/bin/busybox"
PS1 = "capsa:/# "


def _session_pids(sid: int) -> list[int]:
    """Every live process whose session id is ``sid``."""
    return [p.pid for p in processes() if p.sid == sid]


class HostShell:
    """One shell process on a pty plus the relay to a socketpair (see module docstring)."""

    def __init__(self, process: subprocess.Popen[bytes], master: int, relay_sock: socket.socket,
                 guest_sock: socket.socket, tmpdir: str) -> None:
        self.process = process
        self._master = master
        self._relay_sock = relay_sock
        self._guest_sock: socket.socket | None = guest_sock
        self.tmpdir = tmpdir
        self._tasks: list[asyncio.Task[None]] = []
        self._streams: list[ConsoleStream] = []
        self._closed = False

    @classmethod
    async def start(
        cls,
        argv: Sequence[str] | None = None,
        *,
        cols: int = 80,
        rows: int = 24,
        ready_marker: bool = True,
        env: dict[str, str] | None = None,
    ) -> HostShell:
        """Spawn ``argv`` (default ``busybox sh -i``) on a fresh pty and start the relay."""
        tmpdir = tempfile.mkdtemp(prefix="capsa-hostshell-")
        rc = Path(tmpdir, "rc")
        rc.write_text("printf '\\033]777;capsa-ready\\007'\n" if ready_marker else ":\n")
        full_env = {
            "PATH": "/usr/bin:/bin:/usr/sbin:/sbin",
            "HOME": tmpdir,
            "TMPDIR": tmpdir,
            "PS1": PS1,
            "ENV": str(rc),
            "TERM": "linux",
            **(env or {}),
        }
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        try:
            command = list(argv) if argv is not None else [BUSYBOX, "sh", "-i"]
            # setsid -c: new session with the pty as controlling tty, so ^C signals the job
            process = subprocess.Popen(
                ["setsid", "-c", *command],
                stdin=slave, stdout=slave, stderr=slave, env=full_env, cwd=tmpdir, close_fds=True,
            )
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        os.set_blocking(master, False)
        guest_sock, relay_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        relay_sock.setblocking(False)
        shell = cls(process, master, relay_sock, guest_sock, tmpdir)
        shell._tasks = [
            asyncio.create_task(shell._pty_to_socket(), name="hostshell-out"),
            asyncio.create_task(shell._socket_to_pty(), name="hostshell-in"),
        ]
        return shell

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """The (reader, writer) pair a VM would get from its chardev socket (once only)."""
        if self._guest_sock is None:
            raise RuntimeError("already connected")
        sock, self._guest_sock = self._guest_sock, None
        return await asyncio.open_unix_connection(sock=sock)

    async def open_stream(self, **kwargs: object) -> ConsoleStream:
        """A ConsoleStream on this shell, closed again by :meth:`close`."""
        reader, writer = await self.connect()
        kwargs.setdefault("name", "hostshell")
        stream = ConsoleStream(reader, writer, **kwargs)  # type: ignore[arg-type]
        self._streams.append(stream)
        return stream

    # -- relay ------------------------------------------------------------------------------------

    async def _pty_to_socket(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while data := await self._read_master():
                await loop.sock_sendall(self._relay_sock, data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            self._relay_sock.shutdown(socket.SHUT_WR)  # the console sees EOF, like a dead guest

    async def _socket_to_pty(self) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(OSError):
            while data := await loop.sock_recv(self._relay_sock, 65536):
                await self._write_master(data)

    async def _read_master(self) -> bytes:
        while True:
            try:
                return os.read(self._master, 65536)
            except BlockingIOError:
                await self._fd_ready(add=asyncio.get_running_loop().add_reader,
                                     remove=asyncio.get_running_loop().remove_reader)
            except OSError as err:
                if err.errno == errno.EIO:  # every slave fd closed: the shell is gone
                    return b""
                raise

    async def _write_master(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._master, view):]
            except BlockingIOError:
                await self._fd_ready(add=asyncio.get_running_loop().add_writer,
                                     remove=asyncio.get_running_loop().remove_writer)

    async def _fd_ready(self, add: object, remove: object) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not future.done():
                future.set_result(None)

        add(self._master, wake)  # type: ignore[operator]
        try:
            await future
        finally:
            remove(self._master)  # type: ignore[operator]

    def foreground_command(self) -> str | None:
        """Name of the program leading the tty's foreground process group (None if unknown).

        Tests use it to send Ctrl-C only once a job really owns the terminal.
        """
        try:
            stat = Path(f"/proc/{self.process.pid}/stat").read_text()
            tpgid = int(stat[stat.rfind(")") + 2 :].split()[5])
            return Path(f"/proc/{tpgid}/comm").read_text().strip()
        except (OSError, ValueError, IndexError):
            return None

    async def wait_foreground(self, name: str, timeout: float = 5) -> None:
        """Wait until ``name`` is the foreground job of the shell's terminal."""
        async with asyncio.timeout(timeout):
            while self.foreground_command() != name:
                await asyncio.sleep(0.01)

    # -- teardown ---------------------------------------------------------------------------------

    def kill_session(self) -> None:
        """SIGKILL the shell and everything in its session (jobs live in other groups)."""
        for pid in _session_pids(self.process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()

    async def close(self) -> None:
        """Kill the session, stop the relay, close every fd and remove the temp dir."""
        if self._closed:
            return
        self._closed = True
        for stream in self._streams:
            await stream.close()
        self.kill_session()
        self.process.wait(timeout=10)  # SIGKILLed: returns at once
        for task in self._tasks:
            task.cancel()
        await asyncio.wait(self._tasks)
        os.close(self._master)
        self._relay_sock.close()
        if self._guest_sock is not None:
            self._guest_sock.close()
        shutil.rmtree(self.tmpdir, ignore_errors=True)

    async def __aenter__(self) -> HostShell:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


__all__ = ["BUSYBOX", "PS1", "READY_MARKER", "HostShell"]
