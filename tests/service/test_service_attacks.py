"""Hostile clients against a real PoolServer on a Unix socket (engine.service.limits).

Each test starts a server with small limits, serving one pool of size 0 on a stand-in guest
(no VM is needed: ``status`` is the request the attacks send), attacks it through raw sockets,
and checks what the server holds through :meth:`PoolServer.stats` and ``asyncio.all_tasks``,
never through timing or RSS. After each attack another client is served as before.
"""
from __future__ import annotations

import asyncio
import contextlib
import shutil
import struct
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import engine
from engine.service import protocol
from engine.service.connection import Connection
from tests.waiting import until

POOL = "idle0"


@contextlib.asynccontextmanager
async def _serving(boot: engine.LinuxDirectBoot, **limits: Any) -> AsyncIterator[engine.PoolServer]:
    folder = Path(tempfile.mkdtemp(prefix="svc-att-"))  # short: a socket path has 108 bytes
    pool = await engine.vm_pool(boot).name(POOL).build(0)
    server = engine.PoolServer([pool], folder / "pool.sock", **limits)
    try:
        await server.start()
        yield server
    finally:
        await server.close()
        await pool.close()
        shutil.rmtree(folder, ignore_errors=True)


class _Raw:
    """A client that speaks the framing by hand, to send what ServiceClient never would."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, path: Path, hello: bool = True) -> _Raw:
        reader, writer = await asyncio.open_unix_connection(str(path))
        raw = cls(reader, writer)
        if hello:
            raw.writer.write(protocol.encode(protocol.hello()))
            reply = await raw.next()
            assert reply is not None and reply["ok"] is True, reply
        return raw

    async def next(self) -> protocol.Message | None:
        """The next frame from the server; None once it hung up (a test fails, never hangs)."""
        try:
            async with asyncio.timeout(30):
                size = int.from_bytes(await self.reader.readexactly(4), "big")
                return protocol.decode_body(await self.reader.readexactly(size))
        except (asyncio.IncompleteReadError, ConnectionError):
            return None

    async def rest(self) -> list[protocol.Message]:
        """Every frame until the server hangs up."""
        frames = []
        while (frame := await self.next()) is not None:
            frames.append(frame)
        return frames

    async def send(self, data: bytes) -> None:
        """Write; a server that hung up on us is no error here (the test checks why)."""
        with contextlib.suppress(ConnectionError, OSError):
            self.writer.write(data)
            await self.writer.drain()

    def close(self) -> None:
        self.writer.transport.abort()


async def _still_serves(server: engine.PoolServer) -> None:
    async with await engine.ServiceClient.connect(server.path) as client:
        [pool] = await client.status()
        assert pool["name"] == POOL


# -- 20 clients, each with an unfinished large frame -----------------------------------------


async def test_unfinished_frames_of_many_clients_stay_under_the_total_bound(fake_guest: engine.LinuxDirectBoot) -> None:
    limit, frame, sent = 4 * 1024 * 1024, 1_000_000, 900_000
    fits = limit // (frame + 4)  # each frame claims its announced size and its header
    async with _serving(fake_guest, max_request_bytes=limit, max_frame=frame) as server:
        clients = [await _Raw.open(server.path) for _ in range(20)]
        endings = [asyncio.create_task(c.rest()) for c in clients]
        # every client announces a frame of 1 MB, sends 900 kB of it, and stops there
        await asyncio.gather(*(c.send(struct.pack(">I", frame) + b" " * sent) for c in clients))
        await until(lambda: sum(t.done() for t in endings) == 20 - fits, 30, "the clients over the bound refused")
        await until(lambda: server.stats().request_bytes_received == fits * (sent + 4), 30, "the kept frames received")
        stats = server.stats()
        assert stats.request_bytes == fits * (frame + 4) <= limit == stats.max_request_bytes
        assert stats.refused == {"BufferFull": 20 - fits}
        for ending in endings:
            if ending.done():  # a refused client was told why, then hung up on
                [error] = ending.result()
                assert error["kind"] == "BufferFull" and "max_request_bytes" in error["error"], error
        assert stats.connections == fits
        await _still_serves(server)  # small requests still fit beside the held frames
        for client in clients:
            client.close()
        await asyncio.gather(*endings)
        await until(lambda: server.stats().connections == 0, 10, "clients gone")
        assert (server.stats().request_bytes, server.stats().request_bytes_received) == (0, 0)


# -- pipelining without reading ---------------------------------------------------------------


def _statuses(count: int) -> bytes:
    return b"".join(protocol.encode(protocol.request("status", n)) for n in range(count))


async def test_a_client_that_pipelines_and_never_reads_is_cut_off_and_leaves_no_task(
    fake_guest: engine.LinuxDirectBoot, caplog: pytest.LogCaptureFixture
) -> None:
    async with _serving(fake_guest, max_reply_bytes=64 * 1024) as server:
        baseline = len(asyncio.all_tasks())
        client = await _Raw.open(server.path)
        await client.send(_statuses(20_000))  # about 9 MB of replies asked for, none read
        await until(lambda: server.stats().refused.get("ReplyBacklog") == 1, 60, "the reader cut off")
        await until(lambda: server.connection_count == 0, 10, "its connection closed")
        # every task the server ran for it is gone: nothing keeps spinning after it left
        await until(lambda: len(asyncio.all_tasks()) == baseline, 10, "its tasks gone")
        stats = server.stats()
        assert (stats.reply_bytes, stats.requests_running, stats.request_bytes) == (0, 0, 0)
        assert _refusals_logged(caplog, "ReplyBacklog") == 1
        client.close()
        await _still_serves(server)


async def test_a_client_that_pipelines_and_leaves_leaves_no_task(fake_guest: engine.LinuxDirectBoot) -> None:
    async with _serving(fake_guest) as server:  # default limits: the outbox never fills here
        baseline = len(asyncio.all_tasks())
        client = await _Raw.open(server.path)
        await client.send(_statuses(5_000))
        client.close()  # gone without reading a single reply
        await until(lambda: server.connection_count == 0, 30, "its connection closed")
        await until(lambda: len(asyncio.all_tasks()) == baseline, 10, "its tasks gone")
        assert server.stats().reply_bytes == 0
        await _still_serves(server)


async def test_a_reading_client_may_pipeline_far_past_the_running_limit(fake_guest: engine.LinuxDirectBoot) -> None:
    async with _serving(fake_guest, max_requests=4) as server:
        reader, writer = await asyncio.open_unix_connection(str(server.path))
        client = _Raw(reader, writer)
        # hello and 2000 requests in one write: they arrive in a few chunks of a thousand
        await client.send(protocol.encode(protocol.hello()) + _statuses(2000))
        frames = [await client.next() for _ in range(2001)]
        assert all(f is not None and f["ok"] is True for f in frames), [f for f in frames if f and not f["ok"]][:1]
        assert sorted(f["id"] for f in frames[1:] if f is not None) == list(range(2000))
        assert server.stats().refused == {}
        client.close()


async def test_a_client_that_leaves_with_blocked_requests_has_them_cancelled(
    fake_guest: engine.LinuxDirectBoot, monkeypatch: pytest.MonkeyPatch
) -> None:
    never = asyncio.Event()

    async def stuck_status(self: Connection, message: protocol.Message, request_id: int | None) -> protocol.Message:
        await never.wait()  # a request that would run for ever (a reserve with no timeout)
        return {}

    monkeypatch.setattr(Connection, "_op_status", stuck_status)
    async with _serving(fake_guest) as server:
        baseline = len(asyncio.all_tasks())
        client = await _Raw.open(server.path)
        await client.send(_statuses(200))
        await until(lambda: server.stats().requests_running == 200, 30, "its requests running")
        client.close()
        await until(lambda: server.connection_count == 0, 30, "its connection closed")
        await until(lambda: len(asyncio.all_tasks()) == baseline, 10, "its requests cancelled")


def _refusals_logged(caplog: pytest.LogCaptureFixture, kind: str) -> int:
    return sum(getattr(r, "capsa_event", None) == "client_refused" and r.capsa_fields["kind"] == kind  # type: ignore[attr-defined]  # log_event's record attributes
               for r in caplog.records)


async def test_requests_over_the_running_limit_are_answered_busy(
    fake_guest: engine.LinuxDirectBoot, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    gate = asyncio.Event()

    async def slow_status(self: Connection, message: protocol.Message, request_id: int | None) -> protocol.Message:
        await gate.wait()
        return {"pools": []}

    monkeypatch.setattr(Connection, "_op_status", slow_status)
    async with _serving(fake_guest, max_requests=2) as server:
        client = await _Raw.open(server.path)
        await client.send(_statuses(5))
        for request_id in (2, 3, 4):
            busy = await client.next()
            assert busy is not None and (busy["id"], busy["kind"]) == (request_id, "Busy"), busy
            assert "max_requests" in busy["error"]
        assert server.stats().requests_running == 2
        assert _refusals_logged(caplog, "Busy") == 1  # one line for the connection, not one a request
        gate.set()
        replies = [await client.next(), await client.next()]
        assert sorted(r["id"] for r in replies if r is not None and r["ok"]) == [0, 1]
        await client.send(_statuses(1))  # room again: the next one runs
        again = await client.next()
        assert again is not None and again["ok"] is True
        assert server.stats().refused == {"Busy": 1}
        client.close()


# -- connections that never say hello ---------------------------------------------------------


async def test_a_silent_connection_is_closed_after_the_hello_timeout(fake_guest: engine.LinuxDirectBoot) -> None:
    async with _serving(fake_guest, hello_timeout=0.3) as server:
        silent = await _Raw.open(server.path, hello=False)
        [error] = await asyncio.wait_for(silent.rest(), 30)
        assert error["kind"] == "HelloTimeout" and "hello_timeout" in error["error"]
        # half a hello, then nothing: the same
        slow = await _Raw.open(server.path, hello=False)
        hello = protocol.encode(protocol.hello())
        await slow.send(hello[: len(hello) // 2])
        [error] = await asyncio.wait_for(slow.rest(), 30)
        assert error["kind"] == "HelloTimeout"
        await until(lambda: server.connection_count == 0, 10, "both closed")
        assert server.stats().refused == {"HelloTimeout": 2}
        # a client that did say hello may then be idle as long as it likes
        async with await engine.ServiceClient.connect(server.path) as client:
            await asyncio.sleep(0.6)
            assert len(await client.status()) == 1
        silent.close()
        slow.close()


async def test_a_frame_trickled_in_is_closed_after_the_frame_timeout(fake_guest: engine.LinuxDirectBoot) -> None:
    async with _serving(fake_guest, frame_timeout=0.3) as server:
        client = await _Raw.open(server.path)
        await client.send(struct.pack(">I", 100_000) + b" " * 10)  # a frame begun, never finished
        await until(lambda: server.stats().request_bytes == 100_004, 10, "its frame claimed")
        [error] = await client.rest()
        assert error["kind"] == "FrameTimeout" and "frame_timeout" in error["error"]
        await until(lambda: server.connection_count == 0, 10, "its connection closed")
        assert server.stats().request_bytes == 0  # its claim on the shared buffer is back
        # idle between frames is no offence: only an unfinished frame has a deadline
        async with await engine.ServiceClient.connect(server.path) as patient:
            await asyncio.sleep(0.6)
            assert len(await patient.status()) == 1
        client.close()


# -- too many connections ---------------------------------------------------------------------


async def test_the_connection_over_the_limit_is_refused_with_an_error_frame(fake_guest: engine.LinuxDirectBoot) -> None:
    async with _serving(fake_guest, max_connections=3) as server:
        clients = [await engine.ServiceClient.connect(server.path) for _ in range(3)]
        try:
            refused = r"refused the connection: .*3 clients connected \(max_connections\)"
            with pytest.raises(engine.ServiceError, match=refused):
                await engine.ServiceClient.connect(server.path)
            raw = await _Raw.open(server.path, hello=False)
            [refusal] = await asyncio.wait_for(raw.rest(), 30)  # told at once, then hung up on
            assert (refusal["ok"], refusal["kind"]) == (False, "TooManyConnections")
            raw.close()
            assert server.stats().refused == {"TooManyConnections": 2}
            assert len(await clients[0].status()) == 1  # those inside are unaffected
        finally:
            await clients.pop().close()
        await until(lambda: server.connection_count == 2, 10, "a slot freed")
        await _still_serves(server)
        for client in clients:
            await client.close()


# -- deep JSON --------------------------------------------------------------------------------


def _frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"op": "status", "id": 1, "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    ],
    ids=["bare", "inside-a-request"],
)
async def test_a_100000_deep_frame_gets_an_error_and_others_are_served(
    fake_guest: engine.LinuxDirectBoot, body: bytes
) -> None:
    async with _serving(fake_guest) as server:
        async with await engine.ServiceClient.connect(server.path) as bystander:
            attacker = await _Raw.open(server.path)
            await attacker.send(_frame(body))
            [error] = await asyncio.wait_for(attacker.rest(), 30)
            assert error["ok"] is False and error["kind"] == "TooDeep"
            assert "more than 64 deep" in error["error"] and "max_depth" in error["error"]
            assert server.stats().refused == {"TooDeep": 1}
            assert len(await bystander.status()) == 1
            attacker.close()
