"""The real guest agent program, run on the host, driven through the real client.

Real processes, files and signals: only the transport differs from a guest (a socketpair
instead of the virtio-serial port).
"""
from __future__ import annotations

import asyncio
import hashlib
import io
import os
import signal
import socket
import tarfile
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engine.agent import wire
from engine.agent.client import Agent
from engine.errors import (
    AgentDied,
    AgentProtocolError,
    ExecTimeout,
    GuestFileNotFound,
    GuestPathError,
    GuestPermissionError,
    IdentityError,
    TransferTooLarge,
)
from tests.agent.harness import check_tty_window, connected, local_agent


@pytest.fixture
async def agent() -> AsyncIterator[Agent]:
    async with connected() as (client, _):
        yield client


@pytest.fixture
def scratch() -> AsyncIterator[Path]:
    with tempfile.TemporaryDirectory(prefix="agent-files-") as folder:
        yield Path(folder)


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


async def test_exec_env_cwd_exit_code_and_shell(agent: Agent) -> None:
    r = await agent.exec(["python3", "-c", "import os,sys; print(os.environ['A'], os.getcwd()); sys.exit(3)"],
                         env={"A": "1"}, cwd="/tmp", timeout=30)
    assert (r.exit_code, r.signal, r.stdout, r.stderr, r.truncated) == (3, None, b"1 /tmp\n", b"", False)
    r = await agent.exec("echo $A | tr a-z A-Z; echo err >&2", env={"A": "abc"})
    assert (r.exit_code, r.stdout, r.stderr) == (0, b"ABC\n", b"err\n")


async def test_exec_of_a_missing_binary_names_it(agent: Agent) -> None:
    with pytest.raises(GuestFileNotFound, match="no-such-program") as info:
        await agent.exec(["/usr/bin/no-such-program", "x"])
    assert info.value.path == "/usr/bin/no-such-program"
    with pytest.raises(GuestFileNotFound, match="/no/such/folder") as info:
        await agent.exec(["true"], cwd="/no/such/folder")
    assert info.value.path == "/no/such/folder"
    await agent.ping()  # the agent is still serving


async def test_a_command_killed_by_a_signal(agent: Agent) -> None:
    r = await agent.exec(["sh", "-c", "echo before; kill -9 $$"])
    assert (r.exit_code, r.signal, r.stdout) == (None, 9, b"before\n")


async def test_timeout_kills_the_whole_group_and_keeps_partial_output(agent: Agent, scratch: Path) -> None:
    pidfile = scratch / "grandchild"
    with pytest.raises(ExecTimeout, match="timeout") as info:
        await agent.exec(["sh", "-c", f"sleep 300 & echo $! > {pidfile}; echo started; echo e >&2; sleep 300"],
                         timeout=1.0)
    assert info.value.stdout == b"started\n" and info.value.stderr == b"e\n"
    grandchild = int(pidfile.read_text())
    for _ in range(200):
        if _gone(grandchild):
            break
        await asyncio.sleep(0.05)
    assert _gone(grandchild), f"the backgrounded sleep {grandchild} survived the timeout"


async def test_stdin_larger_than_the_pipe(agent: Agent) -> None:
    data = os.urandom(5 << 20)  # a pipe holds 64 KiB: this needs flow control both ways
    r = await agent.exec(["sha256sum"], stdin=data, timeout=60)
    assert r.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()
    r = await agent.exec(["cat"], stdin=data, timeout=60)
    assert r.stdout == data


async def test_100_mib_written_and_read_back_by_digest(agent: Agent, scratch: Path) -> None:
    data = os.urandom(100 << 20)
    target = str(scratch / "big.bin")
    await agent.write_file(target, data, mode=0o600)
    assert hashlib.sha256(Path(target).read_bytes()).digest() == hashlib.sha256(data).digest()
    assert (await agent.stat(target)).mode == 0o600
    back = await agent.read_file(target, max_bytes=100 << 20)
    assert hashlib.sha256(back).digest() == hashlib.sha256(data).digest()
    assert [p.name for p in scratch.iterdir()] == ["big.bin"]  # no temp file left beside it


async def test_write_file_is_atomic_and_names_a_missing_folder(agent: Agent, scratch: Path) -> None:
    target = scratch / "a.txt"
    target.write_bytes(b"old")
    await agent.write_file(str(target), b"new", mode=0o640)
    assert target.read_bytes() == b"new" and target.stat().st_mode & 0o777 == 0o640
    with pytest.raises(GuestFileNotFound) as info:
        await agent.write_file(str(scratch / "no" / "x"), b"data")
    assert info.value.path == str(scratch / "no")
    await agent.write_file(str(scratch / "empty"), b"")
    assert (scratch / "empty").read_bytes() == b""


async def test_a_read_over_the_cap(agent: Agent, scratch: Path) -> None:
    (scratch / "f").write_bytes(b"x" * 1000)
    with pytest.raises(TransferTooLarge, match="1000 bytes"):
        await agent.read_file(str(scratch / "f"), max_bytes=999)
    assert await agent.read_file(str(scratch / "f"), max_bytes=1000) == b"x" * 1000
    with pytest.raises(GuestFileNotFound) as info:
        await agent.read_file(str(scratch / "missing"))
    assert info.value.path == str(scratch / "missing")


@pytest.mark.parametrize("path", ["tmp/x", "/tmp/../etc/passwd", "/tmp/./x", "//tmp", "", "/tmp/x\0y"])
async def test_relative_and_dotdot_paths_are_refused_on_both_sides(agent: Agent, path: str) -> None:
    with pytest.raises(GuestPathError):
        await agent.read_file(path)
    with pytest.raises(GuestPathError):
        await agent.write_file(path, b"x")
    # The same request sent past the host's check: the guest refuses it too.
    call = agent.start({"t": "read", "path": path, "max_bytes": 10})
    with pytest.raises(GuestPathError):
        await agent.wait(call, 30)


async def test_exists_stat_list_dir_info(agent: Agent, scratch: Path) -> None:
    (scratch / "d").mkdir()
    (scratch / "f").write_bytes(b"12345")
    os.symlink("f", scratch / "l")
    assert await agent.exists(str(scratch / "f")) and not await agent.exists(str(scratch / "nope"))
    st = await agent.stat(str(scratch / "f"))
    assert (st.kind, st.size) == ("file", 5)
    entries = await agent.list_dir(str(scratch))
    assert [(e.name, e.kind) for e in entries] == [("d", "dir"), ("f", "file"), ("l", "symlink")]
    with pytest.raises(GuestFileNotFound):
        await agent.list_dir(str(scratch / "nope"))
    info = await agent.info()
    assert info.hostname == os.uname().nodename and info.cpus >= 1 and info.memory_total > 0
    assert info.agent_version and info.python_version.startswith("3.")


async def test_20_concurrent_execs_and_a_ping_during_a_slow_one(agent: Agent) -> None:
    slow = asyncio.ensure_future(agent.exec(["sleep", "3"]))
    await asyncio.sleep(0.2)
    await agent.ping()
    assert not slow.done()  # the ping came back while the slow command still ran
    results = await asyncio.gather(*(agent.exec(["sh", "-c", f"sleep 0.3; echo {i}"]) for i in range(20)))
    assert [r.stdout for r in results] == [f"{i}\n".encode() for i in range(20)]
    assert (await slow).exit_code == 0


async def test_output_flood_with_the_cap(agent: Agent) -> None:
    r = await agent.exec(["sh", "-c", "head -c 64000000 /dev/zero; echo done >&2"], max_output=1 << 20, timeout=120)
    assert r.truncated and len(r.stdout) + len(r.stderr) == 1 << 20 and r.exit_code == 0
    r = await agent.exec(["sh", "-c", "head -c 1000 /dev/zero"], max_output=1000)
    assert not r.truncated and len(r.stdout) == 1000


async def test_tty_exec_with_a_window_size(agent: Agent) -> None:
    await check_tty_window(agent)


async def test_spawn_streams_in_order_with_stdin_and_signals(agent: Agent) -> None:
    script = ("import sys, time\n"
              "for i in range(4):\n"
              "    (sys.stdout if i % 2 == 0 else sys.stderr).write(f'{i}\\n'); sys.stdout.flush(); time.sleep(0.2)\n")
    async with agent.spawn(["python3", "-u", "-c", script]) as proc:
        got = [item async for item in proc.output()]
        result = await proc.wait()
    assert got == [("stdout", b"0\n"), ("stderr", b"1\n"), ("stdout", b"2\n"), ("stderr", b"3\n")]
    assert result.exit_code == 0 and result.stdout == b""
    async with agent.spawn(["cat"]) as proc:
        await proc.write_stdin(b"hello " * 100_000)
        await proc.close_stdin()
        size = 0
        async for stream, chunk in proc.output():
            assert stream == "stdout"
            size += len(chunk)
        assert size == 600_000 and (await proc.wait()).exit_code == 0
    async with agent.spawn(["sleep", "300"]) as proc:
        await proc.signal(signal.SIGTERM)
        result = await proc.wait()
    assert (result.exit_code, result.signal) == (None, signal.SIGTERM)
    async with agent.spawn(["sleep", "300"]) as proc:
        pass  # leaving the block kills it
    with pytest.raises(GuestFileNotFound):
        async with agent.spawn(["/no/such/binary"]) as proc:
            async for _ in proc.output():
                pass


async def test_spawn_flow_control_does_not_buffer_a_flood(agent: Agent) -> None:
    async with agent.spawn(["sh", "-c", "exec cat /dev/zero"]) as proc:
        outputs = proc.output()
        await outputs.__anext__()
        await asyncio.sleep(1.0)  # we read nothing: the guest must stop reading the pipe
        queued = proc._require().queue
        assert queued is not None and sum(len(c) for _, c in queued._queue) <= 4 << 20  # type: ignore[attr-defined]


async def test_the_agent_survives_a_workload_that_forks_away(agent: Agent) -> None:
    r = await agent.exec(["sh", "-c", "sleep 5 >/dev/null 2>&1 & (sleep 5 &) ; echo parent done"], timeout=30)
    assert r.stdout == b"parent done\n"
    r = await agent.exec(["sh", "-c", "(sleep 3 &); echo held"], timeout=30)  # the daemon holds our pipe
    assert r.stdout == b"held\n" and r.duration_s < 3
    await agent.ping()


async def test_copy_in_and_out_round_trip_keeps_modes(agent: Agent, scratch: Path) -> None:
    src = scratch / "src"
    (src / "sub").mkdir(parents=True)
    (src / "run.sh").write_bytes(b"#!/bin/sh\necho hi\n")
    (src / "run.sh").chmod(0o755)
    (src / "sub" / "data.bin").write_bytes(os.urandom(3 << 20))
    (src / "sub" / "data.bin").chmod(0o600)
    os.symlink("../run.sh", src / "sub" / "link")
    guest = scratch / "guest"
    await agent.copy_in(src, str(guest))
    assert (guest / "run.sh").stat().st_mode & 0o777 == 0o755
    assert (guest / "sub" / "data.bin").read_bytes() == (src / "sub" / "data.bin").read_bytes()
    assert os.readlink(guest / "sub" / "link") == "../run.sh"
    out = scratch / "out"
    await agent.copy_out(str(guest), out)
    assert (out / "sub" / "data.bin").read_bytes() == (src / "sub" / "data.bin").read_bytes()
    assert (out / "sub" / "data.bin").stat().st_mode & 0o777 == 0o600
    assert (out / "run.sh").stat().st_mode & 0o777 == 0o755


def _tar(*members: tuple[str, str, str]) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload.encode()))
            else:
                info.type = tarfile.SYMTYPE if kind == "sym" else tarfile.LNKTYPE
                info.linkname = payload
                tar.addfile(info)
    buffer.seek(0)
    return buffer


@pytest.mark.parametrize("members", [
    [("../escape.txt", "file", "x")],
    [("/tmp/absolute-escape.txt", "file", "x")],
    [("ok/../../escape.txt", "file", "x")],
    [("link", "sym", "/etc")],
    [("link", "sym", "../../etc")],
    [("hard", "lnk", "../outside")],
    [("a", "sym", "."), ("a/../../escape.txt", "file", "x")],
])
async def test_copy_in_refuses_a_hostile_tar_in_the_guest(agent: Agent, scratch: Path,
                                                          members: list[tuple[str, str, str]]) -> None:
    target = scratch / "t" / "inner"
    with pytest.raises(GuestPathError, match="refused"):
        await agent._send_tar(str(target), _tar(*members))
    assert not (scratch / "t" / "escape.txt").exists() and not (scratch / "escape.txt").exists()
    assert not Path("/tmp/absolute-escape.txt").exists()


async def test_copy_out_refuses_a_guest_symlink_that_escapes(agent: Agent, scratch: Path) -> None:
    guest = scratch / "guest"
    guest.mkdir()
    (guest / "ok.txt").write_bytes(b"ok")
    os.symlink("/etc", guest / "evil")  # an attacker in the guest controls the folder's contents
    with pytest.raises(GuestPathError, match="evil"):
        await agent.copy_out(str(guest), scratch / "out")
    assert not (scratch / "out" / "evil").exists()


async def test_the_agent_killed_mid_call_fails_every_call(scratch: Path) -> None:
    pidfile = scratch / "pid"
    async with connected() as (agent, local):
        pending = asyncio.ensure_future(agent.exec(["sh", "-c", f"echo $$ > {pidfile}; exec sleep 300"]))
        reading = asyncio.ensure_future(agent.read_file("/dev/zero", max_bytes=1 << 40))  # mid-transfer
        for _ in range(200):
            if pidfile.exists() and pidfile.read_text().strip():
                break
            await asyncio.sleep(0.05)
        local.proc.kill()
        try:
            for call in (pending, reading):
                with pytest.raises(AgentDied):
                    await asyncio.wait_for(call, 30)
            with pytest.raises(AgentDied):
                await agent.ping()
        finally:
            os.killpg(int(pidfile.read_text()), signal.SIGKILL)  # a killed agent cannot clean up


async def test_fail_wakes_every_waiting_call() -> None:
    async with connected() as (agent, _):
        pending = asyncio.ensure_future(agent.exec(["sleep", "300"]))
        await asyncio.sleep(0.2)
        agent.fail("the VM exited")
        with pytest.raises(AgentDied, match="the VM exited"):
            await asyncio.wait_for(pending, 30)


async def test_a_malformed_frame_from_the_agent_side() -> None:
    host, guest = socket.socketpair()
    guest.setblocking(False)
    reasons: list[str] = []
    try:
        reader, writer = await asyncio.open_connection(sock=host)
        connecting = asyncio.ensure_future(Agent.connect(reader, writer, timeout=30, on_protocol_error=reasons.append))
        loop = asyncio.get_running_loop()
        hello = wire.Decoder(want_nonce=b"")
        while not hello.feed(await loop.sock_recv(guest, 4096)):
            pass
        await loop.sock_sendall(guest, wire.encode_hello(hello.nonce, {"t": "hello", "id": 0, "version": wire.VERSION}))
        agent = await connecting
        ping = asyncio.ensure_future(agent.ping())
        await asyncio.sleep(0.1)
        await loop.sock_sendall(guest, wire.HEADER.pack(wire.MAGIC, wire.VERSION, 0, 2, 0xFFFF_FFFF))  # a 4 GiB body
        with pytest.raises(AgentProtocolError, match="over the limits"):
            await asyncio.wait_for(ping, 30)
        assert len(reasons) == 1 and "over the limits" in reasons[0]
        with pytest.raises(AgentProtocolError):
            await agent.ping()
        writer.close()
    finally:
        guest.close()
        host.close()


async def test_a_new_session_resynchronises_after_a_dead_ones_partial_frame() -> None:
    async with local_agent() as local:
        first_sock = local.sock.dup()
        reader, writer = await asyncio.open_connection(sock=first_sock)
        first = await Agent.connect(reader, writer, timeout=60)
        proc = first.spawn(["sh", "-c", "exec cat /dev/zero"])  # output still flowing when it dies
        await proc.__aenter__()
        await proc.output().__anext__()
        writer.write(wire.encode({"t": "exec", "id": 99, "cmd": "true"})[:9])  # half a frame, then gone
        await writer.drain()
        first.close()
        second = await Agent.connect(local.reader, local.writer, timeout=60)
        await second.ping()
        assert (await second.exec(["echo", "again"])).stdout == b"again\n"
        second.close()


async def test_shutdown_ends_the_session(agent: Agent) -> None:
    await agent.shutdown()
    with pytest.raises(AgentDied):
        for _ in range(100):
            await agent.ping()
            await asyncio.sleep(0.05)


async def test_set_identity_checks_arguments_on_the_host(agent: Agent) -> None:
    for kwargs, step in ((dict(seed=b"short"), "seed"), (dict(hostname="bad name"), "hostname"),
                         (dict(mac="AA:BB"), "mac"), (dict(address="10.0.0.2/24"), "address")):
        args = dict(seed=os.urandom(32), epoch=time.time(), hostname="clone-1") | kwargs
        with pytest.raises(IdentityError) as info:
            await agent.set_identity(**args)  # type: ignore[arg-type]
        assert step in info.value.failed


async def test_set_identity_unprivileged_reports_each_refused_step() -> None:
    # Not as root here: root on this host would reset the host's own clock and hostname.
    async with connected(parent="/tmp", user=65534, group=65534) if os.geteuid() == 0 else connected() as (agent, _):
        with pytest.raises(IdentityError) as info:
            await agent.set_identity(os.urandom(32), time.time(), "clone-1", mac="02:00:00:00:00:01",
                                     address="10.0.2.16/24", router="10.0.2.2")
        assert {"reseed", "clock", "mac", "address", "hostname", "hosts"} <= set(info.value.failed)
        assert os.uname().nodename != "clone-1"
        with pytest.raises(GuestPermissionError) as perm:
            await agent.write_file("/root/capsa-agent-test", b"x")
        assert perm.value.path == "/root/capsa-agent-test"


async def test_the_host_keeps_its_own_caps_when_the_guest_ignores_them() -> None:
    """An impostor agent answers a read with more bytes than max_bytes and an exec with more
    output than max_output: the host stops each transfer itself (TransferTooLarge), keeps no
    more than the cap, and the session lives on."""
    host, guest = socket.socketpair()
    guest.setblocking(False)
    try:
        reader, writer = await asyncio.open_connection(sock=host)
        connecting = asyncio.ensure_future(Agent.connect(reader, writer, timeout=30))
        loop = asyncio.get_running_loop()
        decoder = wire.Decoder(want_nonce=b"")
        frames: list[wire.Frame] = []
        while not frames:
            frames += decoder.feed(await loop.sock_recv(guest, 65536))
        await loop.sock_sendall(guest, wire.encode_hello(decoder.nonce, {"t": "hello", "id": 0, "version": wire.VERSION}))
        agent = await connecting

        async def next_request() -> wire.Frame:
            while True:
                for frame in decoder.feed(await loop.sock_recv(guest, 65536)):
                    if frame.msg.get("t") not in ("ack", "cancel"):
                        return frame

        chunk = b"x" * (64 << 10)
        reading = asyncio.ensure_future(agent.read_file("/etc/big", max_bytes=100_000))
        request = await next_request()
        for _ in range(3):  # 192 KiB against a 100 000-byte cap
            await loop.sock_sendall(guest, wire.encode({"t": "out", "id": request.msg["id"], "s": "data"}, chunk))
        with pytest.raises(TransferTooLarge, match="100000 bytes"):
            await asyncio.wait_for(reading, 30)

        running = asyncio.ensure_future(agent.exec(["cat"], max_output=1000))
        request = await next_request()
        for _ in range(40):  # 2.5 MiB of "stdout" against a 1000-byte cap (+ two frames of slack)
            await loop.sock_sendall(guest, wire.encode({"t": "out", "id": request.msg["id"], "s": "stdout"}, chunk))
        with pytest.raises(TransferTooLarge):
            await asyncio.wait_for(running, 30)

        pinging = asyncio.ensure_future(agent.ping())
        request = await next_request()
        await loop.sock_sendall(guest, wire.encode({"t": "reply", "id": request.msg["id"], "ok": True}))
        await asyncio.wait_for(pinging, 30)
        writer.close()
    finally:
        guest.close()
        host.close()
