"""The whole-stream name inspector: keep-alive, pipelining, bodies, smuggling, TLS retries."""
from __future__ import annotations

import ssl
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.netstack.inspector import StreamInspector
from engine.netstack.sniff import HELLO_RETRY_RANDOM, SniffResult, SniffStatus

FOUND, ABSENT, NOT, BAD = SniffStatus.FOUND, SniffStatus.ABSENT, SniffStatus.NOT_PROTOCOL, SniffStatus.MALFORMED


def req(host: str, extra: bytes = b"", body: bytes = b"") -> bytes:
    return b"GET / HTTP/1.1\r\nHost: " + host.encode() + b"\r\n" + extra + b"\r\n" + body


def verdicts(data: bytes, step: int | None = None) -> list[tuple[SniffStatus, str | None]]:
    """Feed ``data`` whole, or ``step`` bytes at a time; the verdicts in order."""
    inspector = StreamInspector()
    step = step or len(data) or 1
    out: list[SniffResult] = []
    for i in range(0, len(data), step):
        out += inspector.feed(data[i:i + step])
    return [(r.status, r.name) for r in out]


def both(data: bytes) -> list[tuple[SniffStatus, str | None]]:
    whole = verdicts(data)
    assert verdicts(data, 1) == whole  # byte at a time gives the same verdicts
    assert verdicts(data, 7) == whole
    return whole


def test_keep_alive_names_every_request() -> None:
    assert both(req("ok.test") + req("other.test")) == [(FOUND, "ok.test"), (FOUND, "other.test")]


def test_content_length_body_is_skipped_not_read() -> None:
    body = b"GET / HTTP/1.1\r\nHost: hidden.test\r\n\r\n"  # a request inside a body is data
    data = req("ok.test", b"Content-Length: %d\r\n" % len(body), body) + req("next.test")
    assert both(data) == [(FOUND, "ok.test"), (FOUND, "next.test")]


def test_chunked_body_is_framed() -> None:
    chunks = b"5;ext=1\r\nhello\r\n10\r\n" + b"GET / HTTP/1.1\r\n" + b"\r\n0\r\nX-T: 1\r\n\r\n"
    data = req("ok.test", b"Transfer-Encoding: chunked\r\n", chunks) + req("next.test")
    assert both(data) == [(FOUND, "ok.test"), (FOUND, "next.test")]


@pytest.mark.parametrize("extra, body", [
    (b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"),   # CL.TE
    (b"Content-Length: 5\r\nContent-Length: 6\r\n", b"hello!"),             # two CLs
    (b"Content-Length: 5, 6\r\n", b"hello!"),
    (b"Content-Length: +5\r\n", b"hello"),
    (b"Transfer-Encoding: gzip, chunked\r\n", b"0\r\n\r\n"),
    (b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
    (b"Transfer-Encoding: xchunked\r\n", b"0\r\n\r\n"),
    (b"Transfer-Encoding: chunked\r\n", b"5\nhello\r\n0\r\n\r\n"),            # bare LF in chunk line
    (b"Transfer-Encoding: chunked\r\n", b"5\r\nhelloXX0\r\n\r\n"),            # no CRLF after data
    (b"Transfer-Encoding: chunked\r\n", b"-5\r\nhello\r\n0\r\n\r\n"),
    (b"X: a\rb\r\n", b""),                                                   # stray CR
])
def test_smuggling_attempts_are_refused(extra: bytes, body: bytes) -> None:
    data = req("ok.test", extra, body) + req("other.test")
    result = both(data)
    assert result[-1] == (BAD, None) and (FOUND, "other.test") not in result


def test_http10_with_transfer_encoding_is_refused() -> None:
    assert both(b"POST / HTTP/1.0\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n") == [(BAD, None)]


@pytest.mark.parametrize("line", [
    b"GET  / HTTP/1.1", b"GET /  HTTP/1.1", b"GET\t/ HTTP/1.1", b"GET / HTTP/1.10", b"GET / http/1.1",
    b"GET / HTTP/2.0", b"GET /", b"get / HTTP/1.1x",
])
def test_malformed_request_lines_are_refused(line: bytes) -> None:
    assert both(line + b"\r\nHost: other.test\r\n\r\n") == [(BAD, None)]
    # The refusal comes as soon as the line is in, before the head ends.
    assert verdicts(line + b"\r\n") == [(BAD, None)]


def test_leading_blank_lines_are_skipped_and_read() -> None:
    assert both(b"\r\n\r\n" + req("other.test")) == [(FOUND, "other.test")]
    assert both(req("ok.test") + b"\r\n" + req("other.test")) == [(FOUND, "ok.test"), (FOUND, "other.test")]


def test_garbage_after_a_request_is_refused_not_opaque() -> None:
    assert both(req("ok.test") + b"SSH-2.0-x y\r\n") == [(FOUND, "ok.test"), (BAD, None)]


def test_opaque_protocols() -> None:
    inspector = StreamInspector()
    assert [r.status for r in inspector.feed(b"SSH-2.0-OpenSSH_9.6p1 Ubuntu\r\n")] == [NOT]
    assert inspector.done
    assert verdicts(b"\x00\x00\x00\x08\x04\xd2\x16\x2f") == [(NOT, None)]  # postgres SSLRequest


def test_request_without_host() -> None:
    assert both(b"GET / HTTP/1.0\r\n\r\n") == [(ABSENT, None)]
    assert both(b"GET / HTTP/1.1\r\n\r\n") == [(BAD, None)]


def test_head_size_limit() -> None:
    inspector = StreamInspector(max_head=256)
    assert [r.status for r in inspector.feed(b"GET / HTTP/1.1\r\nX: " + b"a" * 300)] == [BAD]


def test_upgrade_then_websocket_is_opaque_but_a_declined_upgrade_is_read() -> None:
    up = req("ok.test", b"Upgrade: websocket\r\nConnection: Upgrade\r\n")
    assert both(up + b"\x81\x85\x00\x00\x00\x00hello") == [(FOUND, "ok.test"), (NOT, None)]
    assert both(up + req("other.test")) == [(FOUND, "ok.test"), (FOUND, "other.test")]


def test_connect_tunnel_with_tls_inside_is_read_as_tls() -> None:
    data = b"CONNECT ok.test:443 HTTP/1.1\r\nHost: ok.test:443\r\n\r\n" + real_hello("inner.test")
    assert both(data) == [(FOUND, "ok.test"), (FOUND, "inner.test")]


def test_bulk_body_costs_no_buffer() -> None:
    inspector = StreamInspector()
    size = 20 * 1024 * 1024
    assert inspector.feed(req("ok.test", b"Content-Length: %d\r\n" % size))[0].name == "ok.test"
    chunk = bytes(65536)
    for _ in range(size // len(chunk)):
        assert inspector.feed(chunk) == []
    assert not inspector.pending
    assert inspector.feed(req("b.test"))[0].name == "b.test"


def test_finish() -> None:
    inspector = StreamInspector()
    assert inspector.finish() is None  # nothing sent: no name
    inspector.feed(b"GET / HTTP/1.1\r\nHo")
    result = inspector.finish()
    assert result is not None and result.status is BAD


# -- TLS -----------------------------------------------------------------------------------
def real_hello(name: str | None) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if name is None:
        ctx.check_hostname = False
    tls = ctx.wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(), server_hostname=name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return out.read()


def record(kind: int, payload: bytes) -> bytes:
    return struct.pack("!BHH", kind, 0x0303, len(payload)) + payload


def server_hello(retry: bool) -> bytes:
    body = b"\x03\x03" + (HELLO_RETRY_RANDOM if retry else bytes(32)) + b"\x00\x13\x01\x00\x00\x00"
    return record(22, b"\x02" + len(body).to_bytes(3, "big") + body)


CCS = record(20, b"\x01")


def test_hello_retry_second_client_hello_is_read() -> None:
    inspector = StreamInspector()
    assert [r.name for r in inspector.feed(real_hello("ok.test"))] == ["ok.test"]
    inspector.feed_server(server_hello(retry=True) + CCS)
    assert not inspector.done
    assert [r.name for r in inspector.feed(CCS + real_hello("other.test"))] == ["other.test"]
    inspector.feed_server(server_hello(retry=False))
    assert inspector.done  # encrypted from here


def test_early_data_before_a_retry_does_not_hide_the_second_hello() -> None:
    inspector = StreamInspector()
    inspector.feed(real_hello("ok.test") + CCS + record(23, bytes(100)))
    inspector.feed_server(server_hello(retry=True))
    assert [r.name for r in inspector.feed(real_hello("other.test"))] == ["other.test"]


def test_a_real_server_hello_makes_the_stream_opaque() -> None:
    inspector = StreamInspector()
    inspector.feed(real_hello("ok.test"))
    inspector.feed_server(server_hello(retry=False)[:10])
    assert not inspector.done
    inspector.feed_server(server_hello(retry=False)[10:])
    assert inspector.done


def test_hello_split_over_records_and_bytes() -> None:
    hello = real_hello("ok.test")
    message = hello[5:]
    split = record(22, message[:40]) + record(22, message[40:])
    assert both(split) == [(FOUND, "ok.test")]


def test_tls_without_sni_and_odd_handshakes() -> None:
    assert both(real_hello(None)) == [(ABSENT, None)]
    hello = real_hello("ok.test")
    assert both(hello + record(22, b"\x10\x00\x00\x01\x00")) == [(FOUND, "ok.test"), (BAD, None)]
    assert both(b"\x16\x07\x00\x00\x05abcde") == [(NOT, None)]
    assert both(hello + record(99, b"x")) == [(FOUND, "ok.test"), (BAD, None)]


# -- never raises, whatever the bytes and however they are split ---------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=800), st.binary(max_size=200), st.integers(1, 64))
def test_random_streams_never_raise(prefix: bytes, server: bytes, step: int) -> None:
    for start in (b"", req("ok.test"), req("ok.test", b"Transfer-Encoding: chunked\r\n"), real_hello_cached()):
        inspector = StreamInspector()
        data = start + prefix
        for i in range(0, len(data), step):
            for result in inspector.feed(data[i:i + step]):
                assert (result.name is not None) == (result.status is FOUND)
            inspector.feed_server(server[:step])
        inspector.finish()


_HELLO: list[bytes] = []


def real_hello_cached() -> bytes:
    if not _HELLO:
        _HELLO.append(real_hello("ok.test"))
    return _HELLO[0]
