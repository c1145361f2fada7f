"""The host's side of an agent session, sans-IO: requests out as bytes, events in from bytes.

Each request gets an id; the agent's frames for it (output chunks, acknowledgements of sent
data, the final reply) come back as events carrying that id. Flow control runs both ways on
byte credits: the host sends at most ``WINDOW`` bytes of stdin or file data ahead of the
agent's ``in_ack`` frames, and the agent sends at most ``WINDOW`` bytes of output or file data
ahead of the host's ``ack`` frames, so neither side buffers without bound. Anything that is not
our protocol (bad bytes, an unknown frame type, a frame for an id never issued) becomes one
:class:`ProtocolErrorEvent`, after which the session is dead.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from engine.agent import wire

WINDOW = 4 << 20  # bytes in flight per request and direction: 16 chunks, deep enough for the pipe


@dataclass
class HelloEvent:
    """The agent answered our hello (its version, its own version string)."""

    msg: dict[str, Any]


@dataclass
class ReplyEvent:
    """The final answer to request ``id`` (``ok`` or an error kind with errno and path)."""

    id: int
    msg: dict[str, Any]
    body: bytes = b""


@dataclass
class OutputEvent:
    """A chunk of request ``id``'s output: ``stream`` is "stdout", "stderr" or "data"."""

    id: int
    stream: str
    data: bytes


@dataclass
class InAckEvent:
    """The agent consumed ``n`` more bytes of what we sent for request ``id``."""

    id: int
    n: int


@dataclass
class ProtocolErrorEvent:
    """The agent broke the protocol; the session is over."""

    reason: str


Event = HelloEvent | ReplyEvent | OutputEvent | InAckEvent | ProtocolErrorEvent


@dataclass
class Session:
    """One host session with one agent over one byte stream."""

    nonce: bytes = field(default_factory=lambda: os.urandom(wire.NONCE_LEN))
    next_id: int = 1
    open_ids: set[int] = field(default_factory=set)
    sent_unacked: dict[int, int] = field(default_factory=dict)
    # Output bytes per request that we have not acknowledged yet: the agent may send no more
    # than WINDOW ahead of our acks, so a guest that floods a reader that stopped reading is a
    # protocol error, not host memory without bound.
    recv_unacked: dict[int, int] = field(default_factory=dict)
    dead: str | None = None
    greeted: bool = False

    def __post_init__(self) -> None:
        self._decoder = wire.Decoder(want_nonce=self.nonce)

    def hello(self) -> bytes:
        """The bytes that open the session (preamble, marker, nonce, hello frame)."""
        return wire.PREAMBLE + wire.encode_hello(self.nonce, {"t": "hello", "id": 0, "version": wire.VERSION})

    def request(self, msg: dict[str, Any], body: bytes = b"") -> tuple[int, bytes]:
        """Give ``msg`` a fresh id; returns the id and the frame's bytes."""
        rid = self.next_id
        self.next_id += 1
        self.open_ids.add(rid)
        self.sent_unacked[rid] = 0
        self.recv_unacked[rid] = 0
        return rid, wire.encode({**msg, "id": rid}, body)

    def send_data(self, rid: int, chunk: bytes) -> bytes:
        """A chunk of stdin or file data for ``rid`` (counts against its window)."""
        self.sent_unacked[rid] = self.sent_unacked.get(rid, 0) + len(chunk)
        return wire.encode({"t": "in", "id": rid}, chunk)

    def window_left(self, rid: int) -> int:
        """How many more data bytes ``rid`` may send before the agent acknowledges some."""
        return WINDOW - self.sent_unacked.get(rid, 0)

    def control(self, rid: int, kind: str, **fields: Any) -> bytes:
        """A control frame for a running request: eof, signal, resize, cancel."""
        return wire.encode({"t": kind, "id": rid, **fields})

    def ack(self, rid: int, n: int) -> bytes:
        """Tell the agent we consumed ``n`` bytes of ``rid``'s output (gives it credit)."""
        if rid in self.recv_unacked:
            self.recv_unacked[rid] = max(0, self.recv_unacked[rid] - n)
        return wire.encode({"t": "ack", "id": rid, "n": n})

    def forget(self, rid: int) -> None:
        """The caller gave up on ``rid``: late frames for it are dropped, not errors."""
        self.open_ids.discard(rid)
        self.sent_unacked.pop(rid, None)
        self.recv_unacked.pop(rid, None)

    def feed(self, data: bytes) -> list[Event]:
        """Events for the bytes the agent sent."""
        if self.dead is not None:
            return []
        try:
            frames = self._decoder.feed(data)
        except wire.WireError as err:
            return [self._die(str(err))]
        events: list[Event] = []
        for frame in frames:
            event = self._event(frame)
            if event is not None:
                events.append(event)
            if isinstance(event, ProtocolErrorEvent):
                break
        return events

    def _die(self, reason: str) -> ProtocolErrorEvent:
        self.dead = reason
        return ProtocolErrorEvent(reason)

    def _event(self, frame: wire.Frame) -> Event | None:
        kind, rid, msg = frame.type, frame.id, frame.msg
        if kind == "hello":
            if self.greeted:
                return self._die("a second hello in one session")
            if msg.get("version") != wire.VERSION:
                return self._die(f"agent speaks protocol version {msg.get('version')!r}, we speak {wire.VERSION}")
            self.greeted = True
            return HelloEvent(msg)
        if not self.greeted:
            return self._die(f"a {kind!r} frame before the hello")
        if rid <= 0 or rid >= self.next_id:
            return self._die(f"a {kind!r} frame for request {rid}, which was never sent")
        if rid not in self.open_ids:
            return None  # a late frame for a request the caller gave up on
        if kind == "out":
            stream = msg.get("s")
            if stream not in ("stdout", "stderr", "data"):
                return self._die(f"an output frame of unknown stream {stream!r}")
            ahead = self.recv_unacked.get(rid, 0) + len(frame.body)
            if ahead > WINDOW + wire.MAX_BODY:  # the agent may overshoot by the one chunk in hand
                return self._die(f"request {rid}'s output ran {ahead} bytes ahead of our acknowledgements (window {WINDOW})")
            self.recv_unacked[rid] = ahead
            return OutputEvent(rid, stream, frame.body)
        if kind == "in_ack":
            n = msg.get("n")
            if not isinstance(n, int) or n < 0 or n > self.sent_unacked.get(rid, 0):
                return self._die(f"an acknowledgement of {n!r} bytes that were never sent")
            self.sent_unacked[rid] -= n
            return InAckEvent(rid, n)
        if kind == "reply":
            if not isinstance(msg.get("ok"), bool):
                return self._die("a reply without a boolean 'ok'")
            self.forget(rid)
            return ReplyEvent(rid, msg, frame.body)
        return self._die(f"an unknown frame type {kind!r}")
