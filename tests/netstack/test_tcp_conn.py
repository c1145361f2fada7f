"""TCP connection core: handshake traces, data, half close, RST, timers.

Segments go through the wire format (``to_bytes`` + ``parse_tcp``) so checksums and options are
exercised too. The simulated channel is a seeded event queue with injected time.
"""
from __future__ import annotations


import pytest

from engine.netstack.tcp.segment import ACK, FIN, PSH, RST, SYN, TcpSegment, parse_tcp
from engine.netstack.tcp.connection import (Closed, Connected, DataReceived, PeerClosed, TcpConfig,
                                      TcpConnection, TcpState, Writable, reset_for)
from tests.netstack.tcp_helpers import GW, GUEST, GP, SP, wire, syn, gseg, events, established


# -- handshakes ---------------------------------------------------------------------------------

def test_accept_answers_syn_ack_with_options() -> None:
    c = TcpConnection.accept(syn(5000), GW, SP, GUEST, GP, 0.0, 1000)
    [sa] = c.poll_segments()
    w = wire(sa)
    assert w.flags == SYN | ACK and w.seq == 1000 and w.ack == 5001
    assert w.mss == 1460 and w.wscale == TcpConfig().recv_wscale == 3 and not w.sack_permitted
    assert w.window == 65535 and (w.src_port, w.dst_port) == (SP, GP)
    assert c.state is TcpState.SYN_RECEIVED and c.next_timer() == pytest.approx(1.0)
    c.receive(gseg(5001, 1001), 0.05)
    assert c.state is TcpState.ESTABLISHED and events(c) == [Connected()]
    assert c.tx.rto == pytest.approx(0.2)  # 50 ms RTT sample, clamped to the 200 ms minimum
    assert c.poll_segments() == [] and c.next_timer() is None


def test_accept_without_window_scale_does_not_offer_it() -> None:
    c = TcpConnection.accept(syn(5000, mss=None, ws=None), GW, SP, GUEST, GP, 0.0, 1000)
    w = wire(c.poll_segments()[0])
    assert w.wscale is None and w.mss == 1460
    c.receive(gseg(5001, 1001, window=3000), 0.01)
    assert c.send(b"x" * 2000, 0.02) == 2000
    assert [len(s.payload) for s in c.poll_segments()] == [536, 536, 536, 392]  # RFC default MSS


def test_accept_rejects_non_syn() -> None:
    assert TcpConnection.is_connection_request(syn()) and not TcpConnection.is_connection_request(gseg(1, 2, SYN | ACK))
    assert not TcpConnection.is_connection_request(gseg(1, 2, SYN | RST))
    with pytest.raises(ValueError):
        TcpConnection.accept(gseg(1, 2), GW, SP, GUEST, GP, 0.0, 1)


def test_syn_ack_retransmitted_on_dup_syn_and_timeout_then_gives_up() -> None:
    cfg = TcpConfig(syn_retries=2)
    c = TcpConnection.accept(syn(5000), GW, SP, GUEST, GP, 0.0, 1000, config=cfg)
    c.poll_segments()
    c.receive(syn(5000), 0.3)
    assert [s.flags for s in c.poll_segments()] == [SYN | ACK]
    c.tick(1.0)
    assert [s.flags for s in c.poll_segments()] == [SYN | ACK]
    assert c.next_timer() == pytest.approx(3.0)
    c.tick(3.0)
    c.poll_segments()
    c.tick(7.0)
    assert c.closed and events(c) == [Closed("timeout")]
    assert [s.flags for s in c.poll_segments()] == [RST | ACK]


def test_bad_ack_in_syn_received_is_reset() -> None:
    c = TcpConnection.accept(syn(5000), GW, SP, GUEST, GP, 0.0, 1000)
    c.poll_segments()
    c.receive(gseg(5001, 777), 0.01)
    [r] = c.poll_segments()
    assert r.flags == RST and r.seq == 777 and c.state is TcpState.SYN_RECEIVED


def test_connect_handshake_and_refused() -> None:
    c = TcpConnection.connect(GW, 8080, GUEST, 80, 0.0, 0xFFFFFFFF)
    [s] = c.poll_segments()
    w = wire(s)
    assert w.flags == SYN and w.seq == 0xFFFFFFFF and w.mss == 1460 and w.wscale == 3
    # A SYN-ACK acknowledging the wrong thing gets a RST and changes nothing.
    c.receive(TcpSegment(80, 8080, 9, 5, SYN | ACK, 1000), 0.01)
    assert [x.flags for x in c.poll_segments()] == [RST] and c.state is TcpState.SYN_SENT
    c.receive(TcpSegment(80, 8080, 9, 0, SYN | ACK, 1000, mss=1000, wscale=1), 0.02)
    [a] = c.poll_segments()
    assert a.flags == ACK and a.seq == 0 and a.ack == 10
    assert c.state is TcpState.ESTABLISHED and events(c) == [Connected()]
    assert c.tx.snd_wnd == 1000  # SYN window is never scaled
    c2 = TcpConnection.connect(GW, 8080, GUEST, 80, 0.0, 100)
    c2.poll_segments()
    c2.receive(TcpSegment(80, 8080, 0, 5, RST | ACK, 0), 0.01)
    assert not c2.closed  # unacceptable ACK: ignored
    c2.receive(TcpSegment(80, 8080, 0, 101, RST | ACK, 0), 0.01)
    assert c2.closed and events(c2) == [Closed("refused")] and c2.poll_segments() == []


def test_simultaneous_open() -> None:
    c = TcpConnection.connect(GW, 8080, GUEST, 80, 0.0, 100)
    c.poll_segments()
    c.receive(TcpSegment(80, 8080, 50, 0, SYN, 1000, mss=1460), 0.01)
    [sa] = c.poll_segments()
    assert sa.flags == SYN | ACK and sa.seq == 100 and sa.ack == 51 and c.state is TcpState.SYN_RECEIVED
    c.receive(TcpSegment(80, 8080, 51, 101, ACK, 1000), 0.02)
    assert c.state is TcpState.ESTABLISHED and events(c) == [Connected()]


def test_reset_for() -> None:
    r = reset_for(syn(5000))
    assert r is not None and (r.flags, r.seq, r.ack, r.src_port, r.dst_port) == (RST | ACK, 0, 5001, SP, GP)
    r = reset_for(gseg(10, 99, ACK, payload=b"abc"))
    assert r is not None and (r.flags, r.seq) == (RST, 99)
    r = reset_for(gseg(0xFFFFFFFF, 0, FIN, payload=b"ab"))
    assert r is not None and r.ack == 2
    assert reset_for(gseg(1, 2, RST)) is None
    assert TcpConnection.reset_for(gseg(1, 2, RST | ACK)) is None


# -- data, windows, ACK policy ---------------------------------------------------------------

def test_segmentation_respects_mss_window_and_scale() -> None:
    c = established(ws=3, mss=1000)          # guest window field 512 << 3 = 4096
    assert c.tx.snd_wnd == 4096
    assert c.send(b"a" * 10000, 0.1) == 10000
    segs = c.poll_segments()
    assert [len(s.payload) for s in segs] == [1000, 1000, 1000, 1000, 96]
    assert segs[0].seq == 1001 and all(s.flags == ACK for s in segs)  # more data waits: no PSH
    c.receive(gseg(5001, 1001 + 4096, window=512), 0.2)
    assert sum(len(s.payload) for s in c.poll_segments()) == 4096
    assert c.tx.unsent == 10000 - 4096


def test_receive_in_order_delayed_ack_and_every_second_segment() -> None:
    c = established(config=TcpConfig(quickacks=0))
    c.receive(gseg(5001, 1001, payload=b"x" * 100), 0.1)
    assert c.poll_segments() == [] and c.next_timer() == pytest.approx(0.14)
    assert events(c) == [DataReceived(b"x" * 100)]
    c.tick(0.14)
    [a] = c.poll_segments()
    assert a.ack == 5101 and a.flags == ACK
    c.receive(gseg(5101, 1001, payload=b"y" * 1460), 0.2)
    assert c.poll_segments() == []
    c.receive(gseg(5101 + 1460, 1001, payload=b"z" * 1460), 0.21)
    [a] = c.poll_segments()
    assert a.ack == 5101 + 2920
    assert events(c) == [DataReceived(b"y" * 1460 + b"z" * 1460)]  # coalesced


def test_out_of_order_duplicates_and_overlaps() -> None:
    c = established()
    data = bytes(range(256)) * 40
    base = 5001
    c.receive(gseg(base + 2000, 1001, payload=data[2000:3000]), 0.1)
    c.receive(gseg(base + 4000, 1001, payload=data[4000:5000], flags=ACK | FIN), 0.1)
    c.receive(gseg(base + 2000, 1001, payload=data[2000:3000]), 0.1)      # duplicate held piece
    dup_acks = c.poll_segments()
    assert [s.ack for s in dup_acks] == [base] * 3 and c.counters["ooo_dropped"] == 1
    assert events(c) == []
    c.receive(gseg(base, 1001, payload=data[0:1500]), 0.2)
    c.receive(gseg(base + 1000, 1001, payload=data[1000:2500]), 0.2)      # overlaps both sides
    assert c.poll_segments()[-1].ack == base + 3000
    c.receive(gseg(base + 500, 1001, payload=data[500:1000]), 0.2)        # wholly old: dup ACK
    assert c.counters["out_of_window"] == 1 and c.poll_segments()[-1].ack == base + 3000
    c.receive(gseg(base + 2900, 1001, payload=data[2900:4100]), 0.3)      # fills the last hole
    [a] = c.poll_segments()
    assert a.ack == base + 5001  # 5000 bytes + FIN
    ev = events(c)
    assert ev[-1] == PeerClosed() and b"".join(e.data for e in ev if isinstance(e, DataReceived)) == data[:5000]
    assert c.state is TcpState.CLOSE_WAIT


def test_handshake_ack_lost_data_completes_it() -> None:
    c = TcpConnection.accept(syn(5000), GW, SP, GUEST, GP, 0.0, 1000)
    c.poll_segments()
    c.receive(gseg(5001, 1001, ACK | PSH, payload=b"GET / HTTP/1.1\r\n\r\n"), 0.01)
    assert events(c) == [Connected(), DataReceived(b"GET / HTTP/1.1\r\n\r\n")]
    assert c.poll_segments()[0].ack == 5001 + 18               # quick ACK at the start


def test_offloaded_large_segments_both_ways() -> None:
    # The guest hands us 60 KB segments (host TSO); we may send large ones (guest TSO).
    c = established(config=TcpConfig(segment_limit=60000, quickacks=0))
    big = bytes(60000)
    c.receive(gseg(5001, 1001, window=512, payload=big), 0.1)
    [a] = c.poll_segments()
    assert a.ack == 5001 + 60000 and events(c) == [DataReceived(big)]
    c.send(bytes(100000), 0.2)
    assert [len(s.payload) for s in c.poll_segments()] == [60000, 5536]  # 64 KiB window


def test_reassembly_bounded() -> None:
    c = established(config=TcpConfig(ooo_segments=4))
    for i in range(10):
        c.receive(gseg(5001 + 100 + 10 * i, 1001, payload=b"q" * 5), 0.1)
    assert c.counters["ooo_buffered"] == 4 and c.counters["ooo_dropped"] == 6


def test_receive_window_closes_until_consumed() -> None:
    cfg = TcpConfig(recv_buffer=8192, quickacks=0)
    c = established(config=cfg)
    assert cfg.recv_wscale == 0
    seq = 5001
    for _ in range(4):
        c.receive(gseg(seq, 1001, payload=b"d" * 2048), 0.1)
        seq += 2048
    [a1, a2] = c.poll_segments()
    assert a2.ack == seq and a2.window == 0
    c.receive(gseg(seq, 1001, payload=b"e" * 100), 0.2)                   # beyond a zero window
    [a] = c.poll_segments()
    assert a.ack == seq and a.window == 0 and c.counters["beyond_window"] == 1
    c.receive(gseg(seq - 1, 1001), 0.3)                                     # a window probe
    assert c.poll_segments()[0].window == 0
    c.consumed(1000)                                                        # below one MSS: quiet
    assert c.poll_segments() == []
    c.consumed(7192)
    [u] = c.poll_segments()
    assert u.window == 8192 and u.ack == seq


def test_zero_window_persist_probe_and_reopen() -> None:
    c = established()
    c.receive(gseg(5001, 1001, window=0), 0.1)
    assert c.send(b"p" * 3000, 0.2) == 3000
    assert c.poll_segments() == [] and c.next_timer() == pytest.approx(0.4)
    c.tick(0.4)
    [p] = c.poll_segments()
    assert p.seq == 1000 and p.payload == b"" and p.flags == ACK      # seq snd_una - 1
    assert c.next_timer() == pytest.approx(0.8)
    c.receive(gseg(5001, 1001, window=0), 0.41)                       # still closed
    c.tick(0.8)
    assert len(c.poll_segments()) == 1 and c.next_timer() == pytest.approx(1.6)
    c.receive(gseg(5001, 1001, window=16), 0.85)                      # opens (16 << 7): data flows
    assert sum(len(s.payload) for s in c.poll_segments()) == 2048
    assert c.counters["window_probes"] == 2


def test_persist_gives_up_when_guest_is_silent() -> None:
    c = established(config=TcpConfig(max_retries=3))
    c.receive(gseg(5001, 1001, window=0), 0.1)
    c.send(b"p", 0.1)
    t = c.next_timer()
    while t is not None:
        c.tick(t)
        t = c.next_timer()
    assert events(c) == [Closed("timeout")] and c.counters["window_probes"] == 3


def test_writable_event_after_backpressure() -> None:
    c = established(config=TcpConfig(send_buffer=4096))
    assert c.send(b"w" * 5000, 0.1) == 4096 and c.tx.send_space == 0
    segs = c.poll_segments()
    c.receive(gseg(5001, segs[0].seq + 1460, window=512), 0.2)
    assert events(c) == [Writable(1460)] and c.send(b"v" * 2000, 0.2) == 1460


# -- retransmission ---------------------------------------------------------------------------

def test_rto_backoff_go_back_n_and_give_up() -> None:
    c = established(config=TcpConfig(max_retries=3), rtt=0.01)
    assert c.tx.rto == pytest.approx(0.2)
    c.send(b"r" * 3000, 1.0)
    first = c.poll_segments()
    assert [s.seq for s in first] == [1001, 2461, 3921]
    assert c.next_timer() == pytest.approx(1.2)
    c.tick(1.19)
    assert c.poll_segments() == []
    c.tick(1.2)
    [r] = c.poll_segments()                  # go back N, one segment (slow start after loss)
    assert r.seq == 1001 and len(r.payload) == 1460 and c.next_timer() == pytest.approx(1.6)
    c.tick(1.6)
    assert [s.seq for s in c.poll_segments()] == [1001] and c.next_timer() == pytest.approx(2.4)
    c.tick(c.next_timer())
    assert [s.seq for s in c.poll_segments()] == [1001] and c.next_timer() == pytest.approx(4.0)
    c.tick(c.next_timer())
    assert c.closed and events(c) == [Closed("timeout")]
    assert [s.flags for s in c.poll_segments()] == [RST | ACK]


def test_rto_recovers_when_acks_return() -> None:
    c = established()
    c.send(b"r" * 4000, 1.0)
    c.poll_segments()
    c.tick(1.2)
    assert [s.seq for s in c.poll_segments()] == [1001]
    c.receive(gseg(5001, 2461, window=512), 1.25)          # Karn: no RTT sample from this
    assert c.tx.rto == pytest.approx(0.2)                      # backoff cleared by a new ACK
    segs = c.poll_segments()
    assert [s.seq for s in segs] == [2461, 3921]            # cwnd grew to two segments
    c.receive(gseg(5001, 5001, window=512), 1.3)
    assert c.tx.unsent == 0 and c.next_timer() is None


def test_fast_retransmit_on_three_dup_acks_and_partial_ack() -> None:
    c = established()
    c.send(b"f" * 14600, 1.0)
    segs = c.poll_segments()
    assert len(segs) == 10
    for _ in range(2):
        c.receive(gseg(5001, 1001 + 1460, window=512), 1.01)
    c.receive(gseg(5001, 1001 + 1460, window=512), 1.01)    # first was the new ACK, 2 dups
    assert c.poll_segments() == [] and c.counters["fast_retransmits"] == 0
    c.receive(gseg(5001, 1001 + 1460, window=512), 1.02)    # third dup
    [fr] = c.poll_segments()
    assert fr.seq == 1001 + 1460 and c.counters["fast_retransmits"] == 1
    c.receive(gseg(5001, 1001 + 4380, window=512), 1.03)    # partial ACK: next hole resent
    assert c.poll_segments()[0].seq == 1001 + 4380
    c.receive(gseg(5001, 1001 + 14600, window=512), 1.04)
    assert c.tx.unsent == 0


# -- closing ----------------------------------------------------------------------------------

def test_half_close_both_orders_and_time_wait() -> None:
    c = established()
    c.send(b"bye", 1.0)
    c.shutdown_write(1.0)
    assert c.state is TcpState.FIN_WAIT_1 and c.send(b"more", 1.0) == 0
    [d, f] = c.poll_segments()
    assert d.flags == ACK | PSH and d.payload == b"bye" and c.tx.fin_seq == 1004
    assert f.flags == ACK | FIN and f.seq == 1004
    c.receive(gseg(5001, 1005, window=512), 1.1)
    assert c.state is TcpState.FIN_WAIT_2
    c.receive(gseg(5001, 1005, window=512, payload=b"still talking"), 1.2)  # guest half open
    assert events(c) == [DataReceived(b"still talking")]
    c.receive(gseg(5014, 1005, ACK | FIN, window=512), 1.3)
    assert c.state is TcpState.TIME_WAIT and events(c) == [PeerClosed()]
    assert c.poll_segments()[-1].ack == 5015
    c.receive(gseg(5014, 1005, ACK | FIN, window=512), 5.0)                  # FIN again
    assert c.poll_segments()[-1].ack == 5015 and c.next_timer() == pytest.approx(35.0)
    c.tick(35.0)
    assert c.closed and events(c) == [Closed("closed")] and c.next_timer() is None


def test_passive_close_last_ack() -> None:
    c = established()
    c.receive(gseg(5001, 1001, ACK | FIN, window=512), 1.0)
    assert c.state is TcpState.CLOSE_WAIT and events(c) == [PeerClosed()]
    assert c.send(b"reply", 1.1) == 5
    c.shutdown_write(1.1)
    assert c.state is TcpState.LAST_ACK
    segs = c.poll_segments()
    assert segs[-1].flags & FIN and segs[-1].seq == 1006
    c.receive(gseg(5002, 1007, window=512), 1.2)
    assert c.closed and events(c) == [Closed("closed")]


def test_simultaneous_close_closing() -> None:
    c = established()
    c.shutdown_write(1.0)
    c.poll_segments()
    c.receive(gseg(5001, 1001, ACK | FIN, window=512), 1.1)   # FIN crossing ours
    assert c.state is TcpState.CLOSING
    c.receive(gseg(5002, 1002, window=512), 1.2)
    assert c.state is TcpState.TIME_WAIT


def test_fin_retransmitted_and_fin_wait_2_timeout() -> None:
    c = established()
    c.shutdown_write(1.0)
    [f] = c.poll_segments()
    c.tick(1.2)
    [f2] = c.poll_segments()
    assert f2.flags == f.flags == ACK | FIN and f2.seq == f.seq
    c.receive(gseg(5001, 1002, window=512), 1.3)
    assert c.state is TcpState.FIN_WAIT_2 and c.next_timer() == pytest.approx(301.3)
    c.receive(gseg(5001, 1002, window=512), 200.0)          # the guest still talks
    assert c.next_timer() == pytest.approx(500.0)
    c.tick(500.0)
    assert events(c) == [Closed("timeout")]


def test_fin_queued_before_handshake_completes() -> None:
    c = TcpConnection.connect(GW, 8080, GUEST, 80, 0.0, 100)
    c.poll_segments()
    assert c.send(b"early", 0.0) == 5
    c.shutdown_write(0.0)
    c.receive(TcpSegment(80, 8080, 9, 101, SYN | ACK, 1000, mss=1000), 0.02)
    assert c.state is TcpState.FIN_WAIT_1
    [d] = c.poll_segments()
    assert d.payload == b"early" and d.flags & FIN and d.ack == 10


def test_rst_validation_and_challenge_acks() -> None:
    c = established()
    c.receive(gseg(5001 + 10, 0, RST), 1.0)                  # in window, not exact: challenge
    assert [s.flags for s in c.poll_segments()] == [ACK] and not c.closed
    c.receive(gseg(5001 + 10**6, 0, RST), 1.0)               # outside: silently dropped
    assert c.poll_segments() == [] and not c.closed
    c.receive(gseg(5001, 1001, SYN), 1.0)                    # SYN when synchronized
    assert [s.flags for s in c.poll_segments()] == [ACK] and c.counters["challenge_ack"] == 2
    c.receive(gseg(5001, 0, RST), 1.0)
    assert c.closed and events(c) == [Closed("reset")] and c.poll_segments() == []
    c.receive(gseg(5001, 1001), 2.0)                         # after CLOSED: ignored
    assert c.poll_segments() == [] and c.counters["after_close"] == 1


def test_out_of_window_and_unsent_acks_are_acked_and_dropped() -> None:
    c = established()
    c.receive(gseg(5001 + 10**6, 1001, payload=b"far"), 1.0)
    assert [s.ack for s in c.poll_segments()] == [5001] and events(c) == []
    c.receive(gseg(5001, 9999, payload=b"acks the future"), 1.0)
    assert [s.ack for s in c.poll_segments()] == [5001] and events(c) == []
    c.receive(gseg(5001, 1001, flags=0, payload=b"no ack bit"), 1.0)
    assert events(c) == [] and c.counters["no_ack"] == 1


def test_abort_sends_rst() -> None:
    c = established()
    c.abort(1.0)
    [r] = c.poll_segments()
    assert r.flags == RST | ACK and r.seq == 1001 and events(c) == [Closed("aborted")]
    c.abort(2.0)
    assert c.poll_segments() == [] and events(c) == []
    tw = established()
    tw.shutdown_write(1.0)
    tw.receive(gseg(5001, 1002, ACK | FIN, window=512), 1.1)
    assert tw.state is TcpState.TIME_WAIT
    tw.poll_segments()
    tw.abort(1.2)                                            # nothing left to reset
    assert tw.poll_segments() == [] and tw.close_reason == "aborted"


def test_poll_packets_are_wire_ready() -> None:
    c = TcpConnection.accept(syn(5000), GW, SP, GUEST, GP, 0.0, 1000)
    [raw] = c.poll_packets()
    seg = parse_tcp(GW, GUEST, raw)
    assert seg.flags == SYN | ACK and seg.ack == 5001


# -- keepalive and idle -------------------------------------------------------------------------

def test_keepalive_probes_then_abort() -> None:
    c = established(config=TcpConfig(keepalive_idle=10.0, keepalive_interval=1.0, keepalive_probes=3))
    assert c.next_timer() == pytest.approx(10.01)
    c.tick(10.01)
    [p] = c.poll_segments()
    assert p.seq == 1000 and p.payload == b""
    c.receive(gseg(5001, 1001, window=512), 10.5)            # answered: idle restarts
    assert c.next_timer() == pytest.approx(20.5)
    for t in (20.5, 21.5, 22.5):
        c.tick(t)
        assert len(c.poll_segments()) == 1
    c.tick(23.5)
    assert c.closed and events(c) == [Closed("keepalive")]
    assert [s.flags for s in c.poll_segments()] == [RST | ACK]


def test_idle_timeout() -> None:
    c = established(config=TcpConfig(idle_timeout=100.0))
    c.send(b"x", 50.0)
    c.receive(gseg(5001, 1002, window=512), 50.1)
    assert c.next_timer() == pytest.approx(150.1)
    c.tick(150.1)
    assert events(c) == [Closed("idle")]

