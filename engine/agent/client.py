"""``Agent``: the asyncio adapter around :class:`engine.agent.protocol.Session`.

It owns one reader task that feeds the session and routes its events to the waiting calls;
everything else is the typed API (exec, spawn, files, folders, info, identity, shutdown).
The agent's errors come back as :mod:`engine.errors` types naming the guest path. Paths are
checked here before anything is sent (and again in the guest).
"""
from __future__ import annotations

import asyncio
import os
import re
import tarfile
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from engine.agent import paths, protocol, wire
from engine.agent.calls import Call, reply_error
from engine.agent.process import AgentProcess
from engine.agent.results import AgentInfo, DirEntry, ExecResult, FileStat
from engine.errors import (
    AgentDied,
    AgentError,
    AgentProtocolError,
    AgentUnavailable,
    ExecTimeout,
    GuestFileError,
    GuestFileNotFound,
    GuestPathError,
    IdentityError,
    TransferTooLarge,
)

_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
_ADDRESS = re.compile(r"\d{1,3}(\.\d{1,3}){3}/\d{1,2}")
_IPV4 = re.compile(r"\d{1,3}(\.\d{1,3}){3}")


def _check_path(path: str) -> str:
    try:
        return paths.check_guest_path(path)
    except paths.UnsafePath as err:
        raise GuestPathError(str(err), err.path) from None


class Agent:
    """A session with one guest agent over a reader/writer pair (any byte stream)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, timeout: float,
                 on_protocol_error: Callable[[str], object] | None, owns_stream: bool = True) -> None:
        self._reader, self._writer = reader, writer
        # A VM's agent port outlives any one session (a respawned agent gets a new one on the
        # same stream): such a session must leave the stream open when it ends.
        self._owns_stream = owns_stream
        self.timeout = timeout
        self._on_protocol_error = on_protocol_error
        self.session = protocol.Session()
        self._calls: dict[int, Call] = {}
        self._hello: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._failure: AgentError | None = None
        self._task = asyncio.get_running_loop().create_task(self._read_loop())

    @classmethod
    async def connect(cls, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, timeout: float = 60.0,
                      on_protocol_error: Callable[[str], object] | None = None, owns_stream: bool = True) -> Agent:
        """Open a session: send a hello with a fresh nonce and wait for the agent's answer
        (bytes before it, a dead session's leftovers, are skipped). ``owns_stream``: the session
        closes the stream when it ends (False for a stream that a later session reuses)."""
        agent = cls(reader, writer, timeout=timeout, on_protocol_error=on_protocol_error, owns_stream=owns_stream)
        writer.write(agent.session.hello())
        try:
            await asyncio.wait_for(asyncio.shield(agent._hello), timeout)
        except asyncio.TimeoutError:
            agent.fail("no hello")
            raise AgentUnavailable(f"the agent did not answer the hello in {timeout:g} s") from None
        except AgentError:
            agent.close()
            raise
        return agent

    @property
    def hello(self) -> dict[str, Any]:
        """The agent's hello (protocol version, agent version, pid)."""
        return self._hello.result()

    # -- plumbing
    async def _read_loop(self) -> None:
        try:
            while True:
                data = await self._reader.read(1 << 20)
                if not data:
                    self.fail("the agent's stream closed")
                    return
                for event in self.session.feed(data):
                    self._dispatch(event)
                if self._failure is not None:
                    return
        except (ConnectionError, OSError) as err:
            self.fail(f"the agent's stream broke: {err}")

    def _dispatch(self, event: protocol.Event) -> None:
        if isinstance(event, protocol.ProtocolErrorEvent):
            self._fail(AgentProtocolError(f"the agent broke the protocol: {event.reason}"))
            if self._on_protocol_error is not None:
                self._on_protocol_error(event.reason)
            return
        if isinstance(event, protocol.HelloEvent):
            if not self._hello.done():
                self._hello.set_result(event.msg)
            return
        call = self._calls.get(event.id)
        if call is None:
            return
        if isinstance(event, protocol.OutputEvent):
            call.received += len(event.data)
            if call.limit is not None and call.received > call.limit:
                self._overflow(call)
                return
            if call.sink is not None and event.stream != "stderr":
                call.sink.write(event.data)
                self.write(self.session.ack(call.id, len(event.data)))
            elif call.queue is not None:
                call.queue.put_nowait((event.stream, event.data))
            else:
                call.chunks[event.stream].append(event.data)
                self.write(self.session.ack(call.id, len(event.data)))
        elif isinstance(event, protocol.InAckEvent):
            call.window.set()
        elif isinstance(event, protocol.ReplyEvent):
            self._calls.pop(call.id, None)
            call.window.set()
            if call.queue is not None:
                call.queue.put_nowait(None)
            if not call.reply.done():
                call.reply.set_result(event)

    def _overflow(self, call: Call) -> None:
        """The guest sent a call more bytes than it was allowed: the call fails, the rest is refused."""
        self._abandon(call)
        call.window.set()
        if not call.reply.done():
            call.reply.set_exception(TransferTooLarge(
                f"the guest sent more than the {call.limit} bytes this request allows; the transfer was stopped"))

    def write(self, data: bytes) -> None:
        if self._failure is not None:
            raise self._failure
        self._writer.write(data)

    def _fail(self, error: AgentError) -> None:
        if self._failure is not None:
            return
        self._failure = error
        if not self._hello.done():
            self._hello.set_exception(error)
            self._hello.exception()  # retrieved: connect() reports it
        for call in list(self._calls.values()):
            if not call.reply.done():
                call.reply.set_exception(error)
                call.reply.exception()
            if call.queue is not None:
                call.queue.put_nowait(None)
            call.window.set()
        self._calls.clear()
        if self._owns_stream:
            self._writer.close()

    def fail(self, reason: str) -> None:
        """The agent is gone (its port closed, the VM exited): every waiting call raises
        AgentDied(reason), and so does every later call."""
        self._fail(AgentDied(f"the agent died: {reason}"))
        if self._task is not asyncio.current_task():
            self._task.cancel()

    def close(self) -> None:
        """End the session from our side (the agent keeps running)."""
        self.fail("the session was closed")

    @property
    def failed(self) -> AgentError | None:
        """Why the session ended, or None while it is alive."""
        return self._failure

    async def drain(self) -> None:
        """Wait until the stream's write buffer is low; AgentDied when the stream broke (a VM
        killed mid-upload resets its port's socket under a waiting drain)."""
        try:
            await self._writer.drain()
        except (ConnectionError, OSError) as err:
            self.fail(f"the agent's stream broke: {err}")
            assert self._failure is not None
            raise self._failure from None

    def start(self, msg: dict[str, Any], *, stream: bool = False, sink: IO[bytes] | None = None,
              limit: int | None = None) -> Call:
        if self._failure is not None:
            raise self._failure
        rid, data = self.session.request(msg)
        call = Call(rid, asyncio.get_running_loop().create_future(), sink=sink, limit=limit)
        if stream:
            call.queue = asyncio.Queue()
        self._calls[rid] = call
        self._writer.write(data)
        return call

    async def wait(self, call: Call, timeout: float | None) -> protocol.ReplyEvent:
        try:
            if timeout is None:
                event = await asyncio.shield(call.reply)
            else:
                event = await asyncio.wait_for(asyncio.shield(call.reply), timeout)
        except asyncio.TimeoutError:
            self._abandon(call)
            raise AgentUnavailable(f"the agent did not answer a {call.id} request in {timeout:g} s") from None
        except asyncio.CancelledError:
            self._abandon(call)
            raise
        if not event.msg.get("ok"):
            raise reply_error(event.msg)
        return event

    def _abandon(self, call: Call) -> None:
        if self._calls.pop(call.id, None) is not None and self._failure is None:
            self._writer.write(self.session.control(call.id, "cancel"))
            self.session.forget(call.id)

    async def _request(self, msg: dict[str, Any]) -> dict[str, Any]:
        call = self.start(msg)
        return (await self.wait(call, self.timeout)).msg

    async def _send_stream(self, call: Call, source: IO[bytes] | bytes) -> None:
        """Send ``source`` as data frames within the window, then an eof. Stops early when the
        reply came already (the agent refused)."""
        view = memoryview(source) if isinstance(source, bytes) else None
        offset = 0
        while not call.reply.done():
            if view is not None:
                chunk = bytes(view[offset:offset + wire.IN_CHUNK])
                offset += len(chunk)
            else:
                assert not isinstance(source, bytes)
                chunk = source.read(wire.IN_CHUNK)
            if not chunk:
                self.write(self.session.control(call.id, "eof"))
                return
            while self.session.window_left(call.id) < len(chunk) and not call.reply.done():
                call.window.clear()
                await self.drain()
                await call.window.wait()
            if call.reply.done():
                return
            self.write(self.session.send_data(call.id, chunk))
            await self.drain()

    # -- the API
    async def ping(self) -> None:
        """One round trip."""
        await self._request({"t": "ping"})

    def _exec_msg(self, cmd: str | Sequence[str], env: Mapping[str, str] | None, cwd: str | None,
                  timeout: float | None, max_output: int, tty: bool, stream: bool,
                  size: tuple[int, int] = (80, 24), user: str | None = None, system: bool = False) -> dict[str, Any]:
        if not isinstance(cmd, str):
            cmd = [str(part) for part in cmd]
            if not cmd:
                raise AgentError("exec needs a command: the argument list is empty")
        if cwd is not None:
            _check_path(cwd)
        if user is not None and (not user or any(c.isspace() or c == "\0" for c in user)):
            raise AgentError(f"user {user!r} is not a user name, uid, user:group or uid:gid")
        msg = {"t": "exec", "cmd": cmd, "env": dict(env or {}), "cwd": cwd, "timeout": timeout,
               "max_output": max_output, "tty": tty, "stream": stream, "size": list(size)}
        if user is not None:
            msg["user"] = user
        if system:
            msg["system"] = True
        return msg

    async def exec(self, cmd: str | Sequence[str], *, env: Mapping[str, str] | None = None, cwd: str | None = None,
                   stdin: bytes = b"", timeout: float | None = None, max_output: int = 16 << 20,
                   tty: bool = False, user: str | None = None, system: bool = False) -> ExecResult:
        """Run ``cmd`` (a str through /bin/sh -c) to its end and return its whole output.

        In an OCI sandbox the command runs in the image's root with its Env, WorkingDir and
        User (``env``, ``cwd`` and ``user`` override them); ``system`` runs it in the sandbox's
        own system image instead (the engine's mounts use it).

        Past ``timeout`` the guest kills the command's whole process group and this raises
        ExecTimeout with the output so far; past ``max_output`` bytes the result says
        ``truncated`` and the rest was dropped in the guest.
        """
        timeout = timeout if timeout is not None else None
        # The guest keeps max_output bytes of output; a frame in flight when it stops is slack.
        call = self.start(self._exec_msg(cmd, env, cwd, timeout, max_output, tty, False, user=user, system=system),
                          limit=max_output + 2 * wire.MAX_BODY)
        sender = asyncio.ensure_future(self._send_stream(call, stdin))
        try:
            guard = None if timeout is None else timeout + max(30.0, self.timeout)
            event = await self.wait(call, guard)
        finally:
            if not sender.done():
                sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
        msg = event.msg
        stdout, stderr = b"".join(call.chunks["stdout"]), b"".join(call.chunks["stderr"])
        if msg.get("timed_out"):
            raise ExecTimeout(f"{_show(cmd)} ran past its {timeout:g} s timeout; its process group was killed",
                              stdout, stderr)
        return ExecResult(msg.get("exit_code"), msg.get("signal"), stdout, stderr, bool(msg.get("truncated")),
                          float(msg.get("duration_s", 0.0)))

    def spawn(self, cmd: str | Sequence[str], *, env: Mapping[str, str] | None = None, cwd: str | None = None,
              tty: bool = False, size: tuple[int, int] = (80, 24), user: str | None = None) -> AgentProcess:
        """A streaming process (``async with``): output as it comes, stdin, signals, resize."""
        msg = self._exec_msg(cmd, env, cwd, None, 0, tty, True, size, user=user)
        return AgentProcess(self, msg)

    async def write_file(self, path: str, data: bytes, mode: int = 0o644, *, sync: bool = False) -> None:
        """Write ``data`` to the guest ``path`` atomically (a temp file beside it, renamed)."""
        _check_path(path)
        call = self.start({"t": "write", "path": path, "mode": mode, "sync": sync})
        await self._send_stream(call, bytes(data))
        await self.wait(call, None if len(data) > (64 << 20) else self.timeout + len(data) / (1 << 20))

    async def read_file(self, path: str, max_bytes: int = 64 << 20) -> bytes:
        """The guest file's bytes; TransferTooLarge when it holds more than ``max_bytes``."""
        _check_path(path)
        call = self.start({"t": "read", "path": path, "max_bytes": max_bytes}, limit=max_bytes)
        await self.wait(call, None)
        return b"".join(call.chunks["data"])

    async def exists(self, path: str) -> bool:
        _check_path(path)
        return bool((await self._request({"t": "exists", "path": path}))["exists"])

    async def stat(self, path: str) -> FileStat:
        _check_path(path)
        return FileStat.from_wire((await self._request({"t": "stat", "path": path}))["stat"])

    async def list_dir(self, path: str) -> list[DirEntry]:
        _check_path(path)
        return [DirEntry.from_wire(raw) for raw in (await self._request({"t": "list", "path": path}))["entries"]]

    async def info(self) -> AgentInfo:
        return AgentInfo.from_wire(await self._request({"t": "info"}))

    async def copy_in(self, local_path: str | os.PathLike[str], guest_path: str) -> None:
        """Copy a local file or folder into the guest folder ``guest_path`` (made if missing),
        as a tar stream; modes are kept."""
        _check_path(guest_path)
        local = Path(local_path)
        if not local.exists():
            raise GuestFileNotFound(f"no local file or folder {local}", str(local))
        with tempfile.TemporaryFile() as spool:
            await asyncio.to_thread(_pack, local, spool)
            spool.seek(0)
            await self._send_tar(guest_path, spool)

    async def _send_tar(self, guest_path: str, archive: IO[bytes]) -> None:
        call = self.start({"t": "tar_in", "path": guest_path})
        await self._send_stream(call, archive)
        event = await self.wait(call, None)
        if event.msg.get("exit_code") != 0:
            kind, _, rest = b"".join(call.chunks["stderr"]).decode(errors="replace").partition("\0")
            path, _, text = rest.partition("\0")
            if kind == "path":
                raise GuestPathError(f"the guest refused the archive: {text}", path)
            raise GuestFileError(f"unpacking into {guest_path} failed: {text or 'the unpacker died'}", guest_path)

    async def copy_out(self, guest_path: str, local_path: str | os.PathLike[str], *,
                       max_bytes: int = 4 << 30) -> None:
        """Copy the guest folder ``guest_path`` into the local folder ``local_path`` (made if
        missing). The guest is not trusted: members that would land outside are refused, and an
        archive past ``max_bytes`` is stopped (TransferTooLarge) before it fills the host's disk."""
        _check_path(guest_path)
        local = Path(local_path)
        with tempfile.TemporaryFile() as spool:
            call = self.start({"t": "tar_out", "path": guest_path}, sink=spool, limit=max_bytes)
            event = await self.wait(call, None)
            if event.msg.get("exit_code") != 0:
                raise GuestFileError(f"packing {guest_path} failed in the guest", guest_path)
            spool.seek(0)
            local.mkdir(parents=True, exist_ok=True)
            try:
                await asyncio.to_thread(_unpack, spool, local)
            except paths.UnsafePath as err:
                raise GuestPathError(f"refused the guest's archive of {guest_path}: {err}", err.path) from None
            except tarfile.TarError as err:
                raise AgentProtocolError(f"the guest's archive of {guest_path} is not a tar stream: {err}") from None

    async def set_identity(self, seed: bytes, epoch: float, hostname: str, mac: str | None = None,
                           address: str | None = None, router: str | None = None) -> None:
        """A snapshot clone's own identity: reseed the kernel's random generator, set the clock,
        the MAC, the hostname and /etc/hosts, and for a cluster member its address and route.
        IdentityError says which steps failed."""
        if not 16 <= len(seed) <= 512:
            raise IdentityError(f"identity seed must be 16-512 bytes, not {len(seed)}", {"seed": "bad length"})
        if not _HOSTNAME.fullmatch(hostname):
            raise IdentityError(f"hostname {hostname!r} is not a host name", {"hostname": "invalid"})
        if mac is not None and not _MAC.fullmatch(mac):
            raise IdentityError(f"MAC {mac!r} is not lower-case xx:xx:xx:xx:xx:xx", {"mac": "invalid"})
        if (address is None) != (router is None):
            raise IdentityError("address and router go together", {"address": "router missing" if router is None else "address missing"})
        if address is not None and (not _ADDRESS.fullmatch(address) or not _IPV4.fullmatch(router or "")):
            raise IdentityError(f"address {address!r} via {router!r} is not IPv4 ADDRESS/PREFIX and ROUTER",
                                {"address": "invalid"})
        reply = await self._request({"t": "identity", "seed": seed.hex(), "epoch": float(epoch),
                                     "hostname": hostname, "mac": mac, "address": address, "router": router})
        failed = {str(k): str(v) for k, v in (reply.get("failed") or {}).items()}
        if failed:
            steps = ", ".join(f"{k}: {v}" for k, v in sorted(failed.items()))
            raise IdentityError(f"the guest did not take its identity ({steps})", failed)

    async def set_workload(self, devices: Sequence[str], *, env: Mapping[str, str], cwd: str, user: str) -> str:
        """Stack the OCI layers on ``devices`` (bottom first) as the workload root, once, and
        make ``env``/``cwd``/``user`` every later exec's defaults; the root's guest path."""
        reply = await self._request({"t": "workload", "devices": list(devices), "env": dict(env), "cwd": cwd,
                                     "user": user})
        return str(reply.get("root", ""))

    async def set_console_size(self, cols: int, rows: int) -> None:
        """Tell the guest's serial console how big the user's view of it is (TIOCSWINSZ on its
        tty; the shell and full-screen programs get SIGWINCH and redraw)."""
        if not (1 <= cols <= 9999 and 1 <= rows <= 9999):
            raise AgentError(f"a console size is 1 to 9999 columns and rows, not {cols}x{rows}")
        await self._request({"t": "console_size", "cols": cols, "rows": rows})

    async def shutdown(self) -> None:
        """Sync the guest's disks and power it off (the agent's session ends)."""
        try:
            await self._request({"t": "shutdown"})
        except AgentDied:
            pass  # it went down before the reply: what we asked for


def _show(cmd: str | Sequence[str]) -> str:
    return repr(cmd if isinstance(cmd, str) else " ".join(cmd))


def _pack(local: Path, spool: IO[bytes]) -> None:
    with tarfile.open(fileobj=spool, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        if local.is_dir():
            for child in sorted(local.iterdir()):
                tar.add(child, arcname=child.name)
        else:
            tar.add(local, arcname=local.name)


def _unpack(spool: IO[bytes], local: Path) -> None:
    with tarfile.open(fileobj=spool, mode="r|") as tar:
        paths.safe_extract(tar, str(local))
