"""The console of a VM as users drive it: reading, writing and running commands.

:class:`Console` (what ``await vm.console()`` returns) combines a reader and a writer of the
VM's :class:`~engine.console.stream.ConsoleStream` and adds the helpers: ``exec``/``run``
(framed by random markers, see :mod:`engine.console.match`), ``run_command``, ``login``,
``split``.
"""
from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from engine.console.match import (
    READY_MARKER,
    CommandFraming,
    CommandOutcome,
    EchoSkipper,
    PatternLike,
    compile_pattern,
    describe_pattern,
    normalize_newlines,
)
from engine.console.stream import (
    DEFAULT_SCROLLBACK,
    ByteRing,
    ConsoleReader,
    ConsoleStream,
    ConsoleWriter,
    Watcher,
)
from engine.errors import ConsoleError, ConsoleTimeout

__all__ = [
    "DEFAULT_SCROLLBACK",
    "READY_MARKER",
    "ByteRing",
    "CommandResult",
    "Console",
    "ConsoleReader",
    "ConsoleStream",
    "ConsoleWriter",
    "Watcher",
]

_LOGIN_PROMPT_GRACE = 2.0  # seconds to wait for "login: " before asking for a fresh one
_PROMPT_GRACE = 1.0  # seconds run_command waits for the prompt before typing anyway


@dataclass(frozen=True)
class CommandResult:
    """Result of :meth:`Console.run`: exit status and output (``\\r\\n`` -> ``\\n``).

    ``dropped`` counts output bytes lost because the output outgrew the limits.
    """

    exit_code: int
    output: str
    dropped: int = 0

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class Console:
    """A VM's console: a reader cursor (starting at the oldest byte kept) plus a writer.

    Commands (``exec``, ``run``, ``run_command``, ``login``) are serialized per console.
    """

    def __init__(self, stream: ConsoleStream) -> None:
        self._stream = stream
        self._reader = ConsoleReader(stream, stream.start_offset)
        self._writer = ConsoleWriter(stream)
        self._command_lock = asyncio.Lock()

    @property
    def stream(self) -> ConsoleStream:
        return self._stream

    @property
    def closed(self) -> bool:
        return self._stream.closed

    @property
    def close_reason(self) -> str | None:
        """Why the console closed (None while it is open)."""
        return self._stream.close_reason

    @property
    def start_offset(self) -> int:
        """Absolute offset of the oldest byte still in the scrollback."""
        return self._stream.start_offset

    def read_from(self, offset: int, limit: int | None = None) -> bytes:
        """Scrollback bytes from ``offset`` on (clamped to the oldest kept), at most ``limit``."""
        return self._stream.read_from(offset, limit)

    @property
    def ready_count(self) -> int:
        return self._stream.ready_count

    @property
    def dropped(self) -> int:
        return self._reader.dropped

    @property
    def offset(self) -> int:
        return self._reader.offset

    # -- reading --------------------------------------------------------------------------------

    async def read(self, n: int = -1) -> bytes:
        return await self._reader.read(n)

    async def read_available(self) -> str:
        """What has arrived since the last read, as text; never waits for more."""
        return self._reader.read_available_text()

    def read_available_bytes(self) -> bytes:
        return self._reader.read_available()

    async def wait_for(self, pattern: PatternLike, timeout: float | None = None) -> str:
        return await self._reader.wait_for(pattern, timeout)

    async def wait_for_timeout(self, pattern: PatternLike, timeout: float) -> str:
        """Alias of :meth:`wait_for` with a mandatory timeout (capsa's spelling)."""
        return await self._reader.wait_for(pattern, timeout)

    async def wait_for_any(
        self, patterns: Sequence[PatternLike], timeout: float | None = None
    ) -> tuple[int, str]:
        return await self._reader.wait_for_any(patterns, timeout)

    async def wait_ready(self, timeout: float | None = None) -> None:
        await self._stream.wait_ready(timeout)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._reader.__aiter__()

    def scrollback(self) -> bytes:
        return self._stream.scrollback()

    def tail(self, n: int) -> bytes:
        return self._stream.tail(n)

    def reader(self, from_start: bool = False) -> ConsoleReader:
        """An extra reader: at the end of the stream, or at the oldest byte kept."""
        return self._stream.reader(from_start)

    async def split(self) -> tuple[ConsoleReader, ConsoleWriter]:
        """Independent halves; the reader starts where this console's cursor is."""
        return ConsoleReader(self._stream, self._reader.offset), ConsoleWriter(self._stream)

    # -- writing --------------------------------------------------------------------------------

    async def write(self, data: bytes) -> None:
        await self._writer.write(data)

    async def write_str(self, text: str) -> None:
        await self._writer.write_str(text)

    async def write_line(self, text: str) -> None:
        await self._writer.write_line(text)

    async def send_interrupt(self) -> None:
        await self._writer.send_interrupt()

    async def send_eof(self) -> None:
        await self._writer.send_eof()

    # -- commands -------------------------------------------------------------------------------

    async def exec(self, command: str, timeout: float | None = 30) -> str:
        """Run ``command`` in the guest shell and return its output (stdout and stderr)."""
        return (await self.run(command, timeout)).output

    async def run(self, command: str, timeout: float | None = 30) -> CommandResult:
        """Run ``command`` in the guest shell; its exit status and output.

        Waits for the guest's ready marker first if one is configured and none was seen yet.
        On timeout the command keeps running in the guest (``send_interrupt`` stops it).
        """
        async with self._command_lock:
            if self._stream.ready_marker is not None and self._stream.ready_count == 0:
                await self._stream.wait_ready(timeout)
            outcome = await self._run_framed(CommandFraming(command), timeout)
        return CommandResult(
            exit_code=outcome.exit_code,
            output=outcome.output.decode("utf-8", errors="replace"),
            dropped=outcome.dropped,
        )

    async def _run_framed(self, framing: CommandFraming, timeout: float | None) -> CommandOutcome:
        begin = self._stream.end_offset  # our markers cannot appear before our line is sent
        what = f"command {framing.command!r} to finish"
        try:
            async with asyncio.timeout(timeout):
                for line in framing.lines():
                    await self._writer.write(line)
                scan = begin
                while True:
                    skipped, data = await self._stream.next_chunk(scan)
                    framing.skip(skipped)
                    if not data:
                        self._stream.raise_closed(what, begin)
                    scan += skipped + len(data)
                    outcome = framing.feed(data)
                    if outcome is not None:
                        self._reader._advance_to(begin + outcome.consumed)
                        return outcome
        except TimeoutError:
            raise ConsoleTimeout(
                f"timed out after {timeout}s waiting for {what}",
                seen=self._stream.seen_since(begin),
            ) from None

    async def run_command(self, command: str, prompt: PatternLike = "# ", timeout: float | None = 30) -> str:
        """The naive form: type the line, wait for ``prompt``, return what came in between.

        The echo of the line is skipped and the prompt's own line (text before the prompt
        pattern on its line, e.g. ``capsa:/``) is cut off, so output without a final newline
        is lost with it; :meth:`exec` has no such limits.
        """
        async with self._command_lock:
            await self._settle_at_prompt(prompt)
            begin = self._stream.end_offset
            scanner = ConsoleReader(self._stream, begin)
            try:
                async with asyncio.timeout(timeout):
                    await self._writer.write_line(command)
                    await self._skip_echo(scanner, command)
                    result = await scanner.wait_for_match([prompt])
            except TimeoutError:
                raise ConsoleTimeout(
                    f"timed out after {timeout}s waiting for prompt {describe_pattern(prompt)} "
                    f"after {command!r}",
                    seen=self._stream.seen_since(begin),
                ) from None
            self._reader._advance_to(scanner.offset)
        text = normalize_newlines(result.before).decode("utf-8", errors="replace")
        return text[: text.rfind("\n") + 1]

    async def _settle_at_prompt(self, prompt: PatternLike) -> None:
        """Give the shell a moment to show its prompt before typing.

        A line typed before the line editor is back (right after the previous command's
        output) is echoed twice, by the tty and then by the editor, around the prompt; the naive
        form would stop at that prompt. Gives up after a short grace and types anyway.
        """
        matcher_pattern = compile_pattern(prompt)
        try:
            async with asyncio.timeout(_PROMPT_GRACE):
                while not _ends_with_prompt(self._stream.tail(512), matcher_pattern):
                    await self._stream.next_chunk(self._stream.end_offset)
                    if self._stream.closed:
                        return
        except TimeoutError:
            pass

    async def _skip_echo(self, scanner: ConsoleReader, line: str) -> None:
        skipper = EchoSkipper(line)
        while True:
            skipped, data = await self._stream.next_chunk(scanner.offset)
            if not data:
                self._stream.raise_closed(f"the echo of {line!r}", scanner.offset)
            used = skipper.feed(data)
            taken = len(data) if used is None else used
            scanner._advance_to(scanner.offset + skipped + taken, skipped)
            if used is not None:
                return

    async def login(self, user: str, password: str | None = None, timeout: float = 30) -> None:
        """Log in at a getty: send ``user`` (and ``password``) and wait for a shell.

        Success is the ready marker (or, with none configured, a ``# ``/``$ `` prompt);
        ``Login incorrect`` raises :class:`ConsoleError`.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout

        def remaining() -> float:
            return max(0.0, deadline - loop.time())

        async with self._command_lock:
            try:
                await self._wait_login_prompt(min(_LOGIN_PROMPT_GRACE, timeout), remaining)
                await self._writer.write_line(user)
                failed = "Login incorrect"
                if password is not None:
                    index, _ = await self._reader.wait_for_any(["Password: ", failed], remaining())
                    if index == 1:
                        raise ConsoleError(f"login as {user!r} failed: Login incorrect")
                    await self._writer.write_line(password)
                success: PatternLike = (
                    self._stream.ready_marker
                    if self._stream.ready_marker is not None
                    else re.compile(rb"[#$] ")
                )
                index, _ = await self._reader.wait_for_any([success, failed], remaining())
            except ConsoleTimeout as err:
                raise ConsoleTimeout(f"login as {user!r}: {err.args[0]}", seen=err.seen) from None
            if index == 1:
                raise ConsoleError(f"login as {user!r} failed: Login incorrect")

    async def _wait_login_prompt(self, grace: float, remaining: Callable[[], float]) -> None:
        try:
            await self._reader.wait_for("login: ", grace)
        except ConsoleTimeout:
            # The prompt may have scrolled by before we looked: ask getty for a fresh one.
            await self._writer.write(b"\n")
            await self._reader.wait_for("login: ", remaining())


_TRAILING_CSI = re.compile(rb"(?:\x1b\[[0-9;?]*[A-Za-z])+$")


def _ends_with_prompt(tail: bytes, prompt: bytes | re.Pattern[bytes]) -> bool:
    """Does the output end with ``prompt`` (ignoring trailing terminal queries like ESC[6n)?"""
    tail = _TRAILING_CSI.sub(b"", tail)
    if isinstance(prompt, bytes):
        return tail.endswith(prompt)
    last_line = tail[tail.rfind(b"\n") + 1 :]
    return any(m.end() == len(last_line) for m in prompt.finditer(last_line))
