"""capsa-agent, the sandbox's RPC service: exec, processes, files and identity over one port.

It runs as root, a child of the guest's busybox init (which respawns it), finds its
virtio-serial port by name in sysfs and serves the frames of ``wire`` on it: one selectors
loop, every request a task, so a slow command never blocks a ping. Output and file data flow
on byte credits (the host acknowledges what it consumed), so a flooding workload stalls on its
own pipe instead of filling our memory. Standard library only, and little imported at start
(python3 starts slowly under emulation): subprocess, tarfile and the ioctls load on first use.

The tasks (a process, a file read or write) and the request errors live in ``capsa_tasks``, a
clone's identity fix-up in ``capsa_identity``, both beside this file.

Tests run this same program on the host with ``--fd N`` (one end of a socketpair); only
``--port-name`` (the real guest) powers the machine off on ``shutdown``.
"""
from __future__ import annotations

import errno
import os
import selectors
import signal
import sys
import time

if __package__:  # imported as engine.agent.guest.capsa_agent (mypy, the host)
    from engine.agent import wire
    from engine.agent.guest.capsa_identity import BUSYBOX, set_identity
    from engine.agent.guest.capsa_tasks import (ForkedChild, ProcTask, ReadTask, RequestError, Task, WriteTask,
                                                guest_path, os_error, set_winsize, tar_in_child, tar_out_child)
    from engine.agent.guest.capsa_workload import DEFAULT_PATH, RootSwitch, WorkloadError, mount_root, resolve_user
else:  # the guest: a script beside its sibling modules
    import wire  # type: ignore[import-not-found,no-redef]  # the same module, beside this file in the guest
    from capsa_identity import BUSYBOX, set_identity  # type: ignore[import-not-found,no-redef]  # likewise
    from capsa_tasks import (ForkedChild, ProcTask, ReadTask,  # type: ignore[import-not-found,no-redef]
                             RequestError, Task, WriteTask, guest_path, os_error, set_winsize, tar_in_child,
                             tar_out_child)
    from capsa_workload import (DEFAULT_PATH, RootSwitch, WorkloadError,  # type: ignore[import-not-found,no-redef]
                                mount_root, resolve_user)

AGENT_VERSION = "1.0"
PORT_WRITE = 32 << 10  # the virtio-serial driver takes at most this much per write()
PORT_READ = 1 << 20  # the most one loop turn takes from the port
SMALL_BODY = 16 << 10  # a frame body below this is copied into its frame: one write, not two
# Requests served in our own system root even when an OCI workload root is set (and any request
# with "system": the engine's own mounts); the rest see the image's root (capsa_workload.py).
SYSTEM_REQUESTS = frozenset({"hello", "ping", "info", "identity", "shutdown", "workload", "console_size"})
CONSOLE_TTY = "/dev/ttyS0"  # the serial console (console=ttyS0): the user's shell runs on it
PORT_BUFFER = 4 << 10  # the size of the virtio-serial driver's receive buffers (a page)


def find_port(name: str) -> str:
    root = "/sys/class/virtio-ports"
    for _ in range(400):
        if os.path.isdir(root):
            for port in sorted(os.listdir(root)):
                try:
                    with open(os.path.join(root, port, "name")) as handle:
                        if handle.read().strip() == name:
                            return f"/dev/{port}"
                except OSError:
                    continue
        time.sleep(0.05)
    raise SystemExit(f"capsa-agent: no virtio-serial port named {name}")

class Outbox:
    """Bytes queued for the port, as the parts they were made of.

    A bytearray queue copied every chunk three times on its way out (into the frame, into the
    queue, out of it per 32 KiB write) and again when it shrank or grew: under emulation those
    copies were most of read_file's time. Here a large body is written from the caller's bytes.
    """

    __slots__ = ("parts", "size")

    def __init__(self) -> None:
        self.parts: list[memoryview] = []
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(self, data: bytes) -> None:
        if data:
            self.parts.append(memoryview(data))
            self.size += len(data)

    def head(self, limit: int) -> memoryview:
        return self.parts[0][:limit]

    def consume(self, n: int) -> None:
        self.size -= n
        first = self.parts[0]
        if n >= len(first):
            del self.parts[0]
        else:
            self.parts[0] = first[n:]

    def clear(self) -> None:
        self.parts.clear()
        self.size = 0


class Agent:
    """The agent's loop: the port, the tasks, the children."""

    def __init__(self, fd: int, *, poweroff: bool) -> None:
        self.fd, self.poweroff = fd, poweroff
        self.sel = selectors.DefaultSelector()
        self.handlers: dict[int, list[object]] = {}
        self.decoder = wire.Decoder(want_nonce=b"", max_body=wire.IN_CHUNK)
        self.out = Outbox()
        self.port_view = memoryview(bytearray(PORT_READ))
        self.port_slices = [self.port_view[i:i + PORT_BUFFER] for i in range(0, PORT_READ, PORT_BUFFER)]
        self.tasks: dict[int, Task] = {}
        self.orphans: list[object] = []  # children of aborted tasks, still to be reaped
        self.closing = False
        self.switch: RootSwitch | None = None  # set once an OCI image's root is mounted
        self.workload: dict[str, object] | None = None  # its run config: env, cwd, user
        self.stop = False
        os.set_blocking(fd, False)
        self.wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        self.watch_port()
        self.watch(self.wake_r, self.on_wake, None)

    # -- the reactor
    def watch(self, fd: int, on_read: object, on_write: object) -> None:
        events = (selectors.EVENT_READ if on_read else 0) | (selectors.EVENT_WRITE if on_write else 0)
        old = self.handlers.get(fd)
        if not events:
            if old is not None:
                self.sel.unregister(fd)
                del self.handlers[fd]
            return
        self.handlers[fd] = [on_read, on_write]
        if old is None:
            self.sel.register(fd, events)
        else:
            self.sel.modify(fd, events)

    def watch_port(self) -> None:
        self.watch(self.fd, self.on_port, self.flush if self.out else None)

    def run(self) -> None:
        while not self.stop:
            ready = False
            for task in list(self.tasks.values()):
                ready = task.pump() or ready
            now = time.monotonic()
            deadlines = [d for t in self.tasks.values() if (d := t.deadline()) is not None]
            timeout = 0.0 if ready else (max(0.0, min(deadlines) - now) if deadlines else None)
            for key, mask in self.sel.select(timeout):
                handler = self.handlers.get(key.fd)
                if handler is None:
                    continue
                if mask & selectors.EVENT_READ and callable(handler[0]):
                    handler[0](key.fd)
                handler = self.handlers.get(key.fd)
                if handler is not None and mask & selectors.EVENT_WRITE and callable(handler[1]):
                    handler[1](key.fd)
            now = time.monotonic()
            for task in list(self.tasks.values()):
                d = task.deadline()
                if d is not None and now >= d:
                    task.on_time(now)
            self.refresh_all()
            if self.closing and not self.out:
                self.stop = True

    def refresh_all(self) -> None:
        for task in list(self.tasks.values()):
            if isinstance(task, ProcTask) and not task.done:
                task.refresh()

    def flush(self, fd: int) -> None:
        while self.out:
            try:
                n = os.write(self.fd, self.out.head(PORT_WRITE))
            except BlockingIOError:
                return
            except OSError:
                # The host end is gone. Over a socket that ends us; the guest's port stays ours
                # and the next session's hello resets the rest.
                self.out.clear()
                self.stop = not self.poweroff
                return
            self.out.consume(n)
        self.watch_port()

    def send(self, msg: dict[str, object], body: bytes = b"") -> None:
        if len(body) < SMALL_BODY:
            self.out.add(wire.encode(msg, body))  # one port write for a small frame
        else:
            self.out.add(wire.encode_head(msg, len(body)))
            self.out.add(body)
        self.watch_port()

    def finish(self, rid: int, reply: dict[str, object]) -> None:
        self.tasks.pop(rid, None)
        self.send({"t": "reply", "id": rid, **reply})

    def fail(self, rid: int, err: RequestError) -> None:
        self.tasks.pop(rid, None)
        self.send({"t": "reply", "id": rid, "ok": False, "error": err.kind, "message": str(err),
                   "path": err.path, "errno": err.err})

    def on_wake(self, fd: int) -> None:
        try:
            while os.read(fd, 512):
                pass
        except BlockingIOError:
            pass
        for task in list(self.tasks.values()):
            if isinstance(task, ProcTask):
                task.on_child()
        self.orphans = [proc for proc in self.orphans if getattr(proc, "poll")() is None]

    # -- frames in
    def on_port(self, fd: int) -> None:
        # The virtio-serial driver returns at most one 4 KiB buffer per read(), but a readv()
        # over many 4 KiB slices takes every buffer queued in one call (the kernel loops the
        # driver's read per slice). One read() per buffer cost a loop turn per 4 KiB under
        # emulation: 3 MiB/s host-to-guest, measured.
        try:
            n = os.readv(self.fd, self.port_slices)
        except BlockingIOError:
            return
        except OSError:
            n = 0
        data = self.port_view[:n]
        if not data:
            if self.poweroff:  # the host side closed: wait for the next session on the port
                time.sleep(0.05)
                return
            self.stop = True
            return
        while True:
            try:
                frames = self.decoder.feed(data)
            except wire.WireError:
                # Not our protocol (a dead session's tail, or noise): look for the next hello
                # from the byte after the bad one on.
                rest = bytes(self.decoder.buffer[1:])
                self.decoder = wire.Decoder(want_nonce=b"", max_body=wire.IN_CHUNK)
                data = memoryview(rest)
                continue
            for frame in frames:
                self.on_frame(frame)
            return

    def reset(self) -> None:
        for task in list(self.tasks.values()):
            task.abort()
        self.tasks.clear()
        self.out.clear()
        self.orphans = [proc for proc in self.orphans if getattr(proc, "poll")() is None]

    def on_frame(self, frame: wire.Frame) -> None:
        switch = self.switch
        if switch is None or frame.type in SYSTEM_REQUESTS or frame.msg.get("system"):
            self.serve(frame)
            return
        # A workload request: its paths and processes are the image's (capsa_workload.py).
        switch.enter()
        try:
            self.serve(frame)
        finally:
            switch.leave()

    def serve(self, frame: wire.Frame) -> None:
        kind, rid, msg = frame.type, frame.id, frame.msg
        if kind == "hello":
            self.reset()
            self.out.add(wire.SYNC + self.decoder.nonce)
            self.send({"t": "hello", "id": 0, "version": wire.VERSION, "agent_version": AGENT_VERSION,
                       "pid": os.getpid()})
            return
        task = self.tasks.get(rid)
        if kind == "in":
            if task is not None:
                try:
                    task.on_in(frame.body)
                except RequestError as err:
                    task.abort()
                    self.fail(rid, err)
            return
        if kind in ("ack", "eof", "signal", "resize", "cancel"):
            if task is not None:
                task.on_control(kind, msg)
            return
        if rid in self.tasks or rid <= 0:
            return
        try:
            handler = getattr(self, f"do_{kind}", None)
            if handler is None:
                raise RequestError("bad_request", f"unknown request {kind!r}")
            reply = handler(rid, msg)
        except RequestError as err:
            self.fail(rid, err)
            return
        except OSError as err:
            self.fail(rid, os_error(err, str(msg.get("path", "")), kind))
            return
        except (TypeError, ValueError, KeyError) as err:
            self.fail(rid, RequestError("bad_request", f"bad {kind} request: {err}"))
            return
        if reply is not None:
            self.finish(rid, reply)

    # -- requests
    def do_workload(self, rid: int, msg: dict[str, object]) -> dict[str, object]:
        """Mount an OCI image's layers as the workload root (once) and take its run config."""
        import fcntl, shutil, stat, subprocess, tarfile, termios  # noqa: F401,E401  # loaded before any chroot
        devices = msg.get("devices")
        if not isinstance(devices, list) or not devices or not all(isinstance(d, str) for d in devices):
            raise RequestError("bad_request", "workload needs the layers' devices")
        env = msg.get("env") or {}
        cwd = msg.get("cwd") or "/"
        user = msg.get("user") or ""
        if not isinstance(env, dict) or not isinstance(cwd, str) or not isinstance(user, str):
            raise RequestError("bad_request", "workload env, cwd or user has the wrong type")
        try:
            root = mount_root([str(d) for d in devices], cwd)
        except (WorkloadError, OSError) as err:
            raise RequestError("workload", f"setting up the image's root failed: {err}") from None
        if self.switch is None:
            self.switch = RootSwitch(root)
        self.workload = {"env": {str(k): str(v) for k, v in env.items()}, "cwd": cwd, "user": user}
        return {"ok": True, "root": root}

    def do_ping(self, rid: int, msg: dict[str, object]) -> dict[str, object]:
        return {"ok": True}

    def do_exec(self, rid: int, msg: dict[str, object]) -> None:
        import subprocess
        cmd = msg["cmd"]
        argv = ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else [str(a) for a in cmd]  # type: ignore[attr-defined]
        if not argv:
            raise RequestError("bad_request", "exec of an empty command")
        env = msg.get("env")
        workload = self.workload if self.switch is not None and self.switch.inside else None
        full_env = dict(workload["env"]) if workload is not None else dict(os.environ)  # type: ignore[call-overload]
        full_env.setdefault("PATH", DEFAULT_PATH)
        user = msg.get("user") or (workload["user"] if workload is not None else "")
        uid: int | None = None
        gid: int | None = None
        groups: list[int] | None = None
        if user:
            try:
                uid, gid, groups, home = resolve_user(str(user))
            except ValueError as err:
                raise RequestError("user", str(err)) from None
            full_env.setdefault("HOME", home)
        if isinstance(env, dict):
            full_env.update({str(k): str(v) for k, v in env.items()})
        cwd = msg.get("cwd")
        if cwd is None and workload is not None:
            cwd = workload["cwd"]
        if cwd is not None:
            cwd = guest_path(cwd)
            if not os.path.isdir(cwd):
                raise RequestError("not_found", f"working folder {cwd} does not exist", cwd, errno.ENOENT)
        tty = bool(msg.get("tty"))
        stream = bool(msg.get("stream"))
        max_output = int(msg.get("max_output") or (16 << 20))  # type: ignore[call-overload]
        timeout = msg.get("timeout")
        master = slave = -1
        try:
            if tty:
                master, slave = os.openpty()
                size = msg.get("size") or (80, 24)
                set_winsize(slave, size[0], size[1])  # type: ignore[index]

                def become_tty() -> None:
                    import fcntl
                    import termios
                    fcntl.ioctl(0, termios.TIOCSCTTY, 0)

                proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, cwd=cwd, env=full_env,
                                        start_new_session=True, preexec_fn=become_tty, close_fds=True,
                                        user=uid, group=gid, extra_groups=groups)
                os.close(slave)
                slave = -1
                task = ProcTask(self, rid, proc, {master: "stdout"}, master, stream=stream, max_output=max_output,
                                timeout=float(timeout) if timeout else None, tty_fd=master)  # type: ignore[arg-type]
            else:
                proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        cwd=cwd, env=full_env, start_new_session=True, close_fds=True,
                                        user=uid, group=gid, extra_groups=groups)
                assert proc.stdin and proc.stdout and proc.stderr
                fds = {os.dup(proc.stdout.fileno()): "stdout", os.dup(proc.stderr.fileno()): "stderr"}
                stdin_fd = os.dup(proc.stdin.fileno())
                for pipe in (proc.stdin, proc.stdout, proc.stderr):
                    pipe.close()
                task = ProcTask(self, rid, proc, fds, stdin_fd, stream=stream, max_output=max_output,
                                timeout=float(timeout) if timeout else None)  # type: ignore[arg-type]
        except FileNotFoundError as err:
            for fd in (master, slave):
                if fd >= 0:
                    os.close(fd)
            raise RequestError("not_found", f"no such program: {argv[0]}", argv[0], err.errno or errno.ENOENT) from None
        except PermissionError as err:
            for fd in (master, slave):
                if fd >= 0:
                    os.close(fd)
            raise RequestError("permission", f"cannot run {argv[0]}: {err.strerror}", argv[0], err.errno or 0) from None
        self.tasks[rid] = task
        task.on_child()

    def do_write(self, rid: int, msg: dict[str, object]) -> None:
        path = guest_path(msg["path"])
        mode = msg.get("mode", 0o644)
        if not isinstance(mode, int) or not 0 <= mode <= 0o7777:
            raise RequestError("bad_request", f"file mode {mode!r} is not a permission number")
        self.tasks[rid] = WriteTask(self, rid, path, mode, bool(msg.get("sync")))

    def do_read(self, rid: int, msg: dict[str, object]) -> None:
        path = guest_path(msg["path"])
        max_bytes = msg.get("max_bytes")
        if not isinstance(max_bytes, int) or max_bytes < 0:
            raise RequestError("bad_request", f"max_bytes {max_bytes!r} is not a byte count")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as err:
            raise os_error(err, path, "cannot read") from None
        size = os.fstat(fd).st_size
        if size > max_bytes:
            os.close(fd)
            raise RequestError("too_large", f"{path} has {size} bytes, over the {max_bytes} byte cap", path)
        self.tasks[rid] = ReadTask(self, rid, fd, path, max_bytes)

    def do_exists(self, rid: int, msg: dict[str, object]) -> dict[str, object]:
        return {"ok": True, "exists": os.path.lexists(guest_path(msg["path"]))}

    def _stat(self, path: str, st: os.stat_result, name: str | None = None) -> dict[str, object]:
        import stat
        kind = ("dir" if stat.S_ISDIR(st.st_mode) else "file" if stat.S_ISREG(st.st_mode)
                else "symlink" if stat.S_ISLNK(st.st_mode) else "other")
        out: dict[str, object] = {"path": path, "kind": kind, "size": st.st_size, "mode": stat.S_IMODE(st.st_mode),
                                  "mtime": st.st_mtime, "uid": st.st_uid, "gid": st.st_gid}
        if name is not None:
            out["name"] = name
        return out

    def do_stat(self, rid: int, msg: dict[str, object]) -> dict[str, object]:
        path = guest_path(msg["path"])
        try:
            st = os.stat(path) if msg.get("follow", True) else os.lstat(path)
        except OSError as err:
            raise os_error(err, path, "cannot stat") from None
        return {"ok": True, "stat": self._stat(path, st)}

    def do_list(self, rid: int, msg: dict[str, object]) -> dict[str, object]:
        path = guest_path(msg["path"])
        entries = []
        try:
            with os.scandir(path) as it:
                for entry in it:
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    full = path.rstrip("/") + "/" + entry.name
                    entries.append(self._stat(full, st, entry.name))
        except OSError as err:
            raise os_error(err, path, "cannot list") from None
        entries.sort(key=lambda e: str(e["name"]))
        return {"ok": True, "entries": entries}

    def do_console_size(self, rid: int, msg: dict[str, object]) -> dict[str, object]:
        """The serial console's window size, as the user's view has it: TIOCSWINSZ on the tty.

        The kernel sends SIGWINCH to the tty's foreground process group when the size changes,
        as a terminal emulator's resize does, so the shell and full-screen programs redraw."""
        cols, rows = msg.get("cols"), msg.get("rows")
        if not (isinstance(cols, int) and isinstance(rows, int) and 0 < cols < 10000 and 0 < rows < 10000):
            raise RequestError("bad_request", "console_size needs cols and rows from 1 to 9999")
        fd = os.open(CONSOLE_TTY, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            set_winsize(fd, cols, rows)
        finally:
            os.close(fd)
        return {"ok": True, "cols": cols, "rows": rows}

    def do_info(self, rid: int, msg: dict[str, object]) -> dict[str, object]:
        meminfo: dict[str, int] = {}
        try:
            with open("/proc/meminfo") as handle:
                for line in handle:
                    key, _, rest = line.partition(":")
                    if key in ("MemTotal", "MemAvailable"):
                        meminfo[key] = int(rest.split()[0]) * 1024
            with open("/proc/uptime") as handle:
                uptime = float(handle.read().split()[0])
        except (OSError, ValueError, IndexError):
            uptime = 0.0
        uname = os.uname()
        return {"ok": True, "hostname": uname.nodename, "kernel": uname.release, "arch": uname.machine,
                "memory_total": meminfo.get("MemTotal", 0), "memory_available": meminfo.get("MemAvailable", 0),
                "cpus": os.cpu_count() or 1, "uptime_s": uptime, "agent_version": AGENT_VERSION,
                "python_version": sys.version.split()[0], "pid": os.getpid()}

    def do_tar_out(self, rid: int, msg: dict[str, object]) -> None:
        root = guest_path(msg["path"])
        if not os.path.isdir(root):
            raise RequestError("not_found", f"no folder {root}", root, errno.ENOENT)
        r, w = os.pipe2(os.O_CLOEXEC)
        e_r, e_w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:
            try:
                os.close(r)
                tar_out_child(root, w)
                os._exit(0)
            except BaseException as err:
                os.write(e_w, str(err).encode())
                os._exit(4)
        os.close(w)
        os.close(e_w)
        self.tasks[rid] = task = ProcTask(self, rid, ForkedChild(pid), {r: "stdout", e_r: "stderr"}, None, stream=True,
                                          max_output=1 << 62, timeout=None)
        task.on_child()

    def do_tar_in(self, rid: int, msg: dict[str, object]) -> None:
        root = guest_path(msg["path"])
        os.makedirs(root, exist_ok=True)
        r, w = os.pipe2(os.O_CLOEXEC)
        e_r, e_w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:
            os.close(w)
            os.close(e_r)
            try:
                tar_in_child(root, r, e_w)
            except BaseException:
                os._exit(5)
            os._exit(0)
        os.close(r)
        os.close(e_w)
        self.tasks[rid] = task = ProcTask(self, rid, ForkedChild(pid), {e_r: "stderr"}, w, stream=True,
                                          max_output=1 << 20, timeout=None)
        task.on_child()

    def do_identity(self, rid: int, msg: dict[str, object]) -> dict[str, object]:
        return {"ok": True, "failed": set_identity(msg)}

    def do_shutdown(self, rid: int, msg: dict[str, object]) -> dict[str, object]:
        os.sync()
        self.closing = True
        if self.poweroff:
            if os.path.exists(BUSYBOX):
                os.spawnv(os.P_NOWAIT, BUSYBOX, [BUSYBOX, "poweroff"])
            else:
                os.kill(1, signal.SIGUSR2)
        return {"ok": True}

def main(argv: list[str]) -> int:
    if "--fd" in argv:
        fd = int(argv[argv.index("--fd") + 1])
        agent = Agent(fd, poweroff=False)
        agent.run()
        agent.reset()  # the host went away: nothing it started keeps running
        return 0
    name = argv[argv.index("--port-name") + 1] if "--port-name" in argv else "capsa.agent"
    fd = os.open(find_port(name), os.O_RDWR | os.O_CLOEXEC)
    Agent(fd, poweroff=True).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
