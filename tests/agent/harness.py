"""The real guest agent program, run on the host over a socketpair, and a client on it.

The files are the ones the image installs (``guest_agent_files()``), copied into a temp folder
and run as a top-level script with the host's Python, exactly as the guest starts them but
with ``--fd`` instead of ``--port-name``.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from engine.agent.bundle import guest_agent_files
from engine.agent.client import Agent

# Debian's own python3 where there is one: the guest's interpreter, and one any user may run.
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


@dataclass
class LocalAgent:
    """A running agent process and the host's end of its stream."""

    proc: subprocess.Popen[bytes]
    sock: socket.socket
    folder: str
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter


@asynccontextmanager
async def local_agent(*, parent: str | None = None, **popen: Any) -> AsyncIterator[LocalAgent]:
    """Start the agent program (in a new folder under ``parent``); kill it and remove its
    folder afterwards."""
    folder = tempfile.mkdtemp(prefix="capsa-agent-", dir=parent)
    for name, data in guest_agent_files().items():
        with open(os.path.join(folder, name), "wb") as handle:
            handle.write(data)
    os.chmod(folder, 0o755)
    host, guest = socket.socketpair()
    proc = subprocess.Popen([PYTHON, "-E", "-s", os.path.join(folder, "capsa_agent.py"), "--fd", str(guest.fileno())],
                            pass_fds=[guest.fileno()], cwd=folder, **popen)
    guest.close()
    try:
        reader, writer = await asyncio.open_connection(sock=host)
        try:
            yield LocalAgent(proc, host, folder, reader, writer)
        finally:
            writer.close()
    finally:
        host.close()
        try:  # our end closed: the agent kills what it started and exits by itself
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(folder, ignore_errors=True)


@asynccontextmanager
async def connected(*, parent: str | None = None, **popen: Any) -> AsyncIterator[tuple[Agent, LocalAgent]]:
    """A local agent and a client session on it."""
    async with local_agent(parent=parent, **popen) as local:
        agent = await Agent.connect(local.reader, local.writer, timeout=60)
        try:
            yield agent, local
        finally:
            agent.close()


async def check_tty_window(agent: Agent, timeout: float | None = None) -> None:
    """A tty exec sees the default 80x24 window; a spawned tty sees the size asked for, then the
    size of a resize (the same check on the host and in a real guest)."""
    r = await agent.exec("stty size; tty", tty=True, timeout=timeout)
    words = r.stdout.decode().split()
    assert words[:2] == ["24", "80"] and words[2].startswith("/dev/pts/"), r.stdout
    async with agent.spawn("stty size; read x; stty size", tty=True, size=(100, 30)) as proc:
        seen = b""
        outputs = proc.output()
        async for _, chunk in outputs:
            seen += chunk
            if b"30 100" in seen:
                break
        await proc.resize(120, 40)
        await proc.write_stdin(b"go\n")
        async for _, chunk in outputs:
            seen += chunk
        result = await proc.wait()
    assert b"30 100" in seen and b"40 120" in seen and result.exit_code == 0
