"""RemoteAgent: the guest agent of a VM reserved from ``capsa-tui serve``, as an AgentLike.

Each call is one request of protocol v2 (``agent_exec``, ``file_write``, ``file_read``) that
the serve runs through its own session with the VM's agent; bytes travel base64 in one frame,
so a file is bounded by :data:`engine.service.agent_ops.MAX_FILE`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from engine.agent.results import ExecResult
from engine.service.client import ServiceClient


class RemoteAgent:
    """The agent of VM ``vm_id``, which ``client``'s connection reserved."""

    def __init__(self, client: ServiceClient, vm_id: str) -> None:
        self._client = client
        self.vm_id = vm_id

    async def exec(self, cmd: str | Sequence[str], *, env: Mapping[str, str] | None = None, cwd: str | None = None,
                   stdin: bytes = b"", timeout: float | None = None) -> ExecResult:
        return await self._client.agent_exec(self.vm_id, cmd, stdin=stdin, timeout=timeout, env=env, cwd=cwd)

    async def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        await self._client.write_file(self.vm_id, path, data, mode)

    async def read_file(self, path: str) -> bytes:
        return await self._client.read_file(self.vm_id, path)


__all__ = ["RemoteAgent"]
