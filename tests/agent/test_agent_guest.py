"""The agent in a real sandbox guest, through the real virtio-serial port: exec, streams, files.

These tests share ONE booted sandbox (a module fixture): none of them kills the agent or the
VM (tests/agent/test_agent_guest_faults.py boots fresh guests for those). Each test works in
its own guest folder so that none depends on another's leftovers.
"""
from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import engine
from engine.agent.client import Agent
from engine.microvm.boot import LinuxDirectBoot
from tests.agent.harness import check_tty_window
from tests.sandboxes import running_sandbox

pytestmark = pytest.mark.guest

BUSYBOX = "/usr/lib/capsa/busybox"  # minbase has no procps: the image's busybox has ps
_folders = itertools.count()


@pytest.fixture(scope="module")
async def sandbox(sandbox_boot_config: LinuxDirectBoot) -> AsyncIterator[engine.VmHandle]:
    async with running_sandbox(sandbox_boot_config) as vm:
        yield vm


@pytest.fixture
async def agent(sandbox: engine.VmHandle) -> Agent:
    return await sandbox.agent(timeout=120)


@pytest.fixture
async def folder(agent: Agent) -> str:
    """A fresh, empty guest folder for one test."""
    path = f"/tmp/t{next(_folders)}"
    r = await agent.exec(["mkdir", "-p", path], timeout=60)
    assert r.exit_code == 0, r.stderr
    return path


async def test_exec_python_with_env_cwd_stdin_and_exit_code(agent: Agent) -> None:
    script = "import os, sys; print(os.environ['A'], os.getcwd(), sys.stdin.read()); sys.exit(3)"
    r = await agent.exec(["python3", "-c", script], env={"A": "1"}, cwd="/tmp", stdin=b"in", timeout=120)
    assert (r.exit_code, r.signal, r.stdout, r.stderr, r.truncated) == (3, None, b"1 /tmp in\n", b"", False)


async def test_a_str_command_runs_through_bin_sh(agent: Agent) -> None:
    r = await agent.exec("echo $A | tr a-z A-Z; echo err >&2; exit 5", env={"A": "abc"}, timeout=60)
    assert (r.exit_code, r.stdout, r.stderr) == (5, b"ABC\n", b"err\n")


async def test_exec_of_a_missing_binary_names_it(agent: Agent) -> None:
    with pytest.raises(engine.GuestFileNotFound, match="no-such-program") as info:
        await agent.exec(["/usr/bin/no-such-program", "x"], timeout=60)
    assert info.value.path == "/usr/bin/no-such-program"
    with pytest.raises(engine.GuestFileNotFound) as info:
        await agent.exec(["true"], cwd="/no/such/folder", timeout=60)
    assert info.value.path == "/no/such/folder"
    await agent.ping()


async def test_a_command_killed_by_a_signal(agent: Agent) -> None:
    r = await agent.exec(["sh", "-c", "echo before; kill -9 $$"], timeout=60)
    assert (r.exit_code, r.signal, r.stdout) == (None, 9, b"before\n")


async def test_a_timeout_kills_the_whole_process_group(agent: Agent) -> None:
    # A marker argument lets ps find every process of the group, the backgrounded one too.
    script = "sleep 301 & echo started; echo e >&2; exec sleep 302"
    with pytest.raises(engine.ExecTimeout, match="timeout") as info:
        await agent.exec(["sh", "-c", script], timeout=3.0)
    assert info.value.stdout == b"started\n" and info.value.stderr == b"e\n"
    ps = ""
    for _ in range(100):
        ps = (await agent.exec([BUSYBOX, "ps", "-o", "pid,stat,args"], timeout=60)).stdout.decode()
        alive = [line for line in ps.splitlines() if "sleep 30" in line and " Z " not in f" {line} "]
        if not alive:
            break
        await asyncio.sleep(0.1)
    assert not alive, f"the timed-out group survived:\n{ps}"
    assert "PID" in ps  # ps itself ran, so an empty match means something


async def test_stdin_larger_than_the_pipe(agent: Agent) -> None:
    data = os.urandom(4 << 20)  # a pipe holds 64 KiB: flow control both ways through the port
    r = await agent.exec(["sha256sum"], stdin=data, timeout=300)
    assert r.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()
    r = await agent.exec(["cat"], stdin=data, timeout=300)
    assert r.stdout == data


async def test_100_mib_written_and_read_back_by_digest(agent: Agent, folder: str) -> None:
    data = os.urandom(100 << 20)
    digest = hashlib.sha256(data).hexdigest()
    target = f"{folder}/big.bin"
    await agent.write_file(target, data, mode=0o600)
    del data
    st = await agent.stat(target)
    assert (st.size, st.mode) == (100 << 20, 0o600)
    r = await agent.exec(["sha256sum", target], timeout=300)
    assert r.stdout.split()[0].decode() == digest  # the guest holds exactly our bytes
    back = await agent.read_file(target, max_bytes=100 << 20)
    assert hashlib.sha256(back).hexdigest() == digest
    assert [e.name for e in await agent.list_dir(folder)] == ["big.bin"]  # no temp file beside it
    await agent.exec(["rm", target], timeout=60)


async def test_a_read_over_the_cap(agent: Agent, folder: str) -> None:
    await agent.write_file(f"{folder}/f", b"x" * 1000)
    with pytest.raises(engine.TransferTooLarge, match="1000 bytes"):
        await agent.read_file(f"{folder}/f", max_bytes=999)
    assert await agent.read_file(f"{folder}/f", max_bytes=1000) == b"x" * 1000
    with pytest.raises(engine.GuestFileNotFound) as info:
        await agent.read_file(f"{folder}/missing")
    assert info.value.path == f"{folder}/missing"


@pytest.mark.parametrize("path", ["tmp/x", "/tmp/../etc/passwd", "/tmp/./x", ""])
async def test_relative_and_dotdot_paths_are_refused_on_both_sides(agent: Agent, path: str) -> None:
    with pytest.raises(engine.GuestPathError):
        await agent.read_file(path)
    with pytest.raises(engine.GuestPathError):
        await agent.write_file(path, b"x")
    # The same request sent past the host's check: the guest agent refuses it too.
    call = agent.start({"t": "read", "path": path, "max_bytes": 10})
    with pytest.raises(engine.GuestPathError):
        await agent.wait(call, 60)
    await agent.ping()


async def test_20_concurrent_execs(agent: Agent) -> None:
    slow = asyncio.ensure_future(agent.exec(["sleep", "5"], timeout=120))
    results = await asyncio.gather(*(agent.exec(["sh", "-c", f"sleep 0.5; echo {i}"], timeout=120)
                                     for i in range(20)))
    assert [(r.exit_code, r.stdout) for r in results] == [(0, f"{i}\n".encode()) for i in range(20)]
    await agent.ping()
    assert (await slow).exit_code == 0


async def test_tty_exec_with_a_window_size(agent: Agent) -> None:
    await check_tty_window(agent, timeout=60)


async def test_spawn_streams_with_stdin_and_a_signal(agent: Agent) -> None:
    script = ("import sys\n"
              "for line in sys.stdin:\n"
              "    print(line.strip().upper(), flush=True)\n"
              "    print('err', file=sys.stderr, flush=True)\n")
    async with agent.spawn(["python3", "-u", "-c", script]) as proc:
        outputs = proc.output()
        for word in (b"one", b"two"):
            await proc.write_stdin(word + b"\n")
            # Chunks as produced (print may write a line in two pieces): gather each stream.
            got = {"stdout": b"", "stderr": b""}
            while not (got["stdout"].endswith(b"\n") and got["stderr"].endswith(b"\n")):
                stream, chunk = await asyncio.wait_for(outputs.__anext__(), 60)
                got[stream] += chunk
            assert got == {"stdout": word.upper() + b"\n", "stderr": b"err\n"}
        await proc.signal(signal.SIGTERM)
        result = await proc.wait()
    assert (result.exit_code, result.signal) == (None, signal.SIGTERM)


async def test_copy_in_and_out_of_a_folder(agent: Agent, folder: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "run.sh").write_bytes(b"#!/bin/sh\necho hi from the guest\n")
    (src / "run.sh").chmod(0o755)
    payload = os.urandom(3 << 20)
    (src / "sub" / "data.bin").write_bytes(payload)
    (src / "sub" / "data.bin").chmod(0o600)
    await agent.copy_in(src, f"{folder}/work")
    assert (await agent.exec([f"{folder}/work/run.sh"], timeout=60)).stdout == b"hi from the guest\n"
    r = await agent.exec(["sha256sum", f"{folder}/work/sub/data.bin"], timeout=120)
    assert r.stdout.split()[0].decode() == hashlib.sha256(payload).hexdigest()
    await agent.exec(["sh", "-c", f"echo made in the guest > {folder}/work/sub/new.txt"], timeout=60)
    out = tmp_path / "out"
    await agent.copy_out(f"{folder}/work", out)
    assert (out / "sub" / "data.bin").read_bytes() == payload
    assert (out / "sub" / "data.bin").stat().st_mode & 0o777 == 0o600
    assert (out / "run.sh").stat().st_mode & 0o777 == 0o755
    assert (out / "sub" / "new.txt").read_bytes() == b"made in the guest\n"


async def test_info_describes_the_guest(agent: Agent, sandbox: engine.VmHandle) -> None:
    info = await agent.info()
    assert info.hostname == "capsa" and info.arch == "x86_64" and info.cpus == sandbox.spec.cpus
    # 512 MiB of RAM, less what the kernel keeps for itself.
    assert 400 << 20 < info.memory_total <= 512 << 20 and 0 < info.memory_available <= info.memory_total
    assert info.python_version.startswith("3.11") and info.agent_version and info.uptime_s > 0
    assert info.kernel == (await agent.exec(["uname", "-r"], timeout=60)).stdout.decode().strip()


async def test_the_console_tty_gets_the_window_size_out_of_band(sandbox: engine.VmHandle, agent: Agent) -> None:
    """What the app does when a console view opens or resizes: TIOCSWINSZ on the serial tty,
    so the shell on it wraps at the view's width (no `stty` typed into the user's shell)."""
    assert await sandbox.set_console_size(123, 45) is True
    seen = await agent.exec("stty size < /dev/ttyS0", timeout=30)
    assert seen.stdout == b"45 123\n", seen
    console = await sandbox.console()
    result = await console.run("stty size", timeout=30)  # the console's own shell sees it too
    assert "45 123" in result.output
    await agent.set_console_size(80, 24)
    assert (await agent.exec("stty size < /dev/ttyS0", timeout=30)).stdout == b"24 80\n"
    for cols, rows in ((0, 24), (80, 0), (10000, 24)):
        with pytest.raises(engine.AgentError, match="1 to 9999"):
            await agent.set_console_size(cols, rows)
