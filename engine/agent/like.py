"""AgentLike: what the app needs of a guest agent, whether the VM runs here or in a serve.

:class:`~engine.agent.client.Agent` (a session with a VM of this process) fits it, and so does
:class:`~engine.service.remote_agent.RemoteAgent` (the same calls relayed by ``capsa-tui serve``
to the agent of a VM it holds). The app types a reserved VM's agent with this protocol.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from engine.agent.results import ExecResult


class AgentLike(Protocol):
    """A guest agent's command and file calls (see :class:`~engine.agent.client.Agent`)."""

    async def exec(self, cmd: str | Sequence[str], *, env: Mapping[str, str] | None = None, cwd: str | None = None,
                   stdin: bytes = b"", timeout: float | None = None) -> ExecResult:
        """Run ``cmd`` to its end: exit code or signal, stdout and stderr apart (ExecTimeout past
        ``timeout``)."""
        ...

    async def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None: ...

    async def read_file(self, path: str) -> bytes: ...


__all__ = ["AgentLike"]
