"""TLS SNI and HTTP Host sniffing: genuine ClientHellos from Python's ssl module (no network:
the handshake runs on memory BIOs and stops after the first flight), hand-built hellos for the
odd cases, every truncation, and random or mutated bytes."""
from __future__ import annotations

import ssl
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.netstack.sniff import (
    MAX_SNIFF_BYTES, NEED_MORE, SniffResult, SniffStatus, http_host, sniff, tls_client_hello_sni, tls_sni)

FOUND, ABSENT, MORE = SniffStatus.FOUND, SniffStatus.ABSENT, SniffStatus.NEED_MORE
NOT, BAD = SniffStatus.NOT_PROTOCOL, SniffStatus.MALFORMED


def real_hello(server_hostname: str | None) -> bytes:
    """The first flight of a real TLS client: one ClientHello, as OpenSSL writes it."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if server_hostname is None:
        ctx.check_hostname = False
    tls = ctx.wrap_bio(ssl.MemoryBIO(), outgoing := ssl.MemoryBIO(), server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


HELLO = real_hello("api.example.com")


def records(handshake: bytes, *sizes: int) -> bytes:
    """``handshake`` split into TLS handshake records of the given fragment sizes (rest last)."""
    out, pos = b"", 0
    for size in (*sizes, len(handshake)):
        chunk = handshake[pos:pos + size]
        if chunk:
            out += struct.pack("!BHH", 22, 0x0301, len(chunk)) + chunk
        pos += len(chunk)
    return out


def hello_body(extensions: bytes | None, session_id: bytes = b"", suites: bytes = b"\x13\x01") -> bytes:
    body = b"\x03\x03" + bytes(32) + bytes([len(session_id)]) + session_id
    body += struct.pack("!H", len(suites)) + suites + b"\x01\x00"
    if extensions is not None:
        body += struct.pack("!H", len(extensions)) + extensions
    return body


def handshake(body: bytes, msg_type: int = 1) -> bytes:
    return bytes([msg_type]) + len(body).to_bytes(3, "big") + body


def ext(ext_type: int, data: bytes) -> bytes:
    return struct.pack("!HH", ext_type, len(data)) + data


def sni_ext(*names: bytes, name_type: int = 0) -> bytes:
    entries = b"".join(bytes([name_type]) + struct.pack("!H", len(n)) + n for n in names)
    return ext(0, struct.pack("!H", len(entries)) + entries)


def built(extensions: bytes | None) -> bytes:
    return records(handshake(hello_body(extensions)))


# -- TLS -----------------------------------------------------------------------------------
def test_real_client_hello_gives_its_sni() -> None:
    assert tls_client_hello_sni(HELLO) == SniffResult(FOUND, "api.example.com")
    assert tls_sni(HELLO) == "api.example.com"
    assert sniff(HELLO).name == "api.example.com"


def test_sni_is_canonical() -> None:
    assert tls_client_hello_sni(built(sni_ext(b"API.Example.COM."))).name == "api.example.com"


def test_real_client_hello_without_sni() -> None:
    for hello in (real_hello(None), real_hello("127.0.0.1")):  # no SNI is sent for an IP literal
        result = tls_client_hello_sni(hello)
        assert result.status is ABSENT and result.flow_name is None


def test_every_truncation_needs_more() -> None:
    for n in range(len(HELLO)):
        assert tls_client_hello_sni(HELLO[:n]).status is MORE, n
    assert tls_sni(HELLO[:10]) is NEED_MORE


def test_hello_split_over_records_is_reassembled() -> None:
    message = HELLO[5:]
    for cut in (1, 3, 4, 5, 40, 100, len(message) - 1):
        data = records(message, cut)
        assert tls_client_hello_sni(data).name == "api.example.com", cut
        for n in range(len(data)):
            assert tls_client_hello_sni(data[:n]).status is MORE, (cut, n)
    assert tls_client_hello_sni(records(message, 50, 50, 50, 50)).name == "api.example.com"


def test_bytes_after_the_hello_are_ignored() -> None:
    assert tls_client_hello_sni(HELLO + b"\x17\x03\x03\x00\x05hello").name == "api.example.com"


@pytest.mark.parametrize("data, status", [
    (b"GET / HTTP/1.1\r\n", NOT),
    (b"\x17\x03\x03\x00\x10", NOT),             # application data record first
    (b"\x16\x02", NOT),                          # not TLS 3.x
    (b"\x80\x2e\x01\x03\x01", NOT),              # SSLv2-style hello
    (b"\x16\x03\x01\x00\x00", BAD),              # empty handshake record
    (b"\x16\x03\x01\x48\x01", BAD),              # record longer than 2^14
    (b"\x16\x03\x01\x00\x04\x02\x00\x00\x00", BAD),  # ServerHello, not ClientHello
    (records(handshake(hello_body(None))), ABSENT),
    (built(b""), ABSENT),
    (built(ext(10, b"\x00\x02\x00\x1d")), ABSENT),
    (built(sni_ext(b"a.example", b"b.example")), BAD),          # two host names: ambiguous
    (built(sni_ext(b"a.example") + sni_ext(b"b.example")), BAD),  # duplicate extension
    (built(sni_ext(b"bad name.example")), BAD),
    (built(sni_ext("bücher.example".encode())), BAD),
    (built(sni_ext(b"")), BAD),
    (built(sni_ext(b"x", name_type=7)), BAD),                  # no host_name entry
    (built(ext(0, b"\x00\x00")), BAD),                          # empty server name list
    (built(ext(0, b"\x00\x10\x00")), BAD),                      # list length past the end
    (built(sni_ext(b"a.example") + b"\x00"), BAD),              # stray byte in extensions
    (records(handshake(hello_body(sni_ext(b"a.example")) + b"\x00")), BAD),
    (records(handshake(hello_body(b"", session_id=bytes(33)))), BAD),
    (records(handshake(hello_body(b"", suites=b"\x13"))), BAD),
    (records(handshake(hello_body(b"", suites=b""))), BAD),
    (records(handshake(b"\x03\x03" + bytes(10))), BAD),        # body shorter than its fields
])
def test_tls_verdicts(data: bytes, status: SniffStatus) -> None:
    assert tls_client_hello_sni(data).status is status


def test_other_record_inside_a_split_hello_is_malformed() -> None:
    message = HELLO[5:]
    first = records(message[:100])
    assert tls_client_hello_sni(first + b"\x17\x03\x03\x00\x01\x00").status is BAD
    assert tls_client_hello_sni(first + b"\x16\x02\x03\x00\x01\x00").status is BAD


def test_size_limit() -> None:
    assert tls_client_hello_sni(HELLO, max_bytes=100).status is BAD
    big = records(handshake(hello_body(sni_ext(b"a.example") + ext(21, bytes(20000)))), 16000)
    assert tls_client_hello_sni(big).status is BAD
    fits = records(handshake(hello_body(sni_ext(b"a.example") + ext(21, bytes(9000)))), 4000)
    assert tls_client_hello_sni(fits).name == "a.example"
    assert tls_client_hello_sni(fits[:MAX_SNIFF_BYTES]).name == "a.example"


def test_flow_name() -> None:
    assert SniffResult(FOUND, "a.example").flow_name == "a.example"
    assert SniffResult(ABSENT).flow_name is None
    assert SniffResult(NOT).flow_name is None
    assert SniffResult(BAD).flow_name == ""
    assert SniffResult(MORE).flow_name == ""  # the gateway gave up waiting for a name
    assert tls_sni(built(sni_ext(b"bad name"))) == ""
    assert tls_sni(b"SSH-2.0-x\r\n") is None


# -- HTTP ----------------------------------------------------------------------------------
REQUEST = b"GET /index.html HTTP/1.1\r\nUser-Agent: wget\r\nHost: Files.Example.COM.:8080\r\nAccept: */*\r\n\r\n"


def test_http_host() -> None:
    assert http_host(REQUEST) == SniffResult(FOUND, "files.example.com")
    assert sniff(REQUEST).name == "files.example.com"
    assert http_host(REQUEST.replace(b"\r\n", b"\n")).name == "files.example.com"
    assert http_host(REQUEST + b"body bytes").name == "files.example.com"


def test_http_every_truncation_needs_more() -> None:
    for n in range(len(REQUEST)):
        assert http_host(REQUEST[:n]).status is MORE, n
        assert sniff(REQUEST[:n]).status is MORE, n


@pytest.mark.parametrize("data, status, name", [
    (b"GET / HTTP/1.0\r\n\r\n", ABSENT, None),
    (b"GET / HTTP/1.1\r\nHost:\r\n\r\n", ABSENT, None),
    (b"GET / HTTP/1.1\r\nhost:a.example\r\n\r\n", FOUND, "a.example"),
    (b"GET / HTTP/1.1\r\nHOST: \t a.example \r\n\r\n", FOUND, "a.example"),
    (b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n", FOUND, "[::1]"),
    (b"GET http://a.example:81/x?y HTTP/1.1\r\n\r\n", FOUND, "a.example"),
    (b"GET http://user@A.example/ HTTP/1.1\r\nHost: a.example\r\n\r\n", FOUND, "a.example"),
    (b"GET http://a.example/ HTTP/1.1\r\nHost: b.example\r\n\r\n", BAD, None),
    (b"CONNECT evil.example:443 HTTP/1.1\r\nHost: proxy.example\r\n\r\n", BAD, None),
    (b"CONNECT a.example:443 HTTP/1.1\r\n\r\n", FOUND, "a.example"),
    (b"CONNECT %%% HTTP/1.1\r\n\r\n", BAD, None),
    (b"OPTIONS * HTTP/1.1\r\nHost: a.example\r\n\r\n", FOUND, "a.example"),
    (b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n", BAD, None),
    (b"GET / HTTP/1.1\r\nX: y\r\n z\r\nHost: a.example\r\n\r\n", BAD, None),
    (b"GET / HTTP/1.1\r\nHost : a.example\r\n\r\n", BAD, None),
    (b"GET / HTTP/1.1\r\nno colon here\r\n\r\n", BAD, None),
    (b"GET / HTTP/1.1\r\nHost: a b.example\r\n\r\n", BAD, None),
    (b"GET / HTTP/1.1\r\nHost: %61.example\r\n\r\n", BAD, None),
    (b"GET / HTTP/1.1\r\nHost: a.example:http\r\n\r\n", BAD, None),
    (b"GET / HTTP/1.1\r\nHost: b\xc3\xbccher.example\r\n\r\n", BAD, None),
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", BAD, None),
    (b"GET / HTTP/3.0\r\n\r\n", BAD, None),  # was NOT_PROTOCOL: looks like HTTP, so strict
    (b"GET /\r\n", BAD, None),  # was NOT_PROTOCOL
    (b"SSH-2.0-OpenSSH_9.2\r\n", NOT, None),
    (b"\x00\x01\x02", NOT, None),
    (b"get / http/1.1\r\n", BAD, None),  # was NOT_PROTOCOL
    (b"GET  / HTTP/1.1\r\n", BAD, None),  # was NOT_PROTOCOL
    (b"GET\t/ HTTP/1.1\r\n", BAD, None),
    (b"GET / HTTP/1.10\r\n", BAD, None),
    (b"\r\n\r\nGET / HTTP/1.1\r\nHost: a.example\r\n\r\n", FOUND, "a.example"),
    (b"GET / HTTP/1.1\r\nUser-Agent: x\r\n\r\n", BAD, None),
    (b"FOO / HTTP/1.1\r\nHost: a.example\r\n\r\n", FOUND, "a.example"),
    (b"GET / HTTP/1.1\r\nHost: a.example\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", BAD, None),
])
def test_http_verdicts(data: bytes, status: SniffStatus, name: str | None) -> None:
    result = http_host(data)
    assert (result.status, result.name) == (status, name), result.detail


def test_http_size_limit() -> None:
    padded = b"GET / HTTP/1.1\r\nX-Pad: " + b"a" * MAX_SNIFF_BYTES + b"\r\nHost: a.example\r\n\r\n"
    assert http_host(padded).status is BAD
    assert http_host(padded[:MAX_SNIFF_BYTES - 1]).status is MORE
    assert http_host(REQUEST, max_bytes=20).status is BAD


# -- never raises --------------------------------------------------------------------------
def _check(result: SniffResult) -> None:
    assert isinstance(result, SniffResult)
    assert (result.name is not None) == (result.status is FOUND)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_never_raise(data: bytes) -> None:
    for fn in (tls_client_hello_sni, http_host, sniff):
        _check(fn(data))
    _check(tls_client_hello_sni(b"\x16\x03\x01" + data))
    _check(http_host(b"GET / HTTP/1.1\r\n" + data))


@settings(max_examples=200, deadline=None)
@given(st.integers(0, len(HELLO) - 1), st.integers(0, 255), st.integers(0, len(HELLO)))
def test_mutated_hello_never_raises(index: int, value: int, cut: int) -> None:
    data = bytearray(HELLO)
    data[index] = value
    result = tls_client_hello_sni(bytes(data[:cut]))
    _check(result)
    if result.status is FOUND:
        assert result.name is not None and result.name.isascii()


@settings(max_examples=200, deadline=None)
@given(st.integers(0, len(REQUEST) - 1), st.integers(0, 255))
def test_mutated_request_never_raises(index: int, value: int) -> None:
    data = bytearray(REQUEST)
    data[index] = value
    _check(http_host(bytes(data)))
