"""The sending side of one TCP connection: its own state, composed into the connection.

:class:`TcpSendSide` holds what the gateway sends the guest (RFC 9293 names: snd_una, snd_nxt,
snd_max, snd_wnd; the send buffer; the congestion window; the RFC 6298 retransmission timer
with Karn's rule; zero-window probing) and puts those segments on the wire: segmentation within
the peer's window and our congestion window, go-back-N from one segment after a timeout,
NewReno fast retransmit. Its connection (:class:`engine.netstack.tcp.connection.TcpConnection`,
the only class adapters use) owns the state machine and the receiving side; the send side sees
it through :class:`SendHost` only.
"""
from __future__ import annotations

from collections import Counter
from typing import Protocol

from engine.netstack.tcp.segment import ACK, FIN, PSH, SYN, seq_add, seq_diff, seq_ge, seq_gt, seq_lt
from engine.netstack.tcp.types import (OPEN_STATES, SEND_STATES, SYN_STATES, TcpConfig, TcpEvent, TcpState,
                                       Writable)

S = TcpState


class SendHost(Protocol):
    """What the send side uses of its connection."""

    @property
    def state(self) -> TcpState: ...
    @property
    def last_rx(self) -> float: ...

    def emit(self, seq: int, flags: int, payload: bytes = b"", options: bytes = b"") -> None: ...
    def abort_with(self, reason: str) -> None: ...
    def syn_options(self) -> bytes: ...
    def notify(self, event: TcpEvent) -> None: ...
    def touch(self, now: float) -> None: ...


class TcpSendSide:
    """The sequence space, buffer, windows and timers of what we send; see the module doc."""

    def __init__(self, conn: SendHost, iss: int, seg_size: int, config: TcpConfig,
                 counters: Counter[str]) -> None:
        cfg = self.config = config
        self.conn = conn
        self.counters = counters           # the connection's, shared
        self.seg_size = seg_size
        self.iss = iss & 0xFFFFFFFF
        self.snd_una = self.snd_nxt = self.snd_max = self.iss
        self.snd_wnd = 0
        self.wl1 = self.wl2 = 0
        self.wscale = 0
        self.wscale_on = False             # the peer offered window scaling (and we answer it)
        self.buf = bytearray()             # unacknowledged + unsent bytes, from buf_seq on
        self.buf_seq = seq_add(self.iss, 1)
        self.fin_seq: int | None = None    # set by shutdown_write
        self.cwnd = cfg.initial_cwnd * self.seg_size
        self.dupacks = 0
        self.recover: int | None = None    # NewReno: snd_max when fast recovery began
        self.want_writable = False
        # Retransmission timer (RFC 6298) and the persist timer, as absolute deadlines.
        self.rto = cfg.rto_initial
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.rtt_seq: int | None = None    # timing the segment ending here (Karn: new data only)
        self.rtt_time = 0.0
        self.retries = 0
        self.rto_at: float | None = None
        self.persist_at: float | None = None
        self.persist_backoff = 0.0
        self.probes = 0                    # persist probes since the guest last said anything

    def stop(self) -> None:
        """The connection closed: no timers, no buffered bytes."""
        self.rto_at = self.persist_at = None
        self.buf = bytearray()

    def send(self, data: bytes | bytearray | memoryview, now: float) -> int:
        """Queue bytes for the guest; returns how many fit in the send buffer (maybe 0).

        Accepted before the handshake completes too (sent once it does). After
        ``shutdown_write`` or once the connection is closing, nothing is accepted.
        """
        if self.conn.state not in OPEN_STATES or self.fin_seq is not None:
            return 0
        n = min(len(data), self.config.send_buffer - len(self.buf))
        if n < len(data):
            self.want_writable = True
        if n > 0:
            self.buf += memoryview(data)[:n]
            self.conn.touch(now)
            self.output(now)
        return n

    @property
    def send_space(self) -> int:
        """How many bytes ``send`` would accept now."""
        if self.conn.state not in OPEN_STATES or self.fin_seq is not None:
            return 0
        return self.config.send_buffer - len(self.buf)

    @property
    def unsent(self) -> int:
        """Bytes queued by ``send`` and not yet acknowledged by the guest."""
        return len(self.buf)

    def ack_new(self, ack: int, now: float) -> None:
        """``ack`` acknowledges something new: drop it from the buffer, update RTT and timers."""
        d = seq_diff(ack, self.buf_seq)
        if d > 0:
            d = min(d, len(self.buf))
            del self.buf[:d]             # O(1) amortized: bytearray keeps a start offset
            self.buf_seq = seq_add(self.buf_seq, d)
        self.snd_una = ack
        if seq_lt(self.snd_nxt, ack):
            self.snd_nxt = ack
        self.dupacks = 0
        self.retries = 0
        self.rto = self.rto_base()       # new data got through: drop the timeout backoff
        if self.rtt_seq is not None and seq_ge(ack, self.rtt_seq):
            self.rtt_sample(now - self.rtt_time)
            self.rtt_seq = None
        self.rto_at = None if ack == self.snd_max else now + self.rto
        if self.want_writable and self.send_space >= max(1, self.config.send_buffer // 4):
            self.want_writable = False
            self.conn.notify(Writable(self.send_space))

    def output(self, now: float) -> None:
        """Send what the guest's window and our congestion window allow, then the FIN."""
        if self.conn.state not in SEND_STATES:
            return
        sbuf = self.buf
        size = self.seg_size
        while True:
            off = seq_diff(self.snd_nxt, self.buf_seq)
            remaining = len(sbuf) - off
            fin = False
            if remaining > 0:
                room = min(self.snd_wnd, self.cwnd) - seq_diff(self.snd_nxt, self.snd_una)
                if room <= 0:
                    break
                n = min(remaining, size, room)
                fin = self.fin_seq is not None and n == remaining
            elif self.fin_seq is not None and self.snd_nxt == self.fin_seq:
                n, fin = 0, True
            else:
                break
            seq = self.snd_nxt
            payload = bytes(memoryview(sbuf)[off:off + n]) if n else b""
            flags = ACK | (PSH if n and n == remaining else 0) | (FIN if fin else 0)
            self.conn.emit(seq, flags, payload)
            end = seq_add(seq, n + fin)
            if seq_gt(end, self.snd_max):  # (a resend after a rewind may reach past it too)
                if self.rtt_seq is None and seq_ge(seq, self.snd_max):
                    self.rtt_seq, self.rtt_time = end, now
                self.snd_max = end
            self.snd_nxt = end
            if self.rto_at is None:
                self.rto_at = now + self.rto
            if fin:
                break
        # Zero window with data waiting and nothing in flight: only a probe will reopen it.
        if (self.snd_wnd == 0 and self.snd_una == self.snd_max and self.persist_at is None
                and seq_diff(self.snd_nxt, self.buf_seq) < len(sbuf)):
            self.persist_backoff = max(self.rto, self.config.rto_min)
            self.persist_at = now + self.persist_backoff

    def retransmit_head(self, now: float) -> None:
        """Resend one segment from snd_una (fast retransmit, partial ACK)."""
        self.counters["retransmits"] += 1
        self.rtt_seq = None               # Karn: never time a retransmitted segment
        off = seq_diff(self.snd_una, self.buf_seq)
        # Only what was sent before: never past snd_max, or the peer's ACK would look bogus.
        n = max(0, min(self.seg_size, len(self.buf) - off, seq_diff(self.snd_max, self.snd_una)))
        fin = self.fin_seq is not None and seq_add(self.snd_una, n) == self.fin_seq and seq_gt(self.snd_max, self.fin_seq)
        if n or fin:
            payload = bytes(memoryview(self.buf)[off:off + n])
            self.conn.emit(self.snd_una, ACK | (FIN if fin else 0), payload)
        self.rto_at = now + self.rto

    def on_rto(self, now: float) -> None:
        self.rto_at = None
        if self.snd_una == self.snd_max:
            return
        # A guest that answers but shrank its window to zero is probed, not timed out.
        if not (self.snd_wnd == 0 and now - self.conn.last_rx < self.rto):
            self.retries += 1
        limit = self.config.syn_retries if self.conn.state in SYN_STATES else self.config.max_retries
        if self.retries > limit:
            self.conn.abort_with("timeout")
            return
        self.counters["rto"] += 1
        self.rto = min(self.rto * 2, self.config.rto_max)
        self.rtt_seq = None
        self.recover = None
        self.dupacks = 0
        if self.conn.state in SYN_STATES:
            self.send_syn(now)
            return
        # Go back N: resend from snd_una, restarting from one segment (slow start).
        self.counters["retransmits"] += 1
        self.snd_nxt = self.snd_una
        self.cwnd = self.seg_size
        self.output(now)
        if self.snd_nxt == self.snd_una:   # a zero window let nothing out: probe with the head
            self.retransmit_head(now)
        self.rto_at = now + self.rto

    def on_persist(self, now: float) -> None:
        self.persist_at = None
        if self.snd_wnd or self.snd_una != self.snd_max:
            return
        self.probes += 1
        if self.probes > self.config.max_retries:
            self.conn.abort_with("timeout")
            return
        self.counters["window_probes"] += 1
        self.conn.emit(seq_add(self.snd_una, -1), ACK)     # an old seq: the guest ACKs its window
        self.persist_backoff = min(self.persist_backoff * 2, self.config.rto_max)
        self.persist_at = now + self.persist_backoff

    def send_syn(self, now: float) -> None:
        flags = SYN if self.conn.state is S.SYN_SENT else SYN | ACK
        self.conn.emit(self.iss, flags, options=self.conn.syn_options())
        self.snd_nxt = self.snd_max = seq_add(self.iss, 1)
        if self.retries == 0:
            self.rtt_seq, self.rtt_time = self.snd_nxt, now
        self.rto_at = now + self.rto

    def rtt_sample(self, r: float) -> None:
        """RFC 6298 2.2/2.3: smoothed RTT and variance."""
        if self.srtt is None:
            self.srtt, self.rttvar = r, r / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - r)
            self.srtt = 0.875 * self.srtt + 0.125 * r
        self.rto = self.rto_base()

    def rto_base(self) -> float:
        cfg = self.config
        if self.srtt is None:
            return cfg.rto_initial
        return min(max(self.srtt + max(0.001, 4 * self.rttvar), cfg.rto_min), cfg.rto_max)
