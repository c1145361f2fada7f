"""A ``kind: sandbox`` profile's pool on real guests: the profile's builder resolves the sandbox
image, the pool boots it, and a reserved VM's agent runs Python."""
from __future__ import annotations

import textwrap

import pytest

import engine

pytestmark = pytest.mark.guest


async def test_a_sandbox_profile_pool_hands_out_sandboxes_with_an_agent(sandbox_boot_config: engine.LinuxDirectBoot) -> None:
    profile = engine.parse_profile(textwrap.dedent("""\
        name: sbpool
        kind: sandbox
        timeout: 120
        pool: {size: 1, max_size: 1, snapshot: false}
        """), "sbpool.yaml")
    pool = await profile.pool_builder().boot_timeout(180).build(profile.size)
    try:
        async with await pool.reserve(timeout=180) as vm:
            assert vm.spec.boot.has_agent and vm.spec.timeout_s == 120.0
            result = await (await vm.agent()).exec(["python3", "-c", "import sys; print(sys.version_info[0])"])
            assert (result.exit_code, result.stdout) == (0, b"3\n")
            assert vm.resources() == engine.ResourceConfig(1, 512, vm.accel.name)
    finally:
        await pool.close()
