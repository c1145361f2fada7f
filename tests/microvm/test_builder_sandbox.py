"""engine.sandbox() on a real guest: the builder resolves the cached image, boots it, and the
agent answers; the console is a root shell beside it."""
from __future__ import annotations

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
