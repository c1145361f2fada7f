"""The byte stream to a pool service: a Unix socket, or ``ssh`` running ``capsa-tui serve --stdio``.

    link = await open_link(ServiceAddress.parse("ssh://me@box"), timeout=10)
    try:
        link.writer.write(frame); data = await link.reader.read(65536)
    finally:
        await link.close()
    print(link.diagnosis())   # after a failure: why, in ssh's (or the remote's) words

Over ssh the stream is ssh's stdin and stdout; its stderr is read all along into a bounded
tail (a full stderr pipe would stop ssh), which is what :meth:`Link.diagnosis` reports: ssh's
exit status and last lines, such as ``ssh: connect to host box port 22: Connection refused`` or
the remote's ``no capsa-tui serve is running on box ...``. ssh starts in a session of its own,
so the terminal's Ctrl-C reaches the app and not ssh, and :meth:`Link.close` can end ssh and
anything it started (a ProxyCommand) together.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from dataclasses import dataclass, field
from typing import Any

from engine.service.address import ServiceAddress
from engine.service.errors import ServiceError, ServiceUnavailable
from engine.service.paths import service_socket_path

_STREAM_LIMIT = 1 << 20  # StreamReader's pause threshold is twice this: a few frames in flight
_STDERR_KEEP = 8192  # bytes of ssh's stderr kept for the diagnosis: the tail is what says why
_DIAGNOSIS_LINES = 3
_EXIT_GRACE = 3.0  # after stdin closes, seconds ssh has to finish before it is killed
_STDERR_GRACE = 1.0


class _Tail:
    """The last :data:`_STDERR_KEEP` bytes of a stream, read until it ends."""

    def __init__(self, stream: asyncio.StreamReader) -> None:
        self._data = bytearray()
        self.task = asyncio.create_task(self._drain(stream), name="capsa-ssh-stderr")

    async def _drain(self, stream: asyncio.StreamReader) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while chunk := await stream.read(65536):
                self._data += chunk
                del self._data[:-_STDERR_KEEP]

    def lines(self) -> list[str]:
        text = self._data.decode("utf-8", errors="replace")
        return [line.strip() for line in text.splitlines() if line.strip()]


@dataclass
class Link:
    """An open byte stream to a service: read ``reader``, write ``writer``, then :meth:`close`.

    ``where`` names the address in messages (:meth:`ServiceAddress.describe`). ``process`` is
    the ssh process of an ssh link (None for a Unix socket).
    """

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    where: str
    process: asyncio.subprocess.Process | None = None
    _stderr: _Tail | None = field(default=None, repr=False)
    _closing: asyncio.Future[None] | None = field(default=None, repr=False)

    async def close(self) -> None:
        """Close the stream; for ssh, end and reap the ssh process too (idempotent).

        Closing ssh's stdin lets the remote relay see the end and ssh exit by itself; one that
        has not exited after a few seconds is killed with its session. Afterwards the
        diagnosis is complete. The cleanup finishes even if the caller is cancelled meanwhile.
        """
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        process = self.process
        # Read on and discard what still comes: a reader left full stops reading its pipe, and
        # then neither its end nor (asyncio waits for the pipes) ssh's exit would be seen.
        discard = asyncio.create_task(_discard(self.reader), name="capsa-link-discard") if process else None
        try:
            self.writer.close()
            try:
                # close() first sends what is buffered: a peer that reads nothing is cut off
                await asyncio.wait_for(self.writer.wait_closed(), _EXIT_GRACE)
            except TimeoutError:
                self.writer.transport.abort()
            except (ConnectionError, OSError):
                pass
            if process is None:
                return
            try:
                await asyncio.wait_for(process.wait(), _EXIT_GRACE)
            except TimeoutError:
                if process.returncode is None:
                    _kill_session(process)
                with contextlib.suppress(TimeoutError):  # a child of ssh may hold its pipes
                    await asyncio.wait_for(process.wait(), _STDERR_GRACE)
            if self._stderr is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._stderr.task), _STDERR_GRACE)
        finally:
            if process is not None and process.returncode is None:
                _kill_session(process)  # cancelled (the loop is closing): do not leave ssh running
            if discard is not None:
                discard.cancel()
            if self._stderr is not None and not self._stderr.task.done():
                self._stderr.task.cancel()

    def diagnosis(self) -> str | None:
        """Why the link failed, as far as ssh said: its exit status and the tail of its stderr.

        None for a Unix socket, or when ssh has said nothing (yet). Complete after
        :meth:`close` or :meth:`settle`; before that it says what ssh wrote so far.
        """
        if self.process is None:
            return None
        parts: list[str] = []
        code = self.process.returncode
        if code is not None and code < 0:
            parts.append(f"ssh was killed by signal {-code}")
        elif code:
            parts.append(f"ssh exited with status {code}")
        lines = self._stderr.lines()[-_DIAGNOSIS_LINES:] if self._stderr is not None else []
        if lines:
            parts.append("; ".join(lines))
        return ": ".join(parts) if parts else None

    async def settle(self, timeout: float = 2.0) -> str | None:
        """Wait (up to ``timeout``) for ssh to exit and its stderr to end, then :meth:`diagnosis`.

        For a link whose stream just ended: ssh may still be writing why. Nothing is killed.
        """
        if self.process is not None:
            waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(self.process.wait())]
            if self._stderr is not None:
                waits.append(asyncio.shield(self._stderr.task))
            _, pending = await asyncio.wait(waits, timeout=timeout)
            for waiting in pending:
                waiting.cancel()
        return self.diagnosis()


async def open_link(address: ServiceAddress, timeout: float) -> Link:
    """Open the stream to ``address``: connect its socket, or start ssh.

    A Unix socket with no server is :class:`ServiceUnavailable`; other failures are
    :class:`ServiceError`, each naming the address. ssh only starts here: whether it reaches
    the remote and its service shows when the handshake is answered or the stream ends (then
    :meth:`Link.diagnosis` says why); ``timeout`` bounds ssh's own connection attempt.
    """
    if address.kind == "ssh":
        return await _open_ssh(address, timeout)
    return await _open_unix(address, timeout)


async def _open_unix(address: ServiceAddress, timeout: float) -> Link:
    where = address.path if address.path is not None else service_socket_path()
    try:
        connecting = asyncio.open_unix_connection(str(where), limit=_STREAM_LIMIT)
        reader, writer = await asyncio.wait_for(connecting, timeout)
    except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
        raise ServiceUnavailable(f"no capsa-tui serve is running (socket {where})") from None
    except PermissionError:
        raise ServiceError(f"cannot connect to {where}: permission denied (another user's socket?)") from None
    except (OSError, TimeoutError) as err:
        raise ServiceError(f"cannot connect to {where}: {err or f'timed out after {timeout}s'}") from None
    return Link(reader, writer, str(where))


async def _open_ssh(address: ServiceAddress, timeout: float) -> Link:
    argv = address.ssh_argv(connect_timeout=timeout)
    where = address.describe()
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            limit=_STREAM_LIMIT,
        )
    except FileNotFoundError:
        raise ServiceError(
            f"cannot reach {where}: there is no {argv[0]!r} to run; install openssh-client "
            f"(apt-get install openssh-client) or name your ssh in $CAPSA_SSH"
        ) from None
    except OSError as err:
        raise ServiceError(f"cannot reach {where}: cannot run {argv[0]!r}: {err}") from None
    # create_subprocess_exec with three PIPEs always sets these
    assert process.stdin is not None and process.stdout is not None and process.stderr is not None
    return Link(process.stdout, process.stdin, where, process, _Tail(process.stderr))


async def _discard(reader: asyncio.StreamReader) -> None:
    # RuntimeError: another task (the client's read loop) is reading it still, which drains it too
    with contextlib.suppress(ConnectionError, OSError, RuntimeError):
        while await reader.read(65536):
            pass


def _kill_session(process: asyncio.subprocess.Process) -> None:
    """SIGKILL ssh's session (ssh leads it: start_new_session) or, failing that, ssh alone."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    except OSError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
