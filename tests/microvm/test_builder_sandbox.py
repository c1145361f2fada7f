"""engine.sandbox() on a real guest: the builder resolves the cached image, boots it, and the
agent answers; the console is a root shell beside it."""
from __future__ import annotations

from datetime import timedelta

import pytest

import engine

pytestmark = pytest.mark.guest


async def test_engine_sandbox_builds_a_vm_whose_agent_runs_python(sandbox_boot_config: engine.LinuxDirectBoot) -> None:
    stages: list[str] = []
    builder = engine.sandbox().cpus(1).memory_mb(512).image("debian", packages=["python3"]).timeout(120)
    async with await builder.progress(lambda stage, fraction: stages.append(stage)).build() as vm:
        assert vm.spec.boot.has_agent and vm.spec.console
        agent = await vm.agent()
        result = await agent.exec(["python3", "-c", "print(1)"])
        assert (result.exit_code, result.stdout) == (0, b"1\n")
        await vm.wait_ready(120)
        console = await vm.console()
        assert (await console.exec("id -u", timeout=60)).strip() == "0"
    assert stages[-1] == "Sandbox image ready"


async def test_create_then_start_then_stop_with_timeout() -> None:
    created = await engine.vm(engine.default_boot()).memory_mb(128).console_enabled().create()
    assert created.status() == engine.Created()
    vm = await created.start()
    try:
        assert await created.start() is vm  # start if not running: the same VM
        assert created.handle is vm and created.status() == vm.status()
        await vm.wait_ready(120)
        assert vm.resources() == engine.ResourceConfig(1, 128, vm.accel.name) == created.resources()
        assert vm.guest_os() is engine.GuestOs.LINUX
        final = await vm.stop_with_timeout(timedelta(seconds=60))
        assert isinstance(final, engine.Stopped) and created.status() == final
    finally:
        await vm.kill()
