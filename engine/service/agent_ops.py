"""The requests of protocol v2 through a reserved VM's guest agent: exec and file copy.

A sandbox's agent gives what a console cannot: stdout and stderr apart, as bytes, the exit
code or the signal, and files in and out. Over the wire the bytes are base64 and a request is
one frame, so a file is bounded by the frame limit (16 MiB, less base64's third): larger
copies belong to shares. Only a VM this connection reserved may be reached, as for ``exec``.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable

from engine.errors import ExecTimeout
from engine.pool.pooled import PooledVm
from engine.service import protocol
from engine.service.errors import BadRequest

Handler = Callable[[protocol.Message, "int | None"], Awaitable["protocol.Message | None"]]
ReservedLookup = Callable[[protocol.Message], PooledVm]

AGENT_TIMEOUT = 60.0  # seconds the agent of a fresh VM may take to answer
MAX_FILE = 12 * 1024 * 1024  # a file's bytes in one frame (base64 makes 16 MiB of it)


class AgentOps:
    """``agent_exec``, ``file_write`` and ``file_read`` on VMs that ``reserved`` finds."""

    def __init__(self, reserved: ReservedLookup) -> None:
        self._reserved = reserved

    def handlers(self) -> dict[str, Handler]:
        return {"agent_exec": self._op_exec, "file_write": self._op_write, "file_read": self._op_read}

    async def _op_exec(self, message: protocol.Message, request_id: int | None) -> protocol.Message:
        vm = self._reserved(message)
        command = _command(message)
        stdin = protocol.b64decode(protocol.field(message, "stdin", str, ""))
        env = protocol.field(message, "env", dict, None)
        if env is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise BadRequest("agent_exec: field 'env' must map strings to strings")
        cwd = protocol.field(message, "cwd", str, None)
        timeout = protocol.timeout_field(message)
        agent = await vm.agent(AGENT_TIMEOUT)
        try:
            result = await agent.exec(command, env=env, cwd=cwd, stdin=stdin, timeout=timeout)
        except ExecTimeout as err:
            return {"exit_code": None, "signal": None, "stdout": protocol.b64encode(err.stdout),
                    "stderr": protocol.b64encode(err.stderr), "truncated": False, "duration_s": timeout,
                    "timed_out": True}
        return {"exit_code": result.exit_code, "signal": result.signal,
                "stdout": protocol.b64encode(result.stdout), "stderr": protocol.b64encode(result.stderr),
                "truncated": result.truncated, "duration_s": result.duration_s, "timed_out": False}

    async def _op_write(self, message: protocol.Message, request_id: int | None) -> protocol.Message:
        vm = self._reserved(message)
        path = protocol.field(message, "path", str)
        data = protocol.b64decode(protocol.field(message, "data", str))
        mode = protocol.field(message, "mode", int, 0o644)
        if not 0 <= mode <= 0o7777:
            raise BadRequest(f"file_write: field 'mode' must be a file mode (0 to 0o7777), not {mode!r}")
        agent = await vm.agent(AGENT_TIMEOUT)
        await agent.write_file(path, data, mode)
        return {}

    async def _op_read(self, message: protocol.Message, request_id: int | None) -> protocol.Message:
        vm = self._reserved(message)
        path = protocol.field(message, "path", str)
        agent = await vm.agent(AGENT_TIMEOUT)
        return {"data": protocol.b64encode(await agent.read_file(path, MAX_FILE))}


def _command(message: protocol.Message) -> str | list[str]:
    command: str | list[str] = protocol.field(message, "command", (str, list))
    if isinstance(command, list):
        if not command or not all(isinstance(word, str) for word in command):
            raise BadRequest("agent_exec: field 'command' must be a string or a non-empty list of strings")
    return command


__all__ = ["AGENT_TIMEOUT", "MAX_FILE", "AgentOps"]
