"""Read the name a guest asks for at the start of a TCP stream: TLS SNI or HTTP Host.

The parsers here are the ones :class:`~engine.netstack.inspector.StreamInspector` applies to
every request and ClientHello of a stream (the gateway keeps one per flow for its life);
:func:`sniff` (or :func:`tls_client_hello_sni` / :func:`http_host`) reads the first one of a
buffer, answering ``NEED_MORE`` until it can tell. :attr:`SniffResult.flow_name` says what goes
into ``Flow.sni_or_host``. Nothing here raises on any input: bad bytes are a ``MALFORMED``
result with a ``detail``.

TLS: a ClientHello is reassembled from consecutive handshake records (so a hello split over
several records, e.g. a large post-quantum key share, is read); the ``server_name`` extension
must appear at most once with at most one ``host_name``, since a server might pick another
entry than we would. With Encrypted Client Hello only the outer (public) name is visible; the
gateway's DNS refuses HTTPS/SVCB records, from which a client would learn ECH keys.

HTTP/1.x (:func:`parse_request_head`, also used per request by
:mod:`engine.netstack.inspector`): a stream that *looks like* HTTP (:func:`http_like`: a
registered method and a space, or any token with ``HTTP/`` on its first line) must parse
strictly or it is ``MALFORMED``: one space each side of the target, ``HTTP/1.0`` or
``HTTP/1.1``, header lines ending in CRLF or bare LF (as servers accept both), no folding, no
control bytes, one ``Host`` (required in HTTP/1.1 unless the target names the host), and body
framing that no server could read differently (no Content-Length with Transfer-Encoding, equal
Content-Lengths only, ``chunked`` the only coding). Doubled spaces, tabs, ``HTTP/1.10`` or a
lowercase version are a refusal, not "some other protocol". Leading blank lines are skipped
(servers do, RFC 9112 2.2). An absolute-form target (``GET http://x/``) or a CONNECT authority
names the host too, and servers prefer it to ``Host``; if both are present they must agree.
HTTP/2 prior knowledge (``PRI *``: its authority is HPACK-coded) is ``MALFORMED``.
"""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from enum import Enum

from engine.netstack.domains import canonical_name, is_plain_name

MAX_SNIFF_BYTES = 16384
TLS_HANDSHAKE = 22
HANDSHAKE_CLIENT_HELLO = 1
EXT_SERVER_NAME = 0
MAX_TLS_RECORD = 16384  # TLSPlaintext.length limit (RFC 8446 5.1)
MAX_TLS_CIPHERTEXT = 16384 + 2048  # TLSCiphertext.length limit (TLS 1.2; 1.3 allows less)
TLS_CHANGE_CIPHER_SPEC, TLS_ALERT, TLS_APPLICATION_DATA, TLS_HEARTBEAT = 20, 21, 23, 24
HANDSHAKE_SERVER_HELLO = 2
# ServerHello.random of a TLS 1.3 HelloRetryRequest: SHA-256("HelloRetryRequest") (RFC 8446 4.1.3).
HELLO_RETRY_RANDOM = bytes.fromhex("cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c")
SERVER_HELLO_PREFIX = 4 + 2 + 32  # handshake header, legacy_version, random


class SniffStatus(Enum):
    """What the first bytes of a stream told us."""

    NEED_MORE = "need_more"        # consistent so far, incomplete: buffer more and ask again
    FOUND = "found"                # a host name: SniffResult.name
    ABSENT = "absent"              # the protocol, complete, naming no host (no SNI / no Host)
    NOT_PROTOCOL = "not_protocol"  # not TLS (resp. not an HTTP/1 request) at all
    MALFORMED = "malformed"        # looks like the protocol but is broken, ambiguous or too large


NEED_MORE = SniffStatus.NEED_MORE


@dataclass(frozen=True, slots=True)
class SniffResult:
    """A sniffing verdict; ``name`` (canonical: lowercase, no trailing dot) only when FOUND."""

    status: SniffStatus
    name: str | None = None
    detail: str = ""

    @property
    def flow_name(self) -> str | None:
        """What to put in ``Flow.sni_or_host`` when the gateway stops reading here.

        FOUND: the name. ABSENT / NOT_PROTOCOL: None (no name was sent; domain rules use DNS
        knowledge alone). MALFORMED, or NEED_MORE when the gateway gives up waiting: ``""``,
        a name that matches no pattern, so nothing is allowed by domain on an unreadable hello.
        """
        if self.status is SniffStatus.FOUND:
            return self.name
        if self.status in (SniffStatus.ABSENT, SniffStatus.NOT_PROTOCOL):
            return None
        return ""


# Aliases naming what each function returns.
SniResult = SniffResult
HostResult = SniffResult


def _result(status: SniffStatus, detail: str = "", name: str | None = None) -> SniffResult:
    return SniffResult(status, name, detail)


def _host_name(raw: bytes) -> str | None:
    """A canonical plain host name from wire bytes, or None if they are not one."""
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        return None
    name = canonical_name(text)
    return name if is_plain_name(name) else None


def sniff(data: bytes, max_bytes: int = MAX_SNIFF_BYTES) -> SniffResult:
    """TLS if the stream starts like a TLS handshake record, else HTTP/1."""
    if not data:
        return _result(SniffStatus.NEED_MORE)
    if data[0] == TLS_HANDSHAKE:
        return tls_client_hello_sni(data, max_bytes)
    return http_host(data, max_bytes)


def tls_sni(data: bytes, max_bytes: int = MAX_SNIFF_BYTES) -> str | None | SniffStatus:
    """Short form: ``NEED_MORE``, else :attr:`SniffResult.flow_name` of the TLS verdict."""
    result = tls_client_hello_sni(data, max_bytes)
    return NEED_MORE if result.status is SniffStatus.NEED_MORE else result.flow_name


# -- TLS -----------------------------------------------------------------------------------
class _Short(Exception):
    """A length field points past the end of a complete message (internal: means malformed)."""


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise _Short()
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int(struct.unpack("!H", self.take(2))[0])

    def vec8(self) -> bytes:
        return self.take(self.u8())

    def vec16(self) -> bytes:
        return self.take(self.u16())

    @property
    def left(self) -> int:
        return len(self.data) - self.pos


def _more_or_too_large(data: bytes, max_bytes: int) -> SniffResult:
    if len(data) >= max_bytes:
        return _result(SniffStatus.MALFORMED, f"no complete ClientHello in the first {max_bytes} bytes")
    return _result(SniffStatus.NEED_MORE)


def tls_client_hello_sni(data: bytes, max_bytes: int = MAX_SNIFF_BYTES) -> SniffResult:
    """The SNI host name of the TLS ClientHello at the start of ``data``.

    Any prefix of a valid hello gives NEED_MORE; only the first ``max_bytes`` are looked at.
    """
    data = bytes(data[:max_bytes])
    handshake = b""
    needed: int | None = None  # total handshake message length, once its header is in
    pos = 0
    while True:
        header = data[pos:pos + 5]
        first = pos == 0
        if header[:1] and header[0] != TLS_HANDSHAKE:
            return (_result(SniffStatus.NOT_PROTOCOL, "first byte is not a TLS handshake record") if first
                    else _result(SniffStatus.MALFORMED, f"record of type {header[0]} inside the ClientHello"))
        if len(header) >= 2 and header[1] != 3:
            return (_result(SniffStatus.NOT_PROTOCOL, "record version is not TLS (3.x)") if first
                    else _result(SniffStatus.MALFORMED, "record version changed inside the ClientHello"))
        if len(header) < 5:
            return _more_or_too_large(data, max_bytes)
        length = int.from_bytes(header[3:5], "big")
        if length == 0 or length > MAX_TLS_RECORD:
            return _result(SniffStatus.MALFORMED, f"handshake record length {length}")
        fragment = data[pos + 5:pos + 5 + length]
        handshake += fragment
        if handshake and handshake[0] != HANDSHAKE_CLIENT_HELLO:
            return _result(SniffStatus.MALFORMED, f"first handshake message is type {handshake[0]}, not ClientHello")
        if needed is None and len(handshake) >= 4:
            needed = 4 + int.from_bytes(handshake[1:4], "big")
            if needed + 5 > max_bytes:
                return _result(SniffStatus.MALFORMED,
                               f"ClientHello of {needed} bytes exceeds the {max_bytes}-byte limit")
        if needed is not None and len(handshake) >= needed:
            return parse_client_hello(handshake[4:needed])
        if len(fragment) < length:
            return _more_or_too_large(data, max_bytes)
        pos += 5 + length


def parse_client_hello(body: bytes) -> SniffResult:
    """The SNI verdict of a ClientHello message body (after its 4-byte handshake header)."""
    try:
        r = _Reader(body)
        r.take(2 + 32)  # legacy_version, random
        if len(r.vec8()) > 32:
            return _result(SniffStatus.MALFORMED, "session id longer than 32 bytes")
        suites = r.vec16()
        if not suites or len(suites) % 2:
            return _result(SniffStatus.MALFORMED, "bad cipher suite list")
        if not r.vec8():
            return _result(SniffStatus.MALFORMED, "empty compression method list")
        if r.left == 0:
            return _result(SniffStatus.ABSENT, "ClientHello without extensions")
        extensions = _Reader(r.vec16())
        if r.left:
            return _result(SniffStatus.MALFORMED, "bytes after the extensions")
        seen: set[int] = set()
        name: str | None = None
        while extensions.left:
            ext_type = extensions.u16()
            ext_data = extensions.vec16()
            if ext_type in seen:
                return _result(SniffStatus.MALFORMED, f"extension {ext_type} appears twice")
            seen.add(ext_type)
            if ext_type == EXT_SERVER_NAME:
                found = _parse_server_name(ext_data)
                if isinstance(found, SniffResult):
                    return found
                name = found
    except _Short:
        return _result(SniffStatus.MALFORMED, "a length field runs past the end of the ClientHello")
    if name is None:
        return _result(SniffStatus.ABSENT, "ClientHello without server_name")
    return _result(SniffStatus.FOUND, name=name)


def _parse_server_name(ext_data: bytes) -> str | SniffResult:
    r = _Reader(ext_data)
    entries = _Reader(r.vec16())
    if r.left or not entries.left:
        return _result(SniffStatus.MALFORMED, "bad server_name list length")
    names: list[bytes] = []
    while entries.left:
        name_type = entries.u8()
        value = entries.vec16()
        if name_type == 0:
            names.append(value)
    if len(names) != 1:
        return _result(SniffStatus.MALFORMED, f"server_name has {len(names)} host names")
    name = _host_name(names[0])
    if name is None:
        return _result(SniffStatus.MALFORMED, f"server name {names[0][:64]!r} is not a host name")
    return name


def is_hello_retry(message_prefix: bytes) -> bool:
    """Whether the first ``SERVER_HELLO_PREFIX`` bytes of a server handshake message are a
    TLS 1.3 HelloRetryRequest (a ServerHello with the special random)."""
    return (len(message_prefix) >= SERVER_HELLO_PREFIX and message_prefix[0] == HANDSHAKE_SERVER_HELLO
            and message_prefix[6:SERVER_HELLO_PREFIX] == HELLO_RETRY_RANDOM)


# -- HTTP/1 --------------------------------------------------------------------------------
_TCHAR = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]"
# Strict: one SP each side of the target, HTTP/1.0 or HTTP/1.1, CRLF or bare LF. Anything else
# that still looks like HTTP (doubled spaces, tabs, HTTP/1.10, lowercase) is MALFORMED.
_REQUEST_LINE = re.compile(rb"(" + _TCHAR + rb"+) ([\x21-\x7e]+) HTTP/1\.([01])\r?")
_TOKEN = re.compile(_TCHAR + rb"{1,32}")
_HEADER_NAME = re.compile(_TCHAR + rb"+")
_FIELD_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")
_REG_NAME = re.compile(rb"[A-Za-z0-9._-]+")
_DIGITS = re.compile(rb"[0-9]{1,18}")
# Registered methods (RFC 9110, WebDAV, PATCH, PRI): a stream starting with one of these and a
# space is HTTP, however broken the rest is. An unknown token counts only with "HTTP/" on its line.
HTTP_METHODS = frozenset(
    b"GET HEAD POST PUT DELETE CONNECT OPTIONS TRACE PATCH PRI PROPFIND PROPPATCH MKCOL COPY MOVE "
    b"LOCK UNLOCK SEARCH REPORT MKCALENDAR ACL BIND UNBIND REBIND MERGE CHECKOUT LINK UNLINK".split())
MAX_BLANK_LINES = 64  # CR/LF bytes a server may skip before a request line (RFC 9112 2.2)


def skip_blank(data: bytes | bytearray | memoryview, pos: int = 0) -> int:
    """The index of the first byte at or after ``pos`` that is not CR or LF."""
    while pos < len(data) and data[pos] in (10, 13):
        pos += 1
    return pos


def http_like(data: bytes | bytearray) -> bool | None:
    """Whether a stream (leading CR/LF already skipped) is an HTTP/1 request; None: too few bytes.

    Yes when it starts with a registered method and a space, tab or line end, or with any
    token and a space or tab on a first line holding ``HTTP/`` (any case). An SSH banner, a
    database handshake or binary bytes are not HTTP; they are opaque to the inspector.
    """
    if not data:
        return None
    token = _TOKEN.match(data)
    if token is None:
        return False
    end = token.end()
    if end == len(data):
        return None if end < 32 else False
    method, sep = bytes(token.group()), data[end]
    if sep not in (9, 32):
        return sep in (10, 13) and method.upper() in HTTP_METHODS
    if method.upper() in HTTP_METHODS:
        return True
    line_end = data.find(b"\n", end)
    if line_end < 0:
        return None if len(data) < MAX_SNIFF_BYTES else False
    return b"http/" in bytes(data[end:line_end]).lower()


def head_end(data: bytes | bytearray, start: int = 0) -> int:
    """The index just past the empty line ending a request head in ``data``, or -1."""
    lf = data.find(b"\n\n", start)
    crlf = data.find(b"\n\r\n", start)
    ends = [i + 2 for i in (lf,) if i >= 0] + [i + 3 for i in (crlf,) if i >= 0]
    return min(ends) if ends else -1


def request_line_refusal(data: bytes | bytearray, start: int = 0) -> SniffResult | None:
    """MALFORMED as soon as the first line of an unfinished head is in and is not strict."""
    line_end = data.find(b"\n", start)
    if line_end < 0 or _REQUEST_LINE.fullmatch(data[start:line_end]) is not None:
        return None
    return _result(SniffStatus.MALFORMED, f"not a strict HTTP/1 request line: {bytes(data[start:line_end])[:64]!r}")


@dataclass(frozen=True, slots=True)
class RequestHead:
    """One parsed HTTP/1 request head: the name it presents and how its body is framed.

    ``host`` is the canonical name (None: the request names none); ``body`` the Content-Length
    (0 when absent) unless ``chunked``; ``tunnel`` whether bytes after this request may be
    another protocol (CONNECT, or an ``Upgrade`` request the server may accept).
    """

    method: bytes
    minor: int
    host: str | None
    body: int = 0
    chunked: bool = False
    tunnel: bool = False

    @property
    def result(self) -> SniffResult:
        if self.host is None:
            return _result(SniffStatus.ABSENT, "request without Host")
        return _result(SniffStatus.FOUND, name=self.host)


def parse_request_head(head: bytes) -> RequestHead | SniffResult:
    """Parse a complete request head (request line to the empty line, no leading blank lines).

    Strict where servers differ, so a request cannot name one host (or body length) to us and
    another to the server: one Host, no folding, no stray CR or control bytes, Content-Length
    and Transfer-Encoding never together, several Content-Lengths only if equal, the only
    transfer coding ``chunked`` (and none in HTTP/1.0), and HTTP/1.1 names its host.
    Returns a MALFORMED (or NOT_PROTOCOL: not an HTTP/1 request at all) result otherwise.
    """
    lines = head.split(b"\n")
    if len(lines) < 3 or lines[-1] or lines[-2] not in (b"", b"\r"):
        return _result(SniffStatus.MALFORMED, "incomplete request head")
    line = _REQUEST_LINE.fullmatch(lines[0])
    if line is None:
        if lines[0].startswith(b"PRI * HTTP/2"):
            return _result(SniffStatus.MALFORMED, "HTTP/2 prior knowledge: the authority is HPACK-coded")
        return _result(SniffStatus.MALFORMED, f"not a strict HTTP/1 request line: {lines[0][:64]!r}")
    method, target, minor = line.group(1), line.group(2), int(line.group(3))
    host_values: list[bytes] = []
    lengths: list[bytes] = []
    codings: list[bytes] = []
    upgrade = False
    for raw in lines[1:-2]:
        raw = raw[:-1] if raw.endswith(b"\r") else raw
        if raw[:1] in (b" ", b"\t"):
            return _result(SniffStatus.MALFORMED, "folded header line")
        name, colon, value = raw.partition(b":")
        if not colon or not _HEADER_NAME.fullmatch(name):
            return _result(SniffStatus.MALFORMED, f"bad header line {raw[:64]!r}")
        if not _FIELD_VALUE.fullmatch(value):
            return _result(SniffStatus.MALFORMED, f"control byte in header {name[:64]!r}")
        value = value.strip(b" \t")
        lower = name.lower()
        if lower == b"host":
            host_values.append(value)
        elif lower == b"content-length":
            lengths += [v.strip(b" \t") for v in value.split(b",")]
        elif lower == b"transfer-encoding":
            codings.append(value)
        elif lower == b"upgrade":
            upgrade = True
    framing = _framing(minor, lengths, codings)
    if isinstance(framing, SniffResult):
        return framing
    body, chunked = framing
    if len(host_values) > 1:
        return _result(SniffStatus.MALFORMED, "several Host headers")
    target_host = _target_host(method, target)
    if isinstance(target_host, SniffResult):
        return target_host
    header_host: str | None = None
    if host_values and host_values[0]:
        header_host = _authority_host(host_values[0])
        if header_host is None:
            return _result(SniffStatus.MALFORMED, f"Host {host_values[0][:64]!r} is not a host name")
    if target_host is not None and header_host is not None and target_host != header_host:
        return _result(SniffStatus.MALFORMED, f"request target names {target_host} but Host says {header_host}")
    if minor == 1 and not host_values and target_host is None:
        return _result(SniffStatus.MALFORMED, "HTTP/1.1 request without a Host header")
    return RequestHead(method, minor, target_host or header_host, body, chunked,
                       tunnel=method == b"CONNECT" or upgrade)


def _framing(minor: int, lengths: list[bytes], codings: list[bytes]) -> tuple[int, bool] | SniffResult:
    """(Content-Length, chunked) of a request body, or MALFORMED where servers could disagree."""
    if codings:
        if lengths:
            return _result(SniffStatus.MALFORMED, "both Content-Length and Transfer-Encoding")
        if minor == 0:
            return _result(SniffStatus.MALFORMED, "Transfer-Encoding in an HTTP/1.0 request")
        if len(codings) != 1 or codings[0].lower() != b"chunked":
            return _result(SniffStatus.MALFORMED, f"Transfer-Encoding other than chunked: {b', '.join(codings)[:64]!r}")
        return 0, True
    if not lengths:
        return 0, False
    if any(_DIGITS.fullmatch(v) is None for v in lengths) or len(set(lengths)) != 1:
        return _result(SniffStatus.MALFORMED, f"Content-Length {b', '.join(lengths)[:64]!r}")
    return int(lengths[0]), False


def http_host(data: bytes, max_bytes: int = MAX_SNIFF_BYTES) -> SniffResult:
    """The host the first HTTP/1 request in ``data`` is for (Host header or absolute target)."""
    data = bytes(data[:max_bytes])
    start = skip_blank(data)
    if start > MAX_BLANK_LINES:
        return _result(SniffStatus.MALFORMED, "too many blank lines before the request")
    like = http_like(data[start:])
    if like is False:
        return _result(SniffStatus.NOT_PROTOCOL, "does not start like an HTTP/1 request")
    end = head_end(data, start)
    if like is None or end < 0:
        return request_line_refusal(data, start) or _more_or_too_large_http(data, max_bytes)
    head = parse_request_head(data[start:end])
    return head.result if isinstance(head, RequestHead) else head


def _more_or_too_large_http(data: bytes, max_bytes: int) -> SniffResult:
    if len(data) >= max_bytes:
        return _result(SniffStatus.MALFORMED, f"request headers longer than {max_bytes} bytes")
    return _result(SniffStatus.NEED_MORE)


def _target_host(method: bytes, target: bytes) -> str | None | SniffResult:
    """The host an absolute-form or CONNECT target names (None for origin-form ``/path``)."""
    if method == b"CONNECT":
        authority = target
    else:
        scheme, sep, rest = target.partition(b"://")
        if not sep or not re.fullmatch(rb"[A-Za-z][A-Za-z0-9+.-]*", scheme):
            return None
        authority = re.split(rb"[/?#]", rest, maxsplit=1)[0]
        authority = authority.rpartition(b"@")[2]  # drop userinfo
    host = _authority_host(authority)
    if host is None:
        return _result(SniffStatus.MALFORMED, f"request target {target[:64]!r} has no valid host")
    return host


def _authority_host(authority: bytes) -> str | None:
    """``host[:port]`` or ``[v6][:port]`` -> canonical host (v6 literal kept in brackets), or None."""
    if authority.startswith(b"["):
        literal, close, rest = authority.partition(b"]")
        if not close or (rest and not re.fullmatch(rb":\d*", rest)):
            return None
        try:
            return (literal + close).decode("ascii").lower()
        except UnicodeDecodeError:
            return None
    host, colon, port = authority.partition(b":")
    if colon and not port.isdigit() and port != b"":
        return None
    if not _REG_NAME.fullmatch(host):
        return None
    return _host_name(host)
