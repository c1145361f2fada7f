"""The sending half of a TCP connection, and the state both halves share.

:class:`TcpSender` holds every variable of the connection (RFC 9293 names: snd_una, snd_nxt,
rcv_nxt, ...) and does what puts segments on the wire: segmentation within the peer's window and
our congestion window, retransmission (RFC 6298 timer with Karn's rule, go-back-N from one
segment after a timeout, NewReno fast retransmit), zero-window probing, and the window we
advertise. :class:`engine.netstack.tcp.connection.TcpConnection` adds the receiving half and the public
API; adapters use that class only.
"""
from __future__ import annotations

from collections import Counter
from ipaddress import IPv4Address

from engine.netstack.tcp.segment import (ACK, DEFAULT_MSS, FIN, PSH, RST, SYN, build_options, seq_add,
                                 seq_diff, seq_ge, seq_gt, seq_lt)
from engine.netstack.tcp.reassembly import Reassembly
from engine.netstack.tcp.types import (Closed, DataReceived, OutSegment, TcpConfig, TcpEvent,
                                       TcpState, Writable)

S = TcpState
SYN_STATES = frozenset({S.SYN_SENT, S.SYN_RECEIVED})
# States in which our side may still put data (or our FIN) on the wire.
SEND_STATES = frozenset({S.ESTABLISHED, S.CLOSE_WAIT, S.FIN_WAIT_1, S.CLOSING, S.LAST_ACK})
# States in which the guest may still send us data (it has not sent FIN).
RECV_STATES = frozenset({S.ESTABLISHED, S.FIN_WAIT_1, S.FIN_WAIT_2})
# States in which the adapter may still queue data (we have not sent FIN).
OPEN_STATES = frozenset({S.SYN_SENT, S.SYN_RECEIVED, S.ESTABLISHED, S.CLOSE_WAIT})


class TcpSender:
    """Shared connection state plus the output path; see :class:`TcpConnection` for the API."""

    def __init__(self, local_ip: IPv4Address, local_port: int, remote_ip: IPv4Address,
                 remote_port: int, now: float, iss: int, mss: int, config: TcpConfig | None) -> None:
        cfg = self.config = config or TcpConfig()
        self.local_ip, self.local_port = local_ip, local_port
        self.remote_ip, self.remote_port = remote_ip, remote_port
        self.state = S.CLOSED
        self.counters: Counter[str] = Counter()
        self.mss = mss                     # our MSS (MTU-derived), advertised in our SYN
        self._seg_size = cfg.segment_limit or min(mss, DEFAULT_MSS)
        self._out: list[OutSegment] = []
        self._events: list[TcpEvent] = []
        self._rx_chunks: list[bytes] = []
        self.close_reason: str | None = None  # the reason of Closed, once closed
        # Send side.
        self.iss = iss & 0xFFFFFFFF
        self.snd_una = self.snd_nxt = self.snd_max = self.iss
        self.snd_wnd = 0
        self._wl1 = self._wl2 = 0
        self._snd_wscale = 0
        self._snd_wscale_on = False        # the peer offered window scaling (and we answer it)
        self._sbuf = bytearray()           # unacknowledged + unsent bytes, from _sbuf_seq on
        self._sbuf_seq = seq_add(self.iss, 1)
        self.fin_seq: int | None = None    # set by shutdown_write
        self._cwnd = cfg.initial_cwnd * self._seg_size
        self._dupacks = 0
        self._recover: int | None = None   # NewReno: snd_max when fast recovery began
        self._want_writable = False
        # Retransmission timer (RFC 6298) and the other timers, as absolute deadlines.
        self._rto = cfg.rto_initial
        self._srtt: float | None = None
        self._rttvar = 0.0
        self._rtt_seq: int | None = None   # timing the segment ending here (Karn: new data only)
        self._rtt_time = 0.0
        self._retries = 0
        self._rto_at: float | None = None
        self._persist_at: float | None = None
        self._persist_backoff = 0.0
        self._probes = 0                   # persist probes since the guest last said anything
        self._delack_at: float | None = None
        self._tw_at: float | None = None
        self._ka_sent = 0
        self._last_rx = self._last_active = now
        # Receive side.
        self.irs = 0
        self.rcv_nxt = 0
        self._rcv_off = 0                  # 64-bit stream offset of rcv_nxt (for reassembly)
        self._rcv_adv = 0                  # right edge of the window we advertised
        self._rcv_wscale = 0
        self._rcv_limit = min(cfg.recv_buffer, 0xFFFF)
        self._unconsumed = 0               # delivered but not yet consumed by the adapter
        self._reasm = Reassembly(cfg.ooo_segments)
        self._ack_pending = 0              # bytes received since the last ACK we sent
        self._rcv_mss = DEFAULT_MSS        # largest segment seen from the guest (up to our MSS)
        self._ack_now = False
        self._quickacks = cfg.quickacks

    def send(self, data: bytes | bytearray | memoryview, now: float) -> int:
        """Queue bytes for the guest; returns how many fit in the send buffer (maybe 0).

        Accepted before the handshake completes too (sent once it does). After
        ``shutdown_write`` or once the connection is closing, nothing is accepted.
        """
        if self.state not in OPEN_STATES or self.fin_seq is not None:
            return 0
        n = min(len(data), self.config.send_buffer - len(self._sbuf))
        if n < len(data):
            self._want_writable = True
        if n > 0:
            self._sbuf += memoryview(data)[:n]
            self._last_active = now
            self._output(now)
        return n

    @property
    def send_space(self) -> int:
        """How many bytes ``send`` would accept now."""
        if self.state not in OPEN_STATES or self.fin_seq is not None:
            return 0
        return self.config.send_buffer - len(self._sbuf)

    @property
    def unsent(self) -> int:
        """Bytes queued by ``send`` and not yet acknowledged by the guest."""
        return len(self._sbuf)

    def _ack_new(self, ack: int, now: float) -> None:
        """``ack`` acknowledges something new: drop it from the buffer, update RTT and timers."""
        d = seq_diff(ack, self._sbuf_seq)
        if d > 0:
            d = min(d, len(self._sbuf))
            del self._sbuf[:d]             # O(1) amortized: bytearray keeps a start offset
            self._sbuf_seq = seq_add(self._sbuf_seq, d)
        self.snd_una = ack
        if seq_lt(self.snd_nxt, ack):
            self.snd_nxt = ack
        self._dupacks = 0
        self._retries = 0
        self._rto = self._rto_base()       # new data got through: drop the timeout backoff
        if self._rtt_seq is not None and seq_ge(ack, self._rtt_seq):
            self._rtt_sample(now - self._rtt_time)
            self._rtt_seq = None
        self._rto_at = None if ack == self.snd_max else now + self._rto
        if self._want_writable and self.send_space >= max(1, self.config.send_buffer // 4):
            self._want_writable = False
            self._events.append(Writable(self.send_space))

    def _output(self, now: float) -> None:
        """Send what the guest's window and our congestion window allow, then the FIN."""
        if self.state not in SEND_STATES:
            return
        sbuf = self._sbuf
        size = self._seg_size
        while True:
            off = seq_diff(self.snd_nxt, self._sbuf_seq)
            remaining = len(sbuf) - off
            fin = False
            if remaining > 0:
                room = min(self.snd_wnd, self._cwnd) - seq_diff(self.snd_nxt, self.snd_una)
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
            self._emit(seq, flags, payload)
            end = seq_add(seq, n + fin)
            if seq_gt(end, self.snd_max):  # (a resend after a rewind may reach past it too)
                if self._rtt_seq is None and seq_ge(seq, self.snd_max):
                    self._rtt_seq, self._rtt_time = end, now
                self.snd_max = end
            self.snd_nxt = end
            if self._rto_at is None:
                self._rto_at = now + self._rto
            if fin:
                break
        # Zero window with data waiting and nothing in flight: only a probe will reopen it.
        if (self.snd_wnd == 0 and self.snd_una == self.snd_max and self._persist_at is None
                and seq_diff(self.snd_nxt, self._sbuf_seq) < len(sbuf)):
            self._persist_backoff = max(self._rto, self.config.rto_min)
            self._persist_at = now + self._persist_backoff

    def _retransmit_head(self, now: float) -> None:
        """Resend one segment from snd_una (fast retransmit, partial ACK)."""
        self.counters["retransmits"] += 1
        self._rtt_seq = None               # Karn: never time a retransmitted segment
        off = seq_diff(self.snd_una, self._sbuf_seq)
        # Only what was sent before: never past snd_max, or the peer's ACK would look bogus.
        n = max(0, min(self._seg_size, len(self._sbuf) - off, seq_diff(self.snd_max, self.snd_una)))
        fin = self.fin_seq is not None and seq_add(self.snd_una, n) == self.fin_seq and seq_gt(self.snd_max, self.fin_seq)
        if n or fin:
            payload = bytes(memoryview(self._sbuf)[off:off + n])
            self._emit(self.snd_una, ACK | (FIN if fin else 0), payload)
        self._rto_at = now + self._rto

    def _on_rto(self, now: float) -> None:
        self._rto_at = None
        if self.snd_una == self.snd_max:
            return
        # A guest that answers but shrank its window to zero is probed, not timed out.
        if not (self.snd_wnd == 0 and now - self._last_rx < self._rto):
            self._retries += 1
        limit = self.config.syn_retries if self.state in SYN_STATES else self.config.max_retries
        if self._retries > limit:
            self._abort_with("timeout")
            return
        self.counters["rto"] += 1
        self._rto = min(self._rto * 2, self.config.rto_max)
        self._rtt_seq = None
        self._recover = None
        self._dupacks = 0
        if self.state in SYN_STATES:
            self._send_syn(now)
            return
        # Go back N: resend from snd_una, restarting from one segment (slow start).
        self.counters["retransmits"] += 1
        self.snd_nxt = self.snd_una
        self._cwnd = self._seg_size
        self._output(now)
        if self.snd_nxt == self.snd_una:   # a zero window let nothing out: probe with the head
            self._retransmit_head(now)
        self._rto_at = now + self._rto

    def _on_persist(self, now: float) -> None:
        self._persist_at = None
        if self.snd_wnd or self.snd_una != self.snd_max:
            return
        self._probes += 1
        if self._probes > self.config.max_retries:
            self._abort_with("timeout")
            return
        self.counters["window_probes"] += 1
        self._emit(seq_add(self.snd_una, -1), ACK)     # an old seq: the guest ACKs its window
        self._persist_backoff = min(self._persist_backoff * 2, self.config.rto_max)
        self._persist_at = now + self._persist_backoff

    def _send_syn(self, now: float) -> None:
        flags = SYN if self.state is S.SYN_SENT else SYN | ACK
        self._emit(self.iss, flags, options=self._syn_options())
        self.snd_nxt = self.snd_max = seq_add(self.iss, 1)
        if self._retries == 0:
            self._rtt_seq, self._rtt_time = self.snd_nxt, now
        self._rto_at = now + self._rto

    def _send_ack(self) -> None:
        # seq is snd_max, not snd_nxt: after a timeout rewinds snd_nxt, an ACK numbered in the
        # already-received past would be dropped as a duplicate by the peer (as BSD does it).
        self._emit(self.snd_max, ACK)

    def _syn_options(self) -> bytes:
        offer = self.state is S.SYN_SENT or self._snd_wscale_on
        return build_options(mss=self.mss, wscale=self.config.recv_wscale if offer else None)

    def _emit(self, seq: int, flags: int, payload: bytes = b"", options: bytes = b"") -> None:
        """Queue a segment; every segment with ACK carries rcv_nxt and our current window."""
        ack = 0
        window = 0
        if not flags & RST or flags & ACK:
            window = self._advertise(bool(flags & SYN))
        if flags & ACK:
            ack = self.rcv_nxt
            self._ack_pending = 0
            self._ack_now = False
            self._delack_at = None
        self.counters["segments_out"] += 1
        self._out.append(OutSegment(self.local_port, self.remote_port, seq, ack, flags, window,
                                    payload, options))

    def _advertise(self, syn: bool) -> int:
        """The window field to send now, recording the right edge it promises.

        Never shrinks an edge already advertised, and opens only in steps of at least one MSS
        (receiver-side silly window avoidance, RFC 9293 3.8.6.2.2).
        """
        space = max(0, self._rcv_limit - self._unconsumed)
        cur = max(0, seq_diff(self._rcv_adv, self.rcv_nxt))
        if space < cur or (space > cur and space - cur < min(self._rcv_limit // 2, self.mss) and not syn):
            space = cur
        if syn:                            # the window in a SYN is never scaled
            field = min(space, 0xFFFF)
            shift = 0
        else:
            shift = self._rcv_wscale
            field = min((space + (1 << shift) - 1) >> shift, 0xFFFF)
        if self.state is not S.SYN_SENT:
            self._rcv_adv = seq_add(self.rcv_nxt, field << shift)
        return field

    def _rtt_sample(self, r: float) -> None:
        """RFC 6298 2.2/2.3: smoothed RTT and variance."""
        if self._srtt is None:
            self._srtt, self._rttvar = r, r / 2
        else:
            self._rttvar = 0.75 * self._rttvar + 0.25 * abs(self._srtt - r)
            self._srtt = 0.875 * self._srtt + 0.125 * r
        self._rto = self._rto_base()

    def _rto_base(self) -> float:
        cfg = self.config
        if self._srtt is None:
            return cfg.rto_initial
        return min(max(self._srtt + max(0.001, 4 * self._rttvar), cfg.rto_min), cfg.rto_max)

    @property
    def rto(self) -> float:
        """The current retransmission timeout (with any backoff)."""
        return self._rto

    def _abort_with(self, reason: str) -> None:
        if self.state not in (S.SYN_SENT, S.TIME_WAIT):
            self._emit(self.snd_max, RST | ACK)
        self._close(reason)

    def _close(self, reason: str) -> None:
        if self.state is S.CLOSED:
            return
        self.state = S.CLOSED
        self._rto_at = self._persist_at = self._delack_at = self._tw_at = None
        self._sbuf = bytearray()
        self._reasm.clear()
        self.close_reason = reason
        self._flush_rx()
        self._events.append(Closed(reason))

    def _flush_rx(self) -> None:
        if self._rx_chunks:
            chunks, self._rx_chunks = self._rx_chunks, []
            self._events.append(DataReceived(chunks[0] if len(chunks) == 1 else b"".join(chunks)))
