"""TCP core end to end: two connections through a lossy, reordering channel, and property tests.

The simulated channel is a seeded event queue with injected time.
"""
from __future__ import annotations

import heapq
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.netstack.tcp.segment import TcpSegment, parse_tcp
from engine.netstack.tcp.connection import (Closed, DataReceived, PeerClosed, TcpConfig, TcpConnection,
                                      TcpState, reset_for)
from tests.netstack.tcp_helpers import GW, GUEST, GP, SP, syn, established


# -- end to end through a lossy channel -----------------------------------------------------------

class Sim:
    """Two TcpConnections and a channel that delays, drops, duplicates and reorders."""

    def __init__(self, rng: random.Random, loss: float, dup: float, jitter: float,
                 iss: tuple[int, int], config: TcpConfig | None = None, delay: float = 0.002) -> None:
        self.rng, self.loss, self.dup, self.jitter, self.delay = rng, loss, dup, jitter, delay
        self.now = 0.0
        self.q: list[tuple[float, int, str, TcpSegment]] = []
        self.n = 0
        self.config = config
        self.iss = iss
        # "a" is the guest-facing gateway end of a port forward (connect); "b" accepts its SYN.
        self.conns: dict[str, TcpConnection | None] = {
            "a": TcpConnection.connect(GW, SP, GUEST, GP, 0.0, iss[0], config=config), "b": None}
        self.got = {"a": bytearray(), "b": bytearray()}
        self.closed: dict[str, str] = {}
        self.peer_closed: set[str] = set()

    def pump(self) -> None:
        for name, conn in self.conns.items():
            if conn is None:
                continue
            src, dst = (GW, GUEST) if name == "a" else (GUEST, GW)
            for seg in conn.poll_segments():
                if self.rng.random() < self.loss:
                    continue
                w = parse_tcp(src, dst, seg.to_bytes(src, dst))
                for _ in range(2 if self.rng.random() < self.dup else 1):
                    t = self.now + self.delay + self.rng.random() * self.jitter
                    self.n += 1
                    heapq.heappush(self.q, (t, self.n, "b" if name == "a" else "a", w))
            for ev in conn.poll_events():
                if isinstance(ev, DataReceived):
                    self.got[name] += ev.data
                    conn.consumed(len(ev.data))
                elif isinstance(ev, PeerClosed):
                    self.peer_closed.add(name)
                elif isinstance(ev, Closed):
                    self.closed[name] = ev.reason

    def run(self, outgoing: dict[str, bytes], until: float = 600.0) -> None:
        sent = {"a": 0, "b": 0}
        while len(self.closed) < 2 and self.now < until:
            for name, conn in self.conns.items():   # the "applications" write what fits
                if conn is None or name in self.closed or conn.tx.fin_seq is not None:
                    continue
                data = outgoing[name]
                if sent[name] < len(data):
                    sent[name] += conn.send(memoryview(data)[sent[name]:sent[name] + 65536], self.now)
                if sent[name] == len(data) and conn.state in (TcpState.ESTABLISHED, TcpState.CLOSE_WAIT):
                    conn.shutdown_write(self.now)
            self.pump()
            times = [c.next_timer() for c in self.conns.values() if c is not None]
            times = [t for t in times if t is not None]
            if self.q:
                times.append(self.q[0][0])
            if not times:
                break
            self.now = max(self.now, min(times))
            while self.q and self.q[0][0] <= self.now:
                _, _, dst, seg = heapq.heappop(self.q)
                conn = self.conns[dst]
                if conn is None:
                    if seg.syn and not seg.ack_flag:
                        self.conns[dst] = TcpConnection.accept(seg, GUEST, GP, GW, SP, self.now, self.iss[1], config=self.config)
                    continue
                if conn.closed:            # what the adapter does for a tuple it dropped
                    rst = reset_for(seg)
                    if rst is not None and self.rng.random() >= self.loss:
                        src, to = (GW, GUEST) if dst == "a" else (GUEST, GW)
                        self.n += 1
                        heapq.heappush(self.q, (self.now + self.delay, self.n, "b" if dst == "a" else "a",
                                                parse_tcp(src, to, rst.to_bytes(src, to))))
                    continue
                conn.receive(seg, self.now)
            for conn in self.conns.values():
                if conn is not None and (t := conn.next_timer()) is not None and t <= self.now:
                    conn.tick(self.now)
        self.pump()


def payload(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


@pytest.mark.parametrize("seed,loss,dup,jitter", [(1, 0.0, 0.0, 0.0), (2, 0.05, 0.05, 0.01), (3, 0.15, 0.1, 0.02)])
def test_bidirectional_transfer_through_lossy_reordering_channel(seed: int, loss: float, dup: float, jitter: float) -> None:
    up, down = payload(300_000, seed), payload(200_000, seed + 100)
    sim = Sim(random.Random(seed), loss, dup, jitter, iss=(random.Random(seed).getrandbits(32), 12345))
    sim.run({"a": down, "b": up})
    assert bytes(sim.got["b"]) == down and bytes(sim.got["a"]) == up
    assert sim.peer_closed == {"a", "b"} and sim.closed == {"a": "closed", "b": "closed"}
    a = sim.conns["a"]
    assert a is not None and (loss == 0 or a.counters["retransmits"] > 0)


def test_large_transfer_across_sequence_wraparound() -> None:
    data = payload(1_000_000, 7)
    near = 2**32 - 50_000
    sim = Sim(random.Random(7), 0.02, 0.02, 0.005, iss=(near, near + 7))
    sim.run({"a": data, "b": b"ok"})
    assert bytes(sim.got["b"]) == data and bytes(sim.got["a"]) == b"ok"
    a = sim.conns["a"]
    assert a is not None and a.tx.snd_una < near  # wrapped past zero
    assert sim.closed == {"a": "closed", "b": "closed"}


def test_slow_consumer_throttles_sender_through_the_window() -> None:
    cfg = TcpConfig(recv_buffer=16384, send_buffer=16384)
    sim = Sim(random.Random(9), 0.0, 0.0, 0.0, iss=(1, 2), config=cfg)
    data = payload(100_000, 9)
    orig_pump = sim.pump
    backlog: list[int] = []

    def slow_pump() -> None:   # "b" consumes only 4 KiB per step
        b = sim.conns["b"]
        if b is not None:
            for ev in b.poll_events():
                if isinstance(ev, DataReceived):
                    sim.got["b"] += ev.data
                    backlog.append(len(ev.data))
                elif isinstance(ev, Closed):
                    sim.closed["b"] = ev.reason
                elif isinstance(ev, PeerClosed):
                    sim.peer_closed.add("b")
            pending = sum(backlog)
            assert pending <= 16384 + 3  # never more than the window's worth unconsumed
            take = min(pending, 4096)
            backlog[:] = [pending - take] if pending - take else []
            if take:
                b.consumed(take)
        orig_pump()
    sim.pump = slow_pump  # type: ignore[method-assign]
    sim.run({"a": data, "b": b""})
    assert bytes(sim.got["b"]) == data


# -- properties ---------------------------------------------------------------------------------

segments = st.builds(
    TcpSegment, st.just(GP), st.just(SP),
    st.one_of(st.integers(4990, 5100), st.integers(0, 2**32 - 1)),
    st.one_of(st.integers(990, 1100), st.integers(0, 2**32 - 1)),
    st.integers(0, 255), st.integers(0, 65535), st.binary(max_size=64),
    st.one_of(st.none(), st.integers(0, 65535)), st.one_of(st.none(), st.integers(0, 14)))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(segments, st.sampled_from(["rx", "tick", "due", "send", "shut", "consume"])), max_size=30),
       st.sampled_from(["accept", "connect", "established"]))
def test_random_segments_never_raise(ops: list, how: str) -> None:
    if how == "accept":
        c = TcpConnection.accept(syn(5000), GW, SP, GUEST, GP, 0.0, 1000)
    elif how == "connect":
        c = TcpConnection.connect(GW, SP, GUEST, GP, 0.0, 1000)
    else:
        c = established(config=TcpConfig(keepalive_idle=5.0, idle_timeout=50.0))
    now = 0.0
    for seg, op in ops:
        now += 0.3
        if op == "rx":
            c.receive(seg, now)
        elif op == "tick":
            c.tick(now + seg.window / 1000)
        elif op == "due" and (due := c.next_timer()) is not None:
            now = max(now, due)
            c.tick(now)            # a due timer always moves on: no busy loop for the adapter
            t = c.next_timer()
            assert t is None or t > now
        elif op == "send":
            c.send(seg.payload, now)
        elif op == "shut":
            c.shutdown_write(now)
        else:
            c.consumed(len(seg.payload))
        for out in c.poll_segments():
            assert 0 <= out.window <= 0xFFFF and 0 <= out.seq < 2**32 and 0 <= out.ack < 2**32
            out.to_bytes(GW, GUEST)
        c.poll_events()
        t = c.next_timer()
        assert t is None or t >= 0
    assert c.tx.unsent <= c.config.send_buffer


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1), st.floats(0, 0.3), st.floats(0, 0.2), st.floats(0, 0.05),
       st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(2048, 70000),
       st.integers(0, 40000), st.integers(0, 40000))
def test_random_channels_deliver_streams_intact(seed: int, loss: float, dup: float, jitter: float,
                                                iss_a: int, iss_b: int, rbuf: int, n_down: int,
                                                n_up: int) -> None:
    cfg = TcpConfig(recv_buffer=rbuf, send_buffer=rbuf, max_retries=30, syn_retries=30)
    sim = Sim(random.Random(seed), loss, dup, jitter, iss=(iss_a, iss_b), config=cfg)
    down, up = payload(n_down, seed), payload(n_up, seed + 1)
    sim.run({"a": down, "b": up}, until=10_000.0)
    assert bytes(sim.got["b"]) == down and bytes(sim.got["a"]) == up
    # Under heavy loss the last ACK can outlive TIME_WAIT: the other side then learns by RST.
    assert set(sim.closed) == {"a", "b"} and "closed" in sim.closed.values()
    assert set(sim.closed.values()) <= {"closed", "reset"}
