"""The vocabulary of the TCP connection core: states, configuration, events, outgoing segments.

Kept apart from :mod:`engine.netstack.tcp.connection` (which re-exports everything here) so the state
machine module stays readable; adapters import from ``engine.netstack.tcp.connection``.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Union

from engine.netstack.tcp.segment import ACK, RST, TcpSegment, build_tcp, seq_add


class TcpState(enum.Enum):
    """RFC 9293 connection states (no LISTEN: a connection is born from a SYN or a connect)."""

    CLOSED = "CLOSED"
    SYN_SENT = "SYN_SENT"
    SYN_RECEIVED = "SYN_RECEIVED"
    ESTABLISHED = "ESTABLISHED"
    FIN_WAIT_1 = "FIN_WAIT_1"
    FIN_WAIT_2 = "FIN_WAIT_2"
    CLOSING = "CLOSING"
    TIME_WAIT = "TIME_WAIT"
    CLOSE_WAIT = "CLOSE_WAIT"
    LAST_ACK = "LAST_ACK"


S = TcpState
SYN_STATES = frozenset({S.SYN_SENT, S.SYN_RECEIVED})
# States in which our side may still put data (or our FIN) on the wire.
SEND_STATES = frozenset({S.ESTABLISHED, S.CLOSE_WAIT, S.FIN_WAIT_1, S.CLOSING, S.LAST_ACK})
# States in which the guest may still send us data (it has not sent FIN).
RECV_STATES = frozenset({S.ESTABLISHED, S.FIN_WAIT_1, S.FIN_WAIT_2})
# States in which the adapter may still queue data (we have not sent FIN).
OPEN_STATES = frozenset({S.SYN_SENT, S.SYN_RECEIVED, S.ESTABLISHED, S.CLOSE_WAIT})

@dataclass(frozen=True, slots=True)
class TcpConfig:
    """Tunables of one connection; the defaults suit a guest on a 1500-byte-MTU virtual link.

    ``segment_limit`` overrides the payload size of what we send (default: the smaller of the
    peer's MSS and ours); an adapter that hands the guest large segments through virtio-net
    receive offload (VIRTIO_NET_F_GUEST_TSO4, with gso_size set to the MSS) may raise it up to
    65495. Timeouts are in seconds; ``None`` disables keepalive and the idle timeout.
    ``fin_wait_2_timeout`` counts from the guest's last segment once our FIN is acknowledged;
    it is longer than a Linux guest's largest retransmission interval (120 s), so a guest in
    deep backoff is not cut off while it still has data for us.
    """

    send_buffer: int = 256 * 1024
    recv_buffer: int = 256 * 1024
    segment_limit: int | None = None
    ooo_segments: int = 256
    initial_cwnd: int = 10
    rto_initial: float = 1.0
    rto_min: float = 0.2
    rto_max: float = 60.0
    max_retries: int = 12
    syn_retries: int = 6
    delayed_ack: float = 0.04
    quickacks: int = 16
    keepalive_idle: float | None = None
    keepalive_interval: float = 75.0
    keepalive_probes: int = 9
    time_wait: float = 30.0
    fin_wait_2_timeout: float = 300.0
    idle_timeout: float | None = None

    @property
    def recv_wscale(self) -> int:
        """The smallest window-scale shift that lets ``recv_buffer`` be advertised in 16 bits."""
        shift = 0
        while (self.recv_buffer >> shift) > 0xFFFF and shift < 14:
            shift += 1
        return shift


@dataclass(frozen=True, slots=True)
class Connected:
    """The three-way handshake completed."""


@dataclass(frozen=True, slots=True)
class DataReceived:
    """In-order bytes from the peer, each byte delivered exactly once.

    The adapter must call ``consumed(len(data))`` once it has handed them on (written to the host
    socket): until then they count against the receive window.
    """

    data: bytes


@dataclass(frozen=True, slots=True)
class PeerClosed:
    """The peer sent FIN: it will send no more (half close); we may still send."""


@dataclass(frozen=True, slots=True)
class Writable:
    """The send buffer drained after ``send`` accepted less than offered; ``space`` bytes fit."""

    space: int


@dataclass(frozen=True, slots=True)
class Closed:
    """The connection reached CLOSED; the adapter drops it. Emitted exactly once.

    ``reason``: "closed" (both FINs exchanged and acknowledged), "reset" (peer sent RST),
    "refused" (RST answered our SYN), "timeout" (retransmissions or FIN_WAIT_2 gave up),
    "keepalive" (probes unanswered), "idle" (idle timeout), "aborted" (``abort`` was called).
    """

    reason: str

    @property
    def error(self) -> bool:
        """Whether the connection ended abnormally (the adapter should reset the host side)."""
        return self.reason != "closed"


TcpEvent = Union[Connected, DataReceived, PeerClosed, Writable, Closed]


@dataclass(frozen=True, slots=True)
class OutSegment:
    """A segment to send: header fields, option block (padded) and payload.

    ``window`` is the raw 16-bit field (already scaled); ``to_bytes`` builds the TCP bytes that
    become an IPv4 payload from the connection's local address to the remote one.
    """

    src_port: int
    dst_port: int
    seq: int
    ack: int
    flags: int
    window: int
    payload: bytes = b""
    options: bytes = b""

    def to_bytes(self, src_ip: IPv4Address, dst_ip: IPv4Address) -> bytes:
        """The TCP segment with its checksum."""
        return build_tcp(src_ip, dst_ip, self.src_port, self.dst_port, self.seq, self.ack,
                         self.flags, self.window, self.payload, self.options)


def reset_for(seg: TcpSegment) -> OutSegment | None:
    """The RST answering ``seg`` when no connection takes it (RFC 9293 3.10.7.1), or None.

    Used for a SYN the policy denies or the host refuses, and for any segment to a tuple with no
    connection (so a peer that missed our RST learns of it). A RST is never answered.
    """
    if seg.rst:
        return None
    if seg.ack_flag:
        return OutSegment(seg.dst_port, seg.src_port, seg.ack, 0, RST, 0)
    return OutSegment(seg.dst_port, seg.src_port, 0, seq_add(seg.seq, seg.seg_len), RST | ACK, 0)
