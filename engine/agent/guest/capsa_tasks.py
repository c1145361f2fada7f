"""The capsa agent's tasks: a request in progress (a process, a file read or write) and the
errors requests fail with. Part of the guest agent (``capsa_agent.py``): standard library only,
imported as a sibling module in the guest.

Each task holds its file descriptors and its output credit (bytes the host has room for), and
reports through its agent (``send``, ``finish``, ``fail``, ``watch``); the agent's loop calls it
on descriptor events, on time and when a child exits.
"""
from __future__ import annotations

import errno
import os
import signal
import time

if __package__:  # imported as engine.agent.guest.capsa_tasks (mypy, the host)
    from engine.agent import paths, wire
else:  # the guest: a module beside its siblings
    import paths  # type: ignore[import-not-found,no-redef]  # the same module, beside this file in the guest
    import wire  # type: ignore[import-not-found,no-redef]  # likewise

TYPE_CHECKING = False  # mypy takes it as true; the guest imports no typing module at start
if TYPE_CHECKING:
    from collections.abc import Sized
    from typing import Protocol

    class Agent(Protocol):
        """What a task needs of the agent that runs it (``capsa_agent.Agent``)."""

        tasks: dict[int, Task]
        orphans: list[object]  # children of aborted tasks, still to be reaped

        @property
        def out(self) -> Sized: ...  # the bytes queued for the port

        def watch(self, fd: int, on_read: object, on_write: object) -> None: ...
        def send(self, msg: dict[str, object], body: bytes = b"") -> None: ...
        def finish(self, rid: int, reply: dict[str, object]) -> None: ...
        def fail(self, rid: int, err: RequestError) -> None: ...

WINDOW = 4 << 20  # bytes of output we send ahead of the host's acknowledgements, per task
OUT_LIMIT = 8 << 20  # bytes queued for the port before producers pause
ACK_EVERY = 512 << 10  # a file upload is acknowledged per this many bytes (the host's window is 4 MiB)
EXIT_GRACE_S = 0.2  # after the main process exits, how long a forked-away holder may keep its pipes


class RequestError(Exception):
    """A request failed in a way the host turns into a typed error."""

    def __init__(self, kind: str, message: str, path: str = "", err: int = 0) -> None:
        super().__init__(message)
        self.kind, self.path, self.err = kind, path, err


def os_error(err: OSError, path: str, what: str) -> RequestError:
    kind = {errno.ENOENT: "not_found", errno.ENOTDIR: "not_found", errno.EACCES: "permission",
            errno.EPERM: "permission"}.get(err.errno or 0, "file")
    return RequestError(kind, f"{what} {path}: {err.strerror}", path, err.errno or 0)


def guest_path(value: object) -> str:
    try:
        return paths.check_guest_path(value)
    except paths.UnsafePath as err:
        raise RequestError("path", str(err), err.path) from None

class ForkedChild:
    """A forked helper (tar in or out) with Popen's poll/returncode, reaped by pid."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                self.returncode = -1
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


class Task:
    """One request in progress (a process, a file transfer)."""

    def __init__(self, agent: Agent, rid: int) -> None:
        self.agent, self.id = agent, rid
        self.credit = WINDOW

    def on_in(self, data: bytes) -> None:
        raise RequestError("bad_request", f"request {self.id} takes no data")

    def on_control(self, kind: str, msg: dict[str, object]) -> None:
        if kind == "ack":
            n = msg.get("n")
            if isinstance(n, int) and n > 0:
                self.credit = min(WINDOW, self.credit + n)
        elif kind == "cancel":
            self.abort()

    def pump(self) -> bool:
        """Make progress without a file descriptor event; True when more is ready at once."""
        return False

    def deadline(self) -> float | None:
        return None

    def on_time(self, now: float) -> None:
        pass

    def abort(self) -> None:
        """Drop the task (a new host session, a cancel): kill and close what it holds."""


class ProcTask(Task):
    """A running process: its pipes (or pty), stdin queue, output credit, timeout."""

    def __init__(self, agent: Agent, rid: int, proc: object, outs: dict[int, str], stdin_fd: int | None,
                 *, stream: bool, max_output: int, timeout: float | None, tty_fd: int | None = None) -> None:
        super().__init__(agent, rid)
        self.proc = proc
        self.pid: int = getattr(proc, "pid")
        self.outs = dict(outs)  # fd -> stream name, while open
        self.stdin_fd = stdin_fd
        self.tty_fd = tty_fd
        self.pending_in = bytearray()
        self.in_eof = False
        self.stream = stream
        self.max_output = max_output
        self.sent = {"stdout": 0, "stderr": 0}
        self.truncated = False
        self.started = time.monotonic()
        self.timeout_at = self.started + timeout if timeout else None
        self.exit_at: float | None = None
        self.timed_out = False
        self.done = False
        for fd in self.outs:
            os.set_blocking(fd, False)
        if stdin_fd is not None:
            os.set_blocking(stdin_fd, False)
        self.refresh()

    def refresh(self) -> None:
        want = self.credit > 0 and len(self.agent.out) < OUT_LIMIT
        for fd in self.outs:
            self.agent.watch(fd, self.read if want else None, None)
        if self.stdin_fd is not None and self.stdin_fd not in self.outs:
            self.agent.watch(self.stdin_fd, None, self.write if self.pending_in else None)
        elif self.stdin_fd is not None:  # a pty: one fd both ways
            self.agent.watch(self.stdin_fd, self.read if want else None, self.write if self.pending_in else None)

    def read(self, fd: int) -> None:
        name = self.outs.get(fd)
        if name is None:
            return
        try:
            data = os.read(fd, min(wire.CHUNK, max(self.credit, 1)))
        except BlockingIOError:
            return
        except OSError:  # EIO: a pty whose last slave holder closed
            data = b""
        if not data:
            self.close_out(fd)
            return
        if not self.stream:
            room = self.max_output - self.sent["stdout"] - self.sent["stderr"]
            if len(data) > room:
                self.truncated = True
                data = data[:max(room, 0)]  # the rest is read and dropped: never buffered
        if data:
            self.sent[name] += len(data)
            self.credit -= len(data)
            self.agent.send({"t": "out", "id": self.id, "s": name}, data)
        self.refresh()

    def close_out(self, fd: int) -> None:
        self.agent.watch(fd, None, None)
        self.outs.pop(fd, None)
        if fd != self.stdin_fd:
            os.close(fd)
        self.check_done()

    def write(self, fd: int) -> None:
        if self.stdin_fd is None:
            return
        try:
            n = os.write(self.stdin_fd, self.pending_in[:65536])
        except BlockingIOError:
            return
        except OSError:  # EPIPE: the process closed its stdin; what is left is dropped
            n = len(self.pending_in)
        del self.pending_in[:n]
        self.agent.send({"t": "in_ack", "id": self.id, "n": n})
        if not self.pending_in and self.in_eof:
            self.close_stdin()
        self.refresh()

    def on_in(self, data: bytes) -> None:
        if self.stdin_fd is None or self.in_eof:
            self.agent.send({"t": "in_ack", "id": self.id, "n": len(data)})
            return
        self.pending_in += data
        self.refresh()

    def close_stdin(self) -> None:
        fd = self.stdin_fd
        if fd is None:
            return
        if self.tty_fd is not None:
            try:
                os.write(fd, b"\x04")  # a tty's end of input is ^D, the fd stays for output
            except OSError:
                pass
            return
        self.agent.watch(fd, None, None)
        os.close(fd)
        self.stdin_fd = None

    def on_control(self, kind: str, msg: dict[str, object]) -> None:
        if kind == "eof":
            self.in_eof = True
            if not self.pending_in:
                self.close_stdin()
        elif kind == "signal":
            sig = msg.get("sig")
            if isinstance(sig, int):
                try:
                    os.killpg(self.pid, sig)
                except OSError:
                    pass
        elif kind == "resize" and self.tty_fd is not None:
            set_winsize(self.tty_fd, msg.get("cols"), msg.get("rows"))
        else:
            super().on_control(kind, msg)
        self.refresh()

    def on_child(self) -> None:
        if getattr(self.proc, "poll")() is not None and self.exit_at is None:
            self.exit_at = time.monotonic() + EXIT_GRACE_S
            self.check_done()

    def deadline(self) -> float | None:
        if self.exit_at is not None:
            return self.exit_at
        return self.timeout_at

    def on_time(self, now: float) -> None:
        if self.exit_at is not None and now >= self.exit_at:
            for fd in list(self.outs):  # a forked-away process still holds the pipe: stop waiting
                self.close_out(fd)
        elif self.timeout_at is not None and now >= self.timeout_at and not self.timed_out:
            self.timed_out = True
            self.kill()

    def kill(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except OSError:
            pass

    def check_done(self) -> None:
        if self.done or self.outs or getattr(self.proc, "returncode") is None:
            return
        self.done = True
        if self.stdin_fd is not None:
            self.agent.watch(self.stdin_fd, None, None)
            os.close(self.stdin_fd)
            self.stdin_fd = None
        if self.timed_out:
            self.kill()
        code: int = getattr(self.proc, "returncode")
        self.agent.finish(self.id, {
            "ok": True, "exit_code": code if code >= 0 else None, "signal": -code if code < 0 else None,
            "truncated": self.truncated, "timed_out": self.timed_out,
            "duration_s": time.monotonic() - self.started,
        })

    def abort(self) -> None:
        # Its session is gone: kill the group, stop reading, and leave the reaping to the loop.
        self.kill()
        self.done = True
        for fd in list(self.outs):
            self.close_out(fd)
        if self.stdin_fd is not None:
            self.agent.watch(self.stdin_fd, None, None)
            os.close(self.stdin_fd)
            self.stdin_fd = None
        self.agent.orphans.append(self.proc)


class ReadTask(Task):
    """A file streamed to the host in chunks, within the host's credit."""

    def __init__(self, agent: Agent, rid: int, fd: int, path: str, max_bytes: int) -> None:
        super().__init__(agent, rid)
        self.fd, self.path, self.max_bytes, self.sent = fd, path, max_bytes, 0

    def pump(self) -> bool:
        if self.credit <= 0 or len(self.agent.out) >= OUT_LIMIT:
            return False
        try:
            data = os.read(self.fd, min(wire.CHUNK, self.credit, self.max_bytes + 1 - self.sent))
        except OSError as err:
            self.close()
            self.agent.fail(self.id, os_error(err, self.path, "cannot read"))
            return False
        if self.sent + len(data) > self.max_bytes:
            self.close()
            self.agent.fail(self.id, RequestError("too_large", f"{self.path} grew past the {self.max_bytes} byte cap", self.path))
            return False
        if not data:
            self.close()
            self.agent.finish(self.id, {"ok": True, "size": self.sent})
            return False
        self.sent += len(data)
        self.credit -= len(data)
        self.agent.send({"t": "out", "id": self.id, "s": "data"}, data)
        return True

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.agent.tasks.pop(self.id, None)

    def abort(self) -> None:
        self.close()


class WriteTask(Task):
    """A file received in chunks into a temp file beside it, renamed over it at the end."""

    def __init__(self, agent: Agent, rid: int, path: str, mode: int, sync: bool) -> None:
        super().__init__(agent, rid)
        self.path, self.mode, self.sync = path, mode, sync
        self.unacked = 0
        folder, name = os.path.split(path)
        self.tmp = os.path.join(folder, f".{name}.capsa-{os.getpid()}-{rid}")
        try:
            self.fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as err:
            raise os_error(err, path if err.errno != errno.ENOENT else folder, "cannot write") from None

    def on_in(self, data: bytes) -> None:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view):]
        except OSError as err:
            self.abort()
            self.agent.fail(self.id, os_error(err, self.path, "cannot write"))
            return
        # Acknowledged in batches: a JSON frame per 64 KiB chunk was a tenth of the upload's
        # time under emulation. The reply settles what is left unacknowledged.
        self.unacked += len(data)
        if self.unacked >= ACK_EVERY:
            self.agent.send({"t": "in_ack", "id": self.id, "n": self.unacked})
            self.unacked = 0

    def on_control(self, kind: str, msg: dict[str, object]) -> None:
        if kind != "eof":
            super().on_control(kind, msg)
            return
        try:
            os.fchmod(self.fd, self.mode)
            if self.sync:
                os.fsync(self.fd)
            size = os.fstat(self.fd).st_size
            os.close(self.fd)
            self.fd = -1
            os.rename(self.tmp, self.path)
        except OSError as err:
            self.abort()
            self.agent.fail(self.id, os_error(err, self.path, "cannot write"))
            return
        self.agent.finish(self.id, {"ok": True, "size": size})

    def abort(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        try:
            os.unlink(self.tmp)
        except OSError:
            pass
        self.agent.tasks.pop(self.id, None)


def set_winsize(fd: int, cols: object, rows: object) -> None:
    import fcntl
    import struct
    import termios
    if isinstance(cols, int) and isinstance(rows, int) and 0 < cols < 65536 and 0 < rows < 65536:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def tar_out_child(root: str, wfd: int) -> None:
    import tarfile
    with os.fdopen(wfd, "wb") as out, tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        tar.add(root, arcname=".")


def tar_in_child(root: str, rfd: int, efd: int) -> None:
    import tarfile
    try:
        with os.fdopen(rfd, "rb") as src, tarfile.open(fileobj=src, mode="r|") as tar:
            paths.safe_extract(tar, root)
    except paths.UnsafePath as err:
        os.write(efd, f"path\0{err.path}\0{err}".encode())
        os._exit(3)
    except (OSError, tarfile.TarError) as err:
        os.write(efd, f"file\0{root}\0{err}".encode())
        os._exit(4)
