"""VmHandle.agent(): the glue between a sandbox's agent port and the agent client, on a real guest."""
from __future__ import annotations

import pytest

from tests.sandboxes import running_sandbox

pytestmark = pytest.mark.guest


async def test_a_sandbox_runs_python_through_its_agent() -> None:
    async with running_sandbox() as vm:
        agent = await vm.agent()
        assert await vm.agent() is agent  # one session while it lives
        await agent.ping()
        result = await agent.exec(["python3", "-c", "import sys, os; print(os.environ['A']); sys.exit(3)"],
                                  env={"A": "1"}, cwd="/tmp")
        assert (result.exit_code, result.stdout, result.stderr) == (3, b"1\n", b"")
        await agent.write_file("/tmp/x.bin", b"\x00\xff" * 1000)
        assert await agent.read_file("/tmp/x.bin") == b"\x00\xff" * 1000

