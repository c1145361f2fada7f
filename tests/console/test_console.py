"""Tests of the console I/O layer: ring semantics over a real socketpair, and the command
helpers against a real busybox ash on an 80-column pty (see tests/hostshell.py)."""
from __future__ import annotations

import asyncio
import os
import re
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.console.console import ByteRing, CommandResult, Console, ConsoleReader, ConsoleStream
from engine.console.match import READY_MARKER
from engine.errors import ConsoleClosed, ConsoleError, ConsoleTimeout
from tests.hostshell import BUSYBOX, HostShell

# -- ByteRing -------------------------------------------------------------------------------------


def test_ring_keeps_the_newest_bytes() -> None:
    ring = ByteRing(8)
    ring.append(b"abcde")
    assert (ring.start, ring.end, ring.read(0)) == (0, 5, b"abcde")
    ring.append(b"fghij")
    assert (ring.start, ring.end) == (2, 10)
    assert ring.read(0) == b"cdefghij"  # clamped to the oldest byte kept
    assert ring.read(7) == b"hij"
    assert ring.read(3, 2) == b"de"
    ring.append(b"0123456789ABC")  # bigger than the ring
    assert (ring.start, ring.end, ring.read(0)) == (15, 23, b"56789ABC")


@settings(max_examples=200, deadline=None)
@given(
    capacity=st.integers(1, 64),
    chunks=st.lists(st.binary(max_size=100), max_size=30),
    probe=st.integers(0, 4000),
)
def test_ring_matches_a_model(capacity: int, chunks: list[bytes], probe: int) -> None:
    ring = ByteRing(capacity)
    everything = b""
    for chunk in chunks:
        ring.append(chunk)
        everything += chunk
        assert ring.end == len(everything)
        assert ring.read(ring.start) == everything[-capacity:]
    offset = probe % (len(everything) + 1)
    assert ring.read(offset) == everything[max(offset, ring.start) :]


# -- a stream over a real socketpair --------------------------------------------------------------


@dataclass
class Wire:
    """A ConsoleStream on one end of a socketpair; the test plays the guest on the other."""

    stream: ConsoleStream
    peer_reader: asyncio.StreamReader
    peer_writer: asyncio.StreamWriter

    async def send(self, data: bytes) -> None:
        self.peer_writer.write(data)
        await self.peer_writer.drain()

    async def hang_up(self) -> None:
        self.peer_writer.close()
        await self.peer_writer.wait_closed()

    async def until_received(self, total: int, timeout: float = 5) -> None:
        async with asyncio.timeout(timeout):
            while self.stream.end_offset < total:
                await asyncio.sleep(0.005)


async def make_wire(**kwargs: object) -> Wire:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    reader, writer = await asyncio.open_unix_connection(sock=ours)
    peer_reader, peer_writer = await asyncio.open_unix_connection(sock=theirs)
    return Wire(ConsoleStream(reader, writer, **kwargs), peer_reader, peer_writer)  # type: ignore[arg-type]


@pytest.fixture
async def wire() -> AsyncIterator[Wire]:
    w = await make_wire()
    yield w
    await w.stream.close()
    w.peer_writer.close()


async def test_many_readers_see_every_byte(wire: Wire) -> None:
    readers = [wire.stream.reader() for _ in range(3)]
    payload = os.urandom(200_000)

    async def collect(reader: ConsoleReader) -> bytes:
        got = b""
        while len(got) < len(payload):
            got += await reader.read()
        return got

    tasks = [asyncio.create_task(collect(r)) for r in readers]
    for i in range(0, len(payload), 7_000):
        await wire.send(payload[i : i + 7_000])
    results = await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert all(r == payload for r in results)
    assert all(r.dropped == 0 for r in readers)
    late = wire.stream.reader(from_start=True)
    assert late.read_available() == payload  # 200 KB < 1 MiB scrollback


async def test_silent_reader_never_blocks_the_pump() -> None:
    w = await make_wire(scrollback=1024)
    try:
        silent = w.stream.reader(from_start=True)
        payload = bytes(i % 251 for i in range(50_000))
        for i in range(0, len(payload), 3_000):
            await w.send(payload[i : i + 3_000])
        await w.until_received(len(payload))
        assert w.stream.start_offset == len(payload) - 1024
        assert w.stream.scrollback() == payload[-1024:]
        assert await silent.read() == payload[-1024:]
        assert silent.dropped == len(payload) - 1024
        assert silent.offset == len(payload)
    finally:
        await w.stream.close()
        w.peer_writer.close()


async def test_lagging_wait_for_skips_dropped_bytes() -> None:
    w = await make_wire(scrollback=64)
    try:
        reader = w.stream.reader()
        await w.send(b"x" * 500)
        await w.until_received(500)
        await w.send(b"tail PROMPT> ")
        text = await reader.wait_for("PROMPT> ", timeout=2)
        assert text.endswith("tail PROMPT> ")
        assert reader.dropped > 0
        assert reader.offset == 513
    finally:
        await w.stream.close()
        w.peer_writer.close()


async def test_eof_wakes_every_waiter(wire: Wire) -> None:
    reader = wire.stream.reader()
    other = wire.stream.reader()
    read_task = asyncio.create_task(reader.read())
    wait_task = asyncio.create_task(other.wait_for("never"))
    ready_task = asyncio.create_task(wire.stream.wait_ready())
    await wire.send(b"last words")
    assert await asyncio.wait_for(read_task, 2) == b"last words"
    await wire.hang_up()
    with pytest.raises(ConsoleClosed, match="last words"):
        await asyncio.wait_for(wait_task, 2)
    with pytest.raises(ConsoleClosed):
        await asyncio.wait_for(ready_task, 2)
    assert await asyncio.wait_for(reader.read(), 2) == b""
    assert wire.stream.closed
    assert "end of stream" in (wire.stream.close_reason or "")
    with pytest.raises(ConsoleClosed):
        await wire.stream.write(b"x")


async def test_timeout_message_names_pattern_and_shows_output(wire: Wire) -> None:
    reader = wire.stream.reader()
    await wire.send(b"booting...\r\nsomething went wrong here\r\n")
    start = time.monotonic()
    with pytest.raises(ConsoleTimeout) as info:
        await reader.wait_for("capsa:/# ", timeout=0.2)
    assert time.monotonic() - start >= 0.15  # it did wait out its timeout
    message = str(info.value)
    assert "timed out after 0.2s waiting for 'capsa:/# '" in message
    assert "something went wrong here" in message
    assert "something went wrong here" in info.value.seen
    assert isinstance(info.value, TimeoutError)
    # nothing was consumed: a retry with another pattern still sees it all
    assert await reader.wait_for("wrong", timeout=1) == "booting...\r\nsomething went wrong"


async def test_wait_for_any_and_regex(wire: Wire) -> None:
    reader = wire.stream.reader()
    await wire.send(b"abc exit=4")
    task = asyncio.create_task(reader.wait_for_any(["$ ", re.compile(rb"exit=(\d+)\n")], timeout=2))
    await asyncio.sleep(0.05)
    assert not task.done()
    await wire.send(b"2\nrest")
    assert await task == (1, "abc exit=42\n")
    assert reader.read_available() == b"rest"


async def test_ready_marker_straddling_chunks(wire: Wire) -> None:
    waiter = asyncio.create_task(wire.stream.wait_ready(timeout=2))
    for byte in b"noise" + READY_MARKER + b"capsa:/# ":
        await wire.send(bytes([byte]))
        await asyncio.sleep(0)
    await waiter
    assert wire.stream.ready_count == 1
    await wire.send(READY_MARKER * 2)
    await wire.stream.wait_ready(timeout=2, count=3)
    with pytest.raises(ConsoleTimeout, match="ready marker"):
        await wire.stream.wait_ready(timeout=0.1, count=4)


async def test_watchers_get_every_chunk_and_errors_are_contained(wire: Wire) -> None:
    seen: list[bytes] = []

    def broken(chunk: bytes) -> None:
        raise RuntimeError("watcher bug")

    wire.stream.add_watcher(broken)
    wire.stream.watchers.append(seen.append)
    await wire.send(b"Kernel panic - not syncing")
    await wire.until_received(26)
    assert b"".join(seen) == b"Kernel panic - not syncing"
    wire.stream.remove_watcher(broken)
    await wire.send(b"!")
    await wire.until_received(27)
    assert b"".join(seen).endswith(b"!")


async def test_writes_are_serialized(wire: Wire) -> None:
    big_a, big_b = b"A" * 300_000, b"B" * 300_000

    async def drain_peer() -> bytes:
        got = b""
        while len(got) < 600_000:
            got += await wire.peer_reader.read(65536)
        return got

    peer = asyncio.create_task(drain_peer())
    await asyncio.gather(wire.stream.write(big_a), wire.stream.write(big_b))
    got = await asyncio.wait_for(peer, 5)
    assert got in (big_a + big_b, big_b + big_a)


async def test_text_reads_decode_split_characters(wire: Wire) -> None:
    console = Console(wire.stream)
    data = "héllo ✓".encode()
    await wire.send(data[:2])
    await wire.until_received(2)
    assert await console.read_available() == "h"
    await wire.send(data[2:])
    await wire.until_received(len(data))
    assert await console.read_available() == "éllo ✓"
    assert await console.read_available() == ""


async def test_async_iteration_and_read_n(wire: Wire) -> None:
    reader = wire.stream.reader()
    await wire.send(b"0123456789")
    assert await reader.read(4) == b"0123"
    await wire.hang_up()
    chunks = [chunk async for chunk in reader]
    assert b"".join(chunks) == b"456789"


def _running_pumps() -> set[asyncio.Task[object]]:
    return {t for t in asyncio.all_tasks() if t.get_name().endswith("-pump") and not t.done()}


async def test_close_is_idempotent_and_leaves_no_task() -> None:
    # VMs shared by the whole session (their consoles pump too) may run meanwhile: count only ours.
    others = _running_pumps()
    w = await make_wire()
    reader = w.stream.reader()
    waiting = asyncio.create_task(reader.wait_for("x"))
    await asyncio.sleep(0.01)
    await w.stream.close()
    await w.stream.close()
    with pytest.raises(ConsoleClosed, match="closed by the host"):
        await waiting
    assert not _running_pumps() - others
    w.peer_writer.close()


async def test_tail_and_console_starts_at_scrollback(wire: Wire) -> None:
    await wire.send(b"early boot output\r\n")
    await wire.until_received(19)
    console = Console(wire.stream)
    assert console.tail(8) == b"output\r\n"
    assert await console.wait_for("boot", timeout=1) == "early boot"
    reader, writer = await console.split()
    assert reader.offset == console.offset
    await writer.write_line("hi")
    assert await wire.peer_reader.readexactly(3) == b"hi\n"


# -- against a real busybox ash -------------------------------------------------------------------

pytestmark_busybox = pytest.mark.skipif(not os.path.exists(BUSYBOX), reason="needs busybox")


@pytest.fixture
async def shell() -> AsyncIterator[HostShell]:
    sh = await HostShell.start()
    yield sh
    await sh.close()


@pytest.fixture
async def console(shell: HostShell) -> Console:
    return Console(await shell.open_stream())


@pytestmark_busybox
@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("echo hi", "hi\n"),
        ("echo 'a b' | tr a-z A-Z | cat", "A B\n"),
        ("echo \"it's\" 'say \"hi\"' # a comment", "it's say \"hi\"\n"),
        ("echo one; false && echo no; echo two", "one\ntwo\n"),
        ("printf 'no newline'", "no newline"),
        ("echo first\necho 'second\n  line'\n# only a comment\necho third", "first\nsecond\n  line\nthird\n"),
        ("printf '\\033[1;31mred\\033[0m\\n'", "\x1b[1;31mred\x1b[0m\n"),
        ("printf 'a\\tb\\n'; echo 'tab\tin command'", "a\tb\ntab\tin command\n"),
        ("echo héllo wörld ✓", "héllo wörld ✓\n"),
        ("echo 100% \\\\ done", "100% \\ done\n"),
        ("", ""),
    ],
)
async def test_exec_output_is_exact(console: Console, command: str, expected: str) -> None:
    assert await console.exec(command, timeout=10) == expected


@pytestmark_busybox
async def test_exec_long_command(console: Console) -> None:
    words = " ".join(f"w{i:04d}" for i in range(400))  # ~2.4 KB, wraps ~30 times at 80 columns
    out = await console.exec(f"echo {words} | wc -w", timeout=10)
    assert out.strip() == "400"
    huge = "x" * 20_000
    assert await console.exec(f"echo {huge} | wc -c", timeout=20) == "20001\n"
    assert await console.exec("ls -a $TMPDIR | grep -c capsa; true") == "0\n"  # temp file removed


@pytestmark_busybox
async def test_exec_wrap_boundaries(console: Console) -> None:
    # Put the end of the typed line at and around column 80 (the prompt is 9 columns wide).
    for n in range(40, 200, 7):
        text = "z" * n
        assert await console.exec(f"echo {text}", timeout=10) == text + "\n"


@pytestmark_busybox
@pytest.mark.parametrize("code", [0, 1, 42])
async def test_run_exit_codes(console: Console, code: int) -> None:
    result = await console.run(f"echo out; (exit {code})")
    assert result == CommandResult(exit_code=code, output="out\n")
    assert result.ok is (code == 0)


@pytestmark_busybox
async def test_shell_state_persists_and_commands_serialize(console: Console) -> None:
    await console.exec("cd /tmp; export CAPSA_X=7")
    assert await console.exec("pwd; echo $CAPSA_X") == "/tmp\n7\n"
    results = await asyncio.gather(*(console.run(f"echo job{i}; (exit {i})") for i in range(6)))
    assert [(r.exit_code, r.output) for r in results] == [(i, f"job{i}\n") for i in range(6)]


@pytestmark_busybox
async def test_send_interrupt_stops_foreground_job(shell: HostShell, console: Console) -> None:
    for command in ("sleep 100", "echo started; while true; do sleep 1; done"):
        task = asyncio.create_task(console.run(command, timeout=20))
        # A ^C landing while the shell itself is between two commands is held by the INT trap
        # until the next job ends (documented), so send it once sleep owns the terminal.
        await shell.wait_foreground("sleep")
        await console.send_interrupt()
        result = await asyncio.wait_for(task, 5)
        assert result.exit_code == 130
    assert await console.exec("echo still alive") == "still alive\n"


@pytestmark_busybox
async def test_send_eof_ends_cat(shell: HostShell, console: Console) -> None:
    watch = console.reader()
    task = asyncio.create_task(console.run("echo started; cat; echo cat-done", timeout=10))
    await shell.wait_foreground("cat")
    await console.write_line("hello cat")
    await watch.wait_for("hello cat\r\nhello cat\r\n", timeout=5)  # tty echo, then cat's copy
    await console.send_eof()
    result = await asyncio.wait_for(task, 5)
    assert result.exit_code == 0
    assert result.output == "started\nhello cat\nhello cat\ncat-done\n"


@pytestmark_busybox
async def test_exec_timeout_shows_output_and_recovers(console: Console) -> None:
    with pytest.raises(ConsoleTimeout) as info:
        await console.exec("echo partial-progress; sleep 100", timeout=0.5)
    assert "timed out after 0.5s waiting for command" in str(info.value)
    assert "partial-progress" in info.value.seen
    await console.send_interrupt()
    assert await console.exec("echo recovered", timeout=5) == "recovered\n"


@pytestmark_busybox
async def test_wait_for_timeout_shows_last_output(console: Console) -> None:
    await console.exec("true")
    await console.write_line("echo the-last-thing-printed")
    with pytest.raises(ConsoleTimeout) as info:
        await console.wait_for("never-printed", timeout=0.3)
    assert "the-last-thing-printed" in str(info.value)


@pytestmark_busybox
async def test_one_megabyte_burst(console: Console) -> None:
    watchers: list[int] = []
    console.stream.add_watcher(lambda chunk: watchers.append(len(chunk)))
    result = await console.run("yes abcdefg | head -c 1000000; echo; echo done", timeout=30)
    assert result.exit_code == 0
    assert result.dropped == 0
    assert result.output.endswith("\ndone\n")
    assert len(result.output) == 1_000_000 + len("\ndone\n")
    assert sum(watchers) > 1_000_000
    assert await console.exec("echo after") == "after\n"


@pytestmark_busybox
async def test_two_readers_see_identical_bytes(console: Console) -> None:
    first, second = console.reader(), console.reader()
    await console.exec("seq 1 2000")
    a, b = first.read_available(), second.read_available()
    assert a == b and b"\r\n2000\r\n" in a


@pytestmark_busybox
async def test_split_halves_work_concurrently(console: Console) -> None:
    await console.wait_ready(timeout=5)
    reader, writer = await console.split()

    async def produce() -> None:
        for i in range(5):
            await writer.write_line(f"echo tick-{i}-$((1+{i}))")
            await asyncio.sleep(0.02)

    async def consume() -> list[str]:
        return [await reader.wait_for(f"tick-{i}-{i + 1}\r\n", timeout=5) for i in range(5)]

    _, texts = await asyncio.gather(produce(), consume())
    assert len(texts) == 5


@pytestmark_busybox
async def test_run_command_naive_form(console: Console) -> None:
    await console.wait_ready(timeout=5)
    assert await console.run_command("echo hi; echo there", timeout=5) == "hi\nthere\n"
    assert await console.run_command("echo " + "q" * 150, timeout=5) == "q" * 150 + "\n"
    assert await console.run_command("cd /", timeout=5) == ""
    for i in range(10):  # typed right after exec's end marker, before the prompt is back
        await console.exec("true")
        assert await console.run_command(f"echo n{i}", timeout=5) == f"n{i}\n"


@pytestmark_busybox
async def test_exec_waits_for_ready_marker() -> None:
    async with await HostShell.start() as sh:
        console = Console(await sh.open_stream())
        assert console.ready_count == 0 or console.ready_count == 1
        assert await console.exec("echo early", timeout=10) == "early\n"
        assert console.ready_count == 1


@pytestmark_busybox
async def test_guest_without_ready_marker() -> None:
    async with await HostShell.start(ready_marker=False) as sh:
        console = Console(await sh.open_stream(ready_marker=None))
        await console.wait_for("# ", timeout=5)
        assert await console.exec("echo plain") == "plain\n"
        with pytest.raises(ConsoleError, match="no ready marker"):
            await console.wait_ready(timeout=1)


@pytestmark_busybox
async def test_exec_after_shell_exit_raises_closed(console: Console) -> None:
    await console.exec("true")
    with pytest.raises(ConsoleClosed):
        await console.exec("exit 3", timeout=5)
    assert console.closed


_GETTY = r"""
read _ignored
while true; do
  printf 'capsa login: '
  read user
  if [ "$user" = guest ]; then exec busybox sh -i; fi
  printf 'Password: '
  stty -echo; read pw; stty echo; echo
  if [ "$user" = root ] && [ "$pw" = secret ]; then exec busybox sh -i; fi
  sleep 0.2; echo 'Login incorrect'
done
"""


@pytestmark_busybox
@pytest.mark.parametrize(("user", "password"), [("root", "secret"), ("guest", None)])
async def test_login(user: str, password: str | None) -> None:
    # The fake getty prints nothing until it gets a newline: login must ask for a fresh prompt.
    async with await HostShell.start([BUSYBOX, "sh", "-c", _GETTY]) as sh:
        console = Console(await sh.open_stream())
        await console.login(user, password, timeout=10)
        assert console.ready_count == 1
        assert await console.exec("echo logged-in") == "logged-in\n"


@pytestmark_busybox
async def test_login_incorrect() -> None:
    async with await HostShell.start([BUSYBOX, "sh", "-c", _GETTY]) as sh:
        console = Console(await sh.open_stream())
        with pytest.raises(ConsoleError, match="'root' failed: Login incorrect"):
            await console.login("root", "wrong", timeout=10)


@pytestmark_busybox
async def test_login_without_marker_uses_prompt() -> None:
    async with await HostShell.start([BUSYBOX, "sh", "-c", _GETTY], ready_marker=False) as sh:
        console = Console(await sh.open_stream(ready_marker=None))
        await console.login("guest", timeout=10)
        assert await console.exec("echo ok") == "ok\n"


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _children() -> set[int]:
    me = str(os.getpid())
    kids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if stat[stat.rfind(")") + 2 :].split()[1] == me:
                kids.add(int(entry))
    return kids


@pytestmark_busybox
async def test_host_shell_leaves_nothing_behind() -> None:
    fds, kids = _open_fds(), _children()
    sh = await HostShell.start()
    console = Console(await sh.open_stream())
    await console.exec("sleep 100 & sleep 0.01; echo bg")
    pid = sh.process.pid
    await sh.close()
    await sh.close()
    assert console.closed
    assert _children() == kids
    assert not os.path.exists(f"/proc/{pid}")
    await asyncio.sleep(0.05)
    assert _open_fds() <= fds
