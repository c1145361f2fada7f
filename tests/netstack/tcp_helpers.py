"""Shared pieces of the TCP core tests: addresses, segment builders, an established connection."""
from __future__ import annotations

from ipaddress import IPv4Address


from engine.netstack.tcp.segment import ACK, SYN, TcpSegment, build_options, parse_tcp
from engine.netstack.tcp.connection import (Connected, OutSegment, TcpConfig, TcpConnection, TcpState)

GW = IPv4Address("93.184.216.34")      # the address the gateway impersonates
GUEST = IPv4Address("10.0.2.15")
GP, SP = 40000, 443                     # guest port, server port


def wire(seg: OutSegment, src: IPv4Address = GW, dst: IPv4Address = GUEST) -> TcpSegment:
    return parse_tcp(src, dst, seg.to_bytes(src, dst))


def syn(seq: int = 5000, mss: int | None = 1460, ws: int | None = 7, window: int = 64240,
        flags: int = SYN) -> TcpSegment:
    return parse_tcp(GUEST, GW, OutSegment(GP, SP, seq, 0, flags, window, b"", build_options(mss, ws, True)).to_bytes(GUEST, GW))


def gseg(seq: int, ack: int, flags: int = ACK, window: int = 65535, payload: bytes = b"") -> TcpSegment:
    """A segment from the guest to the gateway."""
    return TcpSegment(GP, SP, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, flags, window, payload)


def events(conn: TcpConnection) -> list:
    return conn.poll_events()


def established(iss: int = 1000, gseq: int = 5000, ws: int | None = 7, mss: int = 1460,
                config: TcpConfig | None = None, now: float = 0.0, rtt: float = 0.01) -> TcpConnection:
    """A gateway-side connection accepted from a guest SYN and acknowledged."""
    c = TcpConnection.accept(syn(gseq, mss, ws), GW, SP, GUEST, GP, now, iss, config=config)
    c.poll_segments()
    c.receive(gseg(gseq + 1, iss + 1, window=65535 if ws is None else 512), now + rtt)
    assert c.state is TcpState.ESTABLISHED
    assert events(c) == [Connected()]
    return c


