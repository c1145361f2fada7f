"""Guest tests of the sandbox image: boot into Debian, python3, the overlay, the agent's respawn."""
from __future__ import annotations

import hashlib

import pytest

import engine
from tests.sandboxes import running_sandbox, test_sandbox_boot
from tests.waiting import until

pytestmark = pytest.mark.guest


async def test_sandbox_boots_into_debian_with_python() -> None:
    async with running_sandbox() as vm:
        con = await vm.console()
        out = await con.exec("python3 -c 'import json,sys; print(json.dumps(sys.version_info[:2]))'", timeout=120)
        assert out == "[3, 11]\n"
        assert "bookworm" in await con.exec("cat /etc/os-release", timeout=60)
