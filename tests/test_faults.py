"""Bad input and faults: each gives a clear EngineError and leaves nothing behind."""
from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import engine
from tests.procs import alive


async def test_missing_qemu_names_the_package(
    boot: engine.LinuxDirectBoot, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no qemu on PATH
    with pytest.raises(engine.QemuNotFound, match="qemu-system-x86"):
        await engine.vm(boot).build()


async def test_capsa_qemu_pointing_nowhere(boot: engine.LinuxDirectBoot, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPSA_QEMU", "/nonexistent/qemu")
    with pytest.raises(engine.QemuNotFound, match="/nonexistent/qemu"):
        await engine.vm(boot).build()


@pytest.mark.parametrize("which", ["kernel", "initrd"])
async def test_missing_boot_file_is_named(boot: engine.LinuxDirectBoot, tmp_path: Path, which: str) -> None:
    missing = tmp_path / f"no-{which}"
    kernel, initrd = (missing, boot.initrd) if which == "kernel" else (boot.kernel, missing)
    with pytest.raises(engine.ConfigError, match=str(missing)):
        await engine.vm(engine.LinuxDirectBoot(kernel, initrd)).build()


@pytest.mark.guest
async def test_qemu_exiting_early_carries_stderr(boot: engine.LinuxDirectBoot) -> None:
    with pytest.raises(engine.MachineError) as info:
        await engine.vm(boot).qemu_args("-device", "no-such-device-xyz").build()
    assert "no-such-device-xyz" in str(info.value)
    assert "no-such-device-xyz" in info.value.stderr_tail


def test_bad_spec_values_are_config_errors(tmp_path: Path) -> None:
    kernel = tmp_path / "k"
    kernel.write_bytes(b"x")
    boot = engine.LinuxDirectBoot(kernel)
    with pytest.raises(engine.ConfigError, match="cpus"):
        engine.vm(boot).cpus(0).spec()
    with pytest.raises(engine.ConfigError, match="memory_mb"):
        engine.vm(boot).memory_mb(1).spec()
    with pytest.raises(engine.ConfigError, match="hostname"):
        engine.vm(boot).hostname("bad name").spec()
    with pytest.raises(engine.ConfigError, match="default guest"):
        engine.vm(boot).login_user("alice", "pw").spec()


_ORPHAN_SCRIPT = """
import asyncio, sys, engine
async def main():
    vm = await engine.vm(engine.default_boot()).build()
    print(vm.pid, flush=True)
    await asyncio.sleep(600)
asyncio.run(main())
"""


@pytest.mark.guest
def test_machine_dies_with_a_killed_parent(boot: engine.LinuxDirectBoot) -> None:
    parent = subprocess.Popen([sys.executable, "-c", _ORPHAN_SCRIPT], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        qemu_pid = int(parent.stdout.readline())
        assert Path(f"/proc/{qemu_pid}").exists()
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 10
        while alive(qemu_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(qemu_pid), "QEMU outlived the process that started it"
    finally:
        parent.kill()
        parent.wait()


@pytest.mark.guest
async def test_wait_timeout_returns_none_while_running(boot: engine.LinuxDirectBoot) -> None:
    async with await engine.vm(boot).build() as vm:
        assert await vm.wait_timeout(0.2) is None
        await asyncio.sleep(0)
