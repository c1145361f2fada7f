"""The gateway's end of one TCP connection with the guest: a sans-IO RFC 9293 state machine.

The guest's connections are terminated here: the gateway plays the remote server for outbound
flows (``TcpConnection.accept`` from the guest's SYN) and the client for port forwards
(``TcpConnection.connect``). Nothing here reads a clock or touches a socket: the adapter feeds
parsed segments, bytes from the host socket and the current time in, and takes segments to send,
events and the next timer deadline out.

How the adapter drives a connection::

    # a guest SYN (TcpConnection.is_connection_request(seg)) for a new 4-tuple, policy allowed
    # and host socket connected (else send reset_for(seg)):
    conn = TcpConnection.accept(syn, local_ip, local_port, guest_ip, guest_port, now, iss)
    # ...or conn = TcpConnection.connect(local_ip, local_port, guest_ip, guest_port, now, iss)
    # then, whenever anything happens (in any order, all with the current monotonic time):
    conn.receive(segment, now)     # a parsed segment from the guest for this 4-tuple
    n = conn.send(data, now)       # bytes from the host socket; n < len(data): stop reading
    conn.consumed(k)               # k bytes of DataReceived were written to the host socket
    conn.shutdown_write(now)       # the host socket reached EOF: FIN after the queued data
    conn.abort(now)                # the host side failed: RST
    conn.tick(now)                 # at or after conn.next_timer()
    # ...and after each call:
    for seg in conn.poll_segments(): send seg.to_bytes(conn.local_ip, conn.remote_ip) in IPv4
    for ev in conn.poll_events(): Connected / DataReceived / PeerClosed / Writable / Closed
    deadline = conn.next_timer()   # None: no timer (CLOSED)

A segment for a tuple with no connection (or one in CLOSED) is answered with ``reset_for(seg)``.
A new SYN for a tuple whose connection is in TIME_WAIT means the guest reused the port: drop the
old connection and accept anew. Sequence space layout of what we send: ISS (our SYN), then the
send buffer's bytes, then our FIN at ``fin_seq``.
"""
from __future__ import annotations

from collections import Counter
from ipaddress import IPv4Address

from engine.netstack.tcp.segment import (ACK, DEFAULT_MSS, FIN, RST, SYN, TcpSegment, build_options, seq_add,
                                         seq_diff, seq_ge, seq_gt, seq_le, seq_lt)
from engine.netstack.tcp.reassembly import Reassembly
from engine.netstack.tcp.sender import TcpSendSide
from engine.netstack.tcp.types import (OPEN_STATES, RECV_STATES, Closed, Connected, DataReceived, OutSegment,
                                       PeerClosed, TcpConfig, TcpEvent, TcpState, Writable, reset_for)

__all__ = ["TcpConnection", "TcpState", "TcpConfig", "OutSegment", "TcpEvent", "Connected",
           "DataReceived", "PeerClosed", "Writable", "Closed", "reset_for"]

S = TcpState


class TcpConnection:
    """One TCP connection between the gateway (local) and the guest (remote); see the module doc.

    ``counters`` counts what was dropped or repaired (out_of_window, dup_data, ooo_buffered,
    ooo_dropped, challenge_ack, retransmits, fast_retransmits, rto, ...); ``receive`` never raises.
    The sending side is a composed :class:`~engine.netstack.tcp.sender.TcpSendSide` (``tx``);
    this class keeps the state machine, the receiving side and the segments' ACK and window.
    """

    def __init__(self, local_ip: IPv4Address, local_port: int, remote_ip: IPv4Address,
                 remote_port: int, now: float, iss: int, mss: int, config: TcpConfig | None) -> None:
        cfg = self.config = config or TcpConfig()
        self.local_ip, self.local_port = local_ip, local_port
        self.remote_ip, self.remote_port = remote_ip, remote_port
        self.state = S.CLOSED
        self.counters: Counter[str] = Counter()
        self.mss = mss                     # our MSS (MTU-derived), advertised in our SYN
        self._out: list[OutSegment] = []
        self._events: list[TcpEvent] = []
        self._rx_chunks: list[bytes] = []
        self.close_reason: str | None = None  # the reason of Closed, once closed
        self.tx = TcpSendSide(self, iss, cfg.segment_limit or min(mss, DEFAULT_MSS), cfg, self.counters)
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

    # -- what the send side uses (SendHost); its own state is read on self.tx -----------------

    def notify(self, event: TcpEvent) -> None:
        self._events.append(event)

    def touch(self, now: float) -> None:
        self._last_active = now

    @property
    def last_rx(self) -> float:
        return self._last_rx

    def send(self, data: bytes | bytearray | memoryview, now: float) -> int:
        """Queue bytes for the guest; returns how many fit in the send buffer (maybe 0).

        Accepted before the handshake completes too (sent once it does). After
        ``shutdown_write`` or once the connection is closing, nothing is accepted.
        """
        return self.tx.send(data, now)

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def accept(cls, syn: TcpSegment, local_ip: IPv4Address, local_port: int,
               remote_ip: IPv4Address, remote_port: int, now: float, iss: int, mss: int = 1460,
               config: TcpConfig | None = None) -> TcpConnection:
        """Answer the guest's ``syn`` with a SYN-ACK (state SYN_RECEIVED).

        The adapter calls this once the policy allowed the flow and the host socket connected;
        for a denied or refused flow it sends ``reset_for(syn)`` instead. ``syn`` must be a
        connection request (SYN without ACK or RST): ValueError otherwise.
        """
        if not cls.is_connection_request(syn):
            raise ValueError("accept() needs a SYN without ACK or RST")
        conn = cls(local_ip, local_port, remote_ip, remote_port, now, iss, mss, config)
        conn._learn_syn(syn, offered_wscale=syn.wscale is not None)
        conn.tx.snd_wnd = syn.window          # the window in a SYN is never scaled (RFC 7323)
        conn.state = S.SYN_RECEIVED
        conn.tx.send_syn(now)
        return conn

    @classmethod
    def connect(cls, local_ip: IPv4Address, local_port: int, remote_ip: IPv4Address,
                remote_port: int, now: float, iss: int, mss: int = 1460,
                config: TcpConfig | None = None) -> TcpConnection:
        """Open a connection to the guest (port forwards): sends SYN (state SYN_SENT)."""
        conn = cls(local_ip, local_port, remote_ip, remote_port, now, iss, mss, config)
        conn.state = S.SYN_SENT
        conn.tx.send_syn(now)
        return conn

    reset_for = staticmethod(reset_for)

    @staticmethod
    def is_connection_request(seg: TcpSegment) -> bool:
        """Whether ``seg`` may open a connection (``accept`` takes it): SYN without ACK or RST."""
        return bool(seg.flags & SYN) and not seg.flags & (ACK | RST)

    # -- adapter inputs --------------------------------------------------------------------

    def shutdown_write(self, now: float) -> None:
        """Send FIN after everything queued (half close); the guest may keep sending."""
        if self.state not in OPEN_STATES or self.tx.fin_seq is not None:
            return
        self.tx.fin_seq = seq_add(self.tx.buf_seq, len(self.tx.buf))
        if self.state is S.ESTABLISHED:
            self.state = S.FIN_WAIT_1
        elif self.state is S.CLOSE_WAIT:
            self.state = S.LAST_ACK
        # In a SYN state the FIN waits for the handshake (see _establish).
        self.tx.output(now)

    def abort(self, now: float) -> None:
        """Reset the connection -> Closed('aborted'); sends RST unless in SYN_SENT or TIME_WAIT."""
        if self.state is not S.CLOSED:
            self.abort_with("aborted")

    def consumed(self, n: int) -> None:
        """The adapter handed ``n`` bytes of DataReceived on: they no longer fill our window.

        Sends a window update when that opens the window enough to matter (so a guest stalled
        on a full window resumes without waiting for its persist probe).
        """
        self._unconsumed = max(0, self._unconsumed - n)
        if self.state not in RECV_STATES:
            return
        cur = max(0, seq_diff(self._rcv_adv, self.rcv_nxt))
        space = self._rcv_limit - self._unconsumed
        if space - cur >= min(self._rcv_limit // 2, 2 * self.mss) or (cur < self.mss <= space):
            self._send_ack()

    # -- outputs ---------------------------------------------------------------------------

    def poll_segments(self) -> list[OutSegment]:
        """Segments to send to the guest, oldest first (the list is handed over)."""
        out, self._out = self._out, []
        return out

    def poll_packets(self) -> list[bytes]:
        """``poll_segments`` already built as TCP bytes (local -> remote), ready for IPv4."""
        lip, rip = self.local_ip, self.remote_ip
        return [seg.to_bytes(lip, rip) for seg in self.poll_segments()]

    def poll_events(self) -> list[TcpEvent]:
        """Events since the last call, in order (consecutive data coalesced)."""
        self._flush_rx()
        ev, self._events = self._events, []
        return ev

    @property
    def closed(self) -> bool:
        """Whether the connection reached CLOSED."""
        return self.state is S.CLOSED

    def next_timer(self) -> float | None:
        """When ``tick`` must next be called (absolute, same clock as ``now``), or None."""
        if self.state is S.CLOSED:
            return None
        cands = [t for t in (self.tx.rto_at, self.tx.persist_at, self._delack_at, self._tw_at) if t is not None]
        cfg = self.config
        if self.state is S.FIN_WAIT_2:
            cands.append(self._last_rx + cfg.fin_wait_2_timeout)
        if cfg.idle_timeout is not None and self.state is not S.TIME_WAIT:
            cands.append(self._last_active + cfg.idle_timeout)
        ka = self._keepalive_due()
        if ka is not None:
            cands.append(ka)
        return min(cands) if cands else None

    def tick(self, now: float) -> None:
        """Run every timer that is due: retransmission, persist, delayed ACK, keepalive, timeouts."""
        st = self.state
        if st is S.CLOSED:
            return
        cfg = self.config
        if self._tw_at is not None and now >= self._tw_at:
            self._close("closed")
            return
        if st is S.FIN_WAIT_2 and now >= self._last_rx + cfg.fin_wait_2_timeout:
            self.abort_with("timeout")
            return
        if cfg.idle_timeout is not None and st is not S.TIME_WAIT and now >= self._last_active + cfg.idle_timeout:
            self.abort_with("idle")
            return
        if self.tx.rto_at is not None and now >= self.tx.rto_at:
            self.tx.on_rto(now)
            if self.state is S.CLOSED:
                return
        if self.tx.persist_at is not None and now >= self.tx.persist_at:
            self.tx.on_persist(now)
            if self.state is S.CLOSED:
                return
        ka = self._keepalive_due()
        if ka is not None and now >= ka:
            if self._ka_sent >= cfg.keepalive_probes:
                self.abort_with("keepalive")
                return
            self._ka_sent += 1
            self.emit(seq_add(self.tx.snd_una, -1), ACK)  # an old seq: the guest must ACK it
        if self._delack_at is not None and now >= self._delack_at:
            self._send_ack()

    # -- receiving -------------------------------------------------------------------------

    def receive(self, seg: TcpSegment, now: float) -> None:
        """Process one segment from the guest (RFC 9293 3.10.7). Never raises."""
        st = self.state
        if st is S.CLOSED:
            self.counters["after_close"] += 1
            return
        self.counters["segments_in"] += 1
        if st is S.SYN_SENT:
            self._rx_syn_sent(seg, now)
        else:
            # Even a duplicate shows the guest is alive and trying (its ACKs may be getting
            # lost): it holds off the FIN_WAIT_2 and idle timeouts.
            self._last_rx = self._last_active = now
            self._rx_synchronized(seg, now)
        if self.state is S.CLOSED:
            return
        self.tx.output(now)
        if self._ack_now:
            self._send_ack()
        elif self._ack_pending and self._delack_at is None:
            self._delack_at = now + self.config.delayed_ack

    def _rx_syn_sent(self, seg: TcpSegment, now: float) -> None:
        flags = seg.flags
        if flags & ACK:
            if seq_le(seg.ack, self.tx.iss) or seq_gt(seg.ack, self.tx.snd_max):
                self.counters["bad_ack"] += 1
                if not flags & RST:
                    self.emit(seg.ack, RST)
                return
        if flags & RST:
            if flags & ACK:
                self._close("refused")
            return
        if not flags & SYN:
            return
        self._learn_syn(seg, offered_wscale=True)
        # What our SYN promised (its window field is never scaled).
        self._rcv_adv = seq_add(self.rcv_nxt, min(self.config.recv_buffer, 0xFFFF))
        self._heard(now)
        if flags & ACK:
            self.tx.wl1, self.tx.wl2 = seg.seq, seg.ack
            self.tx.snd_wnd = seg.window      # unscaled in a SYN
            self.tx.ack_new(seg.ack, now)
            self._establish()
            self._ack_now = True
        else:
            # Simultaneous open: both sides sent SYN; answer with SYN-ACK.
            self.state = S.SYN_RECEIVED
            self.emit(self.tx.iss, SYN | ACK, options=self.syn_options())

    def _rx_synchronized(self, seg: TcpSegment, now: float) -> None:
        flags = seg.flags
        st = self.state
        if st is S.SYN_RECEIVED and flags & SYN and not flags & (ACK | RST) and seg.seq == self.irs:
            # The guest retransmitted its SYN: our SYN-ACK was lost.
            self.counters["dup_syn"] += 1
            self.emit(self.tx.iss, SYN | ACK, options=self.syn_options())
            return
        plen = len(seg.payload)
        seg_len = plen + (1 if flags & SYN else 0) + (flags & FIN)
        wnd = max(0, seq_diff(self._rcv_adv, self.rcv_nxt))
        start = seq_diff(seg.seq, self.rcv_nxt)
        if seg_len == 0:
            ok = 0 <= start <= wnd         # like Linux: the right edge itself still carries ACKs
        else:
            # With a zero window the segment at rcv_nxt is still read for ACK/RST/FIN (its
            # data is trimmed away below), as RFC 9293 asks.
            ok = start == 0 or (wnd > 0 and (0 <= start < wnd or 0 <= start + seg_len - 1 < wnd))
        if not ok:
            self.counters["out_of_window"] += 1
            if not flags & RST:
                self._ack_now = True       # tells a retransmitting guest what we have
                if st is S.TIME_WAIT and flags & FIN:
                    self._tw_at = now + self.config.time_wait  # its FIN again: our ACK was lost
            return
        self._heard(now)
        if flags & RST:
            if start == 0:
                self._close("reset")
            else:
                self.counters["challenge_ack"] += 1   # RFC 5961 3.2: in window but not exact
                self._ack_now = True
            return
        if flags & SYN:
            self.counters["challenge_ack"] += 1       # RFC 5961 4.2
            self._ack_now = True
            return
        if not flags & ACK:
            self.counters["no_ack"] += 1
            return
        if st is S.SYN_RECEIVED:
            if not (seq_lt(self.tx.snd_una, seg.ack) and seq_le(seg.ack, self.tx.snd_max)):
                self.counters["bad_ack"] += 1
                self.emit(seg.ack, RST)
                return
            self.tx.wl1, self.tx.wl2 = seg.seq, seg.ack
            self.tx.snd_wnd = seg.window << self.tx.wscale
            self.tx.ack_new(seg.ack, now)
            self._establish()
        elif seq_gt(seg.ack, self.tx.snd_max):
            self.counters["ack_unsent"] += 1
            self._ack_now = True
            return
        else:
            self._rx_ack(seg, now)
            if self.state is S.CLOSED:
                return
        if plen or flags & FIN:
            self._rx_data(seg, start, wnd, now)

    def _rx_ack(self, seg: TcpSegment, now: float) -> None:
        """ACK field and window of an acceptable segment (RFC 9293, RFC 5681 dup ACKs)."""
        ack = seg.ack
        una = self.tx.snd_una
        if seq_lt(ack, una):
            return                         # an old ACK: nothing new, and its window is stale
        window_changed = False
        if seq_lt(self.tx.wl1, seg.seq) or (self.tx.wl1 == seg.seq and seq_le(self.tx.wl2, ack)):
            wnd = seg.window << self.tx.wscale
            window_changed = wnd != self.tx.snd_wnd
            self.tx.snd_wnd = wnd
            self.tx.wl1, self.tx.wl2 = seg.seq, ack
            if wnd:
                self.tx.persist_at = None
        if ack == una:
            if (self.tx.snd_max != una and not seg.payload and not seg.flags & (SYN | FIN)
                    and not window_changed):
                self.tx.dupacks += 1
                if self.tx.dupacks == 3 and self.tx.recover is None:
                    # Fast retransmit (RFC 5681/6582): resend the head, halve the window.
                    self.counters["fast_retransmits"] += 1
                    self.tx.recover = self.tx.snd_max
                    self.tx.cwnd = max(seq_diff(self.tx.snd_max, una) // 2, 2 * self.tx.seg_size)
                    self.tx.retransmit_head(now)
            return
        acked = seq_diff(ack, una)
        self.tx.ack_new(ack, now)
        if self.tx.recover is not None:
            if seq_ge(ack, self.tx.recover):
                self.tx.recover = None
            else:
                self.tx.retransmit_head(now)   # partial ACK: the next hole is lost too
        else:
            # Byte counting (RFC 3465 without its per-ACK cap): a guest whose GRO merges our
            # segments ACKs rarely and in big steps; counting segments would starve the window.
            self.tx.cwnd = min(self.tx.cwnd + acked, 4 * self.config.send_buffer)
        fin = self.tx.fin_seq
        if fin is not None and seq_gt(ack, fin):
            st = self.state
            if st is S.FIN_WAIT_1:
                self.state = S.FIN_WAIT_2
            elif st is S.CLOSING:
                self._enter_time_wait(now)
            elif st is S.LAST_ACK:
                self._close("closed")

    def _rx_data(self, seg: TcpSegment, start: int, wnd: int, now: float) -> None:
        """Payload and FIN of an acceptable segment: deliver, buffer out of order, or drop."""
        if self.state not in RECV_STATES:
            self.counters["data_after_fin"] += 1   # the guest already sent FIN: nothing follows
            return
        payload = seg.payload
        fin = bool(seg.flags & FIN)
        if start < 0:                      # trim what we already have
            self.counters["dup_data"] += 1
            payload = payload[-start:]
            start = 0
        room = wnd - start
        if len(payload) > room:            # trim what lies beyond the window
            self.counters["beyond_window"] += 1
            payload = payload[:max(room, 0)]
            fin = False
            self._ack_now = True
        if len(payload) > self._rcv_mss:    # the guest's segment size, for the ACK policy
            self._rcv_mss = min(len(payload), self.mss)
        if start > 0:
            if self._reasm.add(self._rcv_off + start, payload, fin):
                self.counters["ooo_buffered"] += 1
            else:
                self.counters["ooo_dropped"] += 1
            self._ack_now = True           # a duplicate ACK tells the guest about the hole
            return
        if payload:
            self._deliver(payload)
        if self._reasm and not fin:
            chunks, _end, fin = self._reasm.pop_ready(self._rcv_off)
            for chunk in chunks:
                self._deliver(chunk)
            self._ack_now = True           # filling a hole is acknowledged at once (RFC 5681)
        elif fin:
            self._reasm.clear()
        if fin:
            self.rcv_nxt = seq_add(self.rcv_nxt, 1)
            self._rcv_off += 1
            self._ack_now = True
            self._peer_fin(now)
        elif self._quickacks > 0:          # quick ACKs while the guest's window grows
            self._quickacks -= 1
            self._ack_now = True
        elif self._ack_pending >= 2 * self._rcv_mss:
            self._ack_now = True           # at least every second full-sized segment

    def _deliver(self, data: bytes) -> None:
        n = len(data)
        self.rcv_nxt = seq_add(self.rcv_nxt, n)
        self._rcv_off += n
        self._unconsumed += n
        self._ack_pending += n
        self._rx_chunks.append(data)

    def _peer_fin(self, now: float) -> None:
        self._flush_rx()
        self._events.append(PeerClosed())
        st = self.state
        if st is S.ESTABLISHED:
            self.state = S.CLOSE_WAIT
        elif st is S.FIN_WAIT_1:
            self.state = S.CLOSING
        elif st is S.FIN_WAIT_2:
            self._enter_time_wait(now)

    def _keepalive_due(self) -> float | None:
        cfg = self.config
        if (cfg.keepalive_idle is None or self.state not in (S.ESTABLISHED, S.CLOSE_WAIT)
                or self.tx.snd_una != self.tx.snd_max or self.tx.persist_at is not None):
            return None
        return self._last_rx + cfg.keepalive_idle + self._ka_sent * cfg.keepalive_interval

    # -- state helpers ---------------------------------------------------------------------

    def _learn_syn(self, syn: TcpSegment, offered_wscale: bool) -> None:
        """Take the peer's ISN, MSS and window scale from its SYN."""
        self.irs = syn.seq
        self.rcv_nxt = seq_add(syn.seq, 1)
        self._rcv_adv = self.rcv_nxt
        peer_mss = syn.mss if syn.mss else DEFAULT_MSS
        # Like Linux, never below 48 bytes whatever the peer claims (CVE-2019-11479).
        self.tx.seg_size = self.config.segment_limit or max(48, min(peer_mss, self.mss))
        self.tx.cwnd = self.config.initial_cwnd * self.tx.seg_size
        if offered_wscale and syn.wscale is not None:
            self.tx.wscale_on = True
            self.tx.wscale = syn.wscale
            self._rcv_wscale = self.config.recv_wscale
            self._rcv_limit = min(self.config.recv_buffer, 0xFFFF << self._rcv_wscale)

    def _establish(self) -> None:
        self.state = S.ESTABLISHED if self.tx.fin_seq is None else S.FIN_WAIT_1
        self.tx.rto = self.tx.rto_base()
        self._events.append(Connected())

    def _heard(self, now: float) -> None:
        """The guest sent an acceptable segment: it is alive."""
        self._last_rx = self._last_active = now
        self._ka_sent = 0
        self.tx.probes = 0

    def _enter_time_wait(self, now: float) -> None:
        self.state = S.TIME_WAIT
        self.tx.rto_at = self.tx.persist_at = None
        self._tw_at = now + self.config.time_wait

    def _send_ack(self) -> None:
        # seq is snd_max, not snd_nxt: after a timeout rewinds snd_nxt, an ACK numbered in the
        # already-received past would be dropped as a duplicate by the peer (as BSD does it).
        self.emit(self.tx.snd_max, ACK)

    def syn_options(self) -> bytes:
        offer = self.state is S.SYN_SENT or self.tx.wscale_on
        return build_options(mss=self.mss, wscale=self.config.recv_wscale if offer else None)

    def emit(self, seq: int, flags: int, payload: bytes = b"", options: bytes = b"") -> None:
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

    def abort_with(self, reason: str) -> None:
        if self.state not in (S.SYN_SENT, S.TIME_WAIT):
            self.emit(self.tx.snd_max, RST | ACK)
        self._close(reason)

    def _close(self, reason: str) -> None:
        if self.state is S.CLOSED:
            return
        self.state = S.CLOSED
        self.tx.stop()
        self._delack_at = self._tw_at = None
        self._reasm.clear()
        self.close_reason = reason
        self._flush_rx()
        self._events.append(Closed(reason))

    def _flush_rx(self) -> None:
        if self._rx_chunks:
            chunks, self._rx_chunks = self._rx_chunks, []
            self._events.append(DataReceived(chunks[0] if len(chunks) == 1 else b"".join(chunks)))
