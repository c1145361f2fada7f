"""A real ``capsa-tui serve`` process for tests: its own profiles, socket and options.

The serve runs as the user runs it (``python -m capsatui.cli serve ...``), so the tests see its
command line, its logs (one logfmt line an event on stderr) and its signals handled as in use.
It has a temporary folder of its own: its VMs' socket folders are its business while it runs
(the tests' leak check watches only the test process's), and that folder must be empty once it
stopped, or the serve left something behind.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

READY_EVENT = "event=all_warm"


@dataclass
class ServeProcess:
    """A running serve: its socket, its config folder and the log lines it wrote so far."""

    process: asyncio.subprocess.Process
    socket: Path
    config_dir: Path
    log: list[str] = field(default_factory=list)
    _reader: asyncio.Task[None] | None = None

    @property
    def env(self) -> dict[str, str]:
        """What a client of this serve needs in its environment."""
        return {"CAPSA_SOCKET": str(self.socket), "CAPSA_CONFIG_DIR": str(self.config_dir)}

    async def wait_logged(self, text: str, timeout: float = 120) -> str:
        """The first log line holding ``text`` (waiting for it)."""
        async with asyncio.timeout(timeout):
            while True:
                for line in self.log:
                    if text in line:
                        return line
                if self.process.returncode is not None:
                    raise AssertionError(f"serve ended ({self.process.returncode}) before {text!r}: {self.log[-20:]}")
                await asyncio.sleep(0.05)

    async def _read(self) -> None:
        assert self.process.stderr is not None
        while line := await self.process.stderr.readline():
            self.log.append(line.decode(errors="replace").rstrip("\n"))

    async def stop(self) -> int:
        """SIGINT, as Ctrl-C or systemd's stop would; its exit status."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGINT)
        try:
            code = await asyncio.wait_for(self.process.wait(), 60)
        finally:
            if self.process.returncode is None:
                self.process.kill()
                await self.process.wait()
        if self._reader is not None:
            await asyncio.wait([self._reader], timeout=5)
        return code


@contextlib.asynccontextmanager
async def running_serve(config_dir: Path, socket: Path, *args: str, env: Mapping[str, str] | None = None,
                        ready: str | None = READY_EVENT) -> AsyncIterator[ServeProcess]:
    """``capsa-tui serve ARGS`` with CAPSA_CONFIG_DIR=config_dir on ``socket``; waits for ``ready``."""
    own_tmp = Path(tempfile.mkdtemp(prefix="serve-", dir="/tmp"))  # short: VM sockets live under it
    environment = {**os.environ, "CAPSA_SOCKET": str(socket), "CAPSA_CONFIG_DIR": str(config_dir),
                   "TMPDIR": str(own_tmp), **(env or {})}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "capsatui.cli", "serve", *args, env=environment,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    serve = ServeProcess(process, socket, config_dir)
    serve._reader = asyncio.create_task(serve._read())
    try:
        if ready is not None:
            await serve.wait_logged(ready)
        yield serve
    finally:
        try:
            code = await serve.stop()
            left = sorted(p.name for p in own_tmp.iterdir())
            assert not left, f"the serve left {left} in its temporary folder"
            assert code == 0, f"the serve exited {code}: {serve.log[-10:]}"
            assert not socket.exists(), "the serve left its socket behind"
        finally:
            shutil.rmtree(own_tmp, ignore_errors=True)


__all__ = ["READY_EVENT", "ServeProcess", "running_serve"]
