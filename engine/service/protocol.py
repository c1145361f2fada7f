"""The pool service's wire protocol, sans I/O: framing, message builders and field checks.

Framing
    Every message is one frame: a 4-byte big-endian length, then that many bytes of UTF-8 JSON
    holding one object. A frame longer than :data:`MAX_FRAME` (16 MiB), JSON nested deeper than
    :data:`MAX_DEPTH` (64) arrays and objects, bytes that are not UTF-8 JSON, or JSON that is not
    an object is a :class:`ProtocolError`; the server answers it with an error frame that names
    the problem and drops the connection. The depth is checked on the raw bytes before
    ``json.loads`` (which recurses, and would raise ``RecursionError`` out of the handler), with
    a scan that keeps a counter, not a stack. A decoder may share a :class:`RequestBudget` with
    others: it claims each frame's announced size when the header arrives (see
    :mod:`engine.service.budget`).

Handshake
    The client speaks first: ``{"op": "hello", "version": 2, "resume": token?}``. The server
    answers ``{"ok": true, "version": 2, "pools": [names], "host": hostname, "accel": text,
    "session": token, "grace_s": seconds, "resumed": [vm ids]}``, or on a version mismatch
    ``{"ok": false, "version": 2, "error": "..."}`` naming both versions and closes the
    connection; the client then raises :class:`ServiceVersionError`. A v1 client (its hello says
    ``"version": 1``) gets that refusal: v2 changed what ``status`` and the events mean, so a v1
    client could not read its replies right. ``resume`` is the ``session`` token of an earlier
    connection whose link dropped: the VMs it had reserved, held for ``grace_s`` seconds
    (:mod:`engine.service.sessions`), belong to this connection again (``resumed``).

Requests and replies
    A request is ``{"op": OP, "id": N, ...fields}`` with an integer ``id`` that the reply
    echoes, so a client may pipeline: each request runs in its own task on the server and
    replies can come back in any order. A reply is ``{"id": N, "ok": true, ...result}`` or
    ``{"id": N, "ok": false, "error": message, "kind": name}`` where ``kind`` names the error
    (``PoolEmpty``, ``PoolTimeout``, ``PoolClosed``, ``PoolBootError``, ``ConsoleTimeout``,
    ``BadRequest``, ``UnknownOp``, ``UnknownPool``, ``UnknownVm``, ``NotReserved``,
    ``NotAttached``, ``NotRunning``, ``NotOwned``, ``AgentUnavailable``, ``Busy``...).

Limits
    The server bounds every client (:mod:`engine.service.limits`): a request beyond the
    connection's running limit is answered ``Busy`` and not run; a frame that does not fit the
    server's shared request buffer (``BufferFull``), nests too deep (``TooDeep``) or is too long,
    and a connection that has not said hello in time (``HelloTimeout``), get an error frame
    with ``id`` null and are closed; connection N+1 gets a hello refusal of kind
    ``TooManyConnections``; a client that leaves its replies unread past the bound is cut off.

Pools and profiles
    ``status``                        -> ``{"pools": [PoolStats fields + "members":
                                          [{id, state, pid, age_s}]]}`` (running pools)
    ``profiles``                      -> ``{"profiles": [{name, path, source, text}],
                                          "broken": [{file, line, field, message}]}``: each
                                          profile's own YAML, so a client parses the same profile
    ``reload``                        -> like ``profiles``, after reading the files again
    ``pool_start {pool, size?}``      -> ``{}`` once the pool exists (its VMs boot on; the
                                          ``pools`` event shows them)
    ``pool_stop {pool}``              -> ``{}`` once its VMs are gone
    ``pool_resize {pool, size}``      -> ``{}`` (a stopped profile's pool starts at that size)
    ``set_policy {pool, policy, apply?, save?}`` -> ``{"saved_to": path | null, "profile":
                                          {...} | null}``: ``apply`` (default true) makes the
                                          running pool's new flows follow ``policy``; ``save``
                                          writes it into the server's profile file, comments kept
    ``watch_pools``                   -> ``{}``, then a ``pools`` event now and after every change
    ``watch_flows {pool?, vm?, action?}`` -> ``{"backlog": [flow]}``, then ``flows`` events
    ``unwatch {what}``                -> ``{}``; ``what`` is ``"pools"`` or ``"flows"``

VMs
    ``reserve {pool, timeout}``       -> ``{"vm": id}``; the VM belongs to this connection
                                          until ``release`` or until the connection closes. A
                                          profile no pool holds yet gets one (lazy pools)
    ``release {vm}``                  -> ``{}``; kills the VM, the pool boots a replacement
    ``exec {vm, command, timeout}``   -> ``{exit_code, output, dropped}`` (a VM this
                                          connection reserved; through its console's shell)
    ``run {pool, command, timeout, reserve_timeout}`` -> like ``exec`` on a VM reserved and
                                          released for this one command
    ``agent_exec {vm, command, stdin?, timeout?, env?, cwd?}`` -> ``{exit_code, signal,
                                          stdout, stderr, truncated, duration_s, timed_out}``
                                          (``command``: a shell line or an argv; bytes base64)
                                          through the VM's guest agent (a sandbox)
    ``file_write {vm, path, data, mode?}`` -> ``{}``; ``file_read {vm, path}`` -> ``{data}``
    ``console_size {vm, cols, rows}`` -> ``{done}``: the serial console's window size, set
                                          through the agent (``done`` false: the VM runs none);
                                          a VM reserved, or attached with write, as for input
    ``attach {vm, from_start, write}`` -> ``{}``, then events (below) until ``detach`` or the
                                          VM ends
    ``detach {vm}``                   -> ``{}``
    ``input {vm, data}``              -> ``{}``; ``data`` (base64) is written to the console
    ``bye``                           -> ``{}``; the client is leaving on purpose: its VMs are
                                          released at once, not held for a grace period

Watching and typing
    Any member of any pool (idle or reserved by anyone) may be attached and watched; many
    connections may watch the same console. Input needs a writable attachment on this
    connection: one on a VM this connection reserved, or one asked for with ``"write": true``.

Events (no ``id``)
    ``{"event": "output", "vm": id, "data": base64, "dropped": n}`` console bytes (``dropped``
    counts bytes this watcher lost so far because it fell behind the console's scrollback);
    ``{"event": "closed", "vm": id, "reason": text}`` when the VM's console ends;
    ``{"event": "pools", "pools": [state], "version": n}`` every pool's and profile's state
    (:meth:`engine.service.registry.PoolRegistry.states`), after a change (a burst is one event);
    ``{"event": "profiles", ...}`` as the ``profiles`` reply, after the profiles were read again;
    ``{"event": "flows", "flows": [{"pool": name, "member": vm id, ...FlowEvent fields}], "dropped": n}`` a batch
    of flow events that matched the watch's filter (``dropped``: lost so far, the client read slowly).

A client that disconnects has every request it left running cancelled, its attachments and
watches stopped, and every VM it reserved released (after the grace period when it left
without ``bye``).
"""
from __future__ import annotations

import base64
import binascii
import itertools
import json
import re
import struct
from typing import Any, TypeVar

from engine.service.budget import RequestBudget
from engine.service.errors import BadRequest, ProtocolError, ServiceError, ServiceVersionError

PROTOCOL_VERSION = 2
MAX_FRAME = 16 * 1024 * 1024
MAX_DEPTH = 64  # our messages nest 3 deep; json's C scanner recurses about 1000 deep at most
_HEADER = struct.Struct(">I")

Message = dict[str, Any]
T = TypeVar("T")

_MISSING: Any = object()


# -- framing ---------------------------------------------------------------------------------


def encode(message: Message) -> bytes:
    """One frame holding ``message``; :class:`ProtocolError` if it would exceed MAX_FRAME."""
    body = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(body) > MAX_FRAME:
        raise ProtocolError(f"message of {len(body)} bytes exceeds the frame limit of {MAX_FRAME} bytes")
    return _HEADER.pack(len(body)) + body


class FrameDecoder:
    """Incremental decoder: feed it bytes as they arrive, get whole messages back.

    With a ``budget``, each frame's announced size is claimed from it when its header arrives;
    a frame that does not fit is a :class:`ProtocolError` of kind ``BufferFull``. Call
    :meth:`close` when the stream ends, to give the claim of an unfinished frame back.
    After a :class:`ProtocolError` the stream is out of step; the decoder refuses more input.
    """

    def __init__(
        self, max_frame: int = MAX_FRAME, max_depth: int = MAX_DEPTH, budget: RequestBudget | None = None
    ) -> None:
        self._buffer = bytearray()
        self._max_frame = max_frame
        self._max_depth = max_depth
        self._budget = budget
        self._claimed = 0  # of the budget, for the frame in progress
        self._in_frame = False  # the header of an unfinished frame has been read
        self._started = 0
        self._broken: ProtocolError | None = None

    @property
    def pending(self) -> int:
        """Bytes received that do not yet form a whole frame."""
        return len(self._buffer)

    @property
    def claimed(self) -> int:
        """Bytes of the budget held for the frame in progress (its announced size)."""
        return self._claimed

    @property
    def in_frame(self) -> bool:
        """Whether a frame's header has arrived and its body has not all arrived yet."""
        return self._in_frame

    @property
    def frames_started(self) -> int:
        """Headers read so far: tells one unfinished frame from the next (for timeouts)."""
        return self._started

    def feed(self, data: bytes) -> list[Message]:
        if self._broken is not None:
            raise self._broken
        self._buffer += data
        messages: list[Message] = []
        try:
            while (message := self._next()) is not None:
                messages.append(message)
        except ProtocolError as err:
            self._broken = err
            self.close()
            raise
        return messages

    def close(self) -> None:
        """Drop what is buffered and give its claim back (idempotent)."""
        self._buffer.clear()
        self._in_frame = False
        self._give_back()

    def _give_back(self) -> None:
        if self._claimed and self._budget is not None:
            self._budget.release(self._claimed)
        self._claimed = 0

    def _next(self) -> Message | None:
        if len(self._buffer) < _HEADER.size:
            return None
        (length,) = _HEADER.unpack_from(self._buffer)
        # Checked before the body arrives: a bogus length must not make us buffer 4 GiB.
        if length > self._max_frame:
            raise ProtocolError(f"frame of {length} bytes exceeds the limit of {self._max_frame} bytes")
        end = _HEADER.size + length
        if not self._in_frame:
            self._in_frame = True
            self._started += 1
            if self._budget is not None and not self._budget.claim(end):
                raise ProtocolError(
                    f"the server's request buffer is full: a frame of {length} bytes does not fit in the "
                    f"{self._budget.free} bytes left of its {self._budget.limit} (max_request_bytes, "
                    "shared by all clients); try again later",
                    "BufferFull",
                )
            self._claimed = end if self._budget is not None else 0
        if len(self._buffer) < end:
            return None
        body = bytes(self._buffer[_HEADER.size : end])
        del self._buffer[:end]
        self._in_frame = False
        self._give_back()
        return decode_body(body, self._max_depth)


def decode_body(body: bytes, max_depth: int = MAX_DEPTH) -> Message:
    check_depth(body, max_depth)
    try:
        message = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise ProtocolError(f"frame is not UTF-8 JSON: {err}") from None
    if not isinstance(message, dict):
        raise ProtocolError(f"frame holds a JSON {type(message).__name__}, not an object")
    return message


# A JSON string (escapes included) is cut out whole, so brackets inside strings do not count.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}\"")
_STEP = [0] * 256
_STEP[ord("[")] = _STEP[ord("{")] = 1
_STEP[ord("]")] = _STEP[ord("}")] = -1


def json_depth(body: bytes) -> int:
    """How deep the arrays and objects of JSON text ``body`` nest (0 for a scalar).

    Counted on the raw bytes with C-speed passes (strings cut out, brackets kept, a running
    sum), never by recursion. For bad JSON it may say more than the parser would reach, never
    less: a quote left after the strings are cut is a string that never ends, where json.loads
    stops with an error, so counting stops there too.
    """
    brackets = _STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    unterminated = brackets.find(b'"')
    if unterminated >= 0:
        brackets = brackets[:unterminated]
    return max(itertools.accumulate(map(_STEP.__getitem__, brackets)), default=0)


def check_depth(body: bytes, max_depth: int = MAX_DEPTH) -> None:
    """:class:`ProtocolError` (kind ``TooDeep``) if ``body`` nests deeper than ``max_depth``."""
    # fewer brackets in all than the limit cannot nest past it: no scan for ordinary frames
    if body.count(b"[") + body.count(b"{") <= max_depth:
        return
    if json_depth(body) > max_depth:
        raise ProtocolError(
            f"frame nests JSON arrays and objects more than {max_depth} deep (the limit, max_depth)",
            "TooDeep",
        )


# -- handshake -------------------------------------------------------------------------------


def hello(version: int = PROTOCOL_VERSION, resume: str | None = None) -> Message:
    message: Message = {"op": "hello", "version": version}
    if resume is not None:
        message["resume"] = resume
    return message


def mismatch_text(client: object, server: object) -> str:
    return (
        f"protocol version mismatch: client speaks version {client}, server speaks version {server}; "
        "use the same capsa-tui for the client and for 'capsa-tui serve'"
    )


def check_hello(message: Message) -> None:
    """Server side: raise :class:`ServiceVersionError` unless ``message`` is our hello."""
    if message.get("op") != "hello":
        raise ProtocolError(f"expected a hello first, got {message.get('op')!r}")
    version = message.get("version")
    if version != PROTOCOL_VERSION:
        raise ServiceVersionError(mismatch_text(version, PROTOCOL_VERSION))


def hello_reply(pools: list[str], **facts: Any) -> Message:
    """The accepting reply; ``facts`` are host, accel, session, grace_s and resumed."""
    return {"ok": True, "version": PROTOCOL_VERSION, "pools": pools, **facts}


def hello_refusal(error: str, kind: str | None = None) -> Message:
    refusal: Message = {"ok": False, "version": PROTOCOL_VERSION, "error": error}
    if kind is not None:
        refusal["kind"] = kind
    return refusal


def check_hello_reply(reply: Message, version: int = PROTOCOL_VERSION) -> None:
    """Client side: raise unless the server accepted our hello and speaks our version."""
    server = reply.get("version")
    if server != version:
        raise ServiceVersionError(mismatch_text(version, server))
    if reply.get("ok") is not True:  # same version, refused anyway (another user, closing)
        raise ServiceError(f"the server refused the connection: {reply.get('error', 'no reason given')}")


# -- requests, replies, events ---------------------------------------------------------------


def request(op: str, request_id: int, **fields: Any) -> Message:
    return {"op": op, "id": request_id, **fields}


def ok_reply(request_id: int | None, **fields: Any) -> Message:
    return {"id": request_id, "ok": True, **fields}


def error_reply(request_id: int | None, error: str, kind: str) -> Message:
    return {"id": request_id, "ok": False, "error": error, "kind": kind}


def output_event(vm_id: str, data: bytes, dropped: int = 0) -> Message:
    return {"event": "output", "vm": vm_id, "data": b64encode(data), "dropped": dropped}


def closed_event(vm_id: str, reason: str) -> Message:
    return {"event": "closed", "vm": vm_id, "reason": reason}


def pools_event(states: list[Message], version: int) -> Message:
    return {"event": "pools", "pools": states, "version": version}


def flows_event(flows: list[Message], dropped: int) -> Message:
    return {"event": "flows", "flows": flows, "dropped": dropped}


def request_id(message: Message) -> int | None:
    """The request's id, or None when it has none usable (the error reply then says so)."""
    value = message.get("id")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def field(message: Message, name: str, kind: type[T] | tuple[type, ...], default: Any = _MISSING) -> T:
    """``message[name]`` checked against ``kind``; :class:`BadRequest` if missing or mistyped.

    A default (None included) is returned when the field is missing or null.
    """
    value = message.get(name)
    if value is None:
        if default is not _MISSING:
            return default
        raise BadRequest(f"{message.get('op')}: missing field {name!r}")
    # bool is an int to Python, never to us: true is not a timeout
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise BadRequest(f"{message.get('op')}: field {name!r} must be {_kind_name(kind)}, not {value!r}")
    if not isinstance(value, kind):
        raise BadRequest(f"{message.get('op')}: field {name!r} must be {_kind_name(kind)}, not {value!r}")
    return value  # type: ignore[return-value]  # isinstance(value, kind) holds, but mypy cannot narrow to T through the tuple form


def timeout_field(message: Message, name: str = "timeout") -> float | None:
    """An optional non-negative number of seconds."""
    value: float | None = field(message, name, (int, float), None)
    if value is not None and value < 0:
        raise BadRequest(f"{message.get('op')}: field {name!r} must be >= 0, not {value!r}")
    return None if value is None else float(value)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {bool: "a boolean", str: "a string", int: "a number", float: "a number", dict: "an object"}
    return " or ".join(sorted({names.get(k, k.__name__) for k in kinds}))


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64decode(text: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise BadRequest("data is not valid base64") from None
