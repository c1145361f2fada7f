"""``AgentProcess``: a command the agent runs with its output streamed as it is produced."""
from __future__ import annotations

import asyncio
import signal as signals
from collections.abc import AsyncIterator
from typing import Any

from engine.agent import wire
from engine.agent.calls import Call, Channel, reply_error
from engine.agent.results import ExecResult
from engine.errors import AgentError


class AgentProcess:
    """``async with agent.spawn(cmd) as proc``: read ``output()``, write stdin, signal, resize,
    ``wait()``. Leaving the block kills a process still running (its whole group)."""

    def __init__(self, agent: Channel, msg: dict[str, Any]) -> None:
        self._agent, self._msg = agent, msg
        self._call: Call | None = None
        self._result: ExecResult | None = None

    async def __aenter__(self) -> AgentProcess:
        self._call = self._agent.start(self._msg, stream=True)
        return self

    async def __aexit__(self, *exc: object) -> None:
        call = self._require()
        if not call.reply.done() and self._agent.failed is None:
            await self.signal(signals.SIGKILL)
            try:
                await self.wait()
            except AgentError:
                pass

    def _require(self) -> Call:
        if self._call is None:
            raise AgentError("use the process inside 'async with agent.spawn(...)'")
        return self._call

    async def output(self) -> AsyncIterator[tuple[str, bytes]]:
        """("stdout" | "stderr", bytes) in the order the agent read them, until the process ends."""
        call = self._require()
        assert call.queue is not None
        while True:
            item = await call.queue.get()
            if item is None:
                call.queue.put_nowait(None)  # later readers (wait) see the end too
                if call.reply.done() and call.reply.exception() is None:
                    event = call.reply.result()
                    if not event.msg.get("ok"):
                        raise reply_error(event.msg)
                elif call.reply.done():
                    raise call.reply.exception()  # type: ignore[misc]  # an AgentError, set by fail()
                return
            stream, data = item
            self._agent.write(self._agent.session.ack(call.id, len(data)))
            yield stream, data

    async def write_stdin(self, data: bytes) -> None:
        """Send ``data`` to the process's stdin (waits while the guest's window is full)."""
        call = self._require()
        view = memoryview(data)
        for offset in range(0, len(data), wire.IN_CHUNK):
            chunk = bytes(view[offset:offset + wire.IN_CHUNK])
            while self._agent.session.window_left(call.id) < len(chunk) and not call.reply.done():
                call.window.clear()
                await call.window.wait()
            if call.reply.done():
                return
            self._agent.write(self._agent.session.send_data(call.id, chunk))
        await self._agent.drain()

    async def close_stdin(self) -> None:
        """End of input (a ^D on a tty)."""
        self._control("eof")

    async def signal(self, sig: int) -> None:
        """Send ``sig`` to the process's group."""
        self._control("signal", sig=int(sig))

    async def resize(self, cols: int, rows: int) -> None:
        """Set a tty process's window size."""
        self._control("resize", cols=int(cols), rows=int(rows))

    def _control(self, kind: str, **fields: Any) -> None:
        call = self._require()
        if not call.reply.done():
            self._agent.write(self._agent.session.control(call.id, kind, **fields))

    async def wait(self) -> ExecResult:
        """The process's end (output left unread is discarded, so the process never stalls)."""
        if self._result is not None:
            return self._result
        call = self._require()
        async for _ in self.output():
            pass
        msg = (await self._agent.wait(call, None)).msg
        self._result = ExecResult(msg.get("exit_code"), msg.get("signal"), b"", b"", bool(msg.get("truncated")),
                                  float(msg.get("duration_s", 0.0)))
        return self._result
