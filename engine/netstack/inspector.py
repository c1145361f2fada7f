"""Every name a guest presents on one TCP stream, for the stream's whole life (sans-IO).

:class:`StreamInspector` is fed the guest -> host bytes of one flow (:meth:`~StreamInspector.feed`)
and, for TLS, the host -> guest bytes (:meth:`~StreamInspector.feed_server`); each ``feed``
returns the verdicts it completed, in stream order, as :class:`~engine.netstack.sniff.SniffResult`:

* ``FOUND``: a request or ClientHello named this host; ``ABSENT``: a complete one named none;
* ``NOT_PROTOCOL``: the stream (or a tunnel's first bytes) is neither HTTP/1 nor TLS: opaque
  from here, :attr:`~StreamInspector.done` turns True;
* ``MALFORMED``: bytes that look like HTTP or TLS but do not parse strictly (a refusal, never a
  pass); the inspector stops there (:attr:`~StreamInspector.done`).

The gateway decides each new name again (:mod:`engine.netstack.gateway.tcp`), so a keep-alive
or pipelined request for another virtual host on an allowed address is cut.

HTTP/1: every request head is parsed by :func:`~engine.netstack.sniff.parse_request_head`;
bodies are framed by Content-Length or chunked coding and skipped *by count* (never scanned
or copied, so an upload costs nothing per byte); chunk-size lines and the CRLF after each chunk
must be exact (CRLF, hex size, no bare LF) since servers that differ there are the classic
smuggling. Between requests only blank lines may appear: any other bytes after a complete
request are ``MALFORMED``, not "some other protocol". Heads are bounded by ``max_head``.

Tunnels (the choice, documented): after a CONNECT or a request carrying ``Upgrade`` (and its
body), the inspector does not know whether the server switched protocols (it reads no
responses), so it looks at the next bytes afresh: a TLS ClientHello is inspected as TLS (its SNI
must satisfy the policy too), bytes that look like HTTP are parsed as the next request (the
server may have declined the upgrade), and anything else (WebSocket frames, an SSH session in
a CONNECT tunnel) is ``NOT_PROTOCOL``: opaque, allowed on the name of the request that opened
it. An h2c upgrade's ``PRI *`` preface is ``MALFORMED`` (HPACK hides its authority).

TLS: records are framed; handshake bytes are reassembled into messages and every ClientHello
is parsed (:func:`~engine.netstack.sniff.parse_client_hello`), including the second one a TLS
1.3 HelloRetryRequest asks for (sent after a ChangeCipherSpec in middlebox-compatibility mode).
Any other client handshake message while the inspector still reads is ``MALFORMED``.
Application-data records are skipped by count while the server has not answered or has asked
for a retry (TLS 1.3 early data the server skips past); the stream becomes opaque when the
server's reply is a real ServerHello (or an alert, or not TLS), because everything the client
sends after that is encrypted. So the inspector watches the server's bytes only up to its
ServerHello. Limits: the HTTP Host inside TLS, TLS 1.2 renegotiation and Encrypted Client
Hello's inner name are encrypted and never seen.
"""
from __future__ import annotations

import re
from enum import Enum

from engine.netstack.sniff import (
    HANDSHAKE_CLIENT_HELLO, HANDSHAKE_SERVER_HELLO, MAX_BLANK_LINES, MAX_SNIFF_BYTES, MAX_TLS_CIPHERTEXT,
    MAX_TLS_RECORD, SERVER_HELLO_PREFIX, TLS_ALERT, TLS_APPLICATION_DATA, TLS_CHANGE_CIPHER_SPEC,
    TLS_HANDSHAKE, TLS_HEARTBEAT, RequestHead, SniffResult, SniffStatus, head_end, http_like, is_hello_retry,
    parse_client_hello, parse_request_head, request_line_refusal, skip_blank)

_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})(;[\t\x20-\x7e]*)?\r\n")
_TRAILER_LINE = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+:[\t\x20-\x7e\x80-\xff]*\r\n")
MAX_LINE = 4096  # a chunk-size or trailer line
_STOP = 1 << 62  # a stream position past any chunk's end
_TLS_RECORD_TYPES = (TLS_CHANGE_CIPHER_SPEC, TLS_ALERT, TLS_HANDSHAKE, TLS_APPLICATION_DATA, TLS_HEARTBEAT)



def _fill(buf: bytearray, size: int, data: memoryview, pos: int) -> int:
    """Move bytes of ``data`` from ``pos`` into ``buf`` until it holds ``size`` (or ``data``
    ends); returns the new position in ``data``."""
    take = max(0, min(size - len(buf), len(data) - pos))
    buf += data[pos:pos + take]
    return pos + take


class _Mode(Enum):
    DETECT = "detect"      # a stream's (or tunnel's) first bytes: TLS, HTTP or opaque?
    HEAD = "head"          # an HTTP request head
    BODY = "body"          # Content-Length bytes, or one chunk's data, skipped by count
    CHUNK_SIZE = "chunk_size"
    CHUNK_END = "chunk_end"  # the CRLF after a chunk's data
    TRAILERS = "trailers"
    TLS = "tls"
    DONE = "done"          # opaque, or refused: nothing more is read


def _bad(detail: str) -> SniffResult:
    return SniffResult(SniffStatus.MALFORMED, None, detail)


class StreamInspector:
    """The names one TCP stream presents, request by request and hello by hello (module doc)."""

    def __init__(self, max_head: int = MAX_SNIFF_BYTES) -> None:
        self.max_head = max_head
        self._mode = _Mode.DETECT
        self._buf = bytearray()   # an unfinished head, chunk line, record header or handshake
        self._blank = 0           # blank-line bytes skipped before the current head
        self._line_checked = False  # the current unfinished head's first line was found strict
        self._left = 0            # body / chunk bytes still to skip
        self._chunked = False
        self._tunnel = False      # the current request may switch protocols after its body
        self._verdicts = 0
        # TLS, client side: the current record's type and bytes left; the handshake stream.
        self._record_type = 0
        self._record_left = 0
        self._first_record = True
        self._handshake = bytearray()
        # TLS, server side: an unfinished record header / message prefix; bytes left in both.
        self._server_buf = bytearray()
        self._server_record_left = 0  # handshake bytes left in the current server record
        self._server_skip = 0         # bytes left of a server ChangeCipherSpec record
        self._server_message_left = 0
        self._server_message = bytearray()
        self._server_done = False

    @property
    def done(self) -> bool:
        """Nothing more will be named: the stream is opaque or was refused; stop feeding."""
        return self._mode is _Mode.DONE

    @property
    def pending(self) -> bool:
        """Whether an unfinished request head, TLS record header or ClientHello is buffered."""
        in_hello = self._mode is _Mode.TLS and self._record_type == TLS_HANDSHAKE and self._record_left > 0
        return bool(self._buf) or bool(self._handshake) or in_hello or (self._mode is _Mode.TLS and self._first_record)

    def finish(self) -> SniffResult | None:
        """The verdict when the guest stops (EOF, or the gateway's first-bytes wait ran out):
        MALFORMED for an unfinished head or hello, else None (nothing more was presented)."""
        if self._mode is _Mode.DONE:
            return None
        if self._mode in (_Mode.DETECT, _Mode.HEAD, _Mode.TLS) and self.pending:
            self._mode = _Mode.DONE
            return _bad("the stream stopped inside a request head or ClientHello")
        return None

    # -- guest -> host --------------------------------------------------------------------
    def feed(self, data: bytes | bytearray | memoryview) -> list[SniffResult]:
        """Guest bytes, in order; the verdicts they completed."""
        out: list[SniffResult] = []
        view = memoryview(data)
        pos, end = 0, len(view)
        while pos < end and self._mode is not _Mode.DONE:
            pos = self._step(view, pos, out)
        self._verdicts += len(out)
        return out

    def _step(self, data: memoryview, pos: int, out: list[SniffResult]) -> int:
        mode = self._mode
        if mode is _Mode.BODY:
            take = min(self._left, len(data) - pos)
            self._left -= take
            if not self._left:
                self._body_done()
            return pos + take
        if mode is _Mode.TLS:
            return self._tls(data, pos, out)
        if mode is _Mode.DETECT:
            if not self._buf and data[pos] == TLS_HANDSHAKE:
                self._mode = _Mode.TLS
                return pos
            return self._head(data, pos, out, first=True)
        if mode is _Mode.HEAD:
            return self._head(data, pos, out, first=False)
        if mode is _Mode.CHUNK_END:
            return self._chunk_end(data, pos, out)
        return self._line(data, pos, out)

    def _refuse(self, out: list[SniffResult], result: SniffResult) -> int:
        """Record the last verdict and stop; the position returned ends :meth:`feed`'s loop."""
        out.append(result)
        self._mode = _Mode.DONE
        self._buf.clear()
        self._handshake.clear()
        return _STOP

    def _opaque(self, out: list[SniffResult], detail: str) -> int:
        return self._refuse(out, SniffResult(SniffStatus.NOT_PROTOCOL, None, detail))

    # -- HTTP -----------------------------------------------------------------------------
    def _head(self, data: memoryview, pos: int, out: list[SniffResult], first: bool) -> int:
        buf = self._buf
        if not buf:
            start = skip_blank(data, pos)
            self._blank += start - pos
            if self._blank > MAX_BLANK_LINES:
                return self._refuse(out, _bad("too many blank lines between requests"))
            pos = start
            if pos == len(data):
                return pos
        tail = bytes(buf[-3:])
        room = self.max_head - len(buf)
        window = tail + bytes(data[pos:pos + room + 1])  # bounded: a head is never longer
        end = head_end(window)
        if end < 0:
            buf += window[len(tail):]
            if len(buf) > self.max_head:
                return self._refuse(out, _bad(f"request head longer than {self.max_head} bytes"))
            return self._unfinished(out, first, pos + len(window) - len(tail))
        taken = end - len(tail)
        buf += window[len(tail):end]
        head = bytes(buf)
        buf.clear()
        self._blank = 0
        self._line_checked = False
        like = http_like(head)
        if like is not True:
            return self._not_http(out, first)
        parsed = parse_request_head(head)
        if isinstance(parsed, SniffResult):
            return self._refuse(out, parsed)
        out.append(parsed.result)
        self._start_body(parsed)
        return pos + taken

    def _unfinished(self, out: list[SniffResult], first: bool, pos: int) -> int:
        """Refuse an unfinished head as soon as it shows it is not HTTP or not a strict request
        line (so an SSH banner is opaque at once); checked until its first line is in."""
        if self._line_checked:
            return pos
        like = http_like(self._buf)
        if like is False:
            return self._not_http(out, first)
        if like is None or self._buf.find(b"\n") < 0:
            return pos
        refusal = request_line_refusal(self._buf)
        if refusal is not None:
            return self._refuse(out, refusal)
        self._line_checked = True
        return pos

    def _not_http(self, out: list[SniffResult], first: bool) -> int:
        if first:
            return self._opaque(out, "neither TLS nor an HTTP/1 request: opaque")
        return self._refuse(out, _bad("bytes after a complete request are not a request"))

    def _start_body(self, head: RequestHead) -> None:
        self._tunnel = head.tunnel
        self._chunked = head.chunked
        if head.chunked:
            self._mode = _Mode.CHUNK_SIZE
        elif head.body:
            self._mode, self._left = _Mode.BODY, head.body
        else:
            self._body_done()

    def _body_done(self) -> None:
        if self._chunked:
            self._mode = _Mode.CHUNK_END
        elif self._tunnel:
            self._mode = _Mode.DETECT
        else:
            self._mode = _Mode.HEAD

    def _message_done(self) -> None:
        self._chunked = False
        self._body_done()

    def _chunk_end(self, data: memoryview, pos: int, out: list[SniffResult]) -> int:
        pos = _fill(self._buf, 2, data, pos)
        if len(self._buf) < 2:
            return pos
        if self._buf != b"\r\n":
            return self._refuse(out, _bad("chunk data not followed by CRLF"))
        self._buf.clear()
        self._mode = _Mode.CHUNK_SIZE
        return pos

    def _line(self, data: memoryview, pos: int, out: list[SniffResult]) -> int:
        """A chunk-size or trailer line (CRLF-terminated, bounded)."""
        lf = bytes(data[pos:pos + MAX_LINE + 1]).find(b"\n")
        if lf < 0:
            self._buf += data[pos:pos + MAX_LINE + 1]
            if len(self._buf) > MAX_LINE:
                return self._refuse(out, _bad("chunk-size or trailer line too long"))
            return len(data)
        self._buf += data[pos:pos + lf + 1]
        pos += lf + 1
        line = bytes(self._buf)
        self._buf.clear()
        if len(line) > MAX_LINE:
            return self._refuse(out, _bad("chunk-size or trailer line too long"))
        if self._mode is _Mode.TRAILERS:
            if line == b"\r\n":
                self._message_done()
            elif _TRAILER_LINE.fullmatch(line) is None:
                return self._refuse(out, _bad(f"bad trailer line {line[:64]!r}"))
            return pos
        match = _CHUNK_LINE.fullmatch(line)
        if match is None:
            return self._refuse(out, _bad(f"bad chunk-size line {line[:64]!r}"))
        size = int(match.group(1), 16)
        if size:
            self._mode, self._left = _Mode.BODY, size
        else:
            self._mode = _Mode.TRAILERS
        return pos

    # -- TLS, client side -----------------------------------------------------------------
    def _tls(self, data: memoryview, pos: int, out: list[SniffResult]) -> int:
        if self._record_left == 0:
            pos = _fill(self._buf, 5, data, pos)
            if len(self._buf) < 5:
                return pos
            header = bytes(self._buf)
            self._buf.clear()
            problem = self._record_problem(header)
            if problem is not None:
                return self._refuse(out, problem)
            self._record_type = header[0]
            self._record_left = int.from_bytes(header[3:5], "big")
            self._first_record = False
            return pos
        take = min(self._record_left, len(data) - pos)
        self._record_left -= take
        if self._record_type != TLS_HANDSHAKE:
            return pos + take  # ChangeCipherSpec, alerts, early data: skipped by count
        self._handshake += data[pos:pos + take]
        return self._client_hellos(out, pos + take)

    def _record_problem(self, header: bytes) -> SniffResult | None:
        kind, major, length = header[0], header[1], int.from_bytes(header[3:5], "big")
        if major != 3:
            if self._first_record:  # a 0x16 first byte alone does not make TLS
                return SniffResult(SniffStatus.NOT_PROTOCOL, None, "record version is not TLS (3.x): opaque")
            return _bad("record version is not TLS (3.x)")
        if kind not in _TLS_RECORD_TYPES:
            return _bad(f"TLS record of type {kind}")
        if self._handshake and kind != TLS_HANDSHAKE:
            return _bad(f"record of type {kind} inside a ClientHello")
        limit = MAX_TLS_RECORD if kind == TLS_HANDSHAKE else MAX_TLS_CIPHERTEXT
        if length == 0 or length > limit:
            return _bad(f"TLS record of type {kind} with length {length}")
        return None

    def _client_hellos(self, out: list[SniffResult], pos: int) -> int:
        hs = self._handshake
        while len(hs) >= 4:
            if hs[0] != HANDSHAKE_CLIENT_HELLO:
                return self._refuse(out, _bad(f"client handshake message of type {hs[0]} where a ClientHello was expected"))
            size = 4 + int.from_bytes(hs[1:4], "big")
            if size > self.max_head:
                return self._refuse(out, _bad(f"ClientHello of {size} bytes exceeds the {self.max_head}-byte limit"))
            if len(hs) < size:
                break
            result = parse_client_hello(bytes(hs[4:size]))
            del hs[:size]
            if result.status is SniffStatus.MALFORMED:
                return self._refuse(out, result)
            out.append(result)
        return pos

    # -- TLS, server side -----------------------------------------------------------------
    def feed_server(self, data: bytes | bytearray | memoryview) -> None:
        """Host bytes, in order: read up to the server's ServerHello (see the module doc)."""
        if self._server_done or self._mode is not _Mode.TLS:
            return  # an HTTP stream's responses say nothing about names
        view = memoryview(data)
        pos = 0
        while pos < len(view) and not self._server_done:
            pos = self._server_step(view, pos)
        if self._server_done:
            self._mode = _Mode.DONE  # the client's bytes from here on are encrypted

    def _server_step(self, data: memoryview, pos: int) -> int:
        if self._server_skip:
            take = min(self._server_skip, len(data) - pos)
            self._server_skip -= take
            return pos + take
        if self._server_record_left == 0:
            pos = _fill(self._server_buf, 5, data, pos)
            if len(self._server_buf) < 5:
                return pos
            header = bytes(self._server_buf)
            self._server_buf.clear()
            kind, length = header[0], int.from_bytes(header[3:5], "big")
            if header[1] != 3 or kind not in (TLS_HANDSHAKE, TLS_CHANGE_CIPHER_SPEC) or length == 0:
                self._server_done = True  # an alert, encrypted records already, or not TLS at all
            elif kind == TLS_HANDSHAKE:
                self._server_record_left = length
            else:
                self._server_skip = length  # the ChangeCipherSpec a compatible server sends after HRR
            return pos
        take = min(self._server_record_left, len(data) - pos)
        self._server_record_left -= take
        self._server_messages(data[pos:pos + take])
        return pos + take

    def _server_messages(self, chunk: memoryview) -> None:
        pos = 0
        while pos < len(chunk) and not self._server_done:
            if self._server_message_left:
                take = min(self._server_message_left, len(chunk) - pos)
                self._server_message_left -= take
                pos += take
                continue
            pos = _fill(self._server_message, SERVER_HELLO_PREFIX, chunk, pos)
            msg = self._server_message
            if len(msg) >= 1 and msg[0] != HANDSHAKE_SERVER_HELLO:
                self._server_done = True
                return
            if len(msg) < SERVER_HELLO_PREFIX:
                return
            size = int.from_bytes(msg[1:4], "big") + 4
            if not is_hello_retry(bytes(msg)) or size < SERVER_HELLO_PREFIX:
                self._server_done = True  # a real ServerHello: the rest of the client's stream is encrypted
                return
            self._server_message_left = size - SERVER_HELLO_PREFIX  # skip the rest of the retry request
            self._server_message.clear()
