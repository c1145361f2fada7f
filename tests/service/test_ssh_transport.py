"""The remote transport: ServiceAddress, and Link over a real ssh to ``capsa-tui serve --stdio``.

No VM boots here: a PoolServer with no pools answers hello and status, which is all a byte
relay needs to show. The ssh tests go through a real sshd on loopback (tests/service/sshd.py)
and run this checkout's ``capsa-tui serve --stdio`` as the remote command.
"""
from __future__ import annotations

import asyncio
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import engine
from engine.service import protocol
from tests.procs import read_stat
from tests.service.sshd import Sshd, sshd  # noqa: F401  (the session fixture)
from tests.waiting import until

FORMS = "ssh://[user@]host[:port]"


# -- ServiceAddress ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ssh://box", engine.ServiceAddress("ssh", host="box")),
        ("ssh://me@box:2222", engine.ServiceAddress("ssh", host="box", user="me", port=2222)),
        ("ssh://box/", engine.ServiceAddress("ssh", host="box")),
        ("ssh://ci.bot@build-01.lab.example", engine.ServiceAddress("ssh", host="build-01.lab.example", user="ci.bot")),
        ("ssh://[::1]", engine.ServiceAddress("ssh", host="::1")),
        ("ssh://me@[fe80::1%eth0]:22", engine.ServiceAddress("ssh", host="fe80::1%eth0", user="me", port=22)),
        ("unix:///run/x/pool.sock", engine.ServiceAddress("unix", path=Path("/run/x/pool.sock"))),
        ("/run/x/pool.sock", engine.ServiceAddress("unix", path=Path("/run/x/pool.sock"))),
        (" local\n", engine.ServiceAddress("unix")),
    ],
)  # fmt: skip
def test_the_accepted_forms_parse(text: str, expected: engine.ServiceAddress) -> None:
    assert engine.ServiceAddress.parse(text) == expected


def test_parse_takes_the_remote_command_and_socket() -> None:
    address = engine.ServiceAddress.parse("ssh://box", command="/opt/v/bin/python -m capsatui.cli", socket="/s/p.sock")
    python = "/opt/v/bin/python -m capsatui.cli"
    assert address == engine.ServiceAddress("ssh", Path("/s/p.sock"), "box", None, None, python)
    assert engine.ServiceAddress.parse("local", socket="/s/p.sock") == engine.ServiceAddress.local("/s/p.sock")
    assert engine.ServiceAddress.parse("/s/p.sock", socket="/s/p.sock").path == Path("/s/p.sock")


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "it is empty"),
        ("box", "it is not an address"),
        ("relative/pool.sock", "it is not an address"),
        ("tcp://box:80", "tcp:// is not a transport"),
        ("ssh://", "names no host"),
        ("ssh://me@", "names no host"),
        ("ssh://@box", "'' is not a user name"),
        ("ssh://me:secret@box", "carries no password"),
        ("ssh://box:0", "the port '0' is not a number from 1 to 65535"),
        ("ssh://box:65536", "the port '65536'"),
        ("ssh://box:22x", "the port '22x'"),
        ("ssh://box:", "the port ''"),
        ("ssh://box/run/pool.sock", "has no path or query"),
        ("ssh://box?socket=x", "has no path or query"),
        ("ssh://::1", "goes in brackets"),
        ("ssh://[::1", "is not closed"),
        ("ssh://[box]", "'box' is not an IPv6 address"),
        ("ssh://-oProxyCommand=touch%20x", "is not a host name"),
        ("ssh://-l root box", "is not a host name"),
        ("unix://relative/pool.sock", "three slashes"),
        ("unix:///", "names no socket"),
    ],
)  # fmt: skip
def test_each_bad_form_is_refused_naming_it_and_the_forms(text: str, why: str) -> None:
    with pytest.raises(engine.ServiceError) as caught:
        engine.ServiceAddress.parse(text)
    message = str(caught.value)
    assert f"cannot use {text!r} as a service address" in message
    assert why in message
    assert FORMS in message and "unix:///path/to/socket" in message and "'local'" in message


def test_a_socket_named_twice_differently_is_refused() -> None:
    with pytest.raises(engine.ServiceError, match="names the socket /a.sock and the socket option names /b.sock"):
        engine.ServiceAddress.parse("/a.sock", socket="/b.sock")


def test_describe_names_the_address() -> None:
    assert engine.ServiceAddress.parse("ssh://me@box:2222").describe() == "ssh://me@box:2222"
    assert engine.ServiceAddress.parse("ssh://[::1]:22").describe() == "ssh://[::1]:22"
    assert engine.ServiceAddress.parse("ssh://box", socket="/s.sock").describe() == "ssh://box (socket /s.sock)"
    assert engine.ServiceAddress.parse("/s.sock").describe() == "/s.sock"


def test_describe_of_local_is_the_default_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPSA_SOCKET", "/somewhere/pool.sock")
    assert engine.ServiceAddress.local().describe() == "/somewhere/pool.sock"


def test_ssh_argv_is_batch_mode_ssh_with_one_quoted_remote_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CAPSA_SSH", raising=False)
    assert engine.ServiceAddress.parse("ssh://box").ssh_argv() == [
        "ssh", "-T", "-o", "BatchMode=yes", "--", "box", "capsa-tui serve --stdio",
    ]  # fmt: skip
    odd = Path("/run/it's here/pool $HOME.sock")
    command = "~/venv/bin/python -m capsatui.cli"
    address = engine.ServiceAddress.parse("ssh://me@[::1]:2222", command=command, socket=odd)
    argv = address.ssh_argv(connect_timeout=2.5)
    assert argv[:-2] == [
        "ssh", "-T", "-o", "BatchMode=yes", "-o", "ConnectTimeout=3", "-p", "2222", "-l", "me", "--",
    ]  # fmt: skip
    assert argv[-2] == "::1"
    remote = argv[-1]
    # the command is the user's shell fragment, as written (~ expands there); what follows is quoted
    assert remote.startswith("~/venv/bin/python -m capsatui.cli serve --stdio --socket ")
    assert shlex.split(remote)[-4:] == ["serve", "--stdio", "--socket", str(odd)]


def test_capsa_ssh_replaces_the_ssh_program(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPSA_SSH", "ssh -F '/tmp/my config' -o LogLevel=ERROR")
    argv = engine.ServiceAddress.parse("ssh://box").ssh_argv()
    assert argv[:4] == ["ssh", "-F", "/tmp/my config", "-o"] and argv[-2:] == ["box", "capsa-tui serve --stdio"]
    monkeypatch.setenv("CAPSA_SSH", "ssh -F '/tmp/unclosed")
    with pytest.raises(engine.ServiceError, match=r"cannot read \$CAPSA_SSH"):
        engine.ServiceAddress.parse("ssh://box").ssh_argv()


def test_a_unix_address_has_no_ssh_argv() -> None:
    with pytest.raises(engine.ServiceError, match="/s.sock is not an ssh address"):
        engine.ServiceAddress.local("/s.sock").ssh_argv()


def test_address_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CAPSA_HOST", raising=False)
    assert engine.address_from_env() is None
    monkeypatch.setenv("CAPSA_HOST", "")
    assert engine.address_from_env() is None
    monkeypatch.setenv("CAPSA_HOST", "ssh://me@box")
    assert engine.address_from_env() == engine.ServiceAddress("ssh", host="box", user="me")
    monkeypatch.setenv("CAPSA_HOST", "ftp://box")
    with pytest.raises(engine.ServiceError, match=r"\$CAPSA_HOST: cannot use 'ftp://box'"):
        engine.address_from_env()


# -- links ---------------------------------------------------------------------------------------


@pytest.fixture
def folder() -> Iterator[Path]:
    # short: a Unix socket's path is limited to about 100 bytes
    path = Path(tempfile.mkdtemp(prefix="ssh-"))
    yield path
    for child in path.iterdir():
        child.unlink()
    path.rmdir()


@pytest.fixture
async def server(folder: Path) -> AsyncIterator[engine.PoolServer]:
    served = engine.PoolServer([], folder / "pool.sock")
    await served.start()
    try:
        yield served
    finally:
        await served.close()


@pytest.fixture
def ssh_env(sshd: Sshd, monkeypatch: pytest.MonkeyPatch) -> Sshd:  # noqa: F811
    for name, value in sshd.env.items():
        monkeypatch.setenv(name, value)
    return sshd


async def _exchange(link: engine.Link, decoder: protocol.FrameDecoder, *messages: protocol.Message,
                    replies: int = 1, timeout: float = 20) -> list[protocol.Message]:  # fmt: skip
    """Send ``messages``, then read until ``replies`` messages came back."""
    for message in messages:
        link.writer.write(protocol.encode(message))
    await link.writer.drain()
    received: list[protocol.Message] = []
    async with asyncio.timeout(timeout):
        while len(received) < replies:
            data = await link.reader.read(65536)
            if not data:
                raise AssertionError(f"the link ended after {len(received)} replies: {link.diagnosis()}")
            received += decoder.feed(data)
    return received


async def _hello(link: engine.Link, decoder: protocol.FrameDecoder) -> protocol.Message:
    (reply,) = await _exchange(link, decoder, protocol.hello())
    protocol.check_hello_reply(reply)
    return reply


async def _read_to_end(link: engine.Link, timeout: float = 20) -> bytes:
    data = b""
    async with asyncio.timeout(timeout):
        while chunk := await link.reader.read(65536):
            data += chunk
    return data


def _gone(pid: int) -> bool:
    """No process ``pid`` at all: not running, and no zombie left unreaped."""
    return read_stat(pid) is None


async def test_a_unix_link_carries_hello(server: engine.PoolServer) -> None:
    link = await engine.open_link(engine.ServiceAddress.local(server.path), timeout=5)
    try:
        assert link.where == str(server.path) and link.process is None
        await _hello(link, protocol.FrameDecoder())
        assert server.connection_count == 1
    finally:
        await link.close()
        await link.close()  # idempotent
    await until(lambda: server.connection_count == 0, 5, "the server saw the unix link close")
    assert link.diagnosis() is None


async def test_a_unix_link_to_no_server_is_unavailable_naming_the_socket(folder: Path) -> None:
    expected = f"no capsa-tui serve is running \\(socket {folder}/none.sock\\)"
    with pytest.raises(engine.ServiceUnavailable, match=expected):
        await engine.open_link(engine.ServiceAddress.local(folder / "none.sock"), timeout=5)


async def test_missing_ssh_says_to_install_openssh_client(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPSA_SSH", "/nonexistent/bin/ssh -v")
    expected = "cannot reach ssh://box: there is no '/nonexistent/bin/ssh'.*install openssh-client"
    with pytest.raises(engine.ServiceError, match=expected):
        await engine.open_link(engine.ServiceAddress.parse("ssh://box"), timeout=5)


async def test_the_relay_carries_hello_and_status_through_ssh(ssh_env: Sshd, server: engine.PoolServer) -> None:
    link = await engine.open_link(ssh_env.address(server.path), timeout=10)
    try:
        assert link.process is not None and link.where == f"ssh://capsa-test-sshd (socket {server.path})"
        decoder = protocol.FrameDecoder()
        hello = await _hello(link, decoder)
        assert hello["pools"] == []
        assert server.connection_count == 1
        (status,) = await _exchange(link, decoder, protocol.request("status", 1))
        assert status == {"id": 1, "ok": True, "pools": []}
        # many requests at once, replies in both directions past the pipes' buffers
        many = [protocol.request("status", n) for n in range(2, 1002)]
        replies = await _exchange(link, decoder, *many, replies=len(many))
        assert sorted(reply["id"] for reply in replies) == list(range(2, 1002))
        assert all(reply["ok"] is True for reply in replies)
    finally:
        await link.close()


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


async def test_closing_the_link_ends_ssh_and_the_servers_connection(ssh_env: Sshd, server: engine.PoolServer) -> None:
    fds = _open_fds()
    link = await engine.open_link(ssh_env.address(server.path), timeout=10)
    assert link.process is not None
    pid = link.process.pid
    await _hello(link, protocol.FrameDecoder())
    assert server.connection_count == 1
    started = time.monotonic()
    await link.close()
    # stdin's end went through the relay (socket half-closed), the server hung up, the relay
    # returned 0 and ssh with it: a clean exit, not the kill after the grace period
    assert link.process.returncode == 0, link.diagnosis()
    assert time.monotonic() - started < 2.5
    assert _gone(pid), f"ssh {pid} is still there: {read_stat(pid)}"
    await until(lambda: server.connection_count == 0, 5, "the server saw the ssh link close")
    await link.close()  # idempotent
    assert link.diagnosis() is None
    assert _open_fds() == fds, "the link left file descriptors open"


async def test_an_ssh_that_does_not_end_is_killed_at_close(ssh_env: Sshd) -> None:
    # A remote command that ignores its stdin's end ('#' comments out "serve --stdio"): only
    # the kill after the grace period ends ssh. The remote loop then dies of its broken stdout.
    link = await engine.open_link(ssh_env.address(None, command="while echo x; do sleep 0.2; done #"), timeout=10)
    assert link.process is not None
    pid = link.process.pid
    async with asyncio.timeout(10):
        assert await link.reader.readexactly(2) == b"x\n"
    started = time.monotonic()
    await link.close()
    assert 2.5 < time.monotonic() - started < 6
    assert link.process.returncode == -signal.SIGKILL
    assert _gone(pid)
    assert link.diagnosis() == "ssh was killed by signal 9"


async def test_killing_ssh_mid_connection_ends_the_servers_connection(ssh_env: Sshd, server: engine.PoolServer) -> None:
    link = await engine.open_link(ssh_env.address(server.path), timeout=10)
    assert link.process is not None
    pid = link.process.pid
    try:
        await _hello(link, protocol.FrameDecoder())
        assert server.connection_count == 1
        os.kill(pid, signal.SIGKILL)
        # sshd sees the client gone and closes the relay's stdin: the relay passes the end on
        await until(lambda: server.connection_count == 0, 15, "the server saw the killed ssh's connection end")
        assert await _read_to_end(link) == b""
    finally:
        await link.close()
    assert _gone(pid)
    assert link.diagnosis() == "ssh was killed by signal 9"


async def test_no_serve_on_the_remote_is_said_through_the_diagnosis(ssh_env: Sshd, folder: Path) -> None:
    missing = folder / "nobody.sock"
    link = await engine.open_link(ssh_env.address(missing), timeout=10)
    try:
        assert await _read_to_end(link) == b""  # the remote relay ends at once
    finally:
        await link.close()
    why = link.diagnosis()
    assert why == (
        f"ssh exited with status 1: capsa-tui serve --stdio: no capsa-tui serve is running on "
        f"{socket.gethostname()} (socket {missing}); "
        "start it there (capsa-tui serve, or systemctl --user start capsa-tui)"
    )


async def test_an_unreachable_port_gives_sshs_own_message(ssh_env: Sshd) -> None:
    with socket.socket() as probe:  # a port nothing listens on (bound, never listening)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        link = await engine.open_link(engine.ServiceAddress("ssh", host="127.0.0.1", port=port), timeout=5)
        try:
            assert await _read_to_end(link) == b""
            why = await link.settle()
        finally:
            await link.close()
    assert why == f"ssh exited with status 255: ssh: connect to host 127.0.0.1 port {port}: Connection refused"
    assert link.process is not None and _gone(link.process.pid)


async def test_a_remote_command_that_is_not_there_is_said_through_the_diagnosis(ssh_env: Sshd) -> None:
    link = await engine.open_link(ssh_env.address(None, command="/nonexistent/capsa-tui"), timeout=10)
    try:
        assert await _read_to_end(link) == b""
    finally:
        await link.close()
    why = link.diagnosis()
    assert why is not None and why.startswith("ssh exited with status 127: ") and "/nonexistent/capsa-tui" in why


async def test_a_link_that_reads_nothing_still_closes(ssh_env: Sshd, server: engine.PoolServer) -> None:
    # The client stops reading while replies pile up: close() must not hang on full pipes.
    link = await engine.open_link(ssh_env.address(server.path), timeout=10)
    assert link.process is not None
    pid = link.process.pid
    decoder = protocol.FrameDecoder()
    await _hello(link, decoder)
    for n in range(1, 20001):
        link.writer.write(protocol.encode(protocol.request("status", n)))
    async with asyncio.timeout(10):
        await link.close()
    assert _gone(pid)
    await until(lambda: server.connection_count == 0, 10, "the server saw the link close")


def _relay_argv(socket_path: Path) -> list[str]:
    """The relay run on its own, as sshd would run it (no ssh, no CLI)."""
    code = (
        "import asyncio, engine, sys, pathlib; "
        f"sys.exit(asyncio.run(engine.relay_stdio(pathlib.Path({str(socket_path)!r}))))"
    )
    return [sys.executable, "-c", code]


def test_relay_stdio_without_a_server_says_so_and_fails(folder: Path) -> None:
    missing = folder / "none.sock"
    done = subprocess.run(_relay_argv(missing), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == (
        f"capsa-tui serve --stdio: no capsa-tui serve is running on {socket.gethostname()} (socket {missing}); "
        "start it there (capsa-tui serve, or systemctl --user start capsa-tui)\n"
    )


async def test_the_relay_takes_one_socket_as_stdin_and_stdout(server: engine.PoolServer) -> None:
    # Some sshd builds hand the command one socketpair as both stdin and stdout.
    ours, theirs = socket.socketpair()
    with ours:
        with theirs:
            fd = theirs.fileno()
            process = await asyncio.create_subprocess_exec(*_relay_argv(server.path), stdin=fd, stdout=fd)
        try:
            reader, writer = await asyncio.open_unix_connection(sock=ours)
            link = engine.Link(reader, writer, "socketpair")
            decoder = protocol.FrameDecoder()
            await _hello(link, decoder)
            (status,) = await _exchange(link, decoder, protocol.request("status", 7))
            assert status == {"id": 7, "ok": True, "pools": []}
            writer.write_eof()  # stdin's end: the relay passes it on, the server hangs up
            assert await _read_to_end(link) == b""
            async with asyncio.timeout(10):
                assert await process.wait() == 0
            await until(lambda: server.connection_count == 0, 5, "the server saw the relay's end")
            writer.close()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()


async def test_the_relay_ends_when_its_stdout_breaks_though_the_server_holds_on(folder: Path) -> None:
    # A server that keeps its socket open after the client's end: only stdout's end (sshd gone)
    # can end the relay, which must not linger on the remote for ever.
    saw_end = asyncio.Event()
    writers: list[asyncio.StreamWriter] = []

    async def stubborn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        while await reader.read(65536):
            pass
        saw_end.set()

    path = folder / "stubborn.sock"
    listener = await asyncio.start_unix_server(stubborn, str(path))
    relay = subprocess.Popen(_relay_argv(path), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        await until(lambda: bool(writers), 10, "the relay connected")
        assert relay.stdin is not None and relay.stdout is not None
        relay.stdin.close()
        async with asyncio.timeout(10):
            await saw_end.wait()  # the socket half-closed
        await asyncio.sleep(0.3)
        assert relay.poll() is None  # still there: the socket is open, stdout too
        relay.stdout.close()
        await until(lambda: relay.poll() is not None, 10, "the relay ended with its stdout")
        assert relay.returncode == 0
    finally:
        if relay.poll() is None:
            relay.kill()
        relay.wait()
        for writer in writers:
            writer.close()
        listener.close()
        await listener.wait_closed()


async def test_a_service_client_works_through_ssh(ssh_env: Sshd, server: engine.PoolServer, folder: Path) -> None:
    client = await engine.ServiceClient.connect(ssh_env.address(server.path), timeout=10)
    try:
        assert client.pools == [] and await client.status() == []
        assert server.connection_count == 1
    finally:
        await client.close()
    await until(lambda: server.connection_count == 0, 5, "the server saw the client leave")
    # and a remote without a serve: the client's error carries the remote's own words
    with pytest.raises(engine.ServiceError, match="no capsa-tui serve is running on .*start it there"):
        await engine.ServiceClient.connect(ssh_env.address(folder / "none.sock"), timeout=10)
