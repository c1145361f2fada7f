"""The pool service against real guests: a PoolServer, its clients, and the CLI commands.

One server and one small pool (size 1, max 2) serve the whole module; each test waits at its
end until the pool is back to one idle VM, so the next test starts from the same state and the
leak check sees no boot in progress.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import stat
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pexpect
import pytest

import engine
from tests.waiting import pool_settled, until
from engine.service import protocol
from tests.procs import alive
from tests.service.serve_process import running_serve

POOL = "svc"


@dataclass
class Served:
    pool: engine.VmPool
    server: engine.PoolServer
    path: Path


@pytest.fixture(scope="module")
async def _service(boot: engine.LinuxDirectBoot) -> AsyncIterator[Served]:
    folder = Path(tempfile.mkdtemp(prefix="svc-"))
    pool = await engine.vm_pool(boot).cpus(1).memory_mb(256).console_enabled().name(POOL).max_size(2).build(1)
    server = engine.PoolServer([pool], folder / "pool.sock")
    try:
        await server.start()
        yield Served(pool, server, server.path)
    finally:
        await server.close()
        await pool.close()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
async def served(_service: Served) -> AsyncIterator[Served]:
    await until(lambda: pool_settled(_service.pool), what="pool settled before the test")
    yield _service
    # every connection the test opened is gone, and the pool is whole again
    await until(lambda: _service.server.connection_count == 0, 10, "connections closed")
    await until(lambda: pool_settled(_service.pool), what="pool settled after the test")


async def _client(served: Served) -> engine.ServiceClient:
    return await engine.ServiceClient.connect(served.path)


def _reserved_pids(pool: engine.VmPool) -> set[int]:
    return {m.pid for m in pool.members() if m.state == "reserved" and m.pid is not None}


async def _read_until(watch: object, needle: bytes, timeout: float = 30.0) -> bytes:
    seen = b""
    async with asyncio.timeout(timeout):
        async for chunk in watch:  # type: ignore[attr-defined]
            seen += chunk
            if needle in seen:
                return seen
    raise AssertionError(f"{needle!r} not seen; got {seen[-300:]!r}")


# -- without guests --------------------------------------------------------------------------


async def test_no_server_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(engine.ServiceUnavailable, match=f"no capsa-tui serve is running \\(socket {tmp_path}"):
        await engine.ServiceClient.connect(tmp_path / "none.sock")


async def test_socket_is_private_and_removed_on_close(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "pool.sock"
    async with engine.PoolServer([], path) as server:
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
        with pytest.raises(engine.ServiceError, match="already listening"):
            await engine.PoolServer([], path).start()
        assert server.path == path
    assert not path.exists()


async def test_stale_socket_is_replaced_and_other_files_are_not(tmp_path: Path) -> None:
    path = tmp_path / "pool.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))  # bound, never listening: what a killed server leaves
    stale.close()
    async with engine.PoolServer([], path):
        async with await engine.ServiceClient.connect(path) as client:
            assert await client.status() == []
    assert not path.exists()
    path.write_text("not a socket")
    with pytest.raises(engine.ServiceError, match="not a socket"):
        await engine.PoolServer([], path).start()
    assert path.read_text() == "not a socket"


async def test_version_mismatch_names_both_versions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "pool.sock"
    async with engine.PoolServer([], path) as server:
        monkeypatch.setattr(engine.ServiceClient, "protocol_version", 99)
        with pytest.raises(engine.ServiceVersionError) as info:
            await engine.ServiceClient.connect(path)
        assert "client speaks version 99" in str(info.value)
        assert f"server speaks version {protocol.PROTOCOL_VERSION}" in str(info.value)
        await until(lambda: server.connection_count == 0, 5, "refused connection closed")


async def test_garbage_drops_the_connection_only(tmp_path: Path) -> None:
    path = tmp_path / "pool.sock"
    async with engine.PoolServer([], path) as server:
        reader, writer = await asyncio.open_unix_connection(str(path))
        writer.write(b"\xff\xff\xff\xff")  # a 4 GiB frame announced
        reply = protocol.FrameDecoder().feed(await reader.read(65536))
        assert reply[0]["kind"] == "ProtocolError" and "exceeds" in reply[0]["error"]
        assert await reader.read(65536) == b""  # then the server hangs up
        writer.close()
        async with await engine.ServiceClient.connect(path) as client:  # and still serves others
            assert await client.status() == []
            with pytest.raises(engine.ServiceError) as info:
                await client._request("frobnicate")
            assert info.value.kind == "UnknownOp"
            with pytest.raises(engine.ServiceError) as info:
                await client._request("reserve", pool=5)
            assert info.value.kind == "BadRequest" and "'pool' must be a string" in str(info.value)
        assert server.connection_count == 0 or await _wait_zero(server)


async def _wait_zero(server: engine.PoolServer) -> bool:
    await until(lambda: server.connection_count == 0, 5, "connections closed")
    return True


class _OsAsAnotherUser:
    """``os`` as the server module sees it, but running as a uid no client of this test has."""

    def __getattr__(self, name: str) -> object:
        return getattr(os, name)

    def getuid(self) -> int:
        return os.getuid() + 4242


async def test_a_peer_of_another_uid_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # Works without root: the server believes it runs as another user, so this very process is
    # the stranger; SO_PEERCRED is read from the real connection as always.
    import engine.service.server as server_module

    path = Path(tempfile.mkdtemp(prefix="svc-peer-")) / "pool.sock"
    try:
        async with engine.PoolServer([], path):
            monkeypatch.setattr(server_module, "os", _OsAsAnotherUser())
            reader, writer = await asyncio.open_unix_connection(str(path))
            size = int.from_bytes(await reader.readexactly(4), "big")
            reply = json.loads(await reader.readexactly(size))
            writer.close()
            monkeypatch.undo()
        assert reply["ok"] is False and f"uid {os.getuid()} may not use this server" in reply["error"]
    finally:
        path.parent.rmdir()


@pytest.mark.skipif(
    os.getuid() != 0 or not Path("/usr/bin/python3").exists(),
    reason="needs root and a system python to be another user; test_a_peer_of_another_uid_is_refused covers the check",
)
async def test_other_users_are_refused() -> None:
    system_python = Path("/usr/bin/python3")
    # a folder of its own right under /tmp, so that opening it up touches nothing else
    folder = Path(tempfile.mkdtemp(prefix="svc-uid-", dir="/tmp"))
    path = folder / "pool.sock"
    try:
        async with engine.PoolServer([], path):
            # open the socket to everyone: the peer credential check must still refuse
            os.chmod(folder, 0o711)
            os.chmod(path, 0o666)
            # the server answers a stranger at once, before any hello
            code = "import socket,sys;s=socket.socket(socket.AF_UNIX);s.connect(sys.argv[1]);print(s.recv(65536)[4:].decode())"
            proc = await asyncio.create_subprocess_exec(
                str(system_python), "-c", code, str(path), user=65534, cwd="/",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )
            out, err = await proc.communicate()
        assert proc.returncode == 0, err
        reply = json.loads(out)
        assert reply["ok"] is False and "uid 65534 may not use this server" in reply["error"]
    finally:
        folder.rmdir()


# -- with the shared pool --------------------------------------------------------------------


@pytest.mark.guest
async def test_hello_and_status(served: Served) -> None:
    async with await _client(served) as client:
        assert client.pools == [POOL]
        [pool] = await client.status()
    assert pool["name"] == POOL and (pool["size"], pool["max_size"], pool["idle"]) == (1, 2, 1)
    [member] = pool["members"]
    assert member["state"] == "idle" and alive(member["pid"]) and member["id"].startswith(f"{POOL}-")


@pytest.mark.guest
async def test_reserve_exec_release(served: Served) -> None:
    released = served.pool.stats().released
    async with await _client(served) as client:
        vm_id = await client.reserve(POOL, timeout=60)
        assert served.pool.stats().reserved == 1
        result = await client.exec(vm_id, "echo served-$((6*7)); false")
        assert (result.exit_code, result.output) == (1, "served-42\n")
        with pytest.raises(engine.ServiceError) as info:
            await client.reserve("nope")
        assert info.value.kind == "UnknownPool" and POOL in str(info.value)
        async with await _client(served) as other:  # the VM is this connection's, not another's
            with pytest.raises(engine.ServiceError) as info:
                await other.exec(vm_id, "true")
            assert info.value.kind == "NotReserved"
        with pytest.raises(engine.ServiceError) as info:  # engine errors travel with their kind
            await client.exec(vm_id, "sleep 5", timeout=0.5)
        assert info.value.kind == "ConsoleTimeout" and "timed out after 0.5s" in str(info.value)
        await client.release(vm_id)
        assert served.pool.stats().released == released + 1
        with pytest.raises(engine.ServiceError):
            await client.exec(vm_id, "true")


@pytest.mark.guest
async def test_run_reserves_runs_and_releases(served: Served) -> None:
    released = served.pool.stats().released
    async with await _client(served) as client:
        result = await client.run(POOL, "sh -c 'echo hi; exit 3'", timeout=60)
    assert (result.exit_code, result.output) == (3, "hi\n")
    assert served.pool.stats().released == released + 1


@pytest.mark.guest
async def test_two_clients_watch_the_same_console(served: Served) -> None:
    async with await _client(served) as owner, await _client(served) as watcher:
        vm_id = await owner.reserve(POOL, timeout=60)
        mine = await owner.attach(vm_id)
        theirs = await watcher.attach(vm_id)
        await owner.exec(vm_id, "echo watched-$((40+2))")
        assert b"watched-42" in await _read_until(mine, b"watched-42")
        assert b"watched-42" in await _read_until(theirs, b"watched-42")
        with pytest.raises(engine.ServiceError) as info:
            await theirs.write(b"reboot\n")
        assert info.value.kind == "ReadOnly"
        await mine.write(b"echo typed-$((1+1))\n")  # the owner may type
        assert b"typed-2" in await _read_until(theirs, b"typed-2")
        await owner.release(vm_id)
        assert await _read_until_end(theirs) and theirs.closed_reason
        assert await _read_until_end(mine) and mine.closed_reason


async def _read_until_end(watch: engine.service.Attachment) -> bool:
    async with asyncio.timeout(30):
        async for _ in watch:
            pass
    return True


@pytest.mark.guest
async def test_client_disconnecting_during_run(served: Served) -> None:
    client = await _client(served)
    running = asyncio.create_task(client.run(POOL, "sleep 60; echo never", timeout=120))
    await until(lambda: served.pool.stats().reserved == 1, 60, "VM reserved for the run")
    [pid] = _reserved_pids(served.pool)
    client._writer.transport.abort()  # the client vanishes mid-request, no goodbye
    with pytest.raises(engine.ServiceError, match="lost the connection"):
        await running
    await client.close()
    await until(lambda: not alive(pid), 30, "the run's VM killed")
    await until(lambda: served.server.connection_count == 0, 10, "connection closed")
    assert served.pool.stats().reserved == 0
    async with await _client(served) as again:  # the server is healthy
        assert (await again.run(POOL, "echo still-here", timeout=60)).output == "still-here\n"


@pytest.mark.guest
async def test_client_disconnecting_during_a_blocked_reserve(served: Served) -> None:
    async with await _client(served) as holder:
        held = [await holder.reserve(POOL, timeout=60) for _ in range(2)]  # max_size is 2
        waiter = await _client(served)
        misses = served.pool.stats().misses
        blocked = asyncio.create_task(waiter.reserve(POOL))  # no timeout: waits for a free VM
        await until(lambda: served.pool.stats().misses > misses, 10, "the reserve queued")
        assert not blocked.done()
        waiter._writer.transport.abort()
        with pytest.raises(engine.ServiceError, match="lost the connection"):
            await blocked
        await waiter.close()
        await until(lambda: served.server.connection_count == 1, 10, "waiter's connection closed")
        for vm_id in held:
            await holder.release(vm_id)
    # the VM booted after the release is not handed to the vanished waiter
    await until(lambda: pool_settled(served.pool), what="pool whole again")
    assert [m.state for m in served.pool.members()] == ["idle"]


@pytest.mark.guest
async def test_closing_a_client_releases_its_vms(served: Served) -> None:
    client = await _client(served)
    await client.reserve(POOL, timeout=60)
    [pid] = _reserved_pids(served.pool)
    await client.close()
    await until(lambda: not alive(pid), 30, "the reserved VM killed")


def _service_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("service-")]


@pytest.mark.guest
async def test_a_client_flooding_requests_is_cut_off_and_the_pool_is_untouched(served: Served) -> None:
    # the attack: pipeline requests, never read a reply; the server grew by ~800 MiB,
    # spun for minutes after the client left, and a pooled VM was evicted meanwhile
    [idle] = served.pool.members()
    evicted, cut = served.pool.stats().evicted, served.server.stats().refused.get("ReplyBacklog", 0)
    reader, writer = await asyncio.open_unix_connection(str(served.path))
    writer.write(protocol.encode(protocol.hello()))
    assert protocol.decode_body((await reader.read(65536))[4:])["ok"] is True
    flood = b"".join(protocol.encode(protocol.request("status", n)) for n in range(50_000))
    with contextlib.suppress(ConnectionError, OSError):
        writer.write(flood)  # some 25 MB of replies asked for; none is read
        await writer.drain()
    await until(lambda: served.server.stats().refused.get("ReplyBacklog", 0) == cut + 1, 120, "the flooder cut off")
    await until(lambda: served.server.connection_count == 0, 30, "its connection closed")
    await until(lambda: not _service_tasks(), 30, "every task of its connection gone")
    stats = served.server.stats()
    assert (stats.reply_bytes, stats.request_bytes, stats.requests_running) == (0, 0, 0)
    writer.transport.abort()
    [still] = served.pool.members()
    assert (still.id, still.state, served.pool.stats().evicted) == (idle.id, "idle", evicted)
    async with await _client(served) as client:
        assert (await client.run(POOL, "echo alive", timeout=60)).output == "alive\n"


# -- the CLI ---------------------------------------------------------------------------------


async def _cli(*args: str, env: dict[str, str], timeout: float = 180) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "capsatui.cli", *args,
        env={**os.environ, **env}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.guest
async def test_cli_pool_status_and_warm_run(served: Served) -> None:
    env = {"CAPSA_SOCKET": str(served.path)}
    code, out, err = await _cli("pool", "status", env=env)
    assert code == 0, err
    assert POOL in out and "idle" in out and "boot p50" in out
    code, out, err = await _cli("pool", "status", "--json", env=env)
    assert code == 0, err
    [pool] = json.loads(out)["pools"]
    assert pool["name"] == POOL and pool["members"][0]["state"] == "idle"
    code, out, err = await _cli("run", POOL, "-v", "--", "sh", "-c", "echo warm; exit 4", env=env)
    assert (code, out) == (4, "warm\n"), err
    assert "warm VM" in err


@pytest.mark.guest
async def test_cli_pool_attach_types_and_watches(served: Served) -> None:
    async with await _client(served) as owner:
        vm_id = await owner.reserve(POOL, timeout=60)
        watch = await owner.attach(vm_id)
        # pexpect's async expect keeps this event loop, and so the server, running
        child = pexpect.spawn(
            sys.executable, ["-m", "capsatui.cli", "pool", "attach", vm_id, "--write"],
            env={**os.environ, "CAPSA_SOCKET": str(served.path)}, timeout=30, dimensions=(24, 80),
        )
        try:
            await child.expect("Ctrl-] detaches", async_=True)
            child.sendline("echo attached-$((40+2))")
            await child.expect("attached-42", async_=True)
            assert b"attached-42" in await _read_until(watch, b"attached-42")  # others see it too
            child.send("\x1d")
            await child.expect("detached", async_=True)
            await child.expect(pexpect.EOF, async_=True)
        finally:
            child.close(force=True)
        assert child.exitstatus == 0
        assert (await owner.exec(vm_id, "echo still-mine")).output == "still-mine\n"
        code, _, err = await _cli("pool", "attach", "no-such-vm", env={"CAPSA_SOCKET": str(served.path)})
        assert code == 2 and "no-such-vm" in err


async def test_cli_pool_status_without_a_server(tmp_path: Path) -> None:
    code, out, err = await _cli("pool", "status", env={"CAPSA_SOCKET": str(tmp_path / "none.sock")})
    assert code == 1
    assert f"no capsa-tui serve is running (socket {tmp_path / 'none.sock'})" in err
    assert "Traceback" not in err


@pytest.mark.guest
async def test_cli_run_cold_without_a_server(boot: engine.LinuxDirectBoot, tmp_path: Path) -> None:
    env = {"CAPSA_SOCKET": str(tmp_path / "none.sock"), "CAPSA_CONFIG_DIR": str(tmp_path)}
    code, out, err = await _cli("run", "default", "-v", "--", "echo", "hi", env=env)
    assert (code, out) == (0, "hi\n"), err
    assert "cold VM" in err
    code, out, err = await _cli("run", "default", "--", "sh", "-c", "exit 3", env=env)
    assert code == 3, err


async def test_cli_run_unknown_profile(tmp_path: Path) -> None:
    env = {"CAPSA_SOCKET": str(tmp_path / "none.sock"), "CAPSA_CONFIG_DIR": str(tmp_path)}
    code, _, err = await _cli("run", "no-such-profile", "--", "true", env=env)
    assert code == 2 and "no profile named 'no-such-profile'" in err


@pytest.mark.guest
async def test_cli_serve_lifecycle(boot: engine.LinuxDirectBoot, tmp_path: Path) -> None:
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "small.yaml").write_text(
        "name: small\nboot: default\ncpus: 1\nmemory_mb: 192\npool:\n  size: 1\n  max_size: 1\n"
    )
    path = tmp_path / "run" / "pool.sock"
    async with running_serve(tmp_path, path, "small") as serve:
        listening = await serve.wait_logged("event=listening")
        assert f"socket={path}" in listening and "level=info" in listening
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        code, out, err = await _cli("pool", "status", "--json", env={"CAPSA_SOCKET": str(path)})
        assert code == 0, err
        [pool] = json.loads(out)["pools"]
        pids = [m["pid"] for m in pool["members"]]
        assert pool["name"] == "small" and len(pids) == 1 and alive(pids[0])
        code, _, err = await _cli("serve", "small", env={"CAPSA_SOCKET": str(path), "CAPSA_CONFIG_DIR": str(tmp_path)})
        assert code == 2 and "already listening" in err
    # running_serve stopped it with SIGINT and checked: exit 0, no socket, nothing in its temp folder
    assert any("event=stopped" in line for line in serve.log)
    assert not any(alive(pid) for pid in pids), "serve left a VM running"
